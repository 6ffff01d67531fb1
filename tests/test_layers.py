"""The layers of ``service/`` (see its ``__init__``), checked by walking every import.

An arrow that points the wrong way (the domain importing FastAPI or the HTTP schemas,
storage importing the domain, a worker importing the database) fails here, with the file
and line. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

SHARED = ("service.config", "service.errors", "service.states", "service.protocol", "service.logs")
HTTP_FRAMEWORK = ("fastapi", "starlette", "uvicorn")
ML = ("tensorflow", "keras")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    # module prefix: what it must not import (prefixes)
    "search_space": ("service", "workers", *HTTP_FRAMEWORK, "sqlalchemy", "httpx"),
    "service.storage": (
        "service.domain",
        "service.api",
        "service.cli",
        "service.client",
        *HTTP_FRAMEWORK,
        "workers",
    ),
    "service.domain": ("service.api", "service.cli", "service.client", *HTTP_FRAMEWORK, "workers"),
    "service.api": ("service.cli", "service.client", "workers"),
    "service.client": (
        "service.domain",
        "service.storage",
        "service.cli",
        *HTTP_FRAMEWORK,
        "workers",
        *ML,
    ),
    "service.cli": ("service.domain",),
    **{
        shared: (
            "service.api",
            "service.domain",
            "service.storage",
            "service.cli",
            "service.client",
            *HTTP_FRAMEWORK,
            "workers",
            *ML,
        )
        for shared in SHARED
    },
    # The findings: the probe runs in the trainer, the report in the API; neither knows
    # the service's layers, and the codes and the report load no TensorFlow.
    "diagnostics": ("service", "workers.loop", "workers.client", *HTTP_FRAMEWORK, "sqlalchemy"),
    "diagnostics.codes": ("service", "workers", *HTTP_FRAMEWORK, "sqlalchemy", *ML),
    "diagnostics.report": ("service", "workers", *HTTP_FRAMEWORK, "sqlalchemy", *ML),
    "diagnostics.curves": ("service", "workers", *HTTP_FRAMEWORK, "sqlalchemy", *ML),
    "diagnostics.figures": ("service", "workers", *HTTP_FRAMEWORK, "sqlalchemy", *ML),
    "workers": (
        "service.api",
        "service.domain",
        "service.storage",
        "service.cli",
        *HTTP_FRAMEWORK,
        "sqlalchemy",
    ),
}
EXEMPT = {"workers.__main__"}
"""``python -m workers`` is the CLI's ``hpo worker`` under another name."""


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("service", "search_space", "workers", "diagnostics"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            # `from service import domain` imports service.domain
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def _rule(module: str) -> tuple[str, ...]:
    best = max(
        (p for p in FORBIDDEN if module == p or module.startswith(p + ".")), key=len, default=None
    )
    return () if best is None else FORBIDDEN[best]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for module, path in _modules():
        if module in EXEMPT:
            continue
        for line, imported in _imports(path, module):
            for banned in _rule(module):
                if _under(imported, banned) and not _under(module, banned):
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {module} imports {imported}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_walk_sees_a_wrong_arrow(tmp_path: Path) -> None:
    """The checker itself: a domain module importing FastAPI is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from fastapi import Depends\nfrom service.api import schemas\n")
    found = [name for _, name in _imports(bad, "service.domain.bad")]
    assert any(_under(n, "fastapi") for n in found)
    assert any(_under(n, "service.api") for n in found)
    assert "fastapi" in _rule("service.domain.bad")


@pytest.mark.parametrize(
    "module",
    [
        "service.client",
        "service.protocol",
        "service.states",
        "workers.client",
        "diagnostics.report",
        "service.domain.study_report",
        # The API checks an uploaded final model with Keras in a child process, never here.
        "service.domain.jobs",
        "service.domain.model_check",
        "workers.model_load",
    ],
)
def test_module_imports_without_tensorflow(module: str) -> None:
    """The client, the protocol and the worker's HTTP client load no TensorFlow or Keras
    (TensorFlow alone takes seconds to import)."""
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'fastapi') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    loaded = set(filter(None, done.stdout.strip().split(",")))
    assert not loaded & {"tensorflow", "keras"}, f"{module} loads {loaded}"
    if module != "workers.client":
        assert "fastapi" not in loaded, f"{module} loads FastAPI"


def test_no_module_is_over_400_lines() -> None:
    long = [
        f"{path.relative_to(REPO)}: {n}"
        for _, path in _modules()
        if (n := len(path.read_text().splitlines())) > 400
    ]
    assert not long, "split these modules:\n" + "\n".join(long)

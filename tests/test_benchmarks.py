"""The benchmarks stay runnable: ``python -m benchmarks --size smoke`` runs all five (each
in its own process, as ``make bench`` does at full size) and writes RESULTS.md and its
plots. The figures are not judged here (speed is measured, not asserted); what is checked
is that each benchmark measured what it says it measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import feeding, memory, overhead, quality, scaling
from tests.support import REPO, child_env

pytestmark = [pytest.mark.slow, pytest.mark.serial]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--size",
            "smoke",
            "--results",
            str(out / "results"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def result(bench: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bench / "results" / f"{name}.json").read_text())
    assert doc["benchmark"] == name and doc["size"] == "smoke"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["versions"]["optuna"]
    return doc


def test_overhead_times_the_same_trials_both_ways(bench: Path) -> None:
    doc = result(bench, "overhead")
    rows = doc["result"]["rows"]
    assert len(rows) == overhead.SIZES["smoke"]["configs"]
    for row in rows:
        assert row["epochs"] == overhead.SIZES["smoke"]["epochs"]
        assert 0 < row["bare_fit_only_s"] <= row["bare_s"]
        assert 0 < row["reporting_s"] < row["service_s"]
        assert math.isclose(row["ratio"], row["service_s"] / row["bare_s"], rel_tol=1e-2)
    assert len({json.dumps(r["params"], sort_keys=True) for r in rows}) == len(rows)


def test_feeding_measures_service_and_optuna_on_both_databases(bench: Path) -> None:
    params = feeding.SIZES["smoke"]
    rows = result(bench, "feeding")["result"]["rows"]
    assert [(r["backend"], r["trials"]) for r in rows] == [
        (b, n) for b in ("sqlite", "postgresql") for n in params["sizes"]
    ]
    for row in rows:
        for who in ("service", "optuna"):
            measured = row[who]
            assert measured["leases"] == params["window"]
            assert measured["leases_per_s"] > 0
            ms = measured["lease_ms"]
            assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]


def test_quality_runs_every_method_on_the_same_budget(bench: Path) -> None:
    params = quality.SIZES["smoke"]
    doc = result(bench, "quality")["result"]
    runs = doc["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in quality.METHODS for s in params["seeds"]
    )
    for run in runs:
        assert run["epochs_used"] == params["budget"], run
        assert 0 <= run["best_val"] <= 1 and 0 < run["test_accuracy"] <= 1
        assert run["trials"] >= params["budget"] // params["epochs"] or run["pruned"]
        assert {"learning_rate", "optimizer", "kernel_initializer"} <= set(run["best_params"])
    assert [r["method"] for r in doc["summary"]] == quality.METHODS


def test_scaling_runs_one_and_two_workers(bench: Path) -> None:
    rows = result(bench, "scaling")["result"]["rows"]
    assert [r["workers"] for r in rows] == scaling.SIZES["smoke"]["workers"]
    assert all(r["trials_per_min"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0


def test_memory_reads_the_worker_at_each_checkpoint(bench: Path) -> None:
    doc = result(bench, "memory")["result"]
    params = memory.SIZES["smoke"]
    assert list(doc["rss_mib_after"]) == [str(c) for c in params["checkpoints"]]
    # A worker has TensorFlow loaded: hundreds of MiB, not the few of a bare interpreter.
    assert all(v > 150 for v in doc["rss_mib_after"].values())
    trials = [r["trials"] for r in doc["readings"]]
    assert trials == sorted(set(trials)) and trials[-1] == params["trials"]


def test_report_holds_all_five_with_plots(bench: Path) -> None:
    text = (bench / "RESULTS.md").read_text()
    for title in (
        "1. Overhead",
        "2. Feeding workers",
        "3. Search quality",
        "4. Scaling",
        "5. Memory",
    ):
        assert f"## {title}" in text
    assert "Not measured" not in text
    for name in ("overhead", "feeding", "quality", "memory"):
        assert (bench / f"{name}.png").read_bytes().startswith(PNG)
        assert f"({name}.png)" in text

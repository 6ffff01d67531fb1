"""The user-facing CLI commands: submit, status, trials, best, stop. They speak HTTP to the
service at ``HPO_API_URL`` with the user token ``HPO_API_TOKEN``; an error from the service
is one clear line and exit code 1."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


class CliError(Exception):
    """Shown as one line on stderr; the command exits 1."""


class Service:
    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise CliError(
                "HPO_API_TOKEN is not set: the service needs the user token "
                "(`hpo up` prints it when it starts)"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the service at {self.url} ({exc}); is `hpo api` "
                "running, and is HPO_API_URL right?"
            ) from exc
        if r.status_code >= 400:
            try:
                message = r.json().get("message") or r.text
            except ValueError:
                message = r.text
            if r.status_code == 401:
                message += " (is HPO_API_TOKEN the service's user token?)"
            raise CliError(f"{message} (HTTP {r.status_code})")
        return r.json()

    def study(self, name: str) -> dict[str, Any]:
        for study in self.call("GET", "/studies"):
            if study["name"] == name:
                return dict(study)
        raise CliError(f"no study named {name!r}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _done(study: dict[str, Any]) -> int:
    t = study["trials"]
    return int(t["complete"] + t["pruned"] + t["fail"])


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(study: dict[str, Any], elapsed: float, width: int = 24) -> str:
    """``[#####-----] 5/20 trials  best val_accuracy 0.97  elapsed 0:35  eta 1:45``"""
    done, total = _done(study), study["n_trials"]
    filled = int(width * done / total) if total else width
    best = study["best"]
    eta = "-" if done == 0 else _clock(elapsed / done * (total - done))
    best_text = f"best {study['metric']} {best['value']:.4f}" if best else "no result yet"
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} trials  {best_text}  "
        f"elapsed {_clock(elapsed)}  eta {eta}"
    )


def _best_text(study: dict[str, Any]) -> str:
    best = study["best"]
    if best is None:
        return f"study {study['name']} is {study['status']} with no completed trial"
    lines = [
        f"best trial #{best['number']} of {study['name']}: {study['metric']} = {best['value']:.4f}"
    ]
    lines += [f"  {k} = {v}" for k, v in best["params"].items()]
    final = study["final_model"]
    if final["state"] == "ready":
        lines.append(
            f"retrained on train + validation: {final['test_metric']} = "
            f"{final['test_value']:.4f} (GET /studies/{study['id']}/model)"
        )
    elif final["state"] != "none":
        lines.append(
            f"best model: {final['state']}" + (f" ({final['reason']})" if final["reason"] else "")
        )
    return "\n".join(lines)


def _read_spec(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CliError(
            f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}".replace(
                "\n", " "
            )
        ) from exc
    if not isinstance(spec, dict):
        raise CliError(f"{path} must hold one study spec (an object), not {type(spec).__name__}")
    return spec


def submit(svc: Service, path: str, *, wait: bool, poll_s: float = 1.0) -> str:
    study = svc.call("POST", "/studies", json=_read_spec(path))
    for warning in study.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"submitted study {study['name']} (id {study['id']}): {study['n_trials']} trials "
        f"x {study['epochs']} epochs on {study['dataset']}",
        flush=True,
    )
    if not wait:
        return ""
    started, tty, last = time.monotonic(), sys.stdout.isatty(), ""
    while True:
        study = svc.call("GET", f"/studies/{study['id']}")
        line = progress_line(study, time.monotonic() - started)
        if tty:
            print(f"\r{line}", end="", flush=True)
        elif line.split("  elapsed")[0] != last:
            print(line, flush=True)
            last = line.split("  elapsed")[0]
        final = study["final_model"]["state"]
        if study["status"] in ("stopped", "failed") or (
            study["status"] == "completed" and final in ("ready", "failed", "none")
        ):
            break
        time.sleep(poll_s)
    if tty:
        print()
    if study["status"] == "failed":
        raise CliError(f"study {study['name']} failed: {study['reason']}")
    return _best_text(study)


def status(svc: Service, name: str | None) -> str:
    studies = [svc.study(name)] if name else svc.call("GET", "/studies")
    rows = [
        [
            s["id"],
            s["name"],
            s["status"],
            f"{_done(s)}/{s['n_trials']}",
            s["dataset"],
            s["metric"],
            s["best"]["value"] if s["best"] else None,
            s["final_model"]["test_value"],
        ]
        for s in studies
    ]
    out = table(rows, ["id", "name", "status", "trials", "dataset", "metric", "best", "test"])
    if name and studies[0]["reason"]:
        out += f"\nreason: {studies[0]['reason']}"
    return out


def trials(svc: Service, name: str) -> str:
    study = svc.study(name)
    rows = []
    for t in svc.call("GET", f"/studies/{study['id']}/trials"):
        params = ", ".join(
            f"{k}={_fmt(v)}"
            for k, v in t["params"].items()
            if k
            in ("learning_rate", "optimizer", "dropout_rate", "kernel_initializer", "lr_schedule")
        )
        reason = (t["reason"] or "")[:50]
        rows.append(
            [
                t["number"],
                t["state"],
                t["value"],
                t["epochs_run"],
                None if t["duration_s"] is None else f"{t['duration_s']:.1f}s",
                params,
                reason,
            ]
        )
    return table(rows, ["#", "state", "value", "epochs", "time", "parameters", "reason"])


def best(svc: Service, name: str) -> str:
    return _best_text(svc.study(name))


def stop(svc: Service, name: str) -> str:
    study = svc.call("POST", f"/studies/{svc.study(name)['id']}/stop")
    return f"study {study['name']} is {study['status']}"

"""Scaling: trials per minute with 1 and with 2 worker processes on this machine.

Real ``hpo worker`` processes (TensorFlow on one thread each, as the tests pin them) are
started and idle against a real ``hpo api`` (SQLite) before the study is submitted, so
their start is not counted; the clock runs from the submission to the end of the last
trial, as the service recorded it (the study is polled once a second, not more, so that
the benchmark does not load the API beside the workers). The study is the default space
on ``digits``: the same configurations, drawn at random and enqueued, in every round; no
pruner, no sanity run.

The bare baseline, in the same run: the same configurations fitted with nothing around
``model.fit`` (``benchmarks.bare``) by 1 and by 2 processes started together, each on
one TensorFlow thread. Its speed-up is what this machine's cores give two trainings at
once (two vCPUs that share a physical core give well under 2x), and the service's
speed-up is read against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    create_study,
    default_space_configs,
    get_study,
    main,
    running_api,
    user_client,
    wait_pulling,
    wait_study,
)
from tests.support import start_worker, stop

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 2, "epochs": 1, "workers": [1, 2]},
    "full": {"trials": 16, "epochs": 10, "workers": [1, 2]},
}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _bare_round(configs: Path, processes: int, trials: int, epochs: int) -> float:
    """Trials per minute of ``processes`` bare fitters started together."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare", *map(str, (configs, i, processes, epochs))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in started:  # TensorFlow loaded, data loaded, warm
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    for p in started:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    for p in started:
        if p.wait() != 0:
            raise RuntimeError(f"a bare fitter exited {p.returncode}")
    return 60 * trials / (time.monotonic() - t0)


def _last_finish(api: Any, study_id: int) -> datetime:
    with user_client(api) as c:
        trials = c.get(f"/studies/{study_id}/trials").json()
    ends = [datetime.fromisoformat(t["finished_at"]) for t in trials if t["finished_at"]]
    return max(e if e.tzinfo else e.replace(tzinfo=UTC) for e in ends)


def _full_params(api: Any, study_id: int) -> list[dict[str, Any]]:
    with user_client(api) as c:
        trials = c.get(f"/studies/{study_id}/trials").json()
    return [t["params"] for t in sorted(trials, key=lambda t: t["number"])]


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    rows = []
    workers: list[Any] = []
    configs = default_space_configs(params["trials"], seed=11)
    full: list[dict[str, Any]] = []
    with running_api(tmp / "api") as api:
        try:
            for n in params["workers"]:
                # Top up to n idle workers (the ones of the last round stay), then submit.
                workers += [
                    start_worker(
                        api.url, tmp / f"worker{i}.log", "--tf-threads", "1", poll_interval_s="0.2"
                    )
                    for i in range(len(workers), n)
                ]
                wait_pulling([tmp / f"worker{i}.log" for i in range(n)])
                submitted = datetime.now(UTC)
                started = time.monotonic()
                api_cpu = _cpu_s(api.process.pid)
                study = create_study(
                    api,
                    name=f"scaling-{n}",
                    dataset="digits",
                    n_trials=params["trials"],
                    epochs=params["epochs"],
                    sampler="random",
                    pruner="none",
                    seed=n,
                    sanity_check=False,
                    enqueue=configs,
                )
                # Polled once a second (a tight poll would load the API beside the
                # workers); the clock stops at the last trial's end as the service saw it.
                done = wait_study(
                    api, study["id"], ("completed", "failed"), timeout_s=1800, interval_s=1.0
                )
                api_cpu = _cpu_s(api.process.pid) - api_cpu
                cpu_window = time.monotonic() - started
                elapsed = (_last_finish(api, study["id"]) - submitted).total_seconds()
                if done["status"] != "completed":
                    raise RuntimeError(f"study scaling-{n} {done['status']}: {done.get('reason')}")
                rows.append(
                    {
                        "workers": n,
                        "trials": params["trials"],
                        "epochs": params["epochs"],
                        "seconds": round(elapsed, 2),
                        "trials_per_min": round(60 * params["trials"] / elapsed, 2),
                        # The API's processes (with its sampler) as a share of all cores.
                        "api_cpu_share": round(api_cpu / (cpu_window * (os.cpu_count() or 1)), 4),
                    }
                )
                print(f"  {n} worker(s): {rows[-1]['trials_per_min']} trials/min", flush=True)
                full = full or _full_params(api, study["id"])
                # The finished study's final model is retrained next; let it go first.
                _wait_final(api, study["id"])
        finally:
            for w in workers:
                stop(w)
    (tmp / "configs.json").write_text(json.dumps(full))
    for row in rows:
        row["bare_trials_per_min"] = round(
            _bare_round(tmp / "configs.json", row["workers"], params["trials"], params["epochs"]), 2
        )
        print(f"  bare, {row['workers']} process(es): {row['bare_trials_per_min']}", flush=True)
    base, bare_base = rows[0]["trials_per_min"], rows[0]["bare_trials_per_min"]
    for row in rows:
        row["speedup"] = round(row["trials_per_min"] / base, 3)
        row["bare_speedup"] = round(row["bare_trials_per_min"] / bare_base, 3)
        row["service_over_bare"] = round(row["trials_per_min"] / row["bare_trials_per_min"], 3)
    return {"rows": rows}


def _wait_final(api: Any, study_id: int, timeout_s: float = 600) -> None:
    """Until the study's final model is retrained (or failed): it would share the cores
    with the next round's trials otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if get_study(api, study_id)["final_model"]["state"] in ("ready", "failed", "none"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the final model of study {study_id} took over {timeout_s}s")


if __name__ == "__main__":
    raise SystemExit(main("scaling", SIZES, run))

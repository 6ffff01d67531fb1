"""Memory: a worker's resident memory (RSS) as it trains trial after trial.

One real ``hpo worker`` (TensorFlow on one thread, default trainer recycling) trains a
study of short trials (the default space on ``digits``, random sampler, no pruner) from a
real ``hpo api``. The RSS of its whole process tree (the worker and its trainer processes)
is read with psutil when it first asks for work and each time the study's count of results
grows, so a leak shows as a slope; the table gives the reading after the checkpoints'
numbers of trials, and the worker's own share.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import create_study, get_study, main, running_api, wait_pulling
from tests.support import start_worker, stop

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 4, "epochs": 1, "checkpoints": [2, 4]},
    "full": {"trials": 500, "epochs": 1, "checkpoints": [10, 100, 250, 500]},
}

MIB = 2**20


def _tree_mib(process: psutil.Process) -> tuple[float, float]:
    """(RSS of the process and all its descendants, RSS of the process alone) in MiB."""
    own = process.memory_info().rss
    total = own
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a trainer that just retired
            total += child.memory_info().rss
    return total / MIB, own / MIB


def _results(study: dict[str, Any]) -> int:
    counts = study["trials"]
    return int(counts["complete"] + counts["pruned"] + counts["fail"])


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    readings: list[dict[str, float]] = []
    with running_api(tmp / "api") as api:
        worker = start_worker(
            api.url, tmp / "worker.log", "--tf-threads", "1", poll_interval_s="0.2"
        )
        process = psutil.Process(worker.pid)
        try:
            wait_pulling([tmp / "worker.log"])  # until it asks for work
            idle_mib, _ = _tree_mib(process)
            study = create_study(
                api,
                name="memory",
                dataset="digits",
                n_trials=params["trials"],
                epochs=params["epochs"],
                sampler="random",
                pruner="none",
                seed=3,
                sanity_check=False,
            )
            seen = 0
            deadline = time.monotonic() + 3600
            while seen < params["trials"]:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(
                        f"the worker stopped or stalled after {seen} trials:\n"
                        + (tmp / "worker.log").read_text()[-3000:]
                    )
                current = get_study(api, study["id"])
                done = _results(current)
                if done > seen:
                    seen = done
                    tree, own = _tree_mib(process)
                    readings.append(
                        {"trials": done, "rss_mib": round(tree, 1), "worker_mib": round(own, 1)}
                    )
                if current["status"] == "failed":
                    raise RuntimeError(f"study failed: {current.get('reason')}")
                time.sleep(0.05)
        finally:
            stop(worker)
    at = {}
    for checkpoint in params["checkpoints"]:
        reading = next(r for r in readings if r["trials"] >= checkpoint)
        at[str(checkpoint)] = reading["rss_mib"]
    first, last = readings[0], readings[-1]
    slope = (
        (last["rss_mib"] - first["rss_mib"]) / (last["trials"] - first["trials"])
        if last["trials"] > first["trials"]
        else 0.0
    )
    log = (tmp / "worker.log").read_text()
    return {
        "trainers_started": len(re.findall(r"trainer \d+ ready in", log)),
        "idle_rss_mib": round(idle_mib, 1),
        "rss_mib_after": at,
        "growth_mib_per_trial": round(slope, 3),
        "readings": readings,
    }


if __name__ == "__main__":
    raise SystemExit(main("memory", SIZES, run))

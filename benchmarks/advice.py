"""Does the report's advice pay? A study over the whole default space on digits, its
report, then the report's suggested spec submitted as a second study of the same size.

For each seed: the study's top parameters by importance (whether ``kernel_initializer``,
``activation`` or ``learning_rate`` is among the top three), the advice, the share of good
trials (validation accuracy within 2 points of the best) carrying an alarm (a false
alarm: a healthy trial should carry none but overfitting), the probe's share of each
trial's time, and whether the suggested study reached the first one's best value, and
after how many trials. The suggested spec enqueues the first study's best configuration
first, so the second study is also judged without it: its best over the trials its
sampler chose (*by search*).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks.common import create_study, main, running_api, user_client, wait_study
from diagnostics.codes import ALARMS
from tests.support import start_worker, stop

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 1, "trials": 3, "epochs": 1, "workers": 1},
    "full": {"seeds": 3, "trials": 40, "epochs": 15, "workers": 2},
}
NAMED = {"kernel_initializer", "activation", "learning_rate"}
GOOD_WITHIN = 0.02


def _study(api: Any, tmp: Path, body: dict[str, Any], workers: int) -> dict[str, Any]:
    """Run ``body`` to its last result with ``workers`` worker processes; the search's
    trials (not the re-evaluations of its best, which repeat them on other folds)."""
    study = create_study(api, **body)
    procs = [start_worker(api.url, tmp / f"{body['name']}-w{i}.log") for i in range(workers)]
    try:
        wait_study(api, study["id"], ("completed", "failed", "stopped"), 3600, interval_s=1)
    finally:
        for p in procs:
            stop(p)
    with user_client(api) as c:
        listed: list[dict[str, Any]] = c.get(f"/studies/{study['id']}/trials").json()
        trials = [t for t in listed if t["reevaluates"] is None]
        report: dict[str, Any] = c.get(f"/studies/{study['id']}/report").json()
    return {"id": study["id"], "trials": trials, "report": report}


def _reached(trials: list[dict[str, Any]], target: float) -> int | None:
    """After how many results (in trial order) the running best reached ``target``."""
    for i, t in enumerate(sorted(trials, key=lambda t: t["number"])):
        if t["state"] == "complete" and t["value"] is not None and t["value"] >= target - 1e-9:
            return i + 1
    return None


def _best(trials: list[dict[str, Any]]) -> float:
    return max((t["value"] for t in trials if t["state"] == "complete"), default=0.0)


def _values(trials: list[dict[str, Any]]) -> list[float | None]:
    return [
        None if t["value"] is None else round(t["value"], 4)
        for t in sorted(trials, key=lambda t: t["number"])
    ]


def _probe_share(api: Any, name: str) -> list[float]:
    """Each completed trial's probe seconds over its training seconds (start to end)."""
    study = optuna.load_study(study_name=name, storage=api.database_url)
    shares = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        if "diagnostics_s" in t.user_attrs and t.duration is not None:
            shares.append(t.user_attrs["diagnostics_s"] / t.duration.total_seconds())
    return shares


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    shares: list[float] = []
    with running_api(tmp / "api") as api:
        for seed in range(params["seeds"]):
            started = time.monotonic()
            first = _study(
                api,
                tmp,
                {
                    "name": f"advice-{seed}",
                    "dataset": "digits",
                    "n_trials": params["trials"],
                    "epochs": params["epochs"],
                    "seed": seed,
                    "sanity_check": False,
                },
                params["workers"],
            )
            report = first["report"]
            second = _study(api, tmp, report["suggested_spec"], params["workers"])
            best_first = _best(first["trials"])
            importances = sorted(report["importances"].items(), key=lambda kv: -kv[1])
            good = [
                t
                for t in first["trials"]
                if t["state"] == "complete" and t["value"] >= best_first - GOOD_WITHIN
            ]
            false_alarms = [
                t["number"]
                for t in good
                if {f["code"] for f in t["findings"]} & {str(c) for c in ALARMS}
            ]
            shares += _probe_share(api, f"advice-{seed}")
            reached = _reached(second["trials"], best_first)
            # The suggested spec enqueues the first study's best configuration: how the
            # narrowed space did on its own is the rest of the second study.
            enqueued = len(report["suggested_spec"].get("enqueue", []))
            searched = sorted(second["trials"], key=lambda t: t["number"])[enqueued:]
            by_search = _reached(searched, best_first)
            rows.append(
                {
                    "seed": seed,
                    "top3": [k for k, _ in importances[:3]],
                    "named_in_top3": bool(NAMED & {k for k, _ in importances[:3]}),
                    "importances": dict(importances),
                    "findings": report["findings"]["by_code"],
                    "advice": [a["action"] for a in report["advice"]],
                    "good_trials": len(good),
                    "false_alarms": false_alarms,
                    "best_first": best_first,
                    "best_second": _best(second["trials"]),
                    "second_reached_first_after": reached,
                    "enqueued": enqueued,
                    "best_second_search": _best(searched),
                    "search_reached_first_after": None
                    if by_search is None
                    else by_search + enqueued,
                    "values_first": _values(first["trials"]),
                    "values_second": _values(second["trials"]),
                    "trials": params["trials"],
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            print(f"[advice] seed {seed}: {rows[-1]}", flush=True)
    return {
        "rows": rows,
        "summary": {
            "named_in_top3": sum(r["named_in_top3"] for r in rows),
            "reached": sum(r["second_reached_first_after"] is not None for r in rows),
            "reached_by_search": sum(r["search_reached_first_after"] is not None for r in rows),
            "seeds": len(rows),
            "median_trials_to_reach": statistics.median(
                [r["second_reached_first_after"] for r in rows if r["second_reached_first_after"]]
                or [0]
            ),
            "good_trials": sum(r["good_trials"] for r in rows),
            "false_alarms": sum(len(r["false_alarms"]) for r in rows),
            "median_probe_share": round(statistics.median(shares), 4) if shares else None,
            "max_probe_share": round(max(shares), 4) if shares else None,
        },
    }


if __name__ == "__main__":
    raise SystemExit(main("advice", SIZES, run))

"""Soak with faults: many small studies for a long time while processes are killed, then a
check that nothing acknowledged was lost and every study counted exactly its budget.

PostgreSQL (a server of our own, fsync on) and two ``hpo api`` processes on two ports
sharing its database; ``studies`` small studies on ``digits`` (``n_trials`` drawn from the
range, ``epochs`` each; samplers TPE, random and QMC and pruners median, Hyperband and
none in turn; every fifth, from the fifth, with a sanity run; every seventh seeded),
submitted at a steady pace over the first 90% of ``minutes`` (``paced``; else all before the
first fault, as the smoke does); ``workers`` simulated workers
(``benchmarks.soak_workers``: the protocol over HTTP without TensorFlow, spread over both
APIs, in ``sim_processes`` processes; each records every answer and every acknowledged
``complete``) and ``real_workers`` real ``hpo worker`` processes (one TensorFlow thread).
A simulated epoch lasts what makes the simulated workers alone about 70% busy over the
run. For ``minutes``, ``benchmarks.soak_faults`` injects a fault every ``fault_every_s``
on average (exponential, seeded): a real worker SIGKILLed or SIGTERMed, a process of
simulated workers SIGKILLed or SIGTERMed, an API process SIGKILLed, PostgreSQL stopped
(fast or immediate) for ``outage_s`` seconds; each time, what was stopped is started
again. Once every study is over (completed, its final model settled), or ``drain_minutes``
after ``minutes``, the workers are stopped (SIGTERM) and then the APIs,
and ``benchmarks.soak_check`` reads the database and Optuna with the simulated workers'
logs and the APIs' access logs: every violation, by rule. The run fails (exit 1) on any
violation, or when a fault could not be recovered from.

    python -m benchmarks.soak --size full [--minutes 120] [--studies 200] [--workers 32]
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks import soak_check
from benchmarks.common import main, running_postgres
from benchmarks.soak_faults import FAULTS, Cluster, FaultDriver, api_answers, load_log
from service.states import study_is_over
from tests.support import AUTH

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "minutes": 0.5,
        "drain_minutes": 1.5,
        "studies": 4,
        "n_trials": [6, 8],
        "epochs": 2,
        "workers": 4,
        "sim_processes": 2,
        "real_workers": 1,
        "lease_seconds": 8,
        "fault_every_s": 3.0,
        "outage_s": [1.0, 3.0],
        "retry_max_s": 120,
        "paced": False,
        "seed": 16,
    },
    "full": {
        "minutes": 30.0,
        "drain_minutes": 15.0,
        "studies": 50,
        "n_trials": [30, 60],
        "epochs": 4,
        "workers": 24,
        "sim_processes": 4,
        "real_workers": 2,
        "lease_seconds": 30,
        "fault_every_s": 40.0,
        "outage_s": [2.0, 10.0],
        "retry_max_s": 300,
        "paced": True,
        "seed": 16,
    },
}

OPTIONS: dict[str, tuple[type, str]] = {
    "minutes": (float, "how long studies are submitted and faults injected"),
    "studies": (int, "how many studies"),
    "workers": (int, "how many simulated workers"),
    "real_workers": (int, "how many real `hpo worker` processes"),
    "fault_every_s": (float, "mean seconds between faults"),
    "seed": (int, "the seed of the studies, the workers and the faults"),
}

SAMPLERS = ("tpe", "random", "tpe", "qmc")
PRUNERS = ("median", "hyperband", "none", "median", "median")


def specs(params: dict[str, Any]) -> list[dict[str, Any]]:
    rng = random.Random(params["seed"])
    low, high = params["n_trials"]
    return [
        {
            "name": f"soak-{i:03d}",
            "dataset": "digits",
            "n_trials": rng.randint(low, high),
            "epochs": params["epochs"],
            "sampler": SAMPLERS[i % len(SAMPLERS)],
            "pruner": PRUNERS[i % len(PRUNERS)],
            "sanity_check": i % 5 == 4,
            "seed": i if i % 7 == 3 else None,
            "fixed": {"hidden_layers": 1, "batch_size": 64},
        }
        for i in range(params["studies"])
    ]


class _User:
    """The user's calls (submit, look), to either API, ridden through the faults."""

    def __init__(self, urls: list[str]) -> None:
        self.clients = [httpx.Client(base_url=u, timeout=30, auth=AUTH) for u in urls]
        self.turn = 0
        self.answers: Counter[int] = Counter()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + 600
        while True:
            self.turn += 1
            try:
                r = self.clients[self.turn % len(self.clients)].request(method, path, **kwargs)
            except httpx.TransportError:
                self.answers[0] += 1
            else:
                self.answers[r.status_code] += 1
                if r.status_code != 503:
                    return r
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no answer for 600s")
            time.sleep(0.5)

    def submit(self, spec: dict[str, Any]) -> None:
        deadline = time.monotonic() + 600
        while True:
            r = self.call("POST", "/studies", json=spec)
            if r.status_code == 409 and "is being created" in r.text:
                # A submission cut short (a 503, the API killed) is cleared once abandoned
                # (a minute), then this retry makes it anew.
                if time.monotonic() > deadline:
                    raise RuntimeError(f"POST /studies: still half-made after 600s: {r.text}")
                time.sleep(5)
                continue
            if r.status_code not in (201, 409):  # 409: a retry of one that went through
                raise RuntimeError(f"POST /studies {r.status_code}: {r.text}")
            return

    def over(self, names: set[str]) -> set[str]:
        """Which of ``names`` are over (completed with the final model settled, ...)."""
        r = self.call("GET", "/studies")
        r.raise_for_status()
        done = {
            s["name"] for s in r.json() if study_is_over(s["status"], s["final_model"]["state"])
        }
        return names & done

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _epoch_s(params: dict[str, Any], studies: list[dict[str, Any]]) -> float:
    """A simulated epoch long enough to keep the simulated workers about 70% busy."""
    work = sum(s["n_trials"] for s in studies) * params["epochs"] * 1.1  # (re-runs)
    epoch = 0.7 * params["minutes"] * 60 * params["workers"] / work
    return max(0.2, min(epoch, params["lease_seconds"] / 4))


def _drive(
    cluster: Cluster, params: dict[str, Any], studies: list[dict[str, Any]]
) -> dict[str, Any]:
    """Submit on schedule and wait for every study to be over, faults injected meanwhile."""
    user = _User(cluster.urls)
    # Paced over 90% of the run; or all at once before the first fault (the smoke's way: a
    # submission cut short by a fault is then not left to chance in the suite's run).
    window = 0.9 * params["minutes"] * 60
    pending, submitted, over = list(studies), set[str](), set[str]()
    if not params["paced"]:
        for spec in pending:
            user.submit(spec)
            submitted.add(spec["name"])
        pending = []
    started = time.monotonic()
    faults = FaultDriver(cluster, params, until=started + params["minutes"] * 60)
    deadline = started + (params["minutes"] + params["drain_minutes"]) * 60
    faults.start()
    said = started
    try:
        while time.monotonic() < deadline:
            if time.monotonic() - said >= 60:
                said = time.monotonic()
                print(
                    f"[soak] {(said - started) / 60:.0f} min: {len(submitted)} studies "
                    f"submitted, {len(over)} over, {len(faults.events)} faults",
                    flush=True,
                )
            due = (time.monotonic() - started) / window * len(studies)
            while pending and len(submitted) < due:
                spec = pending.pop(0)
                user.submit(spec)
                submitted.add(spec["name"])
            over |= user.over(submitted - over)
            if not pending and over == submitted:
                break
            time.sleep(1.0)
    finally:
        faults.finish()
        user.close()
    return {
        "run_s": round(time.monotonic() - started, 1),
        "submitted": len(submitted),
        "over": len(over),
        "faults": faults.counts(),
        "fault_events": faults.events,
        "fault_errors": faults.errors,
        "sigterm_exits": faults.stopped,
        "outages": faults.outages,
        "user_answers": {str(k): v for k, v in sorted(user.answers.items())},
    }


def _keep_logs(tmp: Path) -> str:
    """A copy of the run's logs that outlives it (a failed run's evidence)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    kept = Path(tempfile.gettempdir()) / f"hpo-soak-{stamp}"
    shutil.copytree(tmp, kept, ignore=shutil.ignore_patterns("artifacts"), dirs_exist_ok=True)
    return str(kept)


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    studies = specs(params)
    began = time.monotonic()
    with running_postgres() as pg:
        url = pg.new_database()
        cluster = Cluster(tmp, pg, url, params)
        cluster.epoch_s = _epoch_s(params, studies)
        print(f"[soak] simulated epochs of {cluster.epoch_s:.2f}s", flush=True)
        try:
            cluster.start()
            setup_s = time.monotonic() - began
            drove = _drive(cluster, params, studies)
        finally:
            ending = time.monotonic()
            exits = cluster.stop_workers()
            cluster.stop_apis()
            stop_s = time.monotonic() - ending
        acks, statuses, sim_errors = load_log(cluster.sim_logs())
        answers = api_answers(cluster.api_logs())
        from_logs = [soak_check.Status("api log", s, None, path) for path, s in answers["errors"]]
        snap = soak_check.read(url)
        found = soak_check.violations(snap, acks, [*statuses, *from_logs])
        facts = soak_check.figures(snap)
    by_status = Counter(s.status for s in statuses)
    unavailable = [s.at for s in statuses if s.status == 503]
    # (A 503 answers a call made while the database was away: up to the retry after it.)
    outside = [t for t in unavailable if not any(a - 1 <= t <= b + 10 for a, b in drove["outages"])]
    result = {
        **drove,
        "setup_s": round(setup_s, 1),
        "stop_s": round(stop_s, 1),
        "studies_checked": facts["studies"],
        "trials": facts,
        "sim_epoch_s": round(cluster.epoch_s, 3),
        "acknowledged_completes": len(acks),
        "acknowledged_trials": len({a.trial_id for a in acks}),
        "answers": {str(k): v for k, v in sorted(by_status.items())},
        "status_503": len(unavailable),
        "status_503_outside_outages": len(outside),
        "status_5xx_not_503": sum(1 for s in statuses if s.status >= 500 and s.status != 503),
        "api_log_answers": answers["statuses"],
        "api_log_5xx_not_503": len(answers["errors"]),
        "api_tracebacks_database_away": answers["tracebacks_database_away"],
        "api_tracebacks_other": answers["tracebacks_other"],
        "api_traceback_samples": answers["samples"],
        "sim_errors": sim_errors[:20],
        "worker_exit_codes_at_end": exits,
        "violation_count": len(found),
        "violations_by_rule": {r: sum(v.rule == r for v in found) for r in soak_check.RULES},
        "violations": [str(v) for v in found[:100]],
        "fault_kinds": list(FAULTS),
    }
    if found or drove["fault_errors"] or sim_errors:
        result["logs_kept_in"] = _keep_logs(tmp)
    return result


def verdict(result: dict[str, Any]) -> str | None:
    """Why the run failed, if it did."""
    problems = []
    if result["violation_count"]:
        problems.append(f"{result['violation_count']} violations: {result['violations'][:5]}")
    if result["fault_errors"]:
        problems.append(f"faults not recovered from: {result['fault_errors'][:5]}")
    if result["sim_errors"]:
        problems.append(f"the simulated workers failed: {result['sim_errors'][:5]}")
    if "logs_kept_in" in result:
        problems.append(f"logs in {result['logs_kept_in']}")
    return "; ".join(problems) or None


if __name__ == "__main__":
    raise SystemExit(main("soak", SIZES, run, options=OPTIONS, verdict=verdict))

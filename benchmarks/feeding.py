"""Feeding workers: how many leases a second the service hands out as a study grows.

M simulated workers (processes, no training) each loop lease -> ``reports`` epoch reports
-> complete against a real ``hpo api`` on SQLite and on PostgreSQL (fsync on). The study
uses the service's defaults, TPE and the median pruner. It is grown to each size by adding
finished trials through Optuna's own API (fast; each has the same number of reports), then
the workers run ``window`` lease cycles and each lease's latency is recorded. (Filling
commits without waiting for the disk; the measured runs keep the databases' defaults.)

Beside it, the same M processes then drive the same study with plain Optuna against the
same database, the service idle: ``ask`` (with the same sampler and space) is the lease,
then ``report`` with ``should_prune`` and ``tell``. Optuna starts ``window`` trials later
than the service did; each row records both starting sizes.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    create_study,
    main,
    percentiles,
    running_api,
    running_postgres,
)
from tests.support import WORKER_TOKEN

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "workers": 2,
        "sizes": [10],
        "window": 6,
        "reports": 2,
        "backends": ["sqlite", "postgresql"],
    },
    "full": {
        "workers": 8,
        "sizes": [100, 1000, 5000],
        "window": 96,
        "reports": 3,
        "backends": ["sqlite", "postgresql"],
    },
}

STUDY = "feeding"
"""One study: the service's; plain Optuna then drives the same study, the service idle."""


# --- one simulated worker (a process of its own) -----------------------------------------


def _service_worker(url: str, reports: int, index: int, cycles: int, go: Any, out: Any) -> None:
    """Lease, report, complete, ``cycles`` times; puts (lease ms list, first, last)."""
    rng = random.Random(index)
    worker_id = f"sim-{index}"
    latencies = []
    with httpx.Client(
        base_url=url, timeout=120, headers={"Authorization": f"Bearer {WORKER_TOKEN}"}
    ) as c:
        c.get("/healthz").raise_for_status()  # connected
        out.put("ready")
        go.wait()
        first = time.time()
        for _ in range(cycles):
            t0 = time.perf_counter()
            r = c.post("/trials/lease", json={"worker": {"id": worker_id}})
            latencies.append(1000 * (time.perf_counter() - t0))
            if r.status_code != 200:
                raise RuntimeError(f"lease answered {r.status_code}: {r.text}")
            trial_id = r.json()["trial_id"]
            value = rng.random()
            for epoch in range(1, reports + 1):
                r = c.post(
                    f"/trials/{trial_id}/report",
                    json={"worker_id": worker_id, "epoch": epoch, "value": value},
                )
                r.raise_for_status()
                if r.json()["action"] != "continue":
                    break
            else:
                c.post(
                    f"/trials/{trial_id}/complete",
                    json={"worker_id": worker_id, "value": value, "epochs_run": reports},
                ).raise_for_status()
    out.put((latencies, first, time.time()))


def _optuna_worker(
    database_url: str, reports: int, index: int, cycles: int, go: Any, out: Any
) -> None:
    """The same loop with plain Optuna: ask + suggest, report + should_prune, tell."""
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest
    from service.storage.optuna_adapter import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(1000 + index)
    space = SearchSpace.parse(None, None)
    study = optuna.load_study(
        study_name=STUDY,
        storage=database_url,
        sampler=optuna.samplers.TPESampler(),
        pruner=make_pruner("median", reports),
    )
    study.get_trials(deepcopy=False)  # connected
    latencies = []
    out.put("ready")
    go.wait()
    first = time.time()
    for _ in range(cycles):
        t0 = time.perf_counter()
        trial = study.ask()
        suggest(trial, space)
        latencies.append(1000 * (time.perf_counter() - t0))
        value = rng.random()
        pruned = False
        for epoch in range(1, reports + 1):
            trial.report(value, epoch)
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    out.put((latencies, first, time.time()))


def _next(out: Any, procs: list[Any], timeout_s: float = 1800) -> Any:
    """The next message of the simulated workers; raises as soon as one has died."""
    import queue

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=1)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a simulated worker exited {dead[0]}") from None
    raise TimeoutError(f"no word from the simulated workers in {timeout_s}s")


def _drive(target: Any, args: tuple[Any, ...], workers: int, window: int) -> dict[str, Any]:
    """Run ``window`` cycles split over ``workers`` processes; leases/s and latencies."""
    # Forked: the simulated workers start at once (this process holds no connection).
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    per = [window // workers + (1 if i < window % workers else 0) for i in range(workers)]
    go = ctx.Event()  # every process imported and connected before the clock starts
    procs = [ctx.Process(target=target, args=(*args, i, per[i], go, out)) for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        if _next(out, procs) != "ready":
            raise RuntimeError("a simulated worker answered before the start")
    go.set()
    results = [_next(out, procs) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a simulated worker exited {p.exitcode}")
    latencies = [ms for lat, _, _ in results for ms in lat]
    elapsed = max(end for _, _, end in results) - min(first for _, first, _ in results)
    return {
        "leases": len(latencies),
        "seconds": round(elapsed, 3),
        "leases_per_s": round(len(latencies) / elapsed, 2),
        "lease_ms": {k: round(v, 2) for k, v in percentiles(latencies).items()},
    }


def _fill_storage(database_url: str) -> Any:
    """An Optuna storage for filling the study: its commits need not wait for the disk
    (nothing is measured while it writes; the measured service and Optuna keep fsync)."""
    import optuna
    from sqlalchemy import event

    if database_url.startswith("postgresql"):
        return optuna.storages.RDBStorage(
            database_url,
            skip_table_creation=True,
            engine_kwargs={"connect_args": {"options": "-c synchronous_commit=off"}},
        )
    storage = optuna.storages.RDBStorage(database_url, skip_table_creation=True)

    @event.listens_for(storage.engine, "connect")
    def _fast(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    storage.engine.dispose()  # connections from now on get the pragma
    return storage


def _add(database_url: str, trials: list[Any]) -> None:
    """Add finished trials to the study, committing without waiting for the disk."""
    import optuna

    storage = _fill_storage(database_url)
    try:
        optuna.load_study(study_name=STUDY, storage=storage).add_trials(trials)
    finally:
        storage.engine.dispose()


def _fill(database_url: str, target: int, reports: int, seed: int) -> tuple[int, float]:
    """Add finished trials to the study until it holds ``target`` (each with ``reports``
    intermediate values, as a worker's would have); returns (trials now, seconds)."""
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    have = _count(database_url)
    if have >= target:
        return have, 0.0
    space = SearchSpace.parse(None, None)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    trials = []
    for _ in range(target - have):
        t = scratch.ask()
        suggest(t, space)  # the searched values become t.params; the fixed, a user attribute
        value = rng.random()
        trials.append(
            optuna.trial.create_trial(
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                value=value,
                intermediate_values={e: value for e in range(1, reports + 1)},
            )
        )
    # One process: two filling in parallel were slower on both databases (Optuna numbers
    # each new trial under a lock of the study).
    _add(database_url, trials)
    return target, time.perf_counter() - t0


def _count(database_url: str) -> int:
    import optuna

    storage = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(STUDY))
    finally:
        storage.engine.dispose()


def _backend(
    name: str, database_url: str, params: dict[str, Any], tmp: Path
) -> list[dict[str, Any]]:
    rows = []
    with running_api(tmp / name, database_url=database_url) as api:
        url, reports = api.database_url, params["reports"]
        create_study(
            api, name=STUDY, dataset="digits", n_trials=10_000, epochs=reports, sanity_check=False
        )
        for size in params["sizes"]:
            at, fill_s = _fill(url, size, reports, seed=size)
            service = _drive(
                _service_worker, (api.url, reports), params["workers"], params["window"]
            )
            service["trials_at_start"] = at
            at_optuna = _count(url)
            optuna_row = _drive(_optuna_worker, (url, reports), params["workers"], params["window"])
            optuna_row["trials_at_start"] = at_optuna
            rows.append(
                {
                    "backend": name,
                    "trials": size,
                    "workers": params["workers"],
                    "fill_s": round(fill_s, 1),
                    "service": service,
                    "optuna": optuna_row,
                }
            )
            print(
                f"  {name} {size} trials: service {service['leases_per_s']}/s "
                f"p50 {service['lease_ms']['p50']} ms; optuna "
                f"{optuna_row['leases_per_s']}/s p50 {optuna_row['lease_ms']['p50']} ms",
                flush=True,
            )
    return rows


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for backend in params["backends"]:
        if backend == "sqlite":
            rows += _backend("sqlite", f"sqlite:///{tmp / 'feeding.db'}", params, tmp)
        else:
            with running_postgres() as pg:
                rows += _backend("postgresql", pg.new_database(), params, tmp)
    return {"rows": rows}


if __name__ == "__main__":
    raise SystemExit(main("feeding", SIZES, run))

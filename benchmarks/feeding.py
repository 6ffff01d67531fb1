"""Feeding workers: lease and report latency under a real load, leases a second at
saturation, and the sampler's own limit, as the study grows.

A real ``hpo api`` (one process unless said) on SQLite and on PostgreSQL (fsync on), and
one study of the service's defaults (TPE, the median pruner) on ``digits``, ``reports``
epochs, ``n_trials`` of budget (the most a study may have; only the service's own leases
spend it, a few hundred per measurement). The study is grown by adding finished trials
through Optuna's own API (fast; each with ``reports`` intermediate values, as a worker's
would have; these commits do not wait for the disk, the measured runs keep the databases'
defaults), once per backend: to 100, on to 1,000, on to 5,000. Its size is its complete
and pruned trials (not the feeder's suggestions, RUNNING until leased). At each size every
measurement gets a copy of the study of its own (SQLite's backup API, PostgreSQL's ``CREATE
DATABASE ... TEMPLATE``) and an API started on it, so the service's cycles start at the
size; first one lease -> complete per API process warms it up (its cache of the study's
trials, its feeder's first suggestions). A lease answered 204 (no suggestion ready within
``lease_wait_s``) is asked again at once: its latency runs until a trial is handed out, and
``empty`` counts the 204s. Then the API is stopped (idle, its feeder would still refresh
its cache of the study every 0.1 s) and plain Optuna runs the same loop on the same
database: ``ask`` + suggest (the default space, ``TPESampler()``, the median pruner) is the
lease, ``report`` + ``should_prune`` the report, ``tell`` the complete. Every cycle adds a
trial, so Optuna starts on a bigger study than the service did: each row records the size
when the service's cycles start and when Optuna's start, and ``trials_at_end``.

The simulated workers are forked processes of threads (two cores would not run 32
processes beside the API): one ``httpx.Client`` per thread, or one ``optuna.load_study``
and sampler per thread, the threads of a process sharing one Optuna storage (as
``study.optimize(n_jobs=...)`` does, so a process reads the study once).

1. Load ("load"): ``load.processes`` x ``load.threads`` workers (4 x 8) whose trials take
   ``reports`` x ``epoch_s`` (2 s): lease, then ``reports`` times sleep ``epoch_s`` and
   report, then complete (a report the pruner stops ends the trial there). Each starts
   after a random fraction of a trial, so their calls spread as real workers' do; they
   start trials for ``window_s`` (15 s a size at full, to keep the whole benchmark near a
   quarter of an hour on two cores) and finish the one they are in. Every lease's and
   every report's latency, p50 / p95 / p99.
2. Saturation ("saturation"): workers that do not train, lease -> complete (no reports),
   until the run's N cycles are taken (a counter the processes share) or ``max_s`` has
   passed (``capped``; the leases under way still finish): 8 workers are 8 processes, 32
   are 8 processes x 4 threads. N is ``seconds`` times the sampler's limit at the size,
   within [``min_cycles``, ``max_cycles``]. Leases/s and lease p50 / p95; plain Optuna
   beside from the same processes (ask + suggest + tell), asks/s; their ratio, and the
   service's to the sampler's limit.
3. Sampler ("sampler"): the sampler's own limit, no database, no HTTP: the study's complete
   and pruned trials at the size copied into ``optuna.create_study(storage=InMemoryStorage())``
   with ``add_trials``, then ``draws`` times ask + suggest + tell (a random value) with
   ``TPESampler()`` in this process: suggestions/s, ms per suggestion.
4. Random sampler ("random"): a second study, ``"sampler": "random"``, grown to
   ``random.trials`` (the API that created it stays up meanwhile); saturation with
   ``random.workers``, the service only.
5. API processes ("processes"): on ``processes.backend`` at ``processes.trials`` (a size),
   ``hpo api --processes N`` on a copy of its own; saturation with the same workers and
   cycles as the one-process row of part 2, which stands beside it.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
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
from tests.support import WORKER_TOKEN, Api, Postgres

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "sizes": [10],
        "backends": ["sqlite", "postgresql"],
        "reports": 4,
        "epoch_s": 0.05,
        "n_trials": 10_000,
        "load": {"processes": 2, "threads": 2, "window_s": 1.0},
        "saturation": {
            "workers": [[2, 2]],
            "seconds": 1.0,
            "min_cycles": 8,
            "max_cycles": 8,
            "max_s": 3.0,
        },
        "sampler_draws": 5,
        "random": {"backends": ["sqlite"], "trials": 10, "workers": [2, 2], "cycles": 8},
        "processes": {"backend": "postgresql", "trials": 10, "workers": [2, 2], "api": 2},
    },
    "full": {
        "sizes": [100, 1000, 5000],
        "backends": ["sqlite", "postgresql"],
        "reports": 4,
        "epoch_s": 0.5,
        "n_trials": 10_000,
        "load": {"processes": 4, "threads": 8, "window_s": 15.0},
        "saturation": {
            "workers": [[8, 1], [8, 4]],
            "seconds": 4.0,
            "min_cycles": 64,
            "max_cycles": 400,
            "max_s": 6.0,
        },
        "sampler_draws": 30,
        "random": {
            "backends": ["sqlite"],
            "trials": 1000,
            "workers": [8, 4],
            "cycles": 800,
        },
        "processes": {"backend": "postgresql", "trials": 1000, "workers": [8, 4], "api": 4},
    },
}
"""``workers`` are [processes, threads each]."""

STUDY = "feeding"
RANDOM_STUDY = "feeding-random"
EMPTY_FOR_S = 120
"""A lease answered 204 for this long means the study has no budget left: a failure."""


# --- the simulated workers: one loop, a service side and an Optuna side ------------------


@dataclass
class _Run:
    """What every simulated worker of a run does: trials with reports for ``window_s``
    (load), or bare lease -> complete cycles until ``cycles`` are taken or ``max_s`` have
    passed (saturation)."""

    mode: str
    reports: int = 0
    epoch_s: float = 0.0
    window_s: float = 0.0
    cycles: int = 0
    max_s: float = 0.0


class _Service:
    """A worker of the service: the trial protocol over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url

    def prepare(self) -> None:
        return None

    def release(self, prepared: None) -> None:
        return None

    def open_process(self, prepared: None) -> None:
        return None

    def open_thread(self, shared: None, index: int) -> httpx.Client:
        c = httpx.Client(
            base_url=self.url, timeout=300, headers={"Authorization": f"Bearer {WORKER_TOKEN}"}
        )
        c.get("/healthz").raise_for_status()  # connected
        return c

    def close(self, c: httpx.Client) -> None:
        c.close()

    def lease(self, c: httpx.Client, worker: str) -> tuple[int, int]:
        """(trial id, 204 answers before it)."""
        return _lease(c, worker)

    def report(self, c: httpx.Client, worker: str, trial: int, epoch: int, value: float) -> bool:
        r = _post(
            c, f"/trials/{trial}/report", {"worker_id": worker, "epoch": epoch, "value": value}
        )
        if r.status_code == 409:  # no longer this worker's trial: drop it, as a worker does
            return False
        r.raise_for_status()
        action = r.json()["action"]
        if action not in ("continue", "prune"):
            raise RuntimeError(f"report of trial {trial} answered {action}")
        return bool(action == "continue")

    def complete(self, c: httpx.Client, worker: str, trial: int, value: float, epochs: int) -> None:
        r = _post(
            c,
            f"/trials/{trial}/complete",
            {"worker_id": worker, "value": value, "epochs_run": epochs},
        )
        if r.status_code != 409:  # (409: no longer this worker's trial, as above)
            r.raise_for_status()


def _post(c: httpx.Client, url: str, body: dict[str, Any]) -> httpx.Response:
    """POST as a worker does: a 503 (the database busy) is retried after a moment; the
    caller's latency includes the retries."""
    for _ in range(100):
        r = c.post(url, json=body)
        if r.status_code != 503:
            return r
        time.sleep(0.1)
    return r


def _lease(c: httpx.Client, worker: str) -> tuple[int, int]:
    """Lease until a trial is handed out; (trial id, 204 answers before it)."""
    empty, since = 0, time.monotonic()
    while True:
        r = _post(c, "/trials/lease", {"worker": {"id": worker}})
        if r.status_code == 200:
            body = r.json()
            if body["kind"] != "trial":
                raise RuntimeError(f"lease handed out a {body['kind']} job, not a trial")
            return int(body["trial_id"]), empty
        if r.status_code != 204:
            raise RuntimeError(f"lease answered {r.status_code}: {r.text}")
        empty += 1
        if time.monotonic() - since > EMPTY_FOR_S:
            raise RuntimeError(f"no trial to lease for {EMPTY_FOR_S}s: is the budget spent?")


class _Optuna:
    """A worker of plain Optuna on the service's study: ask + suggest, report +
    should_prune, tell."""

    def __init__(self, database_url: str, reports: int) -> None:
        self.database_url = database_url
        self.reports = reports

    def prepare(self) -> Any:
        """In this process, before the fork: Optuna's storage with the study read into its
        cache, which each forked process inherits (rather than each reading the study)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rdb = _optuna_rdb(self.database_url)
        storage = optuna.storages.get_storage(rdb)  # the cache of finished trials
        storage.get_all_trials(storage.get_study_id_from_name(STUDY), deepcopy=False)
        return rdb, storage

    def release(self, prepared: Any) -> None:
        prepared[0].engine.dispose()

    def open_process(self, prepared: Any) -> Any:
        rdb, storage = prepared
        rdb.engine.dispose(close=False)  # new connections of its own; the parent's stay
        storage.get_all_trials(storage.get_study_id_from_name(STUDY), deepcopy=False)
        return storage

    def open_thread(self, storage: Any, index: int) -> Any:
        import optuna

        from search_space import SearchSpace
        from service.storage.optuna_adapter import make_pruner

        study = optuna.load_study(
            study_name=STUDY,
            storage=storage,
            sampler=optuna.samplers.TPESampler(),
            pruner=make_pruner("median", self.reports),
        )
        return study, SearchSpace.parse(None, None)

    def close(self, state: Any) -> None:
        return None

    def lease(self, state: Any, worker: str) -> tuple[Any, int]:
        from search_space.optuna_space import suggest

        study, space = state
        trial = study.ask()
        suggest(trial, space)
        return trial, 0

    def report(self, state: Any, worker: str, trial: Any, epoch: int, value: float) -> bool:
        import optuna

        trial.report(value, epoch)
        if trial.should_prune():
            state[0].tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        return True

    def complete(self, state: Any, worker: str, trial: Any, value: float, epochs: int) -> None:
        state[0].tell(trial, value)


def _optuna_rdb(database_url: str) -> Any:
    import optuna

    # SQLite: wait for the write lock as long as the service does, not sqlite3's 5 s.
    kwargs = {"connect_args": {"timeout": 60}} if database_url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(database_url, skip_table_creation=True, engine_kwargs=kwargs)


def _claim(counter: Any, cycles: int) -> bool:
    """Take one of the run's cycles, if any is left."""
    with counter.get_lock():
        if counter.value >= cycles:
            return False
        counter.value += 1
        return True


def _work(
    side: Any, state: Any, index: int, run: _Run, go: Any, clock: Any, counter: Any
) -> dict[str, Any]:
    """One simulated worker's loop; its latencies (ms), counts and when it ended."""
    rng = random.Random(index)
    worker = f"sim-{index}"
    lease_ms: list[float] = []
    report_ms: list[float] = []
    complete_ms: list[float] = []
    pruned = empty = 0
    go.wait()
    start = clock.value
    if run.mode == "load":  # spread over a trial, as workers that did not start together
        time.sleep(rng.uniform(0, run.reports * run.epoch_s))

    def more() -> bool:
        if run.mode == "load":
            return time.monotonic() < start + run.window_s
        return time.monotonic() < start + run.max_s and _claim(counter, run.cycles)

    while more():
        t0 = time.perf_counter()
        trial, empties = side.lease(state, worker)
        lease_ms.append(1000 * (time.perf_counter() - t0))
        empty += empties
        value = rng.random()
        epochs, going = 0, True
        for epoch in range(1, run.reports + 1):
            time.sleep(run.epoch_s)
            t0 = time.perf_counter()
            going = side.report(state, worker, trial, epoch, value)
            report_ms.append(1000 * (time.perf_counter() - t0))
            epochs = epoch
            if not going:
                pruned += 1
                break
        if going:
            t0 = time.perf_counter()
            side.complete(state, worker, trial, value, epochs)
            complete_ms.append(1000 * (time.perf_counter() - t0))
    return {
        "lease": lease_ms,
        "report": report_ms,
        "complete": complete_ms,
        "pruned": pruned,
        "empty": empty,
        "end": time.monotonic(),
    }


def _process(
    side: Any,
    prepared: Any,
    run: _Run,
    indices: list[int],
    go: Any,
    clock: Any,
    counter: Any,
    out: Any,
) -> None:
    """A forked process of ``len(indices)`` simulated workers, one thread each."""
    try:
        shared = side.open_process(prepared)
        states = [side.open_thread(shared, i) for i in indices]
    except Exception:
        out.put(("error", traceback.format_exc()))
        return
    out.put(("ready", None))
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    def one(state: Any, index: int) -> None:
        try:
            results.append(_work(side, state, index, run, go, clock, counter))
        except Exception:
            errors.append(traceback.format_exc())

    threads = [
        threading.Thread(target=one, args=(s, i)) for s, i in zip(states, indices, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in states:
        side.close(s)
    out.put(("error", errors[0]) if errors else ("done", results))


def _next(out: Any, procs: list[Any], timeout_s: float = 1800) -> Any:
    """The next word of the simulated workers; raises on an error or a dead process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            kind, body = out.get(timeout=1)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a simulated worker exited {dead[0]}") from None
            continue
        if kind == "error":
            raise RuntimeError(f"a simulated worker failed:\n{body}")
        return kind, body
    raise TimeoutError(f"no word from the simulated workers in {timeout_s}s")


def _drive(side: Any, run: _Run, processes: int, threads: int) -> dict[str, Any]:
    """``processes`` forked processes of ``threads`` simulated workers each run ``run``;
    what they measured, summed up."""
    # Forked: the simulated workers start at once, with what was prepared here.
    prepared = side.prepare()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    go = ctx.Event()  # every worker imported and connected before the clock starts
    clock = ctx.Value("d", 0.0)
    counter = ctx.Value("i", 0)
    procs = []
    for n in range(processes):
        indices = [n * threads + i for i in range(threads)]
        args = (side, prepared, run, indices, go, clock, counter, out)
        procs.append(ctx.Process(target=_process, args=args))
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if _next(out, procs)[0] != "ready":
                raise RuntimeError("a simulated worker answered before the start")
        clock.value = time.monotonic()
        go.set()
        results = [r for _ in procs for r in _next(out, procs)[1]]
    except BaseException:
        for p in procs:  # (the others may wait for a start that will not come)
            p.kill()
        raise
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.exitcode is None:
                p.kill()
        side.release(prepared)
    leases = [ms for r in results for ms in r["lease"]]
    reports = [ms for r in results for ms in r["report"]]
    completes = [ms for r in results for ms in r["complete"]]
    seconds = max(r["end"] for r in results) - clock.value
    summary: dict[str, Any] = {
        "leases": len(leases),
        "reports": len(reports),
        "completes": len(completes),
        "pruned": sum(r["pruned"] for r in results),
        "empty": sum(r["empty"] for r in results),
        "seconds": round(seconds, 3),
        "leases_per_s": round(len(leases) / seconds, 2),
        "lease_ms": _ms(leases),
        "complete_ms": _ms(completes),
    }
    if reports:
        summary["report_ms"] = _ms(reports)
    if run.mode == "saturation":
        summary["capped"] = len(leases) < run.cycles  # ``max_s`` ran out first
    return summary


def _ratio(a: float, b: float) -> float:
    return float(f"{a / b:.4g}")


def _ms(values: list[float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in percentiles(values).items()}


# --- the study: growing it, copying it, the sampler's limit -----------------------------


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
    storage = optuna.storages.RDBStorage(
        database_url,
        skip_table_creation=True,
        engine_kwargs={"connect_args": {"timeout": 60}},  # (an API may be writing too)
    )

    @event.listens_for(storage.engine, "connect")
    def _fast(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    storage.engine.dispose()  # connections from now on get the pragma
    return storage


def _add(database_url: str, study: str, trials: list[Any]) -> None:
    """Add finished trials to the study, committing without waiting for the disk."""
    import optuna

    storage = _fill_storage(database_url)
    try:
        optuna.load_study(study_name=study, storage=storage).add_trials(trials)
    finally:
        storage.engine.dispose()


def _fill(database_url: str, study: str, target: int, reports: int, seed: int) -> tuple[int, float]:
    """Add finished trials to the study until it holds ``target`` (each with ``reports``
    intermediate values, as a worker's would have); returns (trials now, seconds)."""
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    have = _count(database_url, study)
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
    _add(database_url, study, trials)
    return target, time.perf_counter() - t0


def _count(database_url: str, study: str = STUDY) -> int:
    """The study's size: its complete and pruned trials, those the sampler learns from
    (not the feeder's suggestions, RUNNING until leased, nor the ones it discarded)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            found = c.execute(
                text(
                    "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                    "WHERE study_name = :name AND state IN ('COMPLETE', 'PRUNED')"
                ),
                {"name": study},
            ).scalar_one()
        return int(found)
    finally:
        engine.dispose()


def _sampler_limit(database_url: str, draws: int, seed: int) -> dict[str, Any]:
    """ask + suggest + tell ``draws`` times on an in-memory copy of the study's finished
    trials, with ``TPESampler()``: how fast the sampler alone can suggest. Beside it, the
    same draws with the service's own ``FastTPESampler`` (the same suggestions) on a
    second copy."""
    import optuna

    from service.storage.fast_tpe import FastTPESampler

    t0 = time.perf_counter()
    rdb = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
    try:
        source = optuna.load_study(study_name=STUDY, storage=rdb)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        trials = source.get_trials(deepcopy=False, states=states)
        direction = source.direction
    finally:
        rdb.engine.dispose()
    copy_s = time.perf_counter() - t0
    stock = _draws(trials, direction, optuna.samplers.TPESampler(), draws, seed)
    service = _draws(trials, direction, FastTPESampler(), draws, seed)
    seconds = sum(stock) / 1000
    return {
        "trials_in_copy": len(trials),
        "copy_s": round(copy_s, 2),
        "draws": draws,
        "seconds": round(seconds, 3),
        "per_s": round(draws / seconds, 2),
        "ms": _ms(stock),
        "service_per_s": round(draws / (sum(service) / 1000), 2),
        "service_ms": _ms(service),
    }


def _draws(trials: list[Any], direction: Any, sampler: Any, draws: int, seed: int) -> list[float]:
    """ms per ask + suggest + tell of ``sampler`` on an in-memory study of ``trials``."""
    import optuna

    from search_space import SearchSpace
    from search_space.optuna_space import suggest

    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), direction=direction, sampler=sampler
    )
    study.add_trials(trials)
    space = SearchSpace.parse(None, None)
    rng = random.Random(seed)
    times = []
    for _ in range(draws):
        t0 = time.perf_counter()
        trial = study.ask()
        suggest(trial, space)
        study.tell(trial, rng.random())
        times.append(1000 * (time.perf_counter() - t0))
    return times


class _Databases:
    """Empty databases and copies of one on one backend: SQLite files in ``tmp``, or
    databases of one PostgreSQL server."""

    def __init__(self, backend: str, tmp: Path, pg: Postgres | None) -> None:
        self.backend, self.tmp, self.pg = backend, tmp, pg

    def new(self, label: str) -> str:
        if self.pg is None:
            return f"sqlite:///{self.tmp / f'{label}.db'}"
        return self.pg.new_database()

    def copy(self, url: str, label: str) -> str:
        """A copy of the database at ``url`` (no one may be connected to it)."""
        if self.pg is None:
            target = self.tmp / f"{label}.db"
            src, dst = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(target)
            try:
                src.backup(dst)  # (reads through the WAL the API left)
            finally:
                src.close()
                dst.close()
            return f"sqlite:///{target}"
        import psycopg

        name = "copy_" + label.replace("-", "_")
        source = url.rsplit("/", 1)[1]
        deadline = time.monotonic() + 30
        with psycopg.connect(
            f"host=127.0.0.1 port={self.pg.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            while True:
                try:
                    conn.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
                    break
                except psycopg.errors.ObjectInUse:  # a stopped API's sessions, ending
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        return self.pg.url(name)


def _warm(api: Api, leases: int) -> None:
    """``leases`` lease -> complete cycles at once, before the clock starts: the API has
    read the study's trials and its feeder has sampled (one lease per API process: each
    process's feeder reads the study by itself)."""

    def one(index: int) -> None:
        with httpx.Client(
            base_url=api.url, timeout=300, headers={"Authorization": f"Bearer {WORKER_TOKEN}"}
        ) as c:
            worker = f"warm-{index}"
            trial, _ = _lease(c, worker)
            c.post(
                f"/trials/{trial}/complete", json={"worker_id": worker, "value": 0.5}
            ).raise_for_status()

    with ThreadPoolExecutor(leases) as pool:
        list(pool.map(one, range(leases)))


@contextmanager
def _api_on_copy(db: _Databases, source: str, label: str, processes: int = 1) -> Iterator[Api]:
    """An API on a fresh copy of ``source``, warmed up; stopped on exit."""
    url = db.copy(source, label)
    with running_api(db.tmp / label, database_url=url, processes=processes) as api:
        _warm(api, processes)
        yield api


def _side(
    db: _Databases,
    source: str,
    label: str,
    run: _Run,
    workers: list[int],
    *,
    optuna: bool = True,
    api_processes: int = 1,
) -> dict[str, Any]:
    """On a fresh copy of ``source``: the service, then (its API stopped) plain Optuna."""
    started = time.monotonic()
    processes, threads = workers
    row: dict[str, Any] = {
        "workers": processes * threads,
        "processes": processes,
        "threads": threads,
        "api_processes": api_processes,
    }
    if run.mode == "load":
        row["window_s"] = run.window_s
    else:
        row.update(cycles=run.cycles, max_s=run.max_s)
    with _api_on_copy(db, source, label, api_processes) as api:
        url = api.database_url
        at = _count(url)
        row["service"] = {"trials_at_start": at, **_drive(_Service(api.url), run, *workers)}
    if optuna:
        at = _count(url)
        row["optuna"] = {"trials_at_start": at, **_drive(_Optuna(url, run.reports), run, *workers)}
    row["trials_at_end"] = _count(url)
    row["part_s"] = round(time.monotonic() - started, 1)
    return row


# --- the five parts, on one backend ------------------------------------------------------


def _load(
    name: str, db: _Databases, base: str, size: int, params: dict[str, Any]
) -> dict[str, Any]:
    load = params["load"]
    run = _Run(
        "load", reports=params["reports"], epoch_s=params["epoch_s"], window_s=load["window_s"]
    )
    row = _side(db, base, f"load-{size}", run, [load["processes"], load["threads"]])
    sv, op = row["service"], row["optuna"]
    print(
        f"  {name} {size} load, {row['workers']} workers ({row['part_s']} s): service lease "
        f"p95 {sv['lease_ms']['p95']} ms, report p95 {sv['report_ms']['p95']} ms; Optuna "
        f"ask p95 {op['lease_ms']['p95']} ms, report p95 {op['report_ms']['p95']} ms",
        flush=True,
    )
    return {"backend": name, "trials": size, **row}


def _saturation(
    name: str,
    db: _Databases,
    base: str,
    size: int,
    workers: list[int],
    cycles: int,
    limit: float,
    params: dict[str, Any],
    *,
    api_processes: int = 1,
) -> dict[str, Any]:
    n = workers[0] * workers[1]
    run = _Run("saturation", cycles=cycles, max_s=params["saturation"]["max_s"])
    label = f"saturation-{size}-{n}" + ("" if api_processes == 1 else f"-api{api_processes}")
    row = _side(
        db, base, label, run, workers, optuna=api_processes == 1, api_processes=api_processes
    )
    sv = row["service"]
    row = {"backend": name, "trials": size, **row, "sampler_per_s": limit}
    row["service_over_sampler"] = _ratio(sv["leases_per_s"], limit)
    optuna = ""
    if "optuna" in row:
        row["service_over_optuna"] = _ratio(sv["leases_per_s"], row["optuna"]["leases_per_s"])
        optuna = f", Optuna {row['optuna']['leases_per_s']}/s"
    print(
        f"  {name} {size} saturation, {n} workers, {api_processes} API process(es) "
        f"({row['part_s']} s): service {sv['leases_per_s']}/s (p95 {sv['lease_ms']['p95']} "
        f"ms){optuna}; the sampler alone {limit}/s",
        flush=True,
    )
    return row


def _random(name: str, db: _Databases, params: dict[str, Any]) -> dict[str, Any]:
    """A random-sampler study grown to ``random.trials``: saturation, the service only
    (its API created the study and stays up while it grows)."""
    started = time.monotonic()
    rnd, reports = params["random"], params["reports"]
    url = db.new("random")
    with running_api(db.tmp / "random", database_url=url) as api:
        create_study(
            api,
            name=RANDOM_STUDY,
            dataset="digits",
            n_trials=params["n_trials"],
            epochs=reports,
            sampler="random",
            sanity_check=False,
        )
        _, fill_s = _fill(url, RANDOM_STUDY, rnd["trials"], reports, seed=rnd["trials"] + 1)
        _warm(api, 1)
        at = _count(url, RANDOM_STUDY)
        run = _Run("saturation", cycles=rnd["cycles"], max_s=params["saturation"]["max_s"])
        service = _drive(_Service(api.url), run, *rnd["workers"])
    processes, threads = rnd["workers"]
    row = {
        "backend": name,
        "trials": rnd["trials"],
        "workers": processes * threads,
        "processes": processes,
        "threads": threads,
        "cycles": run.cycles,
        "max_s": run.max_s,
        "fill_s": round(fill_s, 1),
        "service": {"trials_at_start": at, **service},
        "trials_at_end": _count(url, RANDOM_STUDY),
        "part_s": round(time.monotonic() - started, 1),
    }
    print(
        f"  {name} random sampler at {rnd['trials']} trials, {row['workers']} workers "
        f"({row['part_s']} s): {service['leases_per_s']}/s (p95 {service['lease_ms']['p95']} ms)",
        flush=True,
    )
    return row


def _backend(name: str, db: _Databases, params: dict[str, Any]) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {
        "sampler": [],
        "load": [],
        "saturation": [],
        "random": [],
        "processes": [],
    }
    sat, proc = params["saturation"], params["processes"]
    base = db.new("base")
    with running_api(db.tmp / "base", database_url=base) as api:
        create_study(
            api,
            name=STUDY,
            dataset="digits",
            n_trials=params["n_trials"],
            epochs=params["reports"],
            sanity_check=False,
        )
    for size in params["sizes"]:
        # The base grows on from the last size; each measurement gets a copy at this size.
        _, fill_s = _fill(base, STUDY, size, params["reports"], seed=size)
        limit = _sampler_limit(base, params["sampler_draws"], seed=size)
        rows["sampler"].append(
            {"backend": name, "trials": size, "fill_s": round(fill_s, 1), **limit}
        )
        print(
            f"  {name} {size} trials (grown in {fill_s:.1f} s): the sampler alone "
            f"{limit['per_s']}/s, p50 {limit['ms']['p50']} ms (the service's "
            f"{limit['service_per_s']}/s, p50 {limit['service_ms']['p50']} ms)",
            flush=True,
        )
        rows["load"].append(_load(name, db, base, size, params))
        cycles = round(sat["seconds"] * limit["per_s"])
        cycles = max(sat["min_cycles"], min(sat["max_cycles"], cycles))
        for workers in sat["workers"]:
            one = _saturation(name, db, base, size, workers, cycles, limit["per_s"], params)
            rows["saturation"].append(one)
            if name == proc["backend"] and size == proc["trials"] and workers == proc["workers"]:
                many = _saturation(
                    name,
                    db,
                    base,
                    size,
                    workers,
                    cycles,
                    limit["per_s"],
                    params,
                    api_processes=proc["api"],
                )
                rows["processes"] += [one, many]
    if name in params["random"]["backends"]:
        rows["random"].append(_random(name, db, params))
    return rows


def run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    proc = params["processes"]
    if proc["backend"] in params["backends"] and (
        proc["trials"] not in params["sizes"]
        or proc["workers"] not in params["saturation"]["workers"]
    ):
        raise ValueError("processes: its trials must be a size, its workers a saturation's")
    result: dict[str, list[Any]] = {}
    for backend in params["backends"]:
        (tmp / backend).mkdir()
        if backend == "sqlite":
            rows = _backend(backend, _Databases(backend, tmp / backend, None), params)
        else:
            with running_postgres() as pg:
                rows = _backend(backend, _Databases(backend, tmp / backend, pg), params)
        for part, found in rows.items():
            result.setdefault(part, []).extend(found)
    return result


if __name__ == "__main__":
    raise SystemExit(main("feeding", SIZES, run))

"""The soak's moving parts (``benchmarks.soak``): two ``hpo api`` processes on one
PostgreSQL database, real ``hpo worker`` processes and processes of simulated workers
(``benchmarks.soak_workers``), and the driver that injects faults into them.

The driver waits a random time (exponential, mean ``every_s``, from a seeded generator),
injects one fault, waits for it to be over (a process restarted, the database back), and
so on until told to stop. The kinds come in a random order, each once per round of
``FAULTS``, so a short run sees every kind and a long one the same number of each.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.soak_check import Ack, Status
from service.storage.migrate import migrate
from tests.support import REPO, Api, Postgres, child_env, free_port, hpo, start_worker

FAULTS = (
    "sigkill_worker",
    "sigterm_worker",
    "sigkill_sim_workers",
    "sigterm_sim_workers",
    "sigkill_api",
    "restart_postgres",
)
"""Real ``hpo worker`` killed or stopped; a process of simulated workers killed or
stopped; an API process killed; PostgreSQL stopped (fast or immediate) and started. Each
is followed by a restart of what it stopped."""

STOP_WAIT_S = 180
"""How long a SIGTERMed worker may take to exit before it is killed (and the run says so):
a real worker ends its trial once its trainer has loaded TensorFlow, over a minute on a
loaded machine."""
API_START_S = 300
"""How long an API process may take to answer once started (a loaded machine is slow)."""
RUNNING = {"worker": "pulling from", "sim process": '"ev": "start"'}
"""What a worker's log says once it runs, its SIGTERM handler installed: one stopped
before exits by the signal, holding nothing, and that is no fault of its."""


class Cluster:
    """The processes of one soak, each restartable under the same port or slot."""

    def __init__(self, tmp: Path, pg: Postgres, database_url: str, params: dict[str, Any]):
        self.tmp, self.pg, self.database_url, self.params = tmp, pg, database_url, params
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings = {
            "lease_seconds": str(params["lease_seconds"]),
            "reap_interval_s": "1",
            "artifact_dir": str(tmp / "artifacts"),
            "db_wait_s": "120",
        }
        self.ports = [free_port() for _ in range(2)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.apis: list[Api | None] = [None, None]
        self.real: list[subprocess.Popen[bytes] | None] = [None] * params["real_workers"]
        self.sims: list[subprocess.Popen[bytes] | None] = [None] * params["sim_processes"]
        self.real_logs: list[Path | None] = [None] * len(self.real)
        self.sim_logs_now: list[Path | None] = [None] * len(self.sims)
        self._starts: dict[str, int] = {}
        self.epoch_s = 1.0

    def _next(self, label: str) -> str:
        self._starts[label] = self._starts.get(label, -1) + 1
        return f"{label}-{self._starts[label]}"

    def start_api(self, i: int) -> Api:
        """``hpo api`` on port ``i`` (``tests.support.start_api``, but patient)."""
        folder = self.tmp / self._next(f"api{i}")
        folder.mkdir()
        log = folder / "api.log"
        command = hpo("api", "--host", "127.0.0.1", "--port", str(self.ports[i]))
        env = child_env(database_url=self.database_url, **self.settings)
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder
            )
        api = Api(self.urls[i], self.database_url, process, log)
        self.apis[i] = api
        deadline = time.monotonic() + API_START_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200:
                    return api
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"api {i} did not come up (exit {process.poll()}): {log}")

    def start_real(self, i: int) -> None:
        log = self.logs / f"{self._next(f'worker{i}')}.log"
        url = self.urls[i % 2]
        self.real[i] = start_worker(url, log, retry_max_s="600", request_timeout_s="30")
        self.real_logs[i] = log

    def start_sim(self, i: int) -> None:
        p = self.params
        name = self._next(f"sim{i}")
        log = self.sim_logs_now[i] = self.logs / f"{name}.jsonl"
        threads = p["workers"] // p["sim_processes"] + (i < p["workers"] % p["sim_processes"])
        command = [
            sys.executable,
            "-m",
            "benchmarks.soak_workers",
            "--urls",
            ",".join(self.urls if i % 2 == 0 else self.urls[::-1]),
            "--threads",
            str(threads),
            "--name",
            name,
            "--log",
            str(log),
            "--seed",
            str(p["seed"]),
            "--epoch-s",
            f"{self.epoch_s:.3f}",
            "--poll-s",
            "1.0",
            "--retry-max-s",
            str(p["retry_max_s"]),
        ]
        with (self.logs / f"{name}.out").open("wb") as out:
            self.sims[i] = subprocess.Popen(
                command, cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        migrate(self.database_url)
        starting = [threading.Thread(target=self.start_api, args=(i,)) for i in range(2)]
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        if not all(api is not None and api.process.poll() is None for api in self.apis):
            raise RuntimeError("an API process did not start")
        for i in range(len(self.sims)):
            self.start_sim(i)
        for i in range(len(self.real)):
            self.start_real(i)

    def stop_workers(self) -> list[int | None]:
        """SIGTERM every worker, then wait for each; their exit codes."""
        procs = [p for p in [*self.real, *self.sims] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return [_wait(p) for p in procs]

    def stop_apis(self) -> None:
        for api in self.apis:
            if api is not None and api.process.poll() is None:
                api.process.terminate()
                _wait(api.process)

    def sim_logs(self) -> list[Path]:
        return sorted(self.logs.glob("sim*.jsonl"))

    def api_logs(self) -> list[Path]:
        return sorted(self.tmp.glob("api*-*/api.log"))

    def worker_logs(self) -> list[Path]:
        return sorted(self.logs.glob("worker*.log"))


def _wait(p: subprocess.Popen[bytes]) -> int | None:
    """Its exit code once it exits, or None if it had to be killed after STOP_WAIT_S."""
    try:
        return p.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


class FaultDriver(threading.Thread):
    """Injects faults into ``cluster`` at random intervals until ``stop`` is set or the
    monotonic time ``until``; ``finish`` then waits for the SIGTERMed to exit."""

    def __init__(self, cluster: Cluster, params: dict[str, Any], until: float) -> None:
        super().__init__(name="faults", daemon=True)
        self.cluster, self.until = cluster, until
        self.rng = random.Random(params["seed"])
        self.every_s = float(params["fault_every_s"])
        self.outage_s = params["outage_s"]
        self.stop = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.outages: list[tuple[float, float]] = []
        """The database's outages, as wall-clock (start, end)."""
        self.stopped: list[dict[str, Any]] = []
        """Each SIGTERMed worker: its exit code and how long it took."""
        self._busy: set[tuple[str, int]] = set()
        self._waiters: list[threading.Thread] = []
        self.started = time.monotonic()

    def run(self) -> None:
        bag: list[str] = []
        while not self.stop.wait(self.rng.expovariate(1 / self.every_s)):
            if time.monotonic() > self.until:
                break
            if not bag:
                bag = list(FAULTS)
                self.rng.shuffle(bag)
            kind = bag.pop()
            at = time.monotonic()
            try:
                target = getattr(self, kind)()
            except Exception as exc:  # a restart that failed: the run reports it
                self.errors.append(f"{kind} at {at - self.started:.0f}s: {exc!r}"[:4000])
                target = "error"
            if target is None:  # every target is still stopping: another kind first
                bag.insert(0, kind)
                continue
            self.events.append(
                {
                    "kind": kind,
                    "at_s": round(at - self.started, 1),
                    "took_s": round(time.monotonic() - at, 1),
                    "target": target,
                }
            )

    def finish(self) -> None:
        """Stop injecting, and wait for what is under way (the SIGTERMed, restarted)."""
        self.stop.set()
        self.join()
        for waiter in self._waiters:
            waiter.join()

    def counts(self) -> dict[str, int]:
        return {kind: sum(e["kind"] == kind for e in self.events) for kind in FAULTS}

    def _signal(
        self, procs: list[Any], logs: list[Path | None], sig: int, restart: Any, label: str
    ) -> str | None:
        free = [i for i in range(len(procs)) if (label, i) not in self._busy]
        if not free:
            return None
        i = self.rng.choice(free)
        p = procs[i]
        if p is None or p.poll() is not None:
            restart(i)
            return f"{label} {i} (had exited)"
        p.send_signal(sig)
        if sig == signal.SIGKILL:
            p.wait()
            restart(i)
            return f"{label} {i}"
        # A SIGTERMed worker ends what it holds first: wait for it aside, then restart it.
        self._busy.add((label, i))
        waiter = threading.Thread(target=self._restart_after, args=(p, logs[i], restart, label, i))
        self._waiters.append(waiter)
        waiter.start()
        return f"{label} {i}"

    def _restart_after(
        self, p: subprocess.Popen[bytes], log: Path | None, restart: Any, label: str, i: int
    ) -> None:
        began = time.monotonic()
        code = _wait(p)
        took = round(time.monotonic() - began, 1)
        running = log is not None and RUNNING[label] in log.read_text(errors="replace")
        self.stopped.append({"target": f"{label} {i}", "exit": code, "s": took, "ran": running})
        if code != 0 and running:
            self.errors.append(f"{label} {i} exited {code} {took}s after SIGTERM, not 0 ({log})")
        try:
            restart(i)
        except Exception as exc:
            self.errors.append(f"restarting {label} {i}: {exc!r}"[:4000])
        finally:
            self._busy.discard((label, i))

    def sigkill_worker(self) -> str | None:
        c = self.cluster
        return self._signal(c.real, c.real_logs, signal.SIGKILL, c.start_real, "worker")

    def sigterm_worker(self) -> str | None:
        c = self.cluster
        return self._signal(c.real, c.real_logs, signal.SIGTERM, c.start_real, "worker")

    def sigkill_sim_workers(self) -> str | None:
        c = self.cluster
        return self._signal(c.sims, c.sim_logs_now, signal.SIGKILL, c.start_sim, "sim process")

    def sigterm_sim_workers(self) -> str | None:
        c = self.cluster
        return self._signal(c.sims, c.sim_logs_now, signal.SIGTERM, c.start_sim, "sim process")

    def sigkill_api(self) -> str:
        i = self.rng.randrange(2)
        api = self.cluster.apis[i]
        if api is not None:
            api.process.send_signal(signal.SIGKILL)
            api.process.wait()
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.cluster.start_api(i)  # on the same port; waits until it answers
        return f"api {i}"

    def restart_postgres(self) -> str:
        mode = self.rng.choice(["fast", "immediate"])
        began = time.time()
        self.cluster.pg.stop(mode)
        try:
            time.sleep(self.rng.uniform(*self.outage_s))
        finally:
            self.cluster.pg.start()
            self.outages.append((began, time.time()))
        return f"postgresql ({mode})"


_ACCESS = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')
_NEXT_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d |INFO:|WARNING:|ERROR:|\[[WIE] )")
_DATABASE_AWAY = ("OperationalError", "InterfaceError", "PoolTimeout")


def api_answers(logs: list[Path]) -> dict[str, Any]:
    """What the API processes' logs say: every answer's status (uvicorn's access log, so
    the real workers' and the driver's calls too), the 5xx but 503 with their paths, and
    the log records with a traceback (chained ones included): those of the database being
    away (a lost connection), and the others (the first few of them whole)."""
    statuses: dict[str, int] = {}
    errors: list[tuple[str, int]] = []
    away, other, samples = 0, 0, list[str]()
    for path in logs:
        lines = path.read_text(errors="replace").splitlines()
        starts = [n for n, line in enumerate(lines) if _NEXT_RECORD.match(line)]
        for n, end in zip(starts, [*starts[1:], len(lines)], strict=True):
            found = _ACCESS.search(lines[n])
            if found:
                status = int(found.group(2))
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status >= 500 and status != 503:
                    errors.append((found.group(1), status))
            record = "\n".join(lines[n:end])
            if "Traceback (most recent call last)" not in record:
                continue
            if any(name in record for name in _DATABASE_AWAY):
                away += 1
            else:
                other += 1
                if len(samples) < 5:
                    samples.append(f"{path}:\n{record[-6000:]}")
    return {
        "statuses": statuses,
        "errors": errors,
        "tracebacks_database_away": away,
        "tracebacks_other": other,
        "samples": samples,
    }


def load_log(paths: list[Path]) -> tuple[list[Ack], list[Status], list[str]]:
    """The acknowledged completes, every answer, and the simulation's own errors, from
    the logs at ``paths`` (a line cut short by a SIGKILL is skipped)."""
    acks: list[Ack] = []
    statuses: list[Status] = []
    errors: list[str] = []
    for path in paths:
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event["ev"] == "ack":
                acks.append(Ack(event["trial_id"], event["study"], event["params"], event["value"]))
            elif event["ev"] == "status":
                statuses.append(
                    Status(
                        event["call"],
                        event["status"],
                        event["trial_id"],
                        event["detail"],
                        event["t"],
                    )
                )
            elif event["ev"] == "error":
                errors.append(event["detail"])
    return acks, statuses, errors

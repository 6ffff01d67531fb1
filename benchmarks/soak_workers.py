"""The soak's simulated workers: one process of ``--threads`` workers that follow the real
protocol over HTTP without TensorFlow, so the soak's fault driver can SIGKILL or SIGTERM
them like real ones.

    python -m benchmarks.soak_workers --urls URL[,URL] --threads 6 --name p0g0 --log FILE

Each worker leases; passes a sanity run at once; fails a final model (it cannot train one);
and runs a trial as epochs of ``--epoch-s`` (±30%) with a report after each, the value a
function of the parameters, then completes it, or now and then (``--fail-p``,
``--release-p``, ``--abandon-p``) fails it, releases it, or drops it silently (its lease
is then lost) after a random epoch. ``prune`` ends the trial; ``stop`` releases it; 409 (no
longer its trial) drops it. A 503 or a failed connection is retried with backoff for up to
``--retry-max-s``, a failed connection on the next URL (the other API process). SIGTERM:
each worker releases the trial it holds and the process exits 0.

The log (JSON lines, each written whole as it happens, so a SIGKILL loses at most the line
being written): ``{"ev": "status", ...}`` for every answer (status 0: no answer), and
``{"ev": "ack", ...}`` for every ``complete`` answered 2xx, with the trial, its study, its
parameters and the value sent; ``{"ev": "start"}`` once the workers run. (``load_log`` of
``benchmarks.soak_faults`` reads them back for ``benchmarks.soak_check``.)
"""

from __future__ import annotations

import signal
import threading

STOP = threading.Event()
if __name__ == "__main__":  # first of all: a SIGTERM even now ends the process with 0
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402


class Log:
    """JSON lines, one ``write`` each, shared by the threads of the process."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, "t": round(time.time(), 3), **fields}) + "\n"
        with self._lock:
            self._file.write(line)

    def close(self) -> None:
        self._file.close()


def quality(params: dict[str, Any]) -> float:
    """A configuration's simulated validation accuracy at convergence, in [0.5, 0.95)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).digest()
    return 0.5 + 0.45 * int.from_bytes(digest[:4], "big") / 2**32


class SimWorker:
    """One simulated worker (a thread of its own)."""

    def __init__(self, args: argparse.Namespace, index: int, log: Log, stop: threading.Event):
        self.args, self.log, self.stop = args, log, stop
        self.id = f"sim-{args.name}-{index}"
        self.urls = args.urls.split(",")
        self.home = index % len(self.urls)
        self.rng = random.Random(f"{args.seed}-{args.name}-{index}")
        self.clients = [
            httpx.Client(
                base_url=url,
                timeout=30,
                headers={"Authorization": f"Bearer {os.environ['HPO_WORKER_TOKEN']}"},
            )
            for url in self.urls
        ]

    def call(
        self, name: str, path: str, body: dict[str, Any], trial_id: int | None = None
    ) -> httpx.Response | None:
        """POST, logging every answer; 503s and failed connections are retried (the
        latter on the next URL). None: no answer within ``retry_max_s`` (or, for a lease,
        once stopping)."""
        deadline = time.monotonic() + self.args.retry_max_s
        url, delay = self.home, 0.2
        while True:
            try:
                r = self.clients[url].post(path, json=body)
            except httpx.TransportError as exc:
                self.log(
                    "status", call=name, status=0, trial_id=trial_id, detail=type(exc).__name__
                )
                url = (url + 1) % len(self.clients)
            else:
                detail = r.text[:2000] if r.status_code >= 500 else ""
                self.log(
                    "status", call=name, status=r.status_code, trial_id=trial_id, detail=detail
                )
                if r.status_code != 503:
                    return r
            if time.monotonic() + delay > deadline or (name == "lease" and self.stop.is_set()):
                return None
            time.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(delay * 2, 3.0)

    def run(self) -> None:
        worker = {"id": self.id, "host": "soak-sim", "pid": os.getpid()}
        while not self.stop.is_set():
            try:
                r = self.call("lease", "/trials/lease", {"worker": worker})
                if r is None or r.status_code != 200:
                    self.stop.wait(self.args.poll_s * self.rng.uniform(0.5, 1.5))
                    continue
                self.job(r.json())
            except Exception as exc:  # a bug of the simulation: say so, carry on
                self.log("error", worker=self.id, detail=f"{type(exc).__name__}: {exc}")
                self.stop.wait(1.0)
        for c in self.clients:
            c.close()

    def job(self, job: dict[str, Any]) -> None:
        me = {"worker_id": self.id}
        if job["kind"] == "sanity":
            body = {**me, "passed": True, "detail": "a simulated worker passes it"}
            self.call("sanity", f"/jobs/{job['job_id']}/sanity", body)
        elif job["kind"] == "final":
            body = {**me, "reason": "a simulated worker trains no final model"}
            self.call("job_fail", f"/jobs/{job['job_id']}/fail", body)
        else:
            self.trial(job)

    def trial(self, job: dict[str, Any]) -> None:
        trial_id, epochs, params = job["trial_id"], job["epochs"], job["params"]
        a, fate = self.args, self.rng.random()
        ending = (
            "abandon"
            if fate < a.abandon_p
            else "fail"
            if fate < a.abandon_p + a.fail_p
            else "release"
            if fate < a.abandon_p + a.fail_p + a.release_p
            else "complete"
        )
        last = epochs if ending == "complete" else self.rng.randint(1, epochs)
        me, top, value = {"worker_id": self.id}, quality(params), 0.0
        release = f"/trials/{trial_id}/release"
        for epoch in range(1, last + 1):
            if self.stop.wait(a.epoch_s * self.rng.uniform(0.7, 1.3)):
                self.call("release", release, {**me, "reason": "SIGTERM"}, trial_id)
                return
            value = round(top * (1 - 0.5**epoch), 6)
            body = {**me, "epoch": epoch, "value": value}
            r = self.call("report", f"/trials/{trial_id}/report", body, trial_id)
            if r is None or r.status_code != 200:
                return  # lost meanwhile (409), or no answer: the lease will expire
            action = r.json()["action"]
            if action == "prune":
                return
            if action == "stop":
                self.call("release", release, {**me, "reason": "the study stopped"}, trial_id)
                return
        if ending == "abandon":
            return
        if ending == "fail":
            body = {**me, "reason": "a simulated failure", "epochs_run": last}
            self.call("fail", f"/trials/{trial_id}/fail", body, trial_id)
            return
        if ending == "release":
            self.call("release", release, {**me, "reason": "a simulated release"}, trial_id)
            return
        body = {**me, "value": value, "epochs_run": epochs}
        r = self.call("complete", f"/trials/{trial_id}/complete", body, trial_id)
        if r is not None and r.is_success:
            answer = r.json()
            self.log(
                "ack",
                trial_id=trial_id,
                study=job["study_name"],
                params=params,
                value=value,
                answer=answer,
                worker=self.id,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak_workers")
    parser.add_argument("--urls", required=True, help="API URLs, comma-separated")
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--name", required=True, help="this process's part of worker ids")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--fail-p", type=float, default=0.03)
    parser.add_argument("--release-p", type=float, default=0.03)
    parser.add_argument("--abandon-p", type=float, default=0.02)
    parser.add_argument("--retry-max-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    log = Log(args.log)
    workers = [SimWorker(args, i, log, STOP) for i in range(args.threads)]
    log("start", pid=os.getpid(), workers=[w.id for w in workers])
    threads = [threading.Thread(target=w.run, name=w.id) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Retrain the configurations a quality run's parts name more times, without searching again.

python -m benchmarks.quality_rescore PART.json [PART.json ...] [--retrains N] [--jobs J]

A search of ``benchmarks.quality`` is deterministic for its seed (TensorFlow on one thread,
every sampler and tuner seeded), so the configuration a part's run names is the one the
search would name again: raising ``retrains`` needs only the retrainings. Each run that
has fewer than N has its first retraining done again, which must give the score the part
holds to the last digit (else the part was not made by this code with these libraries,
and it is left as it was, exit 2: so are the parts a retraining fails in); then the
missing retrainings are added
(``benchmarks.quality_summary.retrain_seeds``), the run's ``test`` becomes their mean and
the part's summary is computed again. Parts are done one after another; each keeps its
date, duration and machine, and ``rescored`` says when, how long it took and to how many
retrainings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.quality_summary import retrain_seeds, retrainings, summarise

_loaded: dict[str, Any] = {}
RECYCLE = 40
"""Retrainings a pool process does before fresh ones take over: a process that has built
hundreds of models holds gigabytes and retrains more than twice as slowly (3.8 GiB and
about 5 s a `wine` retraining after 700, against 2.2 s for `breast_cancer` in a fresh one
beside it); a fresh one costs one TensorFlow import, about 6 s. A new pool for each batch,
not ``max_tasks_per_child``: with it Python 3.11's pool hung once its first processes
had exited."""


def _start() -> None:
    from benchmarks.common import pin_tensorflow, quiet_tensorflow

    quiet_tensorflow()
    pin_tensorflow(1)


def _retrain(dataset: dict[str, Any], params: dict[str, Any], epochs: int, seed: int) -> float:
    """One retraining's test score, in a process of the pool (each data set loaded once)."""
    from benchmarks import quality_data
    from benchmarks.quality_methods import tested

    key = json.dumps(dataset, sort_keys=True)
    if key not in _loaded:
        _loaded[key] = quality_data.load(quality_data.Dataset(**dataset))
    data = _loaded[key]
    objective = quality_data.Objective.of(data.info.task)
    return tested(params, epochs, [seed], data, objective)[0]


def _dataset(doc: dict[str, Any], name: str) -> dict[str, Any]:
    d = next(d for d in doc["result"]["datasets"] if d["name"] == name)
    return {k: d.get(k) for k in ("name", "path", "label", "task")}


def _needed(doc: dict[str, Any], retrains: int) -> list[tuple[int, int, int]]:
    """(run index, retraining index, seed) of every retraining ``doc`` lacks, with the
    first of each such run again (to check it)."""
    wanted = []
    for i, run in enumerate(doc["result"]["runs"]):
        have = len(retrainings(run))
        if have > retrains:
            raise ValueError(
                f"{run['method']} on {run['dataset']} seed {run['seed']} already has {have} "
                f"retrainings: asking for {retrains} would throw measurements away"
            )
        if have < retrains:
            seeds = retrain_seeds(run["seed"], retrains)
            wanted += [(i, k, seeds[k]) for k in [0, *range(have, retrains)]]
    return wanted


def _scores(jobs: list[tuple[Any, ...]], processes: int) -> list[float]:
    """Each job's retraining, ``processes`` at once, in fresh pools of ``RECYCLE`` jobs
    a process."""
    context = multiprocessing.get_context("spawn")
    batch = RECYCLE * processes
    scores: list[float] = []
    for at in range(0, len(jobs), batch):
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_start) as pool:
            futures = [pool.submit(_retrain, *job) for job in jobs[at : at + batch]]
            try:
                scores += [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return scores


def _part(path: Path, retrains: int, processes: int) -> str | None:
    """Bring one part to ``retrains`` retrainings and write it; or say why it is left as
    it was."""
    started = time.perf_counter()
    doc = json.loads(path.read_text())
    plan = _needed(doc, retrains)
    if not plan:
        print(f"[quality_rescore] {path}: already retrained {retrains} times", flush=True)
        return None
    runs = doc["result"]["runs"]
    jobs = [
        (_dataset(doc, runs[i]["dataset"]), runs[i]["best_params"], doc["params"]["epochs"], seed)
        for i, _, seed in plan
    ]
    print(f"[quality_rescore] {path}: {len(plan)} retrainings", flush=True)
    try:
        scores = _scores(jobs, processes)
    except Exception as exc:  # a retraining that fails (a non-finite loss): this part stays
        return f"{path}: a retraining failed: {exc!r}"
    added: dict[int, list[float]] = {}
    for (i, k, _), score in zip(plan, scores, strict=True):
        run = runs[i]
        first = retrainings(run)[0]
        if k == 0 and score != first:
            return (
                f"{path}: {run['method']} on {run['dataset']} seed {run['seed']} retrains to "
                f"{score!r}, not the {first!r} the part holds"
            )
        if k > 0:
            added.setdefault(i, []).append(score)
    for i, more in added.items():
        tests = [*retrainings(runs[i]), *more]
        runs[i] |= {"test": statistics.fmean(tests), "tests": tests}
    doc["params"]["retrains"] = retrains
    doc["result"]["summary"] = summarise(runs, doc["params"])
    doc["rescored"] = {  # the latest rescore (an earlier one's is in the git history)
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "retrains": retrains,
    }
    scratch = path.with_suffix(".json.new")
    scratch.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")
    scratch.replace(path)
    print(f"[quality_rescore] {path}: written", flush=True)
    return None


def rescore(paths: list[Path], retrains: int, jobs: int) -> list[str]:
    """Bring every part to ``retrains`` retrainings, one part after another (each part's
    ``duration_s`` is its own); the problems of the parts left as they were."""
    problems = []
    for path in paths:
        try:
            problem = _part(path, retrains, jobs)
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            problem = f"{path}: {exc!r}"
        if problem is not None:
            problems.append(problem)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality_rescore",
        description=__doc__.strip().splitlines()[0],
    )
    parser.add_argument("parts", nargs="+", type=Path, help="quality.json files of parts")
    parser.add_argument("--retrains", type=int, default=5, help="retrainings a run (5)")
    parser.add_argument("--jobs", type=int, default=2, help="retrainings at once (2)")
    args = parser.parse_args(argv)
    if args.retrains < 1 or args.jobs < 1:
        parser.error("--retrains and --jobs are at least 1")
    problems = rescore(args.parts, args.retrains, args.jobs)
    for problem in problems:
        print(f"benchmarks.quality_rescore: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

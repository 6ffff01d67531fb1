"""Join runs of ``benchmarks.quality`` made apart into one ``quality.json``.

python -m benchmarks.quality_merge PART.json [PART.json ...] [--out DIR]

The full run (four data sets, budgets 100 and 400, five seeds, nine methods) takes about
five hours on two cores, longer than a working session, so ``make bench-quality`` runs it
in parts, each some data sets at one budget, and joins them here. Within a part every
method runs side by side on the same machine and day, so each table of RESULTS.md
compares methods measured in one run. The parts must agree on the seeds, methods, trial
epochs, lanes and retrainings (``benchmarks.quality_rescore`` brings an older part to
more), and no data set and budget may be in two of them; the joined document
keeps each part's data sets, budgets, date, duration and machine under ``parts``, and
its summary is computed again from the joined runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR
from benchmarks.quality import FULL_DATASETS, summarise
from benchmarks.quality_summary import RETRAINS_BEFORE

SAME = ("seeds", "methods", "epochs", "lanes", "retrains")


def _order(name: str) -> tuple[int, str]:
    """The full run's data sets in its order, others after them by name."""
    return (FULL_DATASETS.index(name), "") if name in FULL_DATASETS else (len(FULL_DATASETS), name)


def _parts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A document's parts: those of an earlier join, or the document itself."""
    if "parts" in doc:
        return list(doc["parts"])
    part = {
        "datasets": [d["name"] for d in doc["result"]["datasets"]],
        "budgets": sorted(doc["params"]["budgets"]),
        "date": doc["date"],
        "duration_s": doc["duration_s"],
        "machine": doc["machine"],
    }
    return [part | ({"rescored": doc["rescored"]} if "rescored" in doc else {})]


def _param(doc: dict[str, Any], key: str) -> Any:
    return doc["params"].get(key, RETRAINS_BEFORE) if key == "retrains" else doc["params"][key]


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``quality.json`` document from ``docs``; ``ValueError`` says why they do not
    fit together."""
    if not docs:
        raise ValueError("nothing to join: give at least one quality.json")
    for doc in docs:
        if doc.get("benchmark") != "quality" or "datasets" not in doc.get("result", {}):
            raise ValueError(
                f"not a run of benchmarks.quality with data sets: the {doc.get('benchmark')!r} "
                f"run of {doc.get('date')}"
            )
    first = docs[0]
    problems = []
    for doc in docs:
        for key in SAME:
            mine, theirs = _param(doc, key), _param(first, key)
            if mine != theirs:
                hint = " (benchmarks.quality_rescore retrains a part more)" * (key == "retrains")
                problems.append(f"{key} differ: {mine!r} against {theirs!r}{hint}")
        if doc["size"] != first["size"]:
            problems.append(f"sizes differ: {doc['size']!r} against {first['size']!r}")
    pairs = [
        (d["name"], b)
        for doc in docs
        for d in doc["result"]["datasets"]
        for b in doc["params"]["budgets"]
    ]
    if twice := sorted({pair for pair in pairs if pairs.count(pair) > 1}):
        problems.append(
            "in more than one part: "
            + ", ".join(f"{name} at budget {budget}" for name, budget in twice)
            + " (run each data set and budget once)"
        )
    if problems:
        raise ValueError("; ".join(dict.fromkeys(problems)))
    docs = sorted(docs, key=lambda doc: _order(doc["result"]["datasets"][0]["name"]))
    datasets: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for d in doc["result"]["datasets"]:
            datasets.setdefault(d["name"], d)
    params = {
        **first["params"],
        "retrains": _param(first, "retrains"),
        "datasets": list(datasets),
        "budgets": sorted({b for _, b in pairs}),
    }
    runs = [r for doc in docs for r in doc["result"]["runs"]]
    parts = sorted(
        (p for doc in docs for p in _parts(doc)),
        key=lambda p: (p["budgets"], [_order(name) for name in p["datasets"]]),
    )
    return {
        "benchmark": "quality",
        "size": first["size"],
        "params": params,
        "date": max(doc["date"] for doc in docs),
        "duration_s": round(sum(p["duration_s"] for p in parts), 1),
        "machine": first["machine"],
        "parts": parts,
        "result": {
            "datasets": list(datasets.values()),
            "runs": runs,
            "failed": [f for doc in docs for f in doc["result"]["failed"]],
            "summary": summarise(runs, params),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality_merge", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("parts", nargs="+", type=Path, help="quality.json files, one a part")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"where quality.json goes ({RESULTS_DIR})"
    )
    args = parser.parse_args(argv)
    try:
        doc = merge([json.loads(path.read_text()) for path in args.parts])
    except (OSError, ValueError, KeyError) as exc:
        print(f"benchmarks.quality_merge: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "quality.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")
    print(
        f"[quality_merge] {', '.join(doc['params']['datasets'])} at budgets "
        f"{doc['params']['budgets']} from {len(args.parts)} part(s): {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``benchmarks.quality_merge``: runs of the quality benchmark made apart, one budget each,
join into one document whose summary and RESULTS.md section cover both budgets, and parts
that were not measured alike are refused (no training here: the runs are written out)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import quality, quality_merge
from benchmarks.quality_report import section
from tests.support import REPO, child_env

METHODS = ["service", "optuna random"]


def _part(
    budget: int, date: str, tests: dict[str, list[float]], dataset: str = "wine", **params: Any
) -> dict[str, Any]:
    runs = [
        {
            "method": method,
            "dataset": dataset,
            "budget": budget,
            "seed": seed,
            "metric": "val_accuracy",
            "direction": "maximize",
            "best_val": test,
            "test": test,
            "epochs_used": budget,
            "trials": budget // 2,
            "pruned": None,
            "wall_s": 1.0,
        }
        for method, values in tests.items()
        for seed, test in enumerate(values)
    ]
    p = {"datasets": [dataset], "budgets": [budget], "epochs": 2, "seeds": [0, 1, 2]}
    p |= {"lanes": 3, "methods": METHODS, "summary": True, **params}
    described = {"name": dataset, "task": "classification", "metric": "val_accuracy"}
    return {
        "benchmark": "quality",
        "size": "full",
        "params": p,
        "date": date,
        "duration_s": 600.0 * budget,
        "machine": {"cores": 2, "cpu": "test"},
        "result": {
            "datasets": [{**described, "direction": "maximize"}],
            "runs": runs,
            "failed": [],
            "summary": quality.summarise(runs, p),
        },
    }


def test_parts_join_into_one_run_per_budget(tmp_path: Path) -> None:
    short = _part(
        6, "2026-12-03T11:00:00+00:00", {"service": [0.9, 0.9, 0.8], METHODS[1]: [0.8] * 3}
    )
    long = _part(12, "2026-12-04T15:00:00+00:00", {"service": [0.7] * 3, METHODS[1]: [0.9] * 3})
    for i, doc in enumerate((long, short)):  # the order of the files does not matter
        (tmp_path / f"part{i}.json").write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality_merge", "--out", str(tmp_path / "out")]
        + [str(tmp_path / f"part{i}.json") for i in range(2)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert doc["params"]["budgets"] == [6, 12] and doc["date"] == long["date"]
    assert [p["budgets"] for p in doc["parts"]] == [[6], [12]]
    assert doc["duration_s"] == short["duration_s"] + long["duration_s"]
    assert len(doc["result"]["runs"]) == 12
    rows = {(r["budget"], r["method"]): r for r in doc["result"]["summary"]}
    assert rows[6, METHODS[1]]["vs_service"] == {"wins": 2, "ties": 1, "losses": 0, "paired": 3}
    assert rows[12, METHODS[1]]["vs_service"]["losses"] == 3  # each budget paired on its own
    lines, head = section(doc, tmp_path)
    text = "\n".join(lines)
    assert "Run in 2 parts" in text and "`wine` at budget 6 on 2026-12-03 (60 min)" in text
    assert "`wine` at budget 12 on 2026-12-04 (120 min)" in text
    assert "**`wine`, a budget of 6 epochs:**" in text and "a budget of 12 epochs" in text
    assert head["service_better"] == {METHODS[1]: "2/6"}
    # Behind by 0.2 on every seed at budget 12: a deficit the seeds settle, in bold.
    assert rows[12, METHODS[1]]["service_ahead"]["resolved"] is True
    assert "| **-0.2000 ± 0.0000** |" in text and "service behind, settled" in text
    assert "each named configuration retrained once" in text
    # A later run of one budget joins with the joined document's other part.
    again = quality_merge.merge([_strip(doc, 12), long])
    assert [p["budgets"] for p in again["parts"]] == [[6], [12]]
    # A part retrained more later says so, and joins parts retrained as often.
    short["params"]["retrains"] = long["params"]["retrains"] = 3
    short["rescored"] = {"date": "2026-12-05T09:00:00+00:00", "duration_s": 300.0, "retrains": 3}
    text = "\n".join(section(quality_merge.merge([short, long]), tmp_path)[0])
    assert "each named configuration retrained 3 times" in text
    assert "retrained to 3 on 2026-12-05 by `benchmarks.quality_rescore`, 5 min" in text


def _strip(doc: dict[str, Any], budget: int) -> dict[str, Any]:
    """A joined document without one budget's runs (as a part of a new join)."""
    runs = [r for r in doc["result"]["runs"] if r["budget"] != budget]
    params = {**doc["params"], "budgets": [b for b in doc["params"]["budgets"] if b != budget]}
    parts = [p for p in doc["parts"] if budget not in p["budgets"]]
    result = {**doc["result"], "runs": runs, "summary": quality.summarise(runs, params)}
    return {**doc, "params": params, "parts": parts, "result": result}


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"budget": 6}, "in more than one part: wine at budget 6 (run each data set and"),
        ({"seeds": [0, 1]}, "seeds differ: [0, 1] against [0, 1, 2]"),
        ({"methods": ["service"]}, "methods differ"),
        ({"epochs": 20}, "epochs differ: 20 against 2"),
        ({"retrains": 5}, "retrains differ: 5 against 1 (benchmarks.quality_rescore retrains"),
    ],
)
def test_parts_measured_differently_are_refused(other: dict[str, Any], message: str) -> None:
    budget = other.pop("budget", 12)
    first = _part(6, "2026-12-03T11:00:00+00:00", {"service": [0.9] * 3, METHODS[1]: [0.8] * 3})
    second = _part(budget, "2026-12-04T11:00:00+00:00", {"service": [0.9] * 3}, **other)
    with pytest.raises(ValueError, match=re.escape(message)):
        quality_merge.merge([first, second])


def test_a_data_set_joins_another_at_the_same_budget() -> None:
    """A part per data set (how a long budget fits in several sessions): the joined run
    lists the full run's data sets in its order, whatever the order of the parts."""
    tests = {"service": [0.9] * 3, METHODS[1]: [0.8] * 3}
    parts = [
        _part(12, "2026-12-05T10:00:00+00:00", tests, dataset="diabetes"),
        _part(12, "2026-12-04T10:00:00+00:00", tests, dataset="digits"),
        _part(6, "2026-12-03T10:00:00+00:00", tests, dataset="digits"),
    ]
    doc = quality_merge.merge(parts)
    assert doc["params"]["datasets"] == ["digits", "diabetes"]
    assert doc["params"]["budgets"] == [6, 12]
    assert [(p["datasets"], p["budgets"]) for p in doc["parts"]] == [
        (["digits"], [6]),
        (["digits"], [12]),
        (["diabetes"], [12]),
    ]
    groups = [(r["dataset"], r["budget"]) for r in doc["result"]["summary"]]
    assert list(dict.fromkeys(groups)) == [("digits", 6), ("digits", 12), ("diabetes", 12)]


def test_a_file_that_is_not_a_quality_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "overhead.json"
    path.write_text(json.dumps({"benchmark": "overhead", "date": "d", "params": {}, "result": {}}))
    assert quality_merge.main([str(path), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "quality.json").exists()

"""The benchmarks stay runnable: ``python -m benchmarks --size smoke`` runs all five (each
in its own process, as ``make bench`` does at full size) and writes RESULTS.md and its
plots. The figures are not judged here (speed is measured, not asserted); what is checked
is that each benchmark measured what it says it measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import feeding, memory, overhead, quality, scaling
from tests.support import REPO, child_env

pytestmark = [pytest.mark.slow, pytest.mark.serial]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--size",
            "smoke",
            "--results",
            str(out / "results"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def result(bench: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bench / "results" / f"{name}.json").read_text())
    assert doc["benchmark"] == name and doc["size"] == "smoke"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["versions"]["optuna"]
    return doc


def test_overhead_times_the_same_trials_both_ways(bench: Path) -> None:
    doc = result(bench, "overhead")
    rows = doc["result"]["rows"]
    assert len(rows) == overhead.SIZES["smoke"]["configs"]
    for row in rows:
        assert row["epochs"] == overhead.SIZES["smoke"]["epochs"]
        assert 0 < row["bare_fit_only_s"] <= row["bare_s"]
        assert 0 < row["reporting_s"] < row["service_s"]
        assert math.isclose(row["ratio"], row["service_s"] / row["bare_s"], rel_tol=1e-2)
    assert len({json.dumps(r["params"], sort_keys=True) for r in rows}) == len(rows)


def _ordered(ms: dict[str, float]) -> None:
    assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"], ms


def _rate(measured: dict[str, Any]) -> None:
    assert measured["leases"] > 0 and measured["leases_per_s"] > 0
    assert math.isclose(
        measured["leases_per_s"], measured["leases"] / measured["seconds"], rel_tol=1e-2
    )
    _ordered(measured["lease_ms"])


def _cycles(row: dict[str, Any], who: str) -> None:
    """Saturation: bare lease -> complete cycles, the run's count unless time ran out."""
    measured = row[who]
    _rate(measured)
    assert measured["leases"] == row["cycles"] or measured["capped"], measured
    assert measured["completes"] == measured["leases"] and measured["reports"] == 0


def test_feeding_measures_each_part_on_both_databases(bench: Path) -> None:
    params = feeding.SIZES["smoke"]
    res = result(bench, "feeding")["result"]
    pairs = [(b, n) for b in params["backends"] for n in params["sizes"]]
    reports, load, sat = params["reports"], params["load"], params["saturation"]

    # The sampler alone: the study's trials at the size, copied in memory, K draws.
    assert [(r["backend"], r["trials"]) for r in res["sampler"]] == pairs
    for row in res["sampler"]:
        assert row["trials_in_copy"] == row["trials"]
        assert row["draws"] == params["sampler_draws"] and row["per_s"] > 0
        _ordered(row["ms"])

    # Under load: every worker ran trials with reports, service then Optuna on one study;
    # each cycle of one adds a trial the other starts with.
    assert [(r["backend"], r["trials"]) for r in res["load"]] == pairs
    for row in res["load"]:
        assert row["workers"] == load["processes"] * load["threads"]
        for who in ("service", "optuna"):
            measured = row[who]
            _rate(measured)
            assert measured["leases"] >= row["workers"]
            assert measured["completes"] + measured["pruned"] == measured["leases"]
            assert measured["completes"] * reports <= measured["reports"]
            assert measured["reports"] <= measured["leases"] * reports
            _ordered(measured["report_ms"])
        service, optuna = row["service"], row["optuna"]
        assert service["trials_at_start"] >= row["trials"]
        assert optuna["trials_at_start"] == service["trials_at_start"] + service["leases"]
        assert row["trials_at_end"] == optuna["trials_at_start"] + optuna["leases"]

    # At saturation: each worker count, beside Optuna and the sampler's limit.
    assert [
        (r["backend"], r["trials"], [r["processes"], r["threads"]]) for r in res["saturation"]
    ] == [(b, n, w) for b, n in pairs for w in sat["workers"]]
    for row in res["saturation"]:
        assert sat["min_cycles"] <= row["cycles"] <= sat["max_cycles"]
        for who in ("service", "optuna"):
            _cycles(row, who)
        service, optuna = row["service"], row["optuna"]
        assert service["trials_at_start"] >= row["trials"]
        assert optuna["trials_at_start"] == service["trials_at_start"] + service["leases"]
        assert math.isclose(
            row["service_over_optuna"],
            service["leases_per_s"] / optuna["leases_per_s"],
            rel_tol=1e-2,
        )
        limit = next(
            r["per_s"]
            for r in res["sampler"]
            if (r["backend"], r["trials"]) == (row["backend"], row["trials"])
        )
        assert row["sampler_per_s"] == limit
        assert math.isclose(
            row["service_over_sampler"], service["leases_per_s"] / limit, rel_tol=1e-2
        )

    # The random sampler's study, and more API processes beside one.
    rnd = params["random"]
    assert [(r["backend"], r["trials"]) for r in res["random"]] == [
        (b, rnd["trials"]) for b in rnd["backends"]
    ]
    for row in res["random"]:
        _cycles(row, "service")
        assert row["service"]["trials_at_start"] >= rnd["trials"]
    proc = params["processes"]
    rows = res["processes"]
    assert [r["api_processes"] for r in rows] == [1, proc["api"]]
    for row in rows:
        assert (row["backend"], row["trials"]) == (proc["backend"], proc["trials"])
        assert [row["processes"], row["threads"]] == proc["workers"]
        assert row["cycles"] == rows[0]["cycles"]
        _cycles(row, "service")


def test_quality_runs_every_method_on_the_same_budget(bench: Path) -> None:
    params = quality.SIZES["smoke"]
    doc = result(bench, "quality")["result"]
    runs = doc["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in quality.METHODS for s in params["seeds"]
    )
    for run in runs:
        assert run["epochs_used"] == params["budget"], run
        assert 0 <= run["best_val"] <= 1 and 0 < run["test_accuracy"] <= 1
        assert run["trials"] >= params["budget"] // params["epochs"] or run["pruned"]
        assert {"learning_rate", "optimizer", "kernel_initializer"} <= set(run["best_params"])
    assert [r["method"] for r in doc["summary"]] == quality.METHODS


def test_scaling_runs_one_and_two_workers(bench: Path) -> None:
    rows = result(bench, "scaling")["result"]["rows"]
    assert [r["workers"] for r in rows] == scaling.SIZES["smoke"]["workers"]
    assert all(r["trials_per_min"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0


def test_memory_reads_the_worker_at_each_checkpoint(bench: Path) -> None:
    doc = result(bench, "memory")["result"]
    params = memory.SIZES["smoke"]
    assert list(doc["rss_mib_after"]) == [str(c) for c in params["checkpoints"]]
    # A worker has TensorFlow loaded: hundreds of MiB, not the few of a bare interpreter.
    assert all(v > 150 for v in doc["rss_mib_after"].values())
    trials = [r["trials"] for r in doc["readings"]]
    assert trials == sorted(set(trials)) and trials[-1] == params["trials"]


def test_report_holds_all_five_with_plots(bench: Path) -> None:
    text = (bench / "RESULTS.md").read_text()
    for title in (
        "1. Overhead",
        "2. Feeding workers",
        "3. Search quality",
        "4. Scaling",
        "5. Memory",
    ):
        assert f"## {title}" in text
    assert "Not measured" not in text
    for name in ("overhead", "feeding", "quality", "memory"):
        assert (bench / f"{name}.png").read_bytes().startswith(PNG)
        assert f"({name}.png)" in text

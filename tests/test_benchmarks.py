"""The benchmarks stay runnable: ``python -m benchmarks --size smoke`` runs all eight (each
in its own process, as ``make bench`` does at full size) and writes RESULTS.md and its
plots. The figures are not judged here (speed is measured, not asserted); what is checked
is that each benchmark measured what it says it measures."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import advice, common, feeding, fuzz, memory, overhead, quality, scaling, soak
from benchmarks.quality import METHODS
from benchmarks.quality_methods import service_changes
from benchmarks.soak_faults import FAULTS
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
        timeout=1200,
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
    assert all(0 < r["probe_share"] < 1 for r in rows)  # diagnostics were on, and timed
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
        assert row["service_per_s"] > 0  # (the service's own sampler, beside it)
        _ordered(row["service_ms"])

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
    doc = result(bench, "quality")
    assert doc["params"]["seeds"] == params["seeds"] and doc["params"]["summary"] is False
    res = doc["result"]
    assert res["failed"] == []
    keys = [
        (d, b, m) for d in params["datasets"] for b in sorted(params["budgets"]) for m in METHODS
    ]
    runs = res["runs"]
    assert sorted((r["dataset"], r["budget"], r["method"], r["seed"]) for r in runs) == sorted(
        (*key, s) for key in keys for s in params["seeds"]
    )
    epochs = params["epochs"]
    for run in runs:
        assert (run["metric"], run["direction"]) == ("val_accuracy", "maximize"), run
        if run["method"] in quality.PEERS:  # they stop at the budget
            assert run["epochs_used"] == run["budget"], run
        else:  # the service starts a trial only while its epochs fit, and counts the same
            assert run["budget"] - epochs < run["epochs_used"] <= run["budget"], run
            assert run["epochs_charged"] == run["epochs_used"], run
        assert run["trials"] * epochs >= run["epochs_used"]
        assert 0 <= run["best_val"] <= 1 and 0 < run["test"] <= 1
        assert len(run["tests"]) == params["retrains"]
        assert run["test"] == statistics.fmean(run["tests"])
        assert {"learning_rate", "optimizer", "kernel_initializer"} <= set(run["best_params"])
    summary = res["summary"]
    assert [(r["dataset"], r["budget"], r["method"]) for r in summary] == keys
    for row in summary:
        assert row["runs"] == len(params["seeds"])
        if row["method"] == quality.SERVICE:
            assert row["vs_service"] is None
        else:
            vs = row["vs_service"]
            assert vs["paired"] == len(params["seeds"])
            assert vs["wins"] + vs["ties"] + vs["losses"] == vs["paired"]
    text = (bench / "RESULTS.md").read_text()
    section = text[text.index("## 3. Search quality") : text.index("## 4.")]
    assert "**Run:** `wine` (test accuracy, higher is better)" in section
    assert "**Ablations.**" in section and "without priors" in section
    assert "each named configuration retrained 2 times" in section
    assert "on one retraining" in section


def test_a_part_is_retrained_more_without_searching_again(bench: Path, tmp_path: Path) -> None:
    """``benchmarks.quality_rescore`` brings a part of one retraining to two: the first is
    done again and matches, the second is what the run itself made (retraining is
    deterministic for its seed); a part whose score it cannot reproduce is left as it was."""
    made = result(bench, "quality")
    one = json.loads(json.dumps(made))
    del one["params"]["retrains"]
    for run in one["result"]["runs"]:
        run["test"] = run.pop("tests")[0]  # as a run from before retrains was stored
    one["result"]["summary"] = quality.summarise(one["result"]["runs"], one["params"])
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(one))

    def rescore(*more: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "benchmarks.quality_rescore", "--retrains", "2"]
            + [str(p) for p in (path, *more)],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = rescore()
    assert done.returncode == 0, done.stderr[-4000:]
    again = json.loads(path.read_text())
    assert again["params"]["retrains"] == 2 and again["rescored"]["retrains"] == 2
    assert [r["tests"] for r in again["result"]["runs"]] == [
        r["tests"] for r in made["result"]["runs"]
    ]
    assert again["result"]["summary"] == made["result"]["summary"]
    assert rescore().returncode == 0 and json.loads(path.read_text()) == again  # nothing to do
    # A score the code does not give again: that part is left as it was, the next is done.
    tampered = json.loads(json.dumps(one))
    tampered["result"]["runs"][0]["test"] += 0.5
    path.write_text(json.dumps(tampered))
    other = tmp_path / "other" / "quality.json"
    other.parent.mkdir()
    other.write_text(json.dumps(one))
    done = rescore(other)
    assert done.returncode == 2
    assert f"not the {tampered['result']['runs'][0]['test']!r} the part holds" in done.stderr
    assert json.loads(path.read_text()) == tampered
    assert json.loads(other.read_text())["result"]["summary"] == made["result"]["summary"]


def _runs(direction: str, tests: dict[str, list[float]]) -> list[dict[str, Any]]:
    metric = "val_mae" if direction == "minimize" else "val_accuracy"
    return [
        {
            "method": method,
            "dataset": "diabetes",
            "budget": 6,
            "seed": seed,
            "metric": metric,
            "direction": direction,
            "best_val": test,
            "test": test,
            "epochs_used": 6,
            "trials": 3,
            "pruned": None,
            "wall_s": 1.0,
        }
        for method, values in tests.items()
        for seed, test in enumerate(values)
    ]


def test_quality_flags_summary_and_paired_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags override the size's lists; the wins follow the task's direction; and
    ``--summary`` prints one JSON object a line, last (no training here)."""
    seen: dict[str, Any] = {}

    def fake_run(size: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
        seen.update(params)
        # Lower MAE is better: service wins seed 0, ties seed 1, loses seed 2.
        runs = _runs(
            "minimize", {"service": [40.0, 50.0, 60.0], "optuna random": [45.0, 50.0, 55.0]}
        )
        return {
            "datasets": [],
            "runs": runs,
            "failed": [],
            "summary": quality.summarise(runs, params),
        }

    argv = [
        "--size", "full", "--out", str(tmp_path), "--dataset", "diabetes", "--budget", "6",
        "--seeds", "3", "--epochs", "2", "--methods", "optuna random,service", "--summary",
    ]  # fmt: skip
    code = common.main(
        "quality",
        quality.SIZES,
        fake_run,
        argv,
        options=quality.OPTIONS,
        prepare=quality.prepare,
        after=quality.after,
        verdict=quality.verdict,
    )
    assert code == 0
    assert seen["datasets"] == ["diabetes"] and seen["budgets"] == [6]
    assert seen["seeds"] == [0, 1, 2] and seen["methods"] == ["service", "optuna random"]
    assert seen["epochs"] == 2 and seen["lanes"] == quality.SIZES["full"]["lanes"]
    assert seen["summary"] is True
    doc = json.loads((tmp_path / "quality.json").read_text())
    peer = doc["result"]["summary"][1]
    assert peer["vs_service"] == {"wins": 1, "ties": 1, "losses": 1, "paired": 3}
    # Ahead by +5, 0, -5 MAE: no lead on the mean, and none settled.
    assert peer["service_ahead"] == {
        "mean": 0.0,
        "se": pytest.approx(5 / 3**0.5),
        "paired": 3,
        "resolved": False,
    }
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines[-2:]] == [
        {
            "method": "service",
            "dataset": "diabetes",
            "budget": 6,
            "seeds": 3,
            "mean_test": 50.0,
            "sd_test": 10.0,
            "direction": "minimize",
        },
        {
            "method": "optuna random",
            "dataset": "diabetes",
            "budget": 6,
            "seeds": 3,
            "mean_test": 50.0,
            "sd_test": 5.0,
            "direction": "minimize",
        },
    ]
    # Higher accuracy is better: the same numbers are then a win where they were a loss.
    runs = _runs("maximize", {"service": [0.9, 0.8], "optuna random": [0.8, 0.9]})
    rows = quality.summarise(runs, {"budgets": [6], "methods": ["service", "optuna random"]})
    assert rows[1]["vs_service"] == {"wins": 1, "ties": 0, "losses": 1, "paired": 2}
    # A lead of at least two standard errors is settled, in the task's direction.
    runs = _runs("minimize", {"service": [40.0, 41.0, 40.0], "optuna random": [44.0, 44.0, 45.0]})
    ahead = quality.summarise(runs, {"budgets": [6], "methods": ["service", "optuna random"]})[1][
        "service_ahead"
    ]
    assert ahead["mean"] == pytest.approx(4.0) and ahead["se"] == pytest.approx(1 / 3**0.5)
    assert ahead["resolved"] is True
    runs = _runs("maximize", {"service": [0.9, 0.8, 0.9], "optuna random": [0.8, 0.9, 0.8]})
    ahead = quality.summarise(runs, {"budgets": [6], "methods": ["service", "optuna random"]})[1][
        "service_ahead"
    ]
    assert ahead["mean"] == pytest.approx(0.1 / 3) and ahead["resolved"] is False
    # Paired on the mean of the retrainings, and apart on the first (the search's seed).
    runs = _runs("maximize", {"service": [0.8, 0.8], "optuna random": [0.8, 0.9]})
    runs[0]["tests"], runs[2]["tests"] = [0.9, 0.7], [0.7, 0.9]  # seed 0: service, the peer
    rows = quality.summarise(runs, {"budgets": [6], "methods": ["service", "optuna random"]})
    assert rows[1]["vs_service"] == {"wins": 0, "ties": 1, "losses": 1, "paired": 2}
    assert rows[1]["vs_service_once"] == {"wins": 1, "ties": 0, "losses": 1, "paired": 2}
    assert rows[0]["test_once"]["mean"] == pytest.approx(0.85)
    # A pilot's seeds are a range apart from the full run's 0 to N - 1.
    pilot = quality.prepare({**quality.SIZES["smoke"], "seeds": quality._seeds("5-7")})
    assert pilot["seeds"] == [5, 6, 7]
    assert quality._seeds("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="empty range"):
        quality._seeds("7-5")
    for beyond in ("1000-1004", "1001", "0-1000000000000"):  # would share retraining seeds
        with pytest.raises(argparse.ArgumentTypeError, match="seeds below 1000"):
            quality._seeds(beyond)
    # A variant of the service names study fields (values as JSON), after the methods.
    variant = "service pruner=hyperband reevaluate_top=2"
    assert quality._methods(f"{variant},optuna random") == ["optuna random", variant]
    assert service_changes(variant) == {"pruner": "hyperband", "reevaluate_top": 2}
    # Unknown methods, missing data sets and a CSV without its label are refused early.
    for bad in (
        ["--methods", "optuna grid"],
        ["--methods", "service pruner"],
        ["--dataset", "nowhere.csv"],
    ):
        with pytest.raises(SystemExit):
            quality.cli(["--size", "smoke", "--out", str(tmp_path), *bad])
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n")
    with pytest.raises(SystemExit, match="--label"):
        quality.prepare({**quality.SIZES["smoke"], "dataset": [str(tmp_path / "data.csv")]})


def test_quality_reads_a_csv_as_the_service_stores_it(tmp_path: Path) -> None:
    """A CSV data set is split for the peers exactly as the service's worker splits the
    upload: wine as a CSV gives the built-in wine's rows."""
    import numpy as np
    from sklearn.datasets import load_wine

    from benchmarks import quality_data
    from workers.data import load

    wine = load_wine()
    lines = [",".join([*wine.feature_names, "cultivar"])]
    rows = zip(wine.data, wine.target, strict=True)
    lines += [",".join([*map(repr, x.tolist()), str(y)]) for x, y in rows]
    path = tmp_path / "wine.csv"
    path.write_text("\n".join(lines) + "\n")
    dataset = quality_data.resolve(str(path), "cultivar")
    assert dataset.name == "wine-upload"  # a built-in's name is not the service's to give
    assert quality_data.task(dataset) == "classification"
    mine, builtin = quality_data.load(dataset), load("wine")
    assert mine.info.source == "upload" and mine.info.n_classes == 3 and mine.info.sha256
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(mine, part), getattr(builtin, part)), part


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


def test_advice_runs_the_suggested_spec_after_the_first_study(bench: Path) -> None:
    doc = result(bench, "advice")
    (row,) = doc["result"]["rows"]
    assert row["trials"] == advice.SIZES["smoke"]["trials"]
    ranked = sorted(row["importances"], key=lambda k: -row["importances"][k])
    assert row["importances"] and row["top3"] == ranked[:3]
    assert 0 < row["best_first"] <= 1 and 0 < row["best_second"] <= 1
    assert 0 < doc["result"]["summary"]["median_probe_share"] < 1


def test_fuzz_sends_every_operation_and_follows_the_links(bench: Path) -> None:
    res = result(bench, "fuzz")["result"]
    params = fuzz.SIZES["smoke"]
    assert res["operations"] == res["operations_covered"] == len(res["examples"]) > 20
    assert all(1 <= n <= params["examples"] for n in res["examples"].values())
    assert res["requests_alone"] == sum(res["examples"].values())
    assert sum(sum(s.values()) for s in res["statuses_alone"].values()) <= res["requests_alone"]
    stateful = res["stateful"]
    assert stateful["sequences"] >= params["processes"] and stateful["steps"] >= 2
    assert stateful["links_followed"] <= stateful["links"]
    assert len(stateful["declared_links"]) == 11  # a lease into each trial and job call
    assert res["requests"] == res["requests_alone"] + stateful["steps"]
    for kind, count in (("server_errors", "server_error_count"), ("failures", "failure_count")):
        assert res[count] == sum(e["count"] for e in res[kind])
        for entry in res[kind]:
            assert entry["samples"] and all(s["curl"].startswith("curl ") for s in entry["samples"])


def test_soak_injects_every_fault_and_checks_every_study(bench: Path) -> None:
    res = result(bench, "soak")["result"]
    params = soak.SIZES["smoke"]
    assert res["submitted"] == res["over"] == res["studies_checked"] == params["studies"]
    assert res["violation_count"] == 0 and res["violations"] == [] and res["fault_errors"] == []
    # Every kind of fault, each recorded as it happened.
    assert all(res["faults"][kind] >= 1 for kind in FAULTS), res["faults"]
    events = res["fault_events"]
    assert sum(res["faults"].values()) == len(events)
    assert [e["at_s"] for e in events] == sorted(e["at_s"] for e in events)
    assert all(e["target"] and e["target"] != "error" for e in events)
    assert len(res["outages"]) == res["faults"]["restart_postgres"]
    # Every study's budget counted, the completes acknowledged to the simulated workers
    # among them; nothing answered 5xx but 503.
    trials = res["trials"]
    assert trials["trials_counted"] == sum(s["n_trials"] for s in soak.specs(params))
    assert 1 <= res["acknowledged_trials"] <= trials["leases_complete"]
    assert res["acknowledged_completes"] >= res["acknowledged_trials"]
    assert res["status_5xx_not_503"] == 0 and res["api_log_5xx_not_503"] == 0
    assert sum(res["answers"].values()) > res["acknowledged_completes"]


def test_report_holds_all_eight_with_plots(bench: Path) -> None:
    text = (bench / "RESULTS.md").read_text()
    for title in (
        "1. Overhead",
        "2. Feeding workers",
        "3. Search quality",
        "4. Scaling",
        "5. Memory",
        "6. Diagnostics",
        "7. Fuzzing",
        "8. Soak",
    ):
        assert f"## {title}" in text
    assert "Not measured" not in text
    for name in ("overhead", "feeding", "quality", "memory"):
        assert (bench / f"{name}.png").read_bytes().startswith(PNG)
        assert f"({name}.png)" in text

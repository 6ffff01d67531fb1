"""A study's epoch budget, the notes' priors and the re-evaluated winner, through the
worker protocol against a real API (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from search_space import SearchSpace
from search_space.priors import priors_for
from tests.service.test_leases import _call, _lease, _study
from tests.support import Api, wait_for


def _get(server: Api, study_id: int) -> dict[str, Any]:
    with server.client() as client:
        return dict(client.get(f"/studies/{study_id}").json())


def test_the_epoch_budget_is_never_exceeded_and_a_short_trial_frees_what_it_did_not_run(
    fresh_api: Callable[..., Api],
) -> None:
    server = fresh_api()
    with server.client() as client:
        study = _study(client, "budget", n_trials=50, epochs=4, epoch_budget=10, priors=False)
        assert study["epoch_budget"] == 10 and study["reevaluations"] == 0
        first, second = _lease(client), _lease(client)
        assert first is not None and second is not None
        assert _lease(client) is None  # 8 of 10 charged: a third could run 12
        assert _get(server, study["id"])["epochs_charged"] == 8
        # The first fails after one epoch: charged 1, so another fits (1 + 4 + 4 <= 10).
        r = _call(client, first["trial_id"], "fail", reason="boom", epochs_run=1)
        assert r.status_code == 200, r.text
        assert _get(server, study["id"])["epochs_charged"] == 5
        third = _lease(client)
        assert third is not None and _lease(client) is None
        for job in (second, third):
            r = _call(client, job["trial_id"], "complete", value=0.5, epochs_run=4)
            assert r.status_code == 200, r.text
        final = _get(server, study["id"])
        # 1 + 4 + 4 = 9: no room for a fourth trial, none running: the study is over.
        assert final["status"] == "completed", final
        assert final["epochs_charged"] == 9 and final["trials"]["complete"] == 2


def test_an_epoch_budget_below_one_trial_is_refused(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api()
    with server.client() as client:
        body = {"name": "tiny", "dataset": "digits", "n_trials": 3, "epochs": 5}
        r = client.post("/studies", json={**body, "epoch_budget": 4})
        assert r.status_code == 422, r.text
        assert "epoch_budget" in r.text and "at least the epochs of one trial (5)" in r.text
        assert client.get("/studies").json() == []


def test_the_first_trials_are_the_priors_and_priors_false_starts_from_the_sampler(
    fresh_api: Callable[..., Api],
) -> None:
    server = fresh_api()
    space = SearchSpace.parse(None, None)
    expected = priors_for(space)
    assert len(expected) == 3
    with server.client() as client:
        study = _study(client, "with-priors", n_trials=5)
        assert study["priors"] == expected
        leased = [_lease(client) for _ in range(3)]
        for job, prior in zip(leased, expected, strict=True):
            assert job is not None
            assert {k: job["params"][k] for k in prior} == prior, (job["params"], prior)
        bare = _study(client, "without", n_trials=5, priors=False)
        assert bare["priors"] == []
    trials = optuna.load_study(study_name="without", storage=server.database_url).trials
    assert not any(t.state == TrialState.WAITING for t in trials)


def _history(loss: float | None) -> dict[str, Any]:
    """A ``complete``'s history whose last epoch had validation loss ``loss`` (none: no
    history)."""
    if loss is None:
        return {}
    return {"history": {"val_accuracy": [0.5, 0.5, 0.5], "val_loss": [1.0, 0.9, loss]}}


def _search_and_reevaluate(
    client: httpx.Client,
    name: str,
    values: list[float],
    again_values: dict[float, float],
    losses: dict[float, tuple[float, float]] | None = None,
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A 12-trial study of 3-epoch trials: 9 searched with ``values``, then the top 3 run
    again, each scoring ``again_values[its first value]``; ``losses[first value]`` are the
    last-epoch val_loss of its two evaluations. Returns the study's id, the searched jobs,
    the top 3 and the re-evaluations."""
    losses = losses or {}
    study = _study(
        client, name, n_trials=12, epochs=3, priors=False, reevaluate_top=3, reevaluate_repeats=1
    )
    assert study["reevaluations"] == 3
    searched = []
    for value in values:
        job = _lease(client)
        assert job is not None
        searched.append(job)
        loss = losses.get(value, (None, None))[0]
        r = _call(client, job["trial_id"], "complete", value=value, epochs_run=3, **_history(loss))
        assert r.status_code == 200, r.text
    top = sorted(searched, key=lambda j: -values[searched.index(j)])[:3]
    again: list[dict[str, Any]] = []
    wait_for(lambda: _next(client, again), 20, "the re-evaluations to be queued")
    while len(again) < 3:
        assert _next(client, again), again
    assert _lease(client) is None  # the budget is spent: 9 + 3
    for job in again:
        first = values[searched.index(next(t for t in top if t["params"] == job["params"]))]
        # Never pruned, however bad: judged on all their epochs.
        for epoch in (1, 2):
            r = _call(client, job["trial_id"], "report", epoch=epoch, value=0.01)
            assert r.json() == {"action": "continue"}, r.text
        loss = losses.get(first, (None, None))[1]
        score = again_values[first]
        r = _call(client, job["trial_id"], "complete", value=score, epochs_run=3, **_history(loss))
        assert r.status_code == 200, r.text
    return study["id"], searched, top, again


def test_the_best_are_run_again_unpruned_counted_in_the_budget_and_the_best_mean_wins(
    fresh_api: Callable[..., Api],
) -> None:
    server = fresh_api()
    # 12 trials, the last 3 kept (3 <= 12 / 4) for the top 3 configurations run again.
    values = [0.50, 0.91, 0.60, 0.90, 0.55, 0.89, 0.52, 0.51, 0.53]
    with server.client() as client:
        study_id, searched, top, again = _search_and_reevaluate(
            client, "again", values, {0.91: 0.70, 0.90: 0.92, 0.89: 0.80}
        )
        assert sorted(json.dumps(j["params"], sort_keys=True) for j in again) == sorted(
            json.dumps(j["params"], sort_keys=True) for j in top
        )
        assert len({j["seed"] for j in again + top}) == 6  # fresh seeds
        # The search on the fixed split, each repeat on the same other fold (the first).
        assert [j["fold"] for j in top] == [0, 0, 0] and [j["fold"] for j in again] == [1, 1, 1]
        final = _get(server, study_id)
        listed = {t["trial_id"]: t for t in client.get(f"/studies/{study_id}/trials").json()}
        report = client.get(f"/studies/{study_id}/report").json()
    # The trial list says which trials are re-evaluations, of which trial, on which fold;
    # the report judges the search's 9 (a re-evaluation would count a configuration twice).
    assert [
        (listed[j["trial_id"]]["reevaluates"], listed[j["trial_id"]]["fold"]) for j in searched
    ] == [(None, 0)] * 9
    assert sorted(listed[j["trial_id"]]["reevaluates"] for j in again) == sorted(
        t["number"] for t in top
    )
    assert {listed[j["trial_id"]]["fold"] for j in again} == {1}
    assert report["trials"] == 9
    # Its best is the study's winner, the best mean, and the next study starts from it.
    won = searched[values.index(0.90)]
    assert report["best"]["number"] == won["number"] and abs(report["best"]["value"] - 0.91) < 1e-9
    (first,) = report["suggested_spec"]["enqueue"]
    assert first and all(won["params"][k] == v for k, v in first.items())
    assert final["status"] == "completed" and final["trials"]["complete"] == 12
    assert final["epochs_charged"] == 36
    # 0.90 then 0.92 (mean 0.91) beats 0.91 then 0.70 and 0.89 then 0.80.
    winner = searched[values.index(0.90)]
    assert final["best"]["trial_id"] == winner["trial_id"], final["best"]
    assert final["best"]["evaluations"] == 2
    assert abs(final["best"]["value"] - 0.91) < 1e-9
    optuna_trials = optuna.load_study(study_name="again", storage=server.database_url).trials
    assert sorted(
        t.user_attrs["reevaluates"] for t in optuna_trials if "reevaluates" in t.user_attrs
    ) == sorted(t["number"] for t in top)


def test_by_default_the_best_two_run_again_on_folds_one_and_two(
    fresh_api: Callable[..., Api],
) -> None:
    """The default plan (``winners.DEFAULT_PLANS``): a 16-trial study keeps 4 trials, its
    best 2 configurations on folds 1 and 2; a smaller one the best 3 once each, where
    that fits a quarter of its trials and of its epoch budget."""
    server = fresh_api()
    with server.client() as client:
        # 12 to 15 trials: the best 3 once each; fewer, none (unless asked for).
        for n_trials, kept in ((15, 3), (12, 3), (11, 0)):
            small = _study(client, f"small-{n_trials}", n_trials=n_trials, priors=False)
            assert small["reevaluations"] == kept, (n_trials, small)
            assert client.post(f"/studies/{small['id']}/stop").status_code == 200
        off = _study(client, "off", n_trials=40, priors=False, reevaluate_top=0)
        assert off["reevaluations"] == 0
        assert client.post(f"/studies/{off['id']}/stop").status_code == 200
        # An epoch budget counts too: 4 trials of 10 epochs fit a quarter of 160, not 150.
        for budget, kept in ((160, 4), (150, 3)):
            capped = _study(client, f"b{budget}", n_trials=99, epochs=10, epoch_budget=budget)
            assert capped["reevaluations"] == kept, (budget, capped)
            assert client.post(f"/studies/{capped['id']}/stop").status_code == 200
        study = _study(client, "sixteen", n_trials=16, epochs=3, priors=False)
        assert study["reevaluations"] == 4
        searched = []
        for value in range(12):
            job = _lease(client)
            assert job is not None and job["fold"] == 0
            searched.append(job)
            r = _call(client, job["trial_id"], "complete", value=value / 100, epochs_run=3)
            assert r.status_code == 200, r.text
        again: list[dict[str, Any]] = []
        wait_for(lambda: _next(client, again), 20, "the re-evaluations to be queued")
        while len(again) < 4:
            assert _next(client, again), again
        # A re-evaluation given back runs again as one: same parameters, same fold.
        given_back = again[3]
        r = _call(client, given_back["trial_id"], "release", reason="host going down")
        assert r.status_code == 200, r.text
        rerun = _lease(client)
        listed = {t["trial_id"]: t for t in client.get(f"/studies/{study['id']}/trials").json()}
    assert rerun is not None and rerun["params"] == given_back["params"]
    assert rerun["fold"] == 2 and rerun["trial_id"] != given_back["trial_id"]
    assert listed[rerun["trial_id"]]["reevaluates"] == listed[given_back["trial_id"]]["reevaluates"]
    assert listed[rerun["trial_id"]]["reevaluates"] in {j["number"] for j in searched[-2:]}
    # Fold by fold: both on fold 1, then both on fold 2.
    assert [j["fold"] for j in again] == [1, 1, 2, 2]
    best_two = {json.dumps(j["params"], sort_keys=True) for j in searched[-2:]}
    for fold in (1, 2):
        assert {json.dumps(j["params"], sort_keys=True) for j in again if j["fold"] == fold} == (
            best_two
        )


def test_equal_means_are_told_apart_by_the_lower_mean_validation_loss(
    fresh_api: Callable[..., Api],
) -> None:
    """Two configurations at the same mean (0.875 then 0.625, 0.75 twice): the one whose
    evaluations' last-epoch val_loss is lower on average wins, although the other came
    first and had the lower loss on its first evaluation."""
    server = fresh_api()
    values = [0.5, 0.875, 0.25, 0.75, 0.375, 0.625, 0.3125, 0.1875, 0.125]
    with server.client() as client:
        study_id, searched, _, _ = _search_and_reevaluate(
            client,
            "equal-means",
            values,
            {0.875: 0.625, 0.75: 0.75, 0.625: 0.5},
            losses={0.875: (0.20, 0.20), 0.75: (0.30, 0.05), 0.625: (0.01, 0.01)},
        )
        final = _get(server, study_id)
    assert final["status"] == "completed", final
    assert final["best"]["trial_id"] == searched[values.index(0.75)]["trial_id"], final["best"]
    assert final["best"]["value"] == 0.75 and final["best"]["evaluations"] == 2


def _next(client: httpx.Client, again: list[dict[str, Any]]) -> bool:
    job = _lease(client)
    if job is None:
        return False
    again.append(job)
    return True


def test_equal_values_are_told_apart_by_the_lower_validation_loss(
    fresh_api: Callable[..., Api],
) -> None:
    """Four trials at 1.000 (as on wine's 27 validation rows): the winner is the one whose
    last epoch had the lowest val_loss, from its history, or from its last report when
    the result came without one; a trial with no val_loss comes after all that have one."""
    server = fresh_api()
    losses = {0: None, 1: 0.30, 2: 0.08, 3: 0.12}
    with server.client() as client:
        study = _study(client, "ties", n_trials=4, epochs=2, priors=False, reevaluate_top=0)
        jobs = [_lease(client) for _ in losses]
        for number, job in enumerate(jobs):
            assert job is not None
            loss = losses[number]
            metrics = {"val_accuracy": 1.0} | ({} if loss is None else {"val_loss": loss + 1})
            r = _call(client, job["trial_id"], "report", epoch=1, value=1.0, metrics=metrics)
            assert r.status_code == 200, r.text
            # Trial 3 reports its last epoch; the others' last epoch is in the history only.
            extra: dict[str, Any] = {}
            if number == 3:
                metrics = {"val_accuracy": 1.0, "val_loss": 0.12}
                r = _call(client, job["trial_id"], "report", epoch=2, value=1.0, metrics=metrics)
                assert r.status_code == 200, r.text
            elif loss is not None:
                extra["history"] = {"val_accuracy": [1.0, 1.0], "val_loss": [loss + 1, loss]}
            r = _call(client, job["trial_id"], "complete", value=1.0, epochs_run=2, **extra)
            assert r.status_code == 200, r.text
        final = _get(server, study["id"])
        assert final["status"] == "completed", final
        assert final["best"]["trial_id"] == jobs[2]["trial_id"], final["best"]
        listed = client.get("/studies").json()
        assert [s["best"]["trial_id"] for s in listed] == [jobs[2]["trial_id"]]

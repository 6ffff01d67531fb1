"""The study report's rules on hand-made trials (``diagnostics.report`` is a pure function
of the trials; the end-to-end path is ``tests/test_diagnostics_end_to_end.py``)."""

from __future__ import annotations

from typing import Any

import optuna

from diagnostics.report import Trial, build, importances

SPACE = {
    "optimizer": {"choices": ["adam", "sgd", "adadelta"]},
    "kernel_initializer": {"choices": ["he_normal", "random_normal"]},
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
    "hidden_layers": {"low": 1, "high": 4, "log": False},
}


def _trials() -> list[Trial]:
    trials = []
    for i in range(12):
        optimizer = ("adam", "sgd", "adadelta")[i % 3]
        init = "random_normal" if i % 4 == 0 else "he_normal"
        value = {"adam": 0.97, "sgd": 0.93, "adadelta": 0.6}[optimizer] + 0.001 * i
        findings: list[dict[str, Any]] = []
        state = "complete"
        if init == "random_normal":
            findings = [{"code": "saturated_units"}]
            value -= 0.3
        trials.append(
            Trial(
                number=i,
                state=state,
                value=value,
                params={
                    "optimizer": optimizer,
                    "kernel_initializer": init,
                    "learning_rate": 10 ** (-3 + 0.05 * i),
                    "hidden_layers": 1 + i % 4,
                },
                findings=findings,
            )
        )
    return trials


def _report(importance: dict[str, float]) -> dict[str, Any]:
    return build(
        name="s",
        spec={"search_space": SPACE},
        direction="maximize",
        trials=_trials(),
        importance=importance,
        resubmit={"name": "s-next", "dataset": "digits", "fixed": {"batch_size": 64}},
    )


def test_a_value_whose_trials_carry_an_alarm_is_dropped_with_the_count() -> None:
    report = _report({"learning_rate": 0.3, "kernel_initializer": 0.1})
    texts = [v["text"] for v in report["findings"]["by_value"]]
    assert "kernel_initializer=random_normal: 3 of 3 trials saturated_units" in texts
    actions = [a["action"] for a in report["advice"]]
    assert "drop kernel_initializer=random_normal" in actions
    spec = report["suggested_spec"]
    # One choice left: it becomes fixed, next to the study's own fixed values.
    assert spec["fixed"] == {"batch_size": 64, "kernel_initializer": "he_normal"}
    assert "kernel_initializer" not in spec["search_space"]


def test_an_important_value_that_never_came_close_is_dropped_and_ranges_narrow() -> None:
    report = _report({"optimizer": 0.5, "learning_rate": 0.3, "kernel_initializer": 0.1})
    spec = report["suggested_spec"]
    evidence = {a["action"]: a["evidence"] for a in report["advice"]}
    # adadelta's best (0.609) is below the median of the completed trials; sgd's (0.940)
    # is not, so sgd stays although adam did better.
    assert (
        "not one of its 4 trials reached the study's median" in evidence["drop optimizer=adadelta"]
    )
    assert "drop optimizer=sgd" not in evidence
    assert spec["search_space"]["optimizer"]["choices"] == ["adam", "sgd"]
    lr = spec["search_space"]["learning_rate"]
    assert 1e-4 < lr["low"] < lr["high"] <= 1e-1 and lr["log"] is True
    assert spec["search_space"]["hidden_layers"] == SPACE["hidden_layers"]  # counted only
    best = report["best"]
    assert spec["enqueue"] == [
        {k: v for k, v in best["params"].items() if k in spec["search_space"]}
    ]
    assert lr["low"] <= best["params"]["learning_rate"] <= lr["high"]


def test_without_importance_nothing_is_narrowed_on_outcomes_alone() -> None:
    report = _report({})
    spec = report["suggested_spec"]
    assert spec["search_space"]["optimizer"] == SPACE["optimizer"]
    assert spec["search_space"]["learning_rate"] == SPACE["learning_rate"]


def test_importances_leave_out_the_reevaluations() -> None:
    """A re-evaluation repeats a configuration on another fold (``winners``): fANOVA
    judges the search's trials alone, as if the repeats were not there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    y = optuna.distributions.FloatDistribution(0.0, 1.0)

    def trial(i: int, value: float, **attrs: Any) -> optuna.trial.FrozenTrial:
        params = {"x": (i * 0.37) % 1, "y": (i * 0.61) % 1}
        return optuna.trial.create_trial(
            params=params, distributions={"x": x, "y": y}, value=value, user_attrs=attrs
        )

    searched = [trial(i, (i * 0.37) % 1) for i in range(12)]  # the value follows x alone
    alone = optuna.create_study(direction="maximize")
    alone.add_trials(searched)
    both = optuna.create_study(direction="maximize")
    both.add_trials(searched)
    # The best 2 again, scored as y would have it: counted, they would make y matter.
    for i in (8, 5):
        both.add_trial(trial(i, 10 * ((i * 0.61) % 1), reevaluates=i, fold=1))
    assert importances(alone)["x"] > 0.8
    assert importances(both) == importances(alone)

"""A study's report: which parameters mattered, which values went with which findings,
advice traced to the notes, and the study's spec narrowed where the evidence is strong.

Pure functions of the study's trials (no TensorFlow, no database): the API reads the
trials and the Optuna study, and calls ``build``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from diagnostics.codes import ALARMS, MESSAGES, Code

MIN_GROUP = 3
"""A parameter value needs this many trials before the report judges it."""

STRONG = 0.75
"""A value is dropped when at least 3 in 4 of its trials failed or carried an alarm..."""

CONTRAST = 0.25
"""...and the trials without it did so at least 25 points less often (the value, not the
study, is to blame)."""

COMMON = 0.5
"""A finding on at least half the trials is study-wide advice (e.g. overfitting)."""

TOP_SHARE = 0.25
"""Numeric ranges narrow to the span of the best quarter of completed trials (at least
``MIN_GROUP`` of them), widened by ``WIDEN`` and kept inside the original range..."""

WIDEN = 2.0
"""...by a factor of 2 on a log scale, or 10% of the range on a linear one."""

IMPORTANT = 0.15
"""...and only for parameters at least this important (the evidence is strong)."""

BINS = 3
"""Numeric parameters are counted in thirds of their range (low, middle, high)."""


@dataclass
class Trial:
    """What the report needs of a trial: its sampled parameters, how it ended, findings."""

    number: int
    state: str  # complete, pruned, fail
    value: float | None
    params: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def codes(self) -> set[str]:
        return {f["code"] for f in self.findings}

    @property
    def bad(self) -> bool:
        return self.state == "fail" or bool(self.codes & {str(c) for c in ALARMS})


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's fANOVA importances (seeded) over the search's completed trials (not the
    re-evaluations, user attribute ``reevaluates``: the same configurations again on other
    rows); empty until two completed trials differ."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    searched = [t for t in done if "reevaluates" not in t.user_attrs]
    if len(searched) < len(done):
        study = optuna.create_study(directions=study.directions)  # (in memory)
        study.add_trials(searched)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except (RuntimeError, ValueError):  # too few completed trials, or one value each
        return {}
    return {k: round(float(v), 4) for k, v in found.items() if math.isfinite(v)}


def _bin_edges(dim: Mapping[str, Any]) -> list[float]:
    low, high, log = float(dim["low"]), float(dim["high"]), bool(dim.get("log"))
    if log:
        a, b = math.log10(low), math.log10(high)
        return [10 ** (a + (b - a) * i / BINS) for i in range(BINS + 1)]
    return [low + (high - low) * i / BINS for i in range(BINS + 1)]


def _by_value(dim: Mapping[str, Any]) -> bool:
    """Counted value by value: choices, and integer ranges (``hidden_layers``)."""
    return "choices" in dim or isinstance(dim.get("low"), int)


def _group_of(value: Any, dim: Mapping[str, Any]) -> str:
    """A trial's group for a parameter: the value itself, or a third of a numeric range."""
    if _by_value(dim):
        return repr(value) if not isinstance(value, str) else value
    edges = _bin_edges(dim)
    for i in range(BINS):
        if value <= edges[i + 1] or i == BINS - 1:
            return f"[{edges[i]:.3g}, {edges[i + 1]:.3g}]"
    raise AssertionError("unreachable")


@dataclass
class _Group:
    param: str
    label: str
    value: Any  # the choice, or (low, high) of the bin
    trials: list[Trial]


def _groups(trials: Sequence[Trial], space: Mapping[str, Any]) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for name, dim in space.items():
        edges = None if _by_value(dim) else _bin_edges(dim)
        for t in trials:
            if name not in t.params:
                continue
            label = _group_of(t.params[name], dim)
            if (name, label) not in groups:
                value: Any = t.params[name]
                if edges is not None:
                    i = next((i for i in range(BINS) if t.params[name] <= edges[i + 1]), BINS - 1)
                    value = (edges[i], edges[i + 1])
                groups[name, label] = _Group(name, label, value, [])
            groups[name, label].trials.append(t)
    return list(groups.values())


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def build(
    *,
    name: str,
    spec: Mapping[str, Any],
    direction: str,
    trials: Sequence[Trial],
    importance: Mapping[str, float],
    resubmit: Mapping[str, Any],
    winner: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The report: ``importances``, ``findings`` (per code, and per parameter value),
    ``advice`` and ``suggested_spec`` (``resubmit`` with the space narrowed: a body for
    ``POST /studies``). ``winner``: the study's own (number, value) where that is not
    simply its best trial (a re-evaluated study's best mean, ``service.domain.winners``);
    it is the report's ``best``, and the next study starts from it."""
    space: dict[str, Any] = dict(spec.get("search_space") or {})
    judged = [t for t in trials if t.state in ("complete", "pruned", "fail")]
    codes = Counter(c for t in judged for c in t.codes)
    per_value = []
    advice: list[dict[str, Any]] = []
    drop: dict[str, set[Any]] = {}
    exclude: dict[str, list[tuple[float, float]]] = {}
    complete = [t for t in judged if t.state == "complete" and t.value is not None]
    best = None
    for t in complete:
        if best is None or _better(t.value, best.value, direction):  # type: ignore[arg-type]
            best = t
    best_value = None if best is None else best.value
    chosen = None if winner is None else next((t for t in complete if t.number == winner[0]), None)
    if winner is not None and chosen is not None:
        best, best_value = chosen, winner[1]
    groups = _groups(judged, space)
    for g in groups:
        n = len(g.trials)
        found = Counter(c for t in g.trials for c in t.codes)
        for code, count in found.most_common():
            per_value.append(
                {
                    "param": g.param,
                    "value": g.label,
                    "trials": n,
                    "code": code,
                    "count": count,
                    "text": f"{g.param}={g.label}: {count} of {n} trials {code}",
                }
            )
        if n < MIN_GROUP:
            continue
        bad = sum(t.bad for t in g.trials) / n
        others = [t for t in judged if t not in g.trials]
        bad_others = sum(t.bad for t in others) / len(others) if others else 0.0
        if bad < STRONG or bad - bad_others < CONTRAST or (best is not None and best in g.trials):
            continue
        if "choices" not in space[g.param] and _by_value(space[g.param]):
            continue  # an integer range keeps its values (the report counts them only)
        failed = sum(t.state == "fail" for t in g.trials)
        alarm_counts = Counter(
            c for t in g.trials for c in t.codes if c in {str(a) for a in ALARMS}
        )
        # The most frequent alarm; on a tie the cause before the symptom (the order of
        # ``Code``: vanishing gradients before the underconfidence they bring).
        order = list(Code)
        why = min(
            alarm_counts, key=lambda c: (-alarm_counts[c], order.index(Code(c))), default=None
        )
        reason = f"{why} in {alarm_counts[why]} of {n} trials" if why else f"{failed} of {n} failed"
        action = (
            f"drop {g.param}={g.label}"
            if "choices" in space[g.param]
            else f"keep {g.param} out of {g.label}"
        )
        advice.append(
            {
                "param": g.param,
                "value": g.label,
                "action": action,
                "evidence": f"{g.param}={g.label}: {reason} ({bad:.0%} of its trials went "
                f"wrong, {bad_others:.0%} of the others)",
                "why": MESSAGES[Code(why)] if why else "its trials failed",
            }
        )
        if "choices" in space[g.param]:
            drop.setdefault(g.param, set()).add(g.value)
        else:
            exclude.setdefault(g.param, []).append(g.value)
    ranked = sorted(complete, key=lambda t: t.value or 0.0, reverse=direction == "maximize")
    top = ranked[: max(MIN_GROUP, math.ceil(TOP_SHARE * len(ranked)))]
    if len(ranked) >= 2 * MIN_GROUP:
        median = statistics.median(t.value for t in ranked if t.value is not None)
        for g in groups:
            param = space[g.param]
            if "choices" not in param or importance.get(g.param, 0.0) < IMPORTANT:
                continue
            if g.value in drop.get(g.param, set()) or len(g.trials) < MIN_GROUP:
                continue
            values = [t.value for t in g.trials if t.state == "complete" and t.value is not None]
            best_here = (max if direction == "maximize" else min)(values) if values else None
            if best_here is not None and not _better(median, best_here, direction):
                continue  # its best trial is at least an average one: keep it
            shown = "none completed" if best_here is None else f"its best {best_here:.4g}"
            advice.append(
                {
                    "param": g.param,
                    "value": g.label,
                    "action": f"drop {g.param}={g.label}",
                    "evidence": f"{g.param}={g.label}: not one of its {len(g.trials)} trials "
                    f"reached the study's median {median:.4g} ({shown}; importance "
                    f"{importance[g.param]:.2f})",
                    "why": "search where the good trials are",
                }
            )
            drop.setdefault(g.param, set()).add(g.value)
    for code, count in codes.most_common():
        if count / max(1, len(judged)) >= COMMON:
            advice.append(
                {
                    "param": None,
                    "value": None,
                    "action": f"{code} in {count} of {len(judged)} trials",
                    "evidence": f"{count} of {len(judged)} trials {code}",
                    "why": MESSAGES[Code(code)],
                }
            )
    suggested = _narrowed(space, drop, exclude, ranked, top, importance)
    spec_out = {**resubmit, "search_space": suggested["search_space"]}
    if suggested["fixed"]:
        spec_out["fixed"] = {**(resubmit.get("fixed") or {}), **suggested["fixed"]}
    if best is not None:  # the next study starts where this one ended
        first = {k: v for k, v in best.params.items() if k in suggested["search_space"]}
        spec_out["enqueue"] = [first] if first else []
    for change in suggested["changes"]:
        advice.append(change)
    return {
        "study": name,
        "trials": len(judged),
        "best": None
        if best is None
        else {"number": best.number, "value": best_value, "params": best.params},
        "importances": dict(importance),
        "findings": {
            "by_code": dict(codes.most_common()),
            "by_value": sorted(per_value, key=lambda r: (-r["count"] / r["trials"], -r["count"])),
        },
        "advice": advice,
        "suggested_spec": spec_out,
    }


def _narrowed(
    space: Mapping[str, Any],
    drop: Mapping[str, set[Any]],
    exclude: Mapping[str, list[tuple[float, float]]],
    ranked: Sequence[Trial],
    top: Sequence[Trial],
    importance: Mapping[str, float],
) -> dict[str, Any]:
    """The space with bad values dropped, bad thirds cut off, and the most important
    numeric ranges narrowed to where the best quarter of trials lay."""
    out: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    changes: list[dict[str, Any]] = []
    for name, dim in space.items():
        if "choices" in dim:
            kept = [c for c in dim["choices"] if c not in drop.get(name, set())]
            if len(kept) == 1:
                fixed[name] = kept[0]
            else:
                out[name] = {**dim, "choices": kept}
            continue
        if _by_value(dim):
            out[name] = dict(dim)
            continue
        low, high, log = dim["low"], dim["high"], bool(dim.get("log"))
        for a, b in exclude.get(name, []):  # cut a bad third off an end
            if math.isclose(a, low) and b < high:
                low = b
            elif math.isclose(b, high) and a > low:
                high = a
        values = [t.params[name] for t in top if name in t.params]
        if (
            importance.get(name, 0.0) >= IMPORTANT
            and len(values) >= MIN_GROUP
            and len(ranked) >= 2 * MIN_GROUP
        ):
            if log:
                lo, hi = min(values) / WIDEN, max(values) * WIDEN
            else:
                pad = 0.1 * (dim["high"] - dim["low"])
                lo, hi = min(values) - pad, max(values) + pad
            new_low, new_high = max(low, lo), min(high, hi)
            if new_low < new_high:
                if (new_low, new_high) != (low, high):
                    changes.append(
                        {
                            "param": name,
                            "value": f"[{new_low:.3g}, {new_high:.3g}]",
                            "action": f"narrow {name} to [{new_low:.3g}, {new_high:.3g}]",
                            "evidence": f"the best {len(top)} trials had {name} in "
                            f"[{min(values):.3g}, {max(values):.3g}] (importance "
                            f"{importance[name]:.2f})",
                            "why": "search where the best trials are",
                        }
                    )
                low, high = new_low, new_high
        out[name] = {**dim, "low": low, "high": high}
    return {"search_space": out, "fixed": fixed, "changes": changes}

"""Section 3 of ``RESULTS.md``, search quality, from ``results/quality.json``: a table per
data set and budget, the ablations of the service, the wins of the service over each
peer, and ``quality.png`` (``benchmarks.report.quality`` calls ``section``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.quality_methods import ABLATIONS, SERVICE
from benchmarks.quality_summary import LEVEL, RETRAINS_BEFORE, critical
from benchmarks.report import _plt, _pm, _save, _table

ABLATION_TITLES = {
    "service -priors": "without priors",
    "service -reevaluate": "without re-evaluation",
    "service -pruner": "without its pruner",
}


def _score(direction: str) -> tuple[str, str, int]:
    """The test metric's name, which way is better, and the digits to show."""
    if direction == "minimize":
        return "MAE", "lower is better", 2
    return "accuracy", "higher is better", 3


def _wins(row: dict[str, Any], key: str = "vs_service") -> tuple[str, str]:
    """'service better on' and 'ties' cells of a row (``vs_service_once``: on the first
    retraining alone)."""
    vs = row.get(key) or row["vs_service"]  # a run from before retrains: the same
    if vs is None:
        return "-", "-"
    if not vs["paired"]:  # no run of the service to pair with
        return "n/a", "n/a"
    return f"{vs['wins']}/{vs['paired']}", str(vs["ties"])


def _ahead(row: dict[str, Any], digits: int) -> str:
    """The 'service ahead' cell: the paired mean lead ± its standard error, in bold when
    a paired t test settles it (``quality_summary.LEVEL``)."""
    ahead = row.get("service_ahead")  # none in a summary from before it
    if ahead is None:
        return "-"
    if ahead["se"] is None:
        return f"{ahead['mean']:+.{digits}f}"
    cell = f"{ahead['mean']:+.{digits}f} ± {ahead['se']:.{digits}f}"
    return f"**{cell}**" if ahead["resolved"] else cell


def _seeds(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]} to {seeds[-1]}"
    return ", ".join(map(str, seeds))


def _header(doc: dict[str, Any]) -> str:
    res, p = doc["result"], doc["params"]
    datasets = []
    for d in res["datasets"]:
        name, better, _ = _score(d["direction"])
        where = f"file `{d['path']}`, label `{d['label']}`; " if d.get("path") else ""
        datasets.append(f"`{d['name']}` ({where}test {name}, {better})")
    budgets = " and ".join(str(b) for b in sorted(p["budgets"]))
    return (
        f"**Run:** {', '.join(datasets)}; budgets of {budgets} training epochs per search; "
        f"{len(p['seeds'])} seed{'s' if len(p['seeds']) > 1 else ''} ({_seeds(p['seeds'])}) "
        f"a method, data set and budget; trials of up to "
        f"{p['epochs']} epochs, batch size 64; {len(p['methods'])} methods: "
        f"{', '.join(f'`{m}`' for m in p['methods'])}; {p['lanes']} searches at once on "
        f"{doc['machine']['cores']} cores; each named configuration retrained "
        f"{_times(_retrains(doc))}.{_parts(doc)}"
    )


def _retrains(doc: dict[str, Any]) -> int:
    return int(doc["params"].get("retrains", RETRAINS_BEFORE))


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _parts(doc: dict[str, Any]) -> str:
    """How a joined run (``benchmarks.quality_merge``) was made: its parts, each some data
    sets at one budget (nothing for a single part)."""
    parts = doc.get("parts")
    if not parts or len(parts) < 2:
        return ""
    each = "; ".join(
        f"{', '.join(f'`{name}`' for name in p['datasets'])} at "
        f"budget{'s' if len(p['budgets']) > 1 else ''} {', '.join(map(str, p['budgets']))} "
        f"on {p['date'][:10]} ({p['duration_s'] / 60:.0f} min{_rescored(p)})"
        for p in parts
    )
    return (
        f" Run in {len(parts)} parts, every method of a data set and budget side by side in "
        f"the same part: {each}."
    )


def _rescored(part: dict[str, Any]) -> str:
    """How a part's retrainings were added after its searches (``quality_rescore``)."""
    again = part.get("rescored")
    if again is None:
        return ""
    return (
        f"; retrained to {again['retrains']} on {again['date'][:10]} by "
        f"`benchmarks.quality_rescore`, {again['duration_s'] / 60:.0f} min"
    )


def _method_text() -> str:
    return (
        "Every method searches the service's default space and builds every model the same "
        "way on the same split; every epoch trained counts against the budget. `service` is "
        "a real API and worker with the service's defaults and the study's `epoch_budget` "
        "(it starts no trial whose epochs no longer fit, so it may leave up to one trial's "
        "epochs unused: *epochs used*); `service -…` is the same with one of its "
        "improvements off. The peers run in the search's process and stop when the budget "
        "is spent. *Test*: the configuration each method names, retrained on train + "
        "validation and scored on the test split by the same code for every method, the "
        "mean of its retrainings (each from its own seed, the same seeds for every method "
        "of a search seed: one retraining scores an initialisation's luck with the "
        "configuration); *best val*: the validation score each tool reports for it "
        "(KerasTuner takes a trial's best epoch, the others its last). Mean ± sd over the "
        "seeds. *Service better*: on how many seeds `service` scored strictly better on "
        "test than the method (paired by seed), ties apart; *on one retraining*: the same "
        "over the first retraining alone (from the search's seed). *Service ahead*: the "
        "mean over the seeds of the service's test score minus the method's (the method's "
        "minus the service's for an MAE: positive is the service better), ± its standard "
        f"error; in bold where a paired t test settles it (two-sided, p < {LEVEL:g}: with 5 "
        f"seeds, {critical(5):.2f} standard errors). A lead not in bold is one these seeds "
        "cannot tell from chance. *Wall*: the search "
        "alone. The method is the docstring of `benchmarks/quality.py`."
    )


def _table_of(rows: list[dict[str, Any]]) -> list[str]:
    name, better, digits = _score(rows[0]["direction"])
    body = []
    for r in rows:
        wins, ties = _wins(r)
        body.append(
            [
                f"**{r['method']}**" if r["method"] == SERVICE else r["method"],
                _pm(r["test"], digits),
                _pm(r["best_val"], digits),
                _pm(r["epochs_used"], 0),
                _pm(r["trials"], 1),
                _pm(r["pruned"], 1) if r["pruned"] is not None else "-",
                _pm(r["wall_s"], 0),
                wins,
                ties,
                _wins(r, "vs_service_once")[0],
                _ahead(r, digits + 1),
            ]
        )
    return _table(
        [
            "method",
            f"test {name} ({better})",
            f"best val {name}",
            "epochs used",
            "trials",
            "pruned",
            "wall s",
            "service better",
            "ties",
            "on one retraining",
            "service ahead",
        ],
        body,
    )


def _ablations(summary: list[dict[str, Any]], groups: list[tuple[str, int]]) -> list[str]:
    present = [m for m in ABLATIONS if any(r["method"] == m for r in summary)]
    if not present:
        return []
    body = []
    for dataset, budget in groups:
        here = {r["method"]: r for r in summary if (r["dataset"], r["budget"]) == (dataset, budget)}
        if SERVICE not in here:
            continue
        _, _, digits = _score(here[SERVICE]["direction"])
        cells = [f"`{dataset}`", str(budget), _pm(here[SERVICE]["test"], digits)]
        for method in present:
            r = here.get(method)
            wins = _wins(r)[0] if r is not None else ""
            cells.append(f"{_pm(r['test'], digits)} ({wins})" if r is not None else "n/a")
        body.append(cells)
    if not body:
        return []
    return [
        "",
        "**Ablations.** The service's test score with all three improvements, and without "
        "each (mean ± sd; in brackets, on how many seeds the full service did better):",
        "",
        *_table(
            ["data set", "budget", "service", *(ABLATION_TITLES.get(m, m) for m in present)],
            body,
        ),
    ]


def _overall(summary: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    totals: dict[str, list[int]] = {}
    for r in summary:
        if r["vs_service"] is None or not r["vs_service"]["paired"]:
            continue
        vs, once = r["vs_service"], r.get("vs_service_once") or r["vs_service"]
        t = totals.setdefault(r["method"], [0, 0, 0, 0, 0, 0, 0])
        t[0], t[1], t[2] = t[0] + vs["wins"], t[1] + vs["ties"], t[2] + vs["paired"]
        t[3] += once["wins"]
        ahead = r.get("service_ahead")
        if ahead is not None:
            t[4] += 1
            t[5] += ahead["resolved"] and ahead["mean"] > 0
            t[6] += ahead["resolved"] and ahead["mean"] < 0
    if not totals:
        return [], {}
    rows = [
        [m, f"{w}/{n}", str(t), f"{o}/{n}", f"{up}/{g}" if g else "-", f"{down}/{g}" if g else "-"]
        for m, (w, t, n, o, g, up, down) in totals.items()
    ]
    lines = [
        "",
        "**Over every data set and budget**, the seeds on which `service` scored strictly "
        "better on test than each method, and the data sets and budgets on which its mean "
        f"lead or deficit is settled by a paired t test (p < {LEVEL:g}; the rest are not "
        "settled by these seeds):",
        "",
        *_table(
            [
                "method",
                "service better",
                "ties",
                "on one retraining",
                "service ahead, settled",
                "service behind, settled",
            ],
            rows,
        ),
    ]
    return lines, {m: f"{t[0]}/{t[2]}" for m, t in totals.items()}


def _figure(summary: list[dict[str, Any]], names: list[str], out: Path) -> list[str]:
    plt = _plt()
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for ax, dataset in zip(axes.flat, names, strict=False):
        mine = [r for r in summary if r["dataset"] == dataset]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        budgets = sorted({r["budget"] for r in mine})
        height = 0.8 / len(budgets)
        for k, (budget, color) in enumerate(zip(budgets, colors, strict=False)):
            at = {r["method"]: r for r in mine if r["budget"] == budget}
            ys = [i - 0.4 + height * (k + 0.5) for i, m in enumerate(methods) if m in at]
            ax.errorbar(
                [at[m]["test"]["mean"] for m in methods if m in at],
                ys,
                xerr=[at[m]["test"]["sd"] for m in methods if m in at],
                fmt="o",
                markersize=4,
                capsize=2,
                color=color,
                label=f"{budget} epochs",
            )
        lows = [r["test"]["mean"] - r["test"]["sd"] for r in mine]
        highs = [r["test"]["mean"] + r["test"]["sd"] for r in mine]
        span = max(highs) - min(lows) or 1.0
        ax.set_xlim(min(lows) - 0.15 * span, max(highs) + 0.15 * span)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.set_ylim(len(methods) - 0.5, -0.5)  # the first method on top
        ax.grid(axis="x", linewidth=0.5, alpha=0.5)
        name, better, _ = _score(mine[0]["direction"])
        ax.set_xlabel(f"test {name} ({better})", fontsize=9)
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7)
    return _save(plt, fig, out, "quality")


def section(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    res = doc["result"]
    if "datasets" not in res:  # a run from before the data sets and budgets
        return _single(doc, out)
    summary = res["summary"]
    groups = list(dict.fromkeys((r["dataset"], r["budget"]) for r in summary))
    lines = [_header(doc), "", _method_text()]
    for dataset, budget in groups:
        rows = [r for r in summary if (r["dataset"], r["budget"]) == (dataset, budget)]
        lines += ["", f"**`{dataset}`, a budget of {budget} epochs:**", "", *_table_of(rows)]
    lines += _ablations(summary, groups)
    overall, head_wins = _overall(summary)
    lines += overall
    if res["failed"]:
        lines += ["", f"**{len(res['failed'])} search(es) failed** and are left out:", ""]
        lines += [
            f"- {f['method']} on `{f['dataset']}`, budget {f['budget']}, seed {f['seed']} "
            f"(exit {f['returncode']})"
            for f in res["failed"]
        ]
    names = list(dict.fromkeys(dataset for dataset, _ in groups))
    if names:
        lines += _figure(summary, names, out)
    head = {
        f"{dataset}_{budget}": {
            r["method"]: r["test"]["mean"]
            for r in summary
            if (r["dataset"], r["budget"]) == (dataset, budget)
        }
        for dataset, budget in groups
    }
    return lines, {"test": head, "service_better": head_wins}


def _single(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    """The section of a run from before: ``digits``, one budget, test accuracy."""
    res, p = doc["result"], doc["params"]
    rows = [
        [
            r["method"],
            _pm(r["best_val"]),
            _pm(r["test_accuracy"]),
            _pm(r["epochs_used"], 0),
            _pm(r["trials"], 1),
            _pm(r["wall_s"], 1),
        ]
        for r in res["summary"]
    ]
    lines = [
        f"`digits`, a budget of {p['budget']} training epochs per search, trials of up to "
        f"{p['epochs']} epochs, seeds {', '.join(map(str, p['seeds']))}; mean ± sd over "
        "the seeds. *Best val*: the best validation accuracy as each tool reports it "
        "(KerasTuner takes a trial's best epoch, the service and Optuna its last). *Test*: "
        "that configuration retrained on train + validation and scored once on the test "
        "split, by the same code for every method. *Wall*: the search alone, with "
        f"{p['lanes']} searches running at once on {doc['machine']['cores']} cores.",
        "",
        *_table(
            ["method", "best val accuracy", "test accuracy", "epochs used", "trials", "wall s"],
            rows,
        ),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = [r["method"] for r in res["summary"]]
    ax.barh(
        names,
        [r["test_accuracy"]["mean"] for r in res["summary"]],
        xerr=[r["test_accuracy"]["sd"] for r in res["summary"]],
        color="tab:blue",
    )
    low = min(r["test_accuracy"]["mean"] - r["test_accuracy"]["sd"] for r in res["summary"])
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy of the best configuration ({p['budget']} epochs budget)")
    lines += _save(plt, fig, out, "quality")
    head = {r["method"]: r["test_accuracy"]["mean"] for r in res["summary"]}
    return lines, {"test_accuracy": head}

"""Write ``RESULTS.md`` and its plots from the benchmarks' JSON files.

python -m benchmarks.report [--results DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, RESULTS_DIR

ORDER = ("overhead", "feeding", "quality", "scaling", "memory")


def _load(results: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ORDER:
        path = results / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    return f"{_f(stat['mean'], digits)} ± {_f(stat['sd'], digits)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, out: Path, name: str) -> list[str]:
    """Write the figure as ``<name>.png`` in ``out``; the Markdown lines that show it."""
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
    return ["", f"![{name}]({name}.png)"]


# --- one section per benchmark: (markdown lines, headline facts) ------------------------


def overhead(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    res, p = doc["result"], doc["params"]
    s = res["summary"]
    rows = [
        [
            str(r["trial"]),
            r["params"]["optimizer"],
            _f(r["params"]["learning_rate"], 5),
            _f(r["bare_s"]),
            _f(r["service_s"]),
            _f(r["overhead_s"], 3),
            _f(r["lease_s"], 3),
            _f(r["reporting_s"], 3),
            _f(r["complete_s"], 3),
            _f(r["ratio"], 3),
        ]
        for r in res["rows"]
    ]
    lines = [
        f"{len(res['rows'])} configurations from the default space, {p['epochs']} epochs "
        "each on `digits`, one TensorFlow thread. *Bare*: build, compile and `model.fit` in "
        "a warm process. *Service*: the same model as a trial, from the lease request to "
        "the answer of `complete` (worker side, SQLite, one epoch report each epoch).",
        "",
        *_table(
            [
                "trial",
                "optimizer",
                "learning rate",
                "bare s",
                "service s",
                "overhead s",
                "lease s",
                "reports s",
                "complete s",
                "ratio",
            ],
            rows,
        ),
        "",
        f"Median ratio **{_f(s['median_ratio'], 3)}** (max {_f(s['max_ratio'], 3)}): "
        f"{_f(s['median_overhead_s'], 3)} s more per trial, "
        f"{_f(s['median_overhead_per_epoch_ms'], 1)} ms per epoch. Medians of the calls: "
        f"lease {_f(s['median_lease_ms'], 1)} ms, an epoch report "
        f"{_f(s['median_report_ms'], 1)} ms, complete {_f(s['median_complete_ms'], 1)} ms; "
        "the rest of the overhead is the worker's own (see the method in "
        "`benchmarks/overhead.py`).",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = range(len(res["rows"]))
    ax.bar([x - 0.2 for x in xs], [r["bare_s"] for r in res["rows"]], 0.4, label="bare fit")
    ax.bar(
        [x + 0.2 for x in xs],
        [r["service_s"] for r in res["rows"]],
        0.4,
        label="trial in the service",
    )
    ax.set_xticks(list(xs), [str(r["trial"]) for r in res["rows"]])
    ax.set_xlabel("trial")
    ax.set_ylabel("seconds")
    ax.set_title(f"One trial of {p['epochs']} epochs: bare vs. in the service")
    ax.legend()
    lines += _save(plt, fig, out, "overhead")
    return lines, {
        "overhead_ratio": s["median_ratio"],
        "overhead_per_epoch_ms": s["median_overhead_per_epoch_ms"],
    }


def feeding(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    res, p = doc["result"], doc["params"]
    rows = []
    for r in res["rows"]:
        sv, op = r["service"], r["optuna"]
        rows.append(
            [
                r["backend"],
                f"{r['trials']:,}",
                _f(sv["leases_per_s"], 1),
                _f(sv["lease_ms"]["p50"], 1),
                _f(sv["lease_ms"]["p95"], 1),
                _f(sv["lease_ms"]["p99"], 1),
                _f(op["leases_per_s"], 1),
                _f(op["lease_ms"]["p50"], 1),
                _f(op["lease_ms"]["p95"], 1),
                _f(op["lease_ms"]["p99"], 1),
            ]
        )
    lines = [
        f"{p['workers']} simulated workers, {p['window']} lease cycles per row (lease, "
        f"{p['reports']} reports, complete), TPE and the median pruner, one API process; "
        "*trials* is the study's size when the service's cycles start (Optuna's start "
        f"{p['window']} later). Plain Optuna: the same processes doing `ask` + suggest, "
        "`report` + `should_prune`, `tell` on the same study in the same database (its "
        "latency is `ask`'s).",
        "",
        *_table(
            [
                "database",
                "trials",
                "service leases/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "Optuna asks/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
            ],
            rows,
        ),
    ]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for backend in dict.fromkeys(r["backend"] for r in res["rows"]):
        mine = [r for r in res["rows"] if r["backend"] == backend]
        xs = [r["trials"] for r in mine]
        for who, style in (("service", "-o"), ("optuna", "--s")):
            a1.plot(xs, [r[who]["leases_per_s"] for r in mine], style, label=f"{who}, {backend}")
            a2.plot(xs, [r[who]["lease_ms"]["p95"] for r in mine], style, label=f"{who}, {backend}")
    for ax, what in ((a1, "leases (asks) per second"), (a2, "p95 lease (ask) latency, ms")):
        ax.set_xscale("log")
        ax.set_xlabel("trials in the study")
        ax.set_ylabel(what)
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    lines += _save(plt, fig, out, "feeding")
    head = {}
    for r in res["rows"]:
        head[f"leases_per_s_{r['backend']}_{r['trials']}"] = r["service"]["leases_per_s"]
        head[f"lease_p95_ms_{r['backend']}_{r['trials']}"] = r["service"]["lease_ms"]["p95"]
    return lines, head


def quality(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
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


def scaling(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    res, p = doc["result"], doc["params"]
    rows = [
        [str(r["workers"]), _f(r["seconds"], 1), _f(r["trials_per_min"], 1), _f(r["speedup"], 2)]
        for r in res["rows"]
    ]
    lines = [
        f"A study of {p['trials']} trials of {p['epochs']} epochs (random sampler, no "
        "pruner) with idle workers already waiting; one TensorFlow thread per worker, on "
        f"{doc['machine']['cores']} cores shared with the API.",
        "",
        *_table(["workers", "seconds", "trials/min", "speed-up"], rows),
    ]
    return lines, {"trials_per_min": {str(r["workers"]): r["trials_per_min"] for r in res["rows"]}}


def memory(doc: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    res, p = doc["result"], doc["params"]
    after = res["rss_mib_after"]
    rows = [["idle, before the first trial", _f(res["idle_rss_mib"], 0)]]
    rows += [[f"after {k} trials", _f(v, 0)] for k, v in after.items()]
    lines = [
        f"One worker, {p['trials']} trials of {p['epochs']} epoch(s) each on `digits`. "
        f"Growth over the run: {_f(res['growth_mib_per_trial'], 2)} MiB per trial.",
        "",
        *_table(["worker RSS", "MiB"], rows),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["trials"] for r in res["readings"]], [r["rss_mib"] for r in res["readings"]])
    ax.set_xlabel("trials finished")
    ax.set_ylabel("worker RSS, MiB")
    ax.set_ylim(bottom=0)
    lines += _save(plt, fig, out, "memory")
    return lines, {"rss_mib_after": after}


SECTIONS = {
    "overhead": ("1. Overhead: a trial in the service against a bare `model.fit`", overhead),
    "feeding": ("2. Feeding workers: leases per second as the study grows", feeding),
    "quality": ("3. Search quality at an equal budget", quality),
    "scaling": ("4. Scaling: trials per minute with 1 and 2 workers", scaling),
    "memory": ("5. Memory: a worker's RSS over many trials", memory),
}


def write(results: Path, out: Path) -> dict[str, Any]:
    """RESULTS.md and the PNGs in ``out``; returns the headline figures by benchmark."""
    docs = _load(results)
    if not docs:
        raise SystemExit(f"no benchmark results in {results}")
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(docs.values()))
    m = first["machine"]
    v = m["versions"]
    sizes = sorted({d["size"] for d in docs.values()})
    dates = sorted(d["date"] for d in docs.values())
    total_min = sum(d["duration_s"] for d in docs.values()) / 60
    lines = [
        "# Benchmark results",
        "",
        f"Measured {dates[0][:10]} ({dates[0]} to {dates[-1]}) by `make bench` "
        f"(size {', '.join(sizes)}; {total_min:.1f} minutes in all) on {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gib']} GiB, no GPU; {m['os']}.",
        "",
        f"Python {v['python']}, TensorFlow {v['tensorflow']}, Keras {v['keras']}, Optuna "
        f"{v['optuna']}, FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}, SQLAlchemy "
        f"{v['sqlalchemy']}, psycopg {v['psycopg']}, KerasTuner {v['keras-tuner']}, NumPy "
        f"{v['numpy']}, SQLite {v['sqlite']}, PostgreSQL {v['postgresql']} (fsync on).",
        "",
        "Regenerate with `make bench` (about half an hour here), or one benchmark with "
        "`python -m benchmarks.<name> --size full` then `python -m benchmarks.report`. "
        "The raw figures are in `results/*.json`; the method of each benchmark is the "
        "docstring of `benchmarks/<name>.py`.",
    ]
    headline: dict[str, Any] = {}
    for name, (title, section) in SECTIONS.items():
        lines += ["", f"## {title}", ""]
        if name not in docs:
            lines.append("Not measured in this run.")
            continue
        body, head = section(docs[name], out)
        lines += body
        lines += [
            "",
            f"*{docs[name]['duration_s']:.0f} s, size {docs[name]['size']}, {docs[name]['date']}.*",
        ]
        headline[name] = head
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    return headline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    headline = write(args.results, args.out)
    print(json.dumps(headline, indent=2))
    print(f"wrote {args.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The report's figures as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the API draws into memory
import matplotlib.pyplot as plt


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


def importances_png(report: dict[str, Any]) -> bytes:
    """A bar per parameter, most important on top."""
    items = sorted(report["importances"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"{report['study']}: parameter importances")
    return _png(fig)


def curves_png(curves: dict[str, dict[int, float]], metric: str) -> bytes:
    """The objective per epoch of each named trial."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in curves.items():
        steps = sorted(values)
        ax.plot(steps, [values[s] for s in steps], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend()
    ax.set_title("learning curves: the best and the worst trial")
    return _png(fig)

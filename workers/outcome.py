"""How a trial ended on the worker (shared by the trainer, which fills it, and the worker's
parent, which hands it back; no TensorFlow here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Outcome:
    """How a trial ended on the worker."""

    state: Literal["complete", "fail", "pruned", "stopped"]
    value: float | None = None
    reason: str | None = None
    epochs_run: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    train_val_gap: float | None = None
    """Training minus validation metric at the last epoch (overfitting shows here)."""
    findings: list[dict[str, Any]] = field(default_factory=list)
    """What ``diagnostics.probe`` found (``diagnostics.codes``)."""
    diagnostics_s: float = 0.0
    """Seconds the probe took (the overhead benchmark reports their share)."""

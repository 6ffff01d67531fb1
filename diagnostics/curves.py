"""The findings read from a trial's loss curves (no TensorFlow): not learning, a stall,
an unstable loss, overfitting; and the record every finding is (``finding``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from diagnostics.codes import (
    MESSAGES,
    MIN_EPOCHS,
    NOT_LEARNING_MARGIN,
    OVERFIT_GAP,
    OVERFIT_RATIO,
    OVERFIT_RISE,
    STALL_EPOCHS,
    STALL_MARGIN,
    UNSTABLE_BLOWUP,
    UNSTABLE_BLOWUP_MARGIN,
    UNSTABLE_FRACTION,
    UNSTABLE_RISE,
    Code,
)

Finding = dict[str, Any]
"""``{code, epoch, layer, value, threshold, message}`` (``service.protocol.Finding``)."""


def finding(
    code: Code,
    epoch: int,
    value: float,
    threshold: float,
    layer: str | None = None,
    detail: str = "",
) -> Finding:
    message = MESSAGES[code] if not detail else f"{detail}: {MESSAGES[code]}"
    return {
        "code": str(code),
        "epoch": int(epoch),
        "layer": None if layer is None else layer[:128],  # (a custom model's names)
        "value": float(value) if math.isfinite(value) else 0.0,
        "threshold": float(threshold),
        "message": message[:1000],
    }


def curve_findings(losses_seen: list[float], val_losses: list[float]) -> list[Finding]:
    """What the epoch history says: not learning, a stall, an unstable loss, overfitting
    (``losses_seen``: the training loss per epoch; ``val_losses``: the validation's)."""
    losses = [v for v in losses_seen if math.isfinite(v)]
    n = len(losses)
    if n < MIN_EPOCHS:
        return []
    found: list[Finding] = []
    first, last, lowest = losses[0], losses[-1], min(losses)
    not_learning = first > 1e-3 and last > first * (1 - NOT_LEARNING_MARGIN)
    if not_learning:
        found.append(
            finding(
                Code.NOT_LEARNING,
                n,
                last / first,
                1 - NOT_LEARNING_MARGIN,
                detail=f"training loss {first:.4g} at epoch 1, {last:.4g} at epoch {n}",
            )
        )
    if not not_learning and n > STALL_EPOCHS:
        before, recent = min(losses[:-STALL_EPOCHS]), min(losses[-STALL_EPOCHS:])
        gain = (before - recent) / before if before > 0 else 0.0
        if gain < STALL_MARGIN:
            found.append(
                finding(
                    Code.LOSS_STALLED,
                    n,
                    gain,
                    STALL_MARGIN,
                    detail=f"the training loss improved {gain:.1%} over the last "
                    f"{STALL_EPOCHS} epochs",
                )
            )
    # Changes count against the first epoch's loss: near a loss of 0, a wobble of a
    # few thousandths is noise, not a step too large.
    scale = UNSTABLE_RISE * first
    rises = sum(b - a > scale for a, b in itertools.pairwise(losses))
    share = rises / (n - 1)
    blowup = last > lowest * UNSTABLE_BLOWUP and last - lowest > UNSTABLE_BLOWUP_MARGIN * first
    if (rises >= 2 and share >= UNSTABLE_FRACTION) or blowup:
        found.append(
            finding(
                Code.UNSTABLE_LOSS,
                n,
                share,
                UNSTABLE_FRACTION,
                detail=f"the training loss rose on {rises} of {n - 1} epochs and ended at "
                f"{last / lowest if lowest > 0 else 1:.2f}x its lowest",
            )
        )
    val = [v for v in val_losses if math.isfinite(v)]
    if len(val) == n:
        best = int(np.argmin(val))
        rising = val[-1] > val[best] * (1 + OVERFIT_RISE) and last < losses[best]
        gap = val[-1] >= OVERFIT_RATIO * last and val[-1] - last > OVERFIT_GAP
        if rising or gap:
            found.append(
                finding(
                    Code.OVERFITTING,
                    n,
                    val[-1] - last,
                    OVERFIT_GAP,
                    detail=f"validation loss {val[-1]:.4g} (lowest {val[best]:.4g} at epoch "
                    f"{best + 1}), training loss {last:.4g}",
                )
            )
    return found

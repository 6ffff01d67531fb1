"""The findings a trial can carry, what each measures and where its threshold comes from.

The source notes are the files of ``shared/seeds`` (cited by number, as in
``search-space.md``):

- 000: "TensorFlow and deep learning, without a PhD", chapter 7 (deep nets: ReLU, init,
  NaN from log(0)).
- 001: activation functions and optimizers (sigmoid's derivative, dead ReLU, SGD to Adam).
- 002: "why a network does not train" (batch norm hides a bad init, variance scaling,
  overfit a few rows first).
- 003: questions and answers (dead neurons, train/validation accuracy, overfitting).
- 004: tuning tips (N(0, 1) saturates, |z| >> 1; learning rate halved when the loss stops
  falling; predictions move to 0 and 1; compare train and validation loss; NaN causes).

No TensorFlow here: the worker measures with ``diagnostics.probe``, the service stores,
counts and advises with these names.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    VANISHING_GRADIENTS = "vanishing_gradients"
    EXPLODING_GRADIENTS = "exploding_gradients"
    SATURATED_UNITS = "saturated_units"
    DEAD_UNITS = "dead_units"
    NOT_LEARNING = "not_learning"
    LOSS_STALLED = "loss_stalled"
    UNSTABLE_LOSS = "unstable_loss"
    OVERFITTING = "overfitting"
    UNDERCONFIDENT = "underconfident"
    NON_FINITE_LOSS = "non_finite_loss"


ALARMS = frozenset(Code) - {Code.OVERFITTING}
"""Codes that say a trial did not train properly. Overfitting is the normal state of a
model that has learned its training rows (003: "train above valid means overfitting"), so
a healthy trial may carry it."""

# -- measured on the probe batch (diagnostics.probe) --------------------------------------

PROBE_ROWS = 128
"""Training rows the probe runs on: the first rows of the (standardised) training split,
the same at every probe of a trial."""

VANISHING_RATIO = 1e-2
"""A hidden layer's gradient (RMS per weight) below 1/100 of the output layer's: two
orders of magnitude. 001: sigmoid's derivative is at most 0.25, so the chain rule
multiplies gradients towards 0 layer by layer ("鏈式求導 ... 造成梯度消失")."""

EXPLODING_GROWTH = 100.0
"""The global gradient norm at a later probe more than 100 times the first probe's:
growing without bound. 004: a too large gradient makes the update NaN ("梯度過大")."""

EXPLODING_NORM = 1e4
"""A global gradient norm above this at any probe explodes whatever it started at (004)."""

CLIPPED_FRACTION = 0.5
"""With ``clipnorm`` set, a variable's gradient above it at more than half the probes:
clipping is active on most steps and hides an exploding gradient (004: clip, or lower the
learning rate; 002: such fixes hide a bug, like batch norm's band-aid)."""

SATURATION_Z = 4.0
"""|pre-activation| beyond 4: sigmoid'(4) = 0.018, 1/14 of its peak of 0.25, and tanh'(4)
= 0.0013. 004: with N(0, 1) weights "|z| >> 1" is common and "sigmoid'(z) becomes very small,
the neuron's learning saturates" (神经元学习饱和)."""

SATURATED_FRACTION = 0.5
"""A sigmoid or tanh layer whose units are saturated on more than half of the probe
rows (004: the N(0, 1) histogram of z spread from -30 to 30)."""

DEAD_FRACTION = 0.5
"""A ReLU layer with more than half its units giving 0 on every probe row. 003: a unit
dies when "a large gradient suddenly arrives" and no input can make it positive again;
001: too many negative inputs kill ReLU units (a smaller learning rate, a better init)."""

UNDERCONFIDENT_MARGIN = 0.1
"""A classifier whose mean top probability on the probe rows is within 10% of the way
from chance (1/K) to certainty. 004: "at first the predictions hover around 0.5; as it
learns they move towards 0 and 1" (网络的预测会慢慢的移动到0和1附近)."""

# -- read from the epoch history -------------------------------------------------------

MIN_EPOCHS = 3
"""Loss-curve findings need at least this many epochs."""

NOT_LEARNING_MARGIN = 0.05
"""The last training loss not 5% below the first epoch's. 004: "if the training loss
does not fall, the code, the data or the hyperparameters are wrong"; 000: a curve that
never rises means bad initialisation or sigmoid in a deep net."""

STALL_EPOCHS = 5
STALL_MARGIN = 0.01
"""The training loss's best improved by less than 1% over the last 5 epochs. 004: "when
the loss stops falling (or starts to oscillate), lower the learning rate"; "if the cost
has not fallen, halve the learning rate"."""

FAR_FROM_BEST = 0.05
"""A stalled trial is a finding only while its objective is more than 5% (relative) from
the study's best: a plateau at the top is convergence, not a problem."""

UNSTABLE_RISE = 0.05
UNSTABLE_FRACTION = 0.3
UNSTABLE_BLOWUP = 1.5
UNSTABLE_BLOWUP_MARGIN = 0.1
"""The training loss rose by more than 5% of its first epoch's value on at least 30% of
epochs, or ended above 1.5 times its lowest and 10% of the first epoch's value above it:
the step is too large. 004: "a large learning rate at the bottom of the valley makes the
loss oscillate" (震荡); 002: "look how wild the unsmoothed values are, is the learning rate
too high?". Changes are measured against the first epoch's loss: near a loss of 0, a
wobble of a few hundredths under dropout is noise (a trial of Adam at 0.014 wobbling from
0.04 to 0.12 still reached 0.989 on digits)."""

OVERFIT_RISE = 0.1
OVERFIT_RATIO = 2.0
OVERFIT_GAP = 0.1
"""Validation loss 10% above its lowest while the training loss kept falling, or the
validation loss at least twice the training loss and 0.1 above it. 004: "compare the
training and validation loss to judge overfitting"; 003: train above valid is overfitting."""

MESSAGES: dict[Code, str] = {
    Code.VANISHING_GRADIENTS: "gradients vanish before reaching the first layers (sigmoid or "
    "tanh in a deep net, or saturated units): try relu and a variance-scaling init (001, 000)",
    Code.EXPLODING_GRADIENTS: "the gradient norm explodes (or clipping is on most of the time): "
    "lower the learning rate or clip (004)",
    Code.SATURATED_UNITS: "sigmoid/tanh units are saturated (|z| >> 1): N(0, 1) or too large "
    "weights; use glorot/he init or relu (004)",
    Code.DEAD_UNITS: "most ReLU units output 0 on every row (dead ReLU after a large step): "
    "lower the learning rate, or use leaky_relu (003, 001)",
    Code.NOT_LEARNING: "the training loss never fell below its first epoch's: bad initialisation, "
    "a saturating activation or a too small or too large learning rate (004, 000)",
    Code.LOSS_STALLED: "the loss stopped falling far from the best trials: lower the learning "
    "rate when it stalls (lr_schedule plateau or exponential) (004)",
    Code.UNSTABLE_LOSS: "the training loss rises or oscillates: the step is too large, lower "
    "the learning rate (004, 002)",
    Code.OVERFITTING: "validation loss rises while the training loss falls (or is far above "
    "it): more dropout or l2, or fewer epochs (004, 003)",
    Code.UNDERCONFIDENT: "the classifier's predictions stay near chance (1/K): it has not "
    "learned (004)",
    Code.NON_FINITE_LOSS: "the loss became NaN or infinite: log(0), a too large step or too "
    "large initial weights; lower the learning rate, clip, normalise the data (000, 004)",
}
"""One line per code: what it means and what the notes say to change."""

"""The documented hyperparameters (``shared/design/search-space.md``), as data.

Each entry says what kind of value the parameter takes, the hard limits any study must
stay within, the documented default search range, the value used when a study neither
searches nor fixes it, and when the parameter is active at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["float", "int", "categorical"]

OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adadelta")
LR_SCHEDULES = ("constant", "exponential", "plateau")
KERNEL_INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "truncated_normal",
    "orthogonal",
    "random_normal",
)
BIAS_INITIALIZERS = ("zeros", "small_positive")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid")


@dataclass(frozen=True)
class Bounds:
    """Hard limits of a numeric value: ``low <= x <= high`` (or ``<`` where exclusive)."""

    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True

    def check(self, value: float) -> str | None:
        """Return why ``value`` is out of bounds, or None."""
        if value < self.low or (value == self.low and not self.low_inclusive):
            op = ">=" if self.low_inclusive else ">"
            return f"must be {op} {self.low:g}"
        if value > self.high or (value == self.high and not self.high_inclusive):
            op = "<=" if self.high_inclusive else "<"
            return f"must be {op} {self.high:g}"
        return None

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        return f"{left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Condition:
    """The parameter is active only when ``param`` takes ``value``."""

    param: str
    value: Any


@dataclass(frozen=True)
class ParamDef:
    """One documented hyperparameter.

    Attributes:
        name: canonical name, used in specs, Optuna trials and results.
        kind: ``float`` and ``int`` are searched over ``[low, high]``; ``categorical`` over
            a list of choices.
        bounds: hard limits of a numeric value, or of each numeric choice.
        allowed: for categorical parameters over names, the allowed choices.
        element: for categorical parameters, the type of a choice.
        default_range: documented search range: ``(low, high, log)`` or a choices tuple.
        default: the value used when the study neither searches nor fixes the parameter;
            ``SEARCH`` means it is searched over ``default_range``.
        condition: when the parameter is active; inactive parameters are not sampled.
        families: model families the parameter applies to (None: all).
    """

    name: str
    kind: Kind
    default_range: tuple[Any, ...]
    default: Any
    bounds: Bounds | None = None
    allowed: tuple[Any, ...] | None = None
    element: Literal["str", "int", "float_or_none", "bool"] | None = None
    condition: Condition | None = None
    families: tuple[str, ...] | None = None
    doc: str = ""

    def applies_to(self, family: str) -> bool:
        return self.families is None or family in self.families


SEARCH = object()
"""Marker for a parameter searched over its documented range unless the study says otherwise."""

PARAMS: tuple[ParamDef, ...] = (
    ParamDef(
        "learning_rate",
        "float",
        default_range=(1e-4, 1e-1, True),
        default=SEARCH,
        bounds=Bounds(0.0, 10.0, low_inclusive=False),
        doc="the optimizer's (initial) learning rate",
    ),
    ParamDef(
        "optimizer",
        "categorical",
        default_range=OPTIMIZERS,
        default=SEARCH,
        allowed=OPTIMIZERS,
        element="str",
        doc="sgd, sgd with momentum, adagrad, rmsprop, adam or adadelta",
    ),
    ParamDef(
        "momentum",
        "float",
        default_range=(0.5, 0.99, False),
        default=0.9,
        bounds=Bounds(0.0, 1.0, high_inclusive=False),
        condition=Condition("optimizer", "momentum"),
        doc="momentum of SGD with momentum (beta = 0.9 in the notes)",
    ),
    ParamDef(
        "lr_schedule",
        "categorical",
        default_range=LR_SCHEDULES,
        default=SEARCH,
        allowed=LR_SCHEDULES,
        element="str",
        doc="constant rate, exponential decay per epoch, or halving on a validation plateau",
    ),
    ParamDef(
        "lr_decay_rate",
        "float",
        default_range=(0.90, 0.999, False),
        default=SEARCH,
        bounds=Bounds(0.0, 1.0, low_inclusive=False),
        condition=Condition("lr_schedule", "exponential"),
        doc="per-epoch factor of exponential decay: lr = learning_rate * rate ** epoch",
    ),
    ParamDef(
        "dropout_rate",
        "float",
        default_range=(0.0, 0.5, False),
        default=SEARCH,
        bounds=Bounds(0.0, 1.0, high_inclusive=False),
        doc="dropout after each hidden layer",
    ),
    ParamDef(
        "kernel_initializer",
        "categorical",
        default_range=KERNEL_INITIALIZERS,
        default=SEARCH,
        allowed=KERNEL_INITIALIZERS,
        element="str",
        doc="weight initialisation (random_normal is N(0, 1), the documented bad choice)",
    ),
    ParamDef(
        "bias_initializer",
        "categorical",
        default_range=BIAS_INITIALIZERS,
        default="zeros",
        allowed=BIAS_INITIALIZERS,
        element="str",
        doc="zeros, or small_positive (0.1) for ReLU units",
    ),
    ParamDef(
        "activation",
        "categorical",
        default_range=ACTIVATIONS,
        default="relu",
        allowed=ACTIVATIONS,
        element="str",
        doc="activation of the hidden layers",
    ),
    ParamDef(
        "batch_norm",
        "categorical",
        default_range=(True, False),
        default=False,
        allowed=(True, False),
        element="bool",
        doc="batch normalisation of each hidden layer's pre-activations",
    ),
    ParamDef(
        "l2",
        "float",
        default_range=(1e-6, 1e-2, True),
        default=0.0,
        bounds=Bounds(0.0, 1.0),
        doc="L2 penalty on the kernels (0: none)",
    ),
    ParamDef(
        "batch_size",
        "categorical",
        default_range=(32, 64, 128, 256),
        default=64,
        bounds=Bounds(1, 65536),
        element="int",
        doc="examples per gradient step",
    ),
    ParamDef(
        "hidden_layers",
        "int",
        default_range=(1, 4, False),
        default=2,
        bounds=Bounds(1, 16),
        families=("mlp",),
        doc="number of hidden dense layers",
    ),
    ParamDef(
        "hidden_units",
        "categorical",
        default_range=(64, 128, 256, 512),
        default=128,
        bounds=Bounds(1, 8192),
        element="int",
        families=("mlp",),
        doc="units of the first hidden layer; later layers are no wider",
    ),
    ParamDef(
        "clipnorm",
        "categorical",
        default_range=(None, 1.0, 5.0),
        default=None,
        bounds=Bounds(0.0, 1e6, low_inclusive=False),
        element="float_or_none",
        doc="gradient norm clipping (null: none)",
    ),
)

PARAMS_BY_NAME: dict[str, ParamDef] = {p.name: p for p in PARAMS}

BRIEF_PARAMS = (
    "learning_rate",
    "optimizer",
    "lr_schedule",
    "lr_decay_rate",
    "dropout_rate",
    "kernel_initializer",
)
"""The parameters the product brief names (decay is ``lr_schedule`` with ``lr_decay_rate``)."""

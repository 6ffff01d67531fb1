"""The notes' priors: configurations the design notes recommend, which a study tries
first (as Optuna's enqueued trials) unless its spec says ``"priors": false``.

Each prior names the parameters it has an opinion on; ``priors_for`` takes them into a
study's space: a fixed parameter keeps its value, a searched choice not in the study's
choices is left to the sampler, a number is taken into the study's range. Parameters a
prior does not name are sampled. Priors that come out the same are tried once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_space.dimensions import Choices, Fixed
from search_space.sanity import into_range

if TYPE_CHECKING:
    from search_space.spec import SearchSpace


@dataclass(frozen=True)
class Prior:
    name: str
    why: str
    """Where it comes from: the notes (``shared/seeds/00N``) and what they say."""
    params: dict[str, Any]


PRIORS: tuple[Prior, ...] = (
    Prior(
        "adam-relu-variance-scaling",
        "Adam near 1e-3 (002); ReLU first (000, 001) with variance-scaling init, which "
        "generalises best (002), and a small positive bias (000); dropout 0.2 is enough "
        "for a small model (004); halve the rate when validation loss stalls (004)",
        {
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "activation": "relu",
            "kernel_initializer": "he_normal",
            "bias_initializer": "small_positive",
            "dropout_rate": 0.2,
            "lr_schedule": "plateau",
        },
    ),
    Prior(
        "adam-glorot-decay",
        "Adam near 1e-3 (002) with glorot init (004), an exponential decay of 0.99 per "
        "epoch (001) and no dropout",
        {
            "optimizer": "adam",
            "learning_rate": 2e-3,
            "activation": "relu",
            "kernel_initializer": "glorot_uniform",
            "dropout_rate": 0.0,
            "lr_schedule": "exponential",
            "lr_decay_rate": 0.99,
        },
    ),
    Prior(
        "momentum-plateau",
        "SGD with momentum 0.9 (001) starting high and lowered when the loss stalls (004), "
        "orthogonal init (004), dropout 0.2 (004)",
        {
            "optimizer": "momentum",
            "momentum": 0.9,
            "learning_rate": 3e-2,
            "activation": "relu",
            "kernel_initializer": "orthogonal",
            "dropout_rate": 0.2,
            "lr_schedule": "plateau",
        },
    ),
)


TIED = {"learning_rate": "optimizer"}
"""A prior's value of the key holds only with its value of the value: the learning rate
suits its optimizer (so tied parameters are taken last, once the optimizer is known)."""


def priors_for(space: SearchSpace) -> list[dict[str, Any]]:
    """The priors taken into ``space``: for each, the values of the searched parameters it
    names (fixed ones are the study's; the rest the sampler draws), without duplicates
    or empty ones. Each passes ``space.check_params``."""
    out: list[dict[str, Any]] = []
    for prior in PRIORS:
        chosen: dict[str, Any] = {}
        context: dict[str, Any] = {}  # with the fixed values, for the conditions
        dimensions = sorted(space.dimensions, key=lambda item: item[0] in TIED)
        for name, dim in dimensions:
            if isinstance(dim, Fixed):
                context[name] = dim.value
                continue
            if name not in prior.params or not space.can_be_active(name):
                continue
            if not space.is_active(name, context, space.family):
                continue  # (a momentum where the optimizer is not momentum, or not chosen)
            tied = TIED.get(name)
            if tied is not None and context.get(tied) != prior.params.get(tied):
                continue  # (a learning rate for adam is no prior for sgd)
            wish = prior.params[name]
            if isinstance(dim, Choices):
                if wish in dim.choices:
                    chosen[name] = wish
            else:
                chosen[name] = into_range(dim, wish)
            if name in chosen:
                context[name] = chosen[name]
        if chosen and chosen not in out:
            out.append(chosen)
    return out

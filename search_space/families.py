"""Model families: the built-in ``mlp`` and ``cnn``, and custom ones registered through the
``hpo.models`` entry-point group of an installed package.

A request only ever names a family; no code comes from it. The service reads the names of
the registered entry points (without importing them) to know which families a study may
use; a worker loads the one a trial names and calls it to build the model.

A custom family is a callable with the signature of ``keras_builder.build_model`` minus
``family``::

    def build(params, *, n_features, n_outputs, image_shape, seed) -> keras.Model

returning an uncompiled model from flat feature rows to logits (no output activation).
The worker compiles it with the trial's optimizer, loss and metrics. See
``examples/custom_model`` for a complete package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENTRY_POINT_GROUP = "hpo.models"
BUILTIN_FAMILIES = ("mlp", "cnn")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""A family's name: lower-case letters, digits and underscores, starting with a letter."""


@lru_cache(maxsize=1)
def registered() -> dict[str, EntryPoint]:
    """The custom families installed in this environment, by name (read once: installing
    a package needs a restart). Names that clash with a built-in or are malformed are
    skipped."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILTIN_FAMILIES and NAME.match(ep.name):
            found[ep.name] = ep
    return dict(sorted(found.items()))


def family_names() -> tuple[str, ...]:
    """Every family a study may name here: the built-ins, then the registered ones."""
    return (*BUILTIN_FAMILIES, *registered())


class FamilyUnavailable(LookupError):
    """The family is not registered in this environment."""


def load_builder(name: str) -> Callable[..., Any]:
    """The builder of a custom family (imports its package).

    Raises:
        FamilyUnavailable: no installed package registers ``name``.
    """
    ep = registered().get(name)
    if ep is None:
        raise FamilyUnavailable(
            f"model family {name!r} is not registered on this worker: install the package "
            f"that declares it in the {ENTRY_POINT_GROUP!r} entry-point group"
        )
    builder: Callable[..., Any] = ep.load()
    return builder

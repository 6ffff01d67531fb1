"""The declarative search space of ``shared/design/search-space.md``.

The documented parameters (``params``), the value objects of a space (``dimensions``),
the checks of one value (``values``), the parser (``spec``), the sanity run's
configuration (``sanity``), the mapping to Optuna (``optuna_space``) and (in
``search_space.keras_builder``, imported only by workers) the Keras model builder. No
FastAPI, no database.
"""

from search_space.catalog import BUILTIN_DATASETS, METRICS, MODEL_FAMILIES, DatasetInfo
from search_space.dimensions import (
    Choices,
    Dimension,
    Fixed,
    FloatRange,
    IntRange,
    Problem,
    SpaceError,
)
from search_space.params import BRIEF_PARAMS, PARAMS, PARAMS_BY_NAME, ParamDef
from search_space.sanity import SANE, SANE_LEARNING_RATE, sane_params
from search_space.size import max_param_count, param_count
from search_space.spec import SearchSpace

__all__ = [
    "BRIEF_PARAMS",
    "BUILTIN_DATASETS",
    "METRICS",
    "MODEL_FAMILIES",
    "PARAMS",
    "PARAMS_BY_NAME",
    "SANE",
    "SANE_LEARNING_RATE",
    "Choices",
    "DatasetInfo",
    "Dimension",
    "Fixed",
    "FloatRange",
    "IntRange",
    "ParamDef",
    "Problem",
    "SearchSpace",
    "SpaceError",
    "max_param_count",
    "param_count",
    "sane_params",
]

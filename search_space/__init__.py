"""The declarative search space of ``shared/design/search-space.md``.

Validation, the mapping to Optuna distributions, and (in ``search_space.keras_builder``,
imported only by workers) the Keras model builder. No FastAPI, no database.
"""

from search_space.catalog import BUILTIN_DATASETS, METRICS, MODEL_FAMILIES, DatasetInfo
from search_space.params import BRIEF_PARAMS, PARAMS, PARAMS_BY_NAME, ParamDef
from search_space.size import max_param_count, param_count
from search_space.spec import (
    Choices,
    Fixed,
    FloatRange,
    IntRange,
    Problem,
    SearchSpace,
    SpaceError,
)

__all__ = [
    "BRIEF_PARAMS",
    "BUILTIN_DATASETS",
    "METRICS",
    "MODEL_FAMILIES",
    "PARAMS",
    "PARAMS_BY_NAME",
    "Choices",
    "DatasetInfo",
    "Fixed",
    "FloatRange",
    "IntRange",
    "ParamDef",
    "Problem",
    "SearchSpace",
    "SpaceError",
    "max_param_count",
    "param_count",
]

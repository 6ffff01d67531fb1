"""What a spec's sampler and pruner names become in Optuna, and the seeds and grids
they need. Pure functions: no storage."""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_space import Choices, Fixed, IntRange, Problem, SearchSpace, SpaceError
from search_space.optuna_space import suggest
from service.states import Pruner, Sampler
from service.storage.fast_tpe import FastTPESampler

SAMPLERS: tuple[str, ...] = tuple(Sampler)
PRUNERS: tuple[str, ...] = tuple(Pruner)
MAX_GRID_POINTS = 1_000_000


def derive_seed(base: int | None, index: int) -> int:
    """A distinct, reproducible 31-bit seed for the ``index``-th draw of a study seeded
    ``base`` (0 when the study has no seed)."""
    return ((base or 0) * 1_000_003 + index) % (2**31)


def grid_of(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid of a finite space: every value of every searched parameter that can be
    active. Fixed values are not in it: ``suggest`` does not ask Optuna for them.

    Raises:
        SpaceError: a searched parameter is continuous (a float range without a step), or
            the grid has more than ``MAX_GRID_POINTS`` points.
    """
    grid: dict[str, list[Any]] = {}
    problems = []
    for name, dim in space.dimensions:
        if isinstance(dim, Fixed) or not space.can_be_active(name):
            continue
        if isinstance(dim, Choices):
            grid[name] = list(dim.choices)
        elif isinstance(dim, IntRange):
            grid[name] = list(range(dim.low, dim.high + 1, dim.step))
        elif dim.step is not None:
            n = round((dim.high - dim.low) / dim.step)
            grid[name] = [round(dim.low + k * dim.step, 12) for k in range(n + 1)]
        else:
            problems.append(
                Problem(
                    ("search_space", name),
                    "is continuous, which the grid sampler cannot "
                    "enumerate: give it a step, fix it, or use another sampler",
                    dim.to_json(),
                )
            )
    if problems:
        raise SpaceError(problems)
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_GRID_POINTS:
        raise SpaceError(
            [
                Problem(
                    ("sampler",), f"grid has {points} points, more than {MAX_GRID_POINTS}", "grid"
                )
            ]
        )
    return grid


def make_sampler(
    name: str, *, base_seed: int | None, index: int, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler for its ``index``-th trial. Seeded studies get a seed derived
    from their seed and the trial count, so sampling is the same whichever process asks."""
    seed = None if base_seed is None else derive_seed(base_seed, index)
    if name == Sampler.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if name == Sampler.QMC:
        # The QMC sequence position lives in the study's storage; the scrambling seed must
        # stay the study's own for the sequence to stay one sequence.
        return optuna.samplers.QMCSampler(
            seed=base_seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_asynchronous_seeding=False,
            warn_independent_sampling=False,
        )
    if name == Sampler.GRID:
        assert grid is not None
        # The seed shuffles the grid, and a trial's grid id indexes the shuffled grid: it
        # must be the study's own seed, or each trial's sampler would number the points
        # differently and a seeded study would run some twice and others never.
        return optuna.samplers.GridSampler(grid, seed=base_seed)
    # Optuna 5: multivariate TPE with the constant liar, right for parallel workers; its
    # suggestions, with the per-trial bookkeeping kept in numpy (see ``fast_tpe``).
    return FastTPESampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == Pruner.NONE:
        return optuna.pruners.NopPruner()
    if name == Pruner.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == Pruner.SUCCESSIVE_HALVING:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    # Judge no trial on its first quarter of epochs, and only once 5 trials have finished.
    # Steps are 1-based epochs and Optuna skips steps < n_warmup_steps, hence the + 1.
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 4 + 1)


def check_samplable(space: SearchSpace) -> None:
    """Sample ``space`` once in memory, so a study that cannot be sampled is refused at
    submission rather than failing every lease."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest(study.ask(), space)

"""A draft storage: a sampler draws one new trial through it without writing it (the
caller writes it with ``ServiceCache.create_trial_from``, in one transaction)."""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from service.storage.optuna_cache import ServiceCache

DRAFT_ID = -1


class Draft(BaseStorage):
    """A storage through which a sampler draws one new trial without writing it: every
    read goes to the service's cache, the new trial stays here until the caller writes it
    with ``ServiceCache.create_trial_from``. Study-level writes (QMC's sequence position)
    go through. Waiting (enqueued) trials are not offered: the feeder pops those itself."""

    def __init__(self, base: ServiceCache) -> None:
        self._base = base
        self.trial: FrozenTrial | None = None

    # --- the study: the base's -------------------------------------------------------

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        raise NotImplementedError("a draft samples in an existing study")

    def delete_study(self, study_id: int) -> None:
        raise NotImplementedError("a draft samples in an existing study")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._base.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._base.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._base.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._base.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._base.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._base.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._base.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._base.get_all_studies()

    # --- the new trial: here -----------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if self.trial is not None or template_trial is not None:
            raise RuntimeError("a draft holds one new trial, made by study.ask()")
        trials = self._base.get_all_trials(study_id, deepcopy=False)
        self.trial = FrozenTrial(
            number=max((t.number for t in trials), default=-1) + 1,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=DRAFT_ID,
        )
        return DRAFT_ID

    def _draft(self, trial_id: int) -> FrozenTrial:
        if trial_id != DRAFT_ID or self.trial is None:
            raise RuntimeError(f"a draft writes only its own trial, not {trial_id}")
        return self.trial

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        trial = self._draft(trial_id)
        trial.params = {
            **trial.params,
            param_name: distribution.to_external_repr(param_value_internal),
        }
        trial.distributions = {**trial.distributions, param_name: distribution}

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._draft(trial_id).set_user_attr(key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        trial = self._draft(trial_id)
        trial.system_attrs = {**trial.system_attrs, key: value}

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        raise RuntimeError("a draft trial is not told: it is written, then leased")

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        raise RuntimeError("a draft trial is not trained")

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if trial_id == DRAFT_ID:
            return copy.deepcopy(self._draft(trial_id))
        return self._base.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = [
            t
            for t in self._base.get_all_trials(study_id, deepcopy=deepcopy, states=states)
            if t.state != TrialState.WAITING
        ]
        if self.trial is not None and (states is None or TrialState.RUNNING in states):
            trials.append(copy.deepcopy(self.trial) if deepcopy else self.trial)
        return trials

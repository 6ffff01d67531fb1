"""The files the Optuna dashboard shows with a study or a trial: the study's note (the
spec as submitted, and the study report once made) and artifacts (each trial's history,
the retrained best model, the report's figures), in Optuna's own artifact store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState


def _spec_note(note: dict[str, Any]) -> str:
    return "## Submitted spec\n\n```json\n" + json.dumps(note, indent=2) + "\n```\n"


class StudyFiles:
    def __init__(self, storage: BaseStorage, artifact_dir: Path | None) -> None:
        self.storage = storage
        self.artifacts: FileSystemArtifactStore | None = None
        if artifact_dir is not None:
            artifact_dir.mkdir(parents=True, exist_ok=True)
            self.artifacts = FileSystemArtifactStore(str(artifact_dir))

    def upload(
        self, target: optuna.Study | FrozenTrial, name: str, content: bytes, mimetype: str
    ) -> None:
        """Store a file in the artifact store, attached to a study or a running trial, so
        the dashboard shows it and offers it for download."""
        if self.artifacts is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(content)
            optuna.artifacts.upload_artifact(
                artifact_store=self.artifacts,
                file_path=str(path),
                study_or_trial=target,
                storage=self.storage,
                mimetype=mimetype,
            )

    def note(self, study: optuna.Study, spec: dict[str, Any], text: str = "") -> None:
        """The study's note: ``text`` (if any), then the spec as submitted, resolved."""
        import optuna_dashboard  # (a second of imports, sklearn's among them: when needed)

        optuna_dashboard.save_note(study, (text + "\n" if text else "") + _spec_note(spec))

    def history(self, trial: FrozenTrial, history: dict[str, list[float]]) -> None:
        """The trial's per-epoch training history, as ``history.json`` (before the trial
        is told finished: Optuna does not change finished trials)."""
        self.upload(trial, "history.json", json.dumps(history).encode(), "application/json")

    def model(self, study: optuna.Study, content: bytes) -> None:
        self.upload(study, f"{study.study_name}-best.keras", content, "application/octet-stream")

    def report(self, study: optuna.Study, metric: str, text: str, report: dict[str, Any]) -> None:
        """The study's note becomes ``text`` followed by its submitted spec; the report's
        figures (importances, the best and worst trials' curves) go up as artifacts."""
        from diagnostics.figures import curves_png, importances_png

        self.note(study, {"hpo_spec": study.user_attrs.get("hpo_spec", {})}, text)
        if report["importances"]:
            self.upload(study, "report-importances.png", importances_png(report), "image/png")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            ranked = sorted(
                complete,
                key=lambda t: float(t.value or 0.0),
                reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE,
            )
            picked = {"best": ranked[0], "worst": ranked[-1]}
            curves = {
                f"{label} (#{t.number}, {t.value:.4g})": dict(t.intermediate_values)
                for label, t in picked.items()
            }
            self.upload(study, "report-curves.png", curves_png(curves, metric), "image/png")

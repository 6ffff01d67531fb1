"""The service's settings: one typed class, read from ``HPO_*`` environment variables.

Precedence (pydantic-settings): explicit arguments > environment > ``.env`` > defaults.
Nothing else in the service reads ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of the API process and the ``hpo`` CLI."""

    model_config = SettingsConfigDict(env_prefix="HPO_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./hpo.db",
        description="SQLAlchemy URL of the database holding the service's and Optuna's tables.",
    )
    api_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where workers and the CLI reach the service.",
    )
    sqlite_busy_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a SQLite connection waits for a lock."
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A lease not renewed (by a report or heartbeat) for this long is lost.",
    )
    db_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="How long `hpo api` and `hpo migrate` wait for the "
        "database to answer at start-up before giving up.",
    )
    reap_interval_s: float = Field(
        default=5.0, gt=0, description="How often the service looks for expired leases."
    )
    suggestions_ahead: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Suggestions each open study keeps ready beyond one per live worker "
        "(a seeded study keeps none beyond them, so one worker sees one sequence).",
    )
    feeder_interval_s: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="How often each API process refreshes its cache of open studies' "
        "trials and tops up the suggestions of the studies it samples.",
    )
    sampler_ttl_s: float = Field(
        default=5.0,
        gt=0,
        description="An API process that samples a study renews its claim on it; once "
        "not renewed for this long, another process takes the study over.",
    )
    lease_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long a lease waits for a suggestion when a study has budget "
        "left but none ready (it is being sampled), before answering 204.",
    )
    lease_look_s: float = Field(
        default=0.1,
        gt=0,
        description="A lease waiting for a suggestion is woken when its API process's "
        "sampler makes one; besides, it looks in the database this often (for one that "
        "another API process's sampler made).",
    )
    artifact_dir: Path = Field(
        default=Path("./artifacts"),
        description="Optuna's artifact store: each trial's history.json, the best models.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of users: studies, data sets, reads. `hpo api` refuses to "
        "start without it; `hpo up` generates one.",
    )
    worker_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of workers: the trial protocol (/trials, /jobs). Must "
        "differ from the user token.",
    )
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="The largest data set file accepted."
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="The largest request body, uploads aside (they have their own limits).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request's line and headers must arrive within this long of the "
        "connection opening (or of the next request's first byte); else 408, closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A body a route reads that sends no byte for this long is answered 408; "
        "the unread rest of a refused request's body is discarded this long at most.",
    )
    max_incomplete_requests: int = Field(
        default=256,
        ge=1,
        description="Connections of one API process still sending their headers; a new one "
        "beyond it closes the oldest (503).",
    )
    max_trials: int = Field(
        default=10_000, ge=1, le=10_000, description="The largest n_trials of a study."
    )
    max_epochs: int = Field(
        default=1_000, ge=1, le=1_000, description="The largest epochs of a study."
    )
    max_model_params: int = Field(
        default=10_000_000,
        ge=1,
        description="The most parameters a trial's model may have: checked when a study is "
        "submitted (built-in families) and by workers before training (every family).",
    )
    log_level: str = Field(default="INFO")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object a line, with study and trial ids."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()

"""A worker's settings, read from ``HPO_*`` environment variables (nothing else reads them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Settings of one ``hpo worker`` process."""

    model_config = SettingsConfigDict(env_prefix="HPO_", env_file=".env", extra="ignore")

    api_url: str = Field(default="http://127.0.0.1:8000", description="The service's URL.")
    worker_token: SecretStr | None = Field(
        default=None, description="The service's HPO_WORKER_TOKEN; sent as a bearer token."
    )
    tf_threads: int = Field(
        default=0,
        ge=0,
        description="TensorFlow intra- and inter-op threads (0: TensorFlow decides).",
    )
    poll_interval_s: float = Field(default=2.0, gt=0, description="Wait when there is no work.")
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_max_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a call is retried while the service is unreachable.",
    )
    allow_downloads: bool = Field(
        default=True,
        description="May Keras download mnist / fashion_mnist when they are not cached?",
    )
    keras_datasets_dir: Path = Field(
        default=Path.home() / ".keras" / "datasets",
        description="Where Keras caches its data sets.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "hpo-service",
        description="Where uploaded data sets are cached, by content hash.",
    )
    artifact_dir: Path = Field(
        default=Path("./artifacts"),
        description="Where TensorBoard logs go (tensorboard/<study>/trial-<n>).",
    )
    log_level: str = Field(default="INFO")
    trainer_max_trials: int = Field(
        default=1000,
        ge=1,
        description="Jobs a trainer process runs before a fresh one replaces it.",
    )
    trainer_max_rss_mb: float = Field(
        default=4096,
        ge=0,
        description="A trainer whose resident memory passes this after a job is replaced; "
        "one that passes twice this during a job is killed and its trial fails (0: no limit).",
    )
    trainer_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="A trial still training this long after its time limit is killed.",
    )
    device: str | None = Field(
        default=None,
        description="CUDA_VISIBLE_DEVICES for this worker's trainer (one GPU per worker); "
        "unset: inherited.",
    )

"""Uploaded data sets in a worker's cache: fetched from the service once, kept by content
hash. The worker's parent process fetches them before a job (it holds the HTTP client);
its trainer reads the cache. Nothing here imports numpy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from search_space.catalog import DatasetInfo


class DatasetUnavailable(RuntimeError):
    """The data set cannot be loaded on this worker; the message starts with
    ``dataset unavailable:``."""


def cached_upload(
    cache_dir: Path, info: DatasetInfo, fetch: Callable[[str], bytes] | None
) -> bytes:
    """The uploaded set's normalised NPZ, from the cache or fetched into it.

    Raises:
        DatasetUnavailable: not cached and no ``fetch``, a fetch that failed, or content
            that does not match the study's hash.
    """
    assert info.sha256 is not None
    path = cache_dir / f"{info.sha256}.npz"
    if path.exists():
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() == info.sha256:
            return content
    if fetch is None:
        raise DatasetUnavailable(f"dataset unavailable: {info.name} is not cached here")
    try:
        content = fetch(info.name)
    except Exception as exc:
        raise DatasetUnavailable(
            f"dataset unavailable: fetching {info.name} failed: {exc}"
        ) from exc
    if hashlib.sha256(content).hexdigest() != info.sha256:
        raise DatasetUnavailable(
            f"dataset unavailable: {info.name} changed on the "
            "service while this study ran (content hash differs)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)  # atomic: another worker on this host never reads half a file
    return content

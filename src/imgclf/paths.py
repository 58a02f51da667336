"""Where imgclf keeps its caches: never inside a user's dataset."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "IMGCLF_CACHE_DIR"


def cache_dir(subdir: str | None = None) -> Path:
    """The user cache folder (``$IMGCLF_CACHE_DIR`` or the platform's), created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("imgclf"))
    path = root / subdir if subdir else root
    path.mkdir(parents=True, exist_ok=True)
    return path

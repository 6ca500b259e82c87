"""The user cache for converted models and downloaded data (never in git)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$HYBRID_SWEEP_CACHE`, else `~/.cache/hybrid-sweep`: read at call time so tests can redirect it."""
    env = os.environ.get("HYBRID_SWEEP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybrid-sweep"

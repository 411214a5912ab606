"""Where the SWE machinery keeps what it builds once (clones, wheelhouses, build records, locks, the default
task set), and the in-process locks that let threads build one thing once."""
from __future__ import annotations

import os
import threading
from pathlib import Path

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """Where clones, wheelhouses and build contexts are cached: $CWM_CACHE or ~/.cache/cwm-envs."""
    return Path(os.environ.get("CWM_CACHE") or Path.home() / ".cache" / "cwm-envs")


def named_lock(key: str) -> threading.Lock:
    """One lock per key in this process (an image tag, a clone, a wheelhouse): builds of one thing queue."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())

"""Worker functions for the pool examples (a module, so workers can import them)."""

from __future__ import annotations

import os
import time


def burn(ms: int) -> int:
    """Keep a CPU busy for *ms* milliseconds; return the worker's pid."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return os.getpid()


def crash() -> None:
    """Die the hard way, as a segfault or the OOM killer would."""
    os._exit(70)


def add(a: int, b: int) -> int:
    return a + b

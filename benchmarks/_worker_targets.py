"""Worker targets of benchmarks/bench_worker.py (importable by every peer's workers;
not named bench_*: run_all.py runs those)."""

from __future__ import annotations


def noop() -> None:
    return None


def echo(value: bytes) -> bytes:
    return value

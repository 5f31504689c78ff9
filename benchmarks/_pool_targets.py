"""Functions the pool benchmark runs in workers (importable by every peer's children)."""

from __future__ import annotations


def noop() -> None:
    return None


async def anoop() -> None:
    return None


def echo(payload: bytes) -> bytes:
    return payload


async def aecho(payload: bytes) -> bytes:
    return payload


def inc(x: int) -> int:
    return x + 1

"""Async targets for the scheduler tests (importable, never defined in a test body)."""

from __future__ import annotations

import time

import anyio

from aioproc.testing import ManualClock


class Recorder:
    """Async callables that note, on *clock*, when each run starts and ends."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cancelled = 0

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.monotonic()

    async def tick(self, value: object = None) -> object:
        """Record the start and return *value* at once."""
        self.starts.append(self._now())
        self.ends.append(self._now())
        return value

    async def slow(self, seconds: float) -> str:
        """Take *seconds* of the manual clock (real time without one)."""
        self.starts.append(self._now())
        try:
            if self.clock is not None:
                await self.clock.sleep(seconds)
            else:
                await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.ends.append(self._now())
        return "slow done"

    async def fail_on(self, failing: frozenset[int], value: object = "ok") -> object:
        """Raise ValueError on the runs whose index (from 0) is in *failing*."""
        index = len(self.starts)
        self.starts.append(self._now())
        if index in failing:
            raise ValueError(f"run {index} fails")
        return value

    async def keyword(self, a: int, *, b: int) -> int:
        """Needs a keyword argument, passed through functools.partial."""
        self.starts.append(self._now())
        return a + b

    def not_async(self) -> int:
        """A plain function: the scheduler must report it, not crash."""
        self.starts.append(self._now())
        return 42

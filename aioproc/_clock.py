"""Time for the scheduler: the :class:`Clock` protocol and the real :class:`SystemClock`.

A :class:`~aioproc.Scheduler` reads time only through one clock: ``now()``
(monotonic seconds) for delays and intervals, ``time()`` (epoch seconds) for
``call_at`` and ``Job.next_run``, and sleeps with ``sleep_until()``. Injecting a
clock (:class:`aioproc.testing.ManualClock`) makes scheduling tests instant.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Where a :class:`Scheduler` reads time and sleeps. Implement it to inject time."""

    def now(self) -> float:
        """Monotonic time in seconds (never goes back); delays and intervals use it."""
        ...

    def time(self) -> float:
        """Wall-clock time in epoch seconds; ``call_at`` and ``next_run`` use it."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`now` has reached *deadline* (at once if it has)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`anyio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(deadline - time.monotonic(), 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"

"""Test helpers for code built on aioproc (a public module, not in ``aioproc.__all__``).

:class:`ManualClock` is a clock that moves only when told. Give it to a
:class:`~aioproc.Scheduler` and scheduled code runs instantly and
deterministically in tests: :meth:`ManualClock.advance` moves time and wakes every
sleeper that is due, then :func:`settle` lets the woken tasks run::

    from aioproc import Scheduler
    from aioproc.testing import ManualClock, settle

    async def test_report_goes_out_every_hour() -> None:
        clock = ManualClock()
        sent: list[float] = []

        async def send_report() -> None:
            sent.append(clock.now())

        async with Scheduler(clock=clock) as sched:
            job = sched.every(3600, send_report, max_runs=3)
            await settle()                  # run 0 is due at once
            for _ in range(2):
                clock.advance(3600)         # an hour passes, instantly
                await settle()
            await job.wait()                # max_runs reached: the job is done
        assert sent == [0.0, 3600.0, 7200.0]

Call :func:`settle` once after scheduling and before the first ``advance()``: a
job's driver task must have started to see time 0. If the clock moves first, the
job finds its first tick already past (it runs late, and ticks missed by a whole
interval are coalesced, as after a blocked event loop). Leaving the scheduler
waits for runs in progress, so cancel a job whose run sleeps on a manual clock
that nobody will advance.

Code under test may sleep on the same clock (``await clock.sleep(5)``) to
stand for slow work. ``ManualClock(wall=...)`` fixes the wall-clock reading used
by ``call_at`` and ``Job.next_run`` (by default the real time when the clock is
made, so ``datetime.now(timezone.utc) + timedelta(hours=1)`` in the code under
test is an hour ahead); :meth:`ManualClock.jump_wall` sets the wall clock alone,
as an NTP step would.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ._clock import Clock

__all__ = ["Clock", "ManualClock", "settle"]

# Deadlines within this of the current time are due (float rounding of sums).
_EPSILON = Fraction(1, 10**9)


def _finite(seconds: float, what: str) -> Fraction:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} must be seconds (int or float), not {seconds!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, got {seconds!r}")
    return Fraction(seconds)


class _Sleeper:
    __slots__ = ("deadline", "event")

    def __init__(self, deadline: Fraction, event: anyio.Event) -> None:
        self.deadline = deadline
        self.event = event


class ManualClock:
    """A :class:`~aioproc.testing.Clock` whose time moves only through :meth:`advance`.

    ``now()`` starts at *start* (monotonic seconds); ``time()`` starts at *wall*
    (epoch seconds; default: the real time when the clock is made) and moves with
    ``now()``. Time is kept as an exact fraction, so a hundred ``advance(0.1)``
    calls reach exactly ``10.0``.

    Use it from the thread that runs the event loop (tests always do).
    """

    def __init__(self, start: float = 0.0, *, wall: float | None = None) -> None:
        self._now = _finite(start, "start")
        wall_start = _finite(time.time() if wall is None else wall, "wall")
        self._wall_offset = wall_start - self._now
        self._sleepers: list[_Sleeper] = []

    def now(self) -> float:
        """The monotonic reading, in seconds."""
        return float(self._now)

    def time(self) -> float:
        """The wall-clock reading, in epoch seconds."""
        return float(self._now + self._wall_offset)

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds* and wake every sleeper now due.

        A plain call: woken tasks run at the caller's next checkpoint (``await
        settle()``).

        :raises ValueError: when *seconds* is negative or not finite (time never
            goes back; see :meth:`jump_wall` for the wall clock).
        :raises TypeError: when *seconds* is not a number.
        """
        step = _finite(seconds, "seconds")
        if step < 0:
            raise ValueError(f"a clock only moves forward; got advance({seconds!r})")
        self._now += step
        due = [s for s in self._sleepers if s.deadline <= self._now + _EPSILON]
        for sleeper in due:
            self._sleepers.remove(sleeper)
            sleeper.event.set()

    def jump_wall(self, seconds: float) -> None:
        """Move the wall clock alone by *seconds* (either way), as when the system
        time is set. Monotonic time and its sleepers do not move.

        :raises ValueError: when *seconds* is not finite.
        :raises TypeError: when *seconds* is not a number.
        """
        self._wall_offset += _finite(seconds, "seconds")

    def next_deadline(self) -> float | None:
        """The earliest deadline anyone sleeps until, ``None`` when nobody sleeps."""
        return float(min(s.deadline for s in self._sleepers)) if self._sleepers else None

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`advance` has brought :meth:`now` to *deadline*;
        a checkpoint, and at once when it is already due."""
        target = _finite(deadline, "deadline")
        if target <= self._now + _EPSILON:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(target, anyio.Event())
        self._sleepers.append(sleeper)
        try:
            await sleeper.event.wait()
        finally:
            if sleeper in self._sleepers:  # cancelled before it was due
                self._sleepers.remove(sleeper)

    async def sleep(self, seconds: float) -> None:
        """Sleep *seconds* of this clock's time (for code under test)."""
        await self.sleep_until(float(self._now + _finite(seconds, "seconds")))

    def __repr__(self) -> str:
        sleepers = len(self._sleepers)
        return f"<ManualClock now={self.now():g} time={self.time():.3f} sleepers={sleepers}>"


async def settle(rounds: int = 32) -> None:
    """Yield to the event loop *rounds* times, so that tasks woken by
    :meth:`ManualClock.advance` run until they block again.

    Each round lets every runnable task take one step; a scheduler needs a few
    (wake, tick, start the run, the run's own steps). For an exact barrier use
    :func:`anyio.wait_all_tasks_blocked` (slower: on asyncio it naps 0.1 s while
    any task is runnable).
    """
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()


if TYPE_CHECKING:  # ManualClock satisfies the protocol the Scheduler reads time through.
    _check_protocol: type[Clock] = ManualClock

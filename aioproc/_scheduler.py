"""The scheduler: one-shot and periodic jobs on top of any async callable.

A :class:`Scheduler` owns one task group, opened by ``async with``. There is no
central timer loop: every job gets its own *driver* task that sleeps on the clock
until its next tick, so adding a job starts a new sleeper and cancelling one
cancels only that sleeper. Nothing polls; an idle scheduler is a set of tasks
blocked in :meth:`Clock.sleep_until <aioproc._clock.Clock.sleep_until>`::

    Scheduler task group  (async with / aclose)
    ├── driver of job 1 ── sleep until tick k ── overlap rule ──► run task(s)
    │                                                  └─► Job counters, last_result/last_error
    ├── driver of job 2 ...
    └── ...             (how one job ticks and runs: see aioproc._job)

The scheduler never imports the pool, worker or subprocess layers: ``afn`` is any
async callable (``pool.run``, ``aioproc.run``, a coroutine function).

All time is read through one clock (:mod:`aioproc._clock`): monotonic ``now()``
for delays and intervals, wall ``time()`` for ``call_at`` and ``next_run``.

Lifecycle (:class:`SchedulerState`): ``new`` → ``open`` (``async with``) →
``closing`` (leaving it, or :meth:`Scheduler.aclose`: pending jobs are
cancelled, running runs finish) → ``closed``. Job methods outside ``open`` raise
:class:`RuntimeError` naming the state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar, TypeVarTuple, get_args

import anyio
from anyio.abc import TaskGroup

from ._clock import Clock, SystemClock
from ._job import WALL_RECHECK, Job, JobStatus, Overlap

__all__ = ["WALL_RECHECK", "Scheduler", "SchedulerState", "SchedulerStatus"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_OVERLAPS: tuple[str, ...] = get_args(Overlap)


class SchedulerState(StrEnum):
    """Lifecycle of a :class:`Scheduler`: jobs are accepted only while ``open``."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SchedulerStatus:
    """A snapshot of a :class:`Scheduler`, from :meth:`Scheduler.status`.

    Job counts are by :class:`JobStatus`; ``runs``, ``failures`` and ``skipped``
    are summed over the jobs; ``next_run`` is the earliest :attr:`Job.next_run`
    (epoch seconds), ``None`` when nothing is due.
    """

    state: SchedulerState
    jobs: int
    pending: int
    running: int
    done: int
    cancelled: int
    runs: int
    failures: int
    skipped: int
    next_run: float | None

    @property
    def by_status(self) -> dict[str, int]:
        """Job counts keyed by status name."""
        return {
            "pending": self.pending,
            "running": self.running,
            "done": self.done,
            "cancelled": self.cancelled,
        }


def _seconds(value: float | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be seconds (int or float) or a timedelta, not {value!r}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return seconds


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"call_at() needs an aware datetime, got the naive {when!r}: "
                "give it a tzinfo, e.g. datetime.now(timezone.utc) + timedelta(...)"
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise TypeError(f"call_at() takes an aware datetime or epoch seconds, not {when!r}")
    if not math.isfinite(when):
        raise ValueError(f"call_at() needs a finite time, got {when!r}")
    return float(when)


class Scheduler:
    """Runs one-shot and periodic jobs inside ``async with``.

    ``clock`` is where time is read and slept on (default :class:`SystemClock`;
    :class:`aioproc.testing.ManualClock` in tests).

    Leaving ``async with`` normally cancels pending jobs and waits for the runs in
    progress to finish; a periodic job in a run finishes that run and starts no
    other (a queued run is dropped). Leaving on an exception or cancellation
    cancels the runs too. Exceptions raised by runs are recorded on their
    :class:`Job` and never reach the scheduler's task group.

    :raises RuntimeError: from the job methods when the scheduler is not open
        (not entered yet, closing or closed), and from ``async with`` when it is
        entered a second time.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._state = SchedulerState.NEW
        self._tg: TaskGroup | None = None
        self._jobs: list[Job[Any]] = []
        self._ids = itertools.count(1)

    @property
    def clock(self) -> Clock:
        """The clock this scheduler reads."""
        return self._clock

    @property
    def state(self) -> SchedulerState:
        """``new``, ``open``, ``closing`` or ``closed``."""
        return self._state

    async def __aenter__(self) -> Self:
        if self._state is not SchedulerState.NEW:
            raise RuntimeError(f"a Scheduler is entered once; this one is {self._state.value}")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = SchedulerState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._state = SchedulerState.CLOSING
        for job in self._jobs:
            job._stop_ticks()  # on an exception the task group cancels the runs too
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and list(group.exceptions) == [exc]:
                return False  # only the body's own error: let it propagate unwrapped
            raise
        finally:
            self._state = SchedulerState.CLOSED

    async def aclose(self) -> None:
        """Stop taking jobs, cancel pending ones and wait for the runs in progress,
        as leaving ``async with`` does. Idempotent. The state reads ``closing``
        until the ``async with`` block ends, which still closes the task group."""
        if self._state is SchedulerState.NEW:
            self._state = SchedulerState.CLOSED
            return
        if self._state is SchedulerState.OPEN:
            self._state = SchedulerState.CLOSING
        for job in self._jobs:
            job._stop_ticks()
        for job in list(self._jobs):
            await job.wait()

    def call_later(
        self, delay: float | timedelta, afn: Callable[[*Ts], Awaitable[T]], *args: *Ts
    ) -> Job[T]:
        """Run ``afn(*args)`` once, *delay* seconds (monotonic) from now.

        :raises ValueError: when *delay* is negative or not finite.
        :raises TypeError: when *delay* is not a number or timedelta, or *afn* is
            not callable.
        :raises RuntimeError: when the scheduler is not open.
        """
        seconds = _seconds(delay, "delay")
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self._check(afn)
        job = Job(next(self._ids), self._clock, afn, args, first_due=self._clock.now() + seconds)
        return self._add(job)

    def call_at(
        self, when: datetime | float, afn: Callable[[*Ts], Awaitable[T]], *args: *Ts
    ) -> Job[T]:
        """Run ``afn(*args)`` once at wall-clock time *when*: an aware
        :class:`~datetime.datetime` or epoch seconds. A time in the past runs at
        once. The wall clock is tracked (see the module docstring): the job never
        runs early, and a clock change is noticed within :data:`WALL_RECHECK` s.

        :raises ValueError: when *when* is a naive datetime or not finite.
        :raises TypeError: when *when* is neither a datetime nor a number, or *afn*
            is not callable.
        :raises RuntimeError: when the scheduler is not open.
        """
        epoch = _epoch(when)
        self._check(afn)
        now = self._clock.now()
        first_due = now + max(epoch - self._clock.time(), 0.0)
        job = Job(next(self._ids), self._clock, afn, args, first_due=first_due, wall_when=epoch)
        return self._add(job)

    def every(
        self,
        interval: float | timedelta,
        afn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        max_runs: int | None = None,
        start_delay: float | timedelta = 0.0,
        overlap: Overlap = "skip",
    ) -> Job[T]:
        """Run ``afn(*args)`` every *interval* seconds; run ``k`` is due at
        ``now + start_delay + k * interval`` (no drift).

        :param max_runs: stop after this many runs have started (skipped ticks do
            not count); ``None`` runs until cancelled or the scheduler closes.
        :param start_delay: seconds before the first run (default: run at once).
        :param overlap: what a tick does while a run is in progress: ``"skip"``
            (skip it, count it in :attr:`Job.skipped`), ``"queue"`` (at most one
            run waits and starts as soon as the current one ends; a tick that
            finds one waiting is skipped) or ``"allow"`` (run concurrently).
        :raises ValueError: when *interval* is not positive, *start_delay* is
            negative, *max_runs* is below 1 or *overlap* is not one of the three.
        :raises TypeError: when a time or *max_runs* has the wrong type, or *afn*
            is not callable.
        :raises RuntimeError: when the scheduler is not open.
        """
        period = _seconds(interval, "interval")
        if period <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        delay = _seconds(start_delay, "start_delay")
        if delay < 0:
            raise ValueError(f"start_delay must be >= 0, got {start_delay!r}")
        if max_runs is not None:
            if isinstance(max_runs, bool) or not isinstance(max_runs, int):
                raise TypeError(f"max_runs must be an int or None, not {max_runs!r}")
            if max_runs < 1:
                raise ValueError(f"max_runs must be >= 1 or None, got {max_runs!r}")
        if overlap not in _OVERLAPS:
            raise ValueError(f"overlap must be one of {_OVERLAPS}, got {overlap!r}")
        self._check(afn)
        job = Job(
            next(self._ids),
            self._clock,
            afn,
            args,
            first_due=self._clock.now() + delay,
            interval=period,
            max_runs=max_runs,
            overlap=overlap,
        )
        return self._add(job)

    def jobs(self) -> list[Job[Any]]:
        """Every job of this scheduler in creation order, finished ones included
        until :meth:`forget_finished`."""
        return list(self._jobs)

    def forget_finished(self) -> int:
        """Drop ``done`` and ``cancelled`` jobs from :meth:`jobs`; returns how many."""
        keep = [job for job in self._jobs if job._final is None]
        forgotten = len(self._jobs) - len(keep)
        self._jobs = keep
        return forgotten

    def status(self) -> SchedulerStatus:
        """A snapshot: job counts by status, summed counters, the earliest next run."""
        counts = dict.fromkeys(JobStatus, 0)
        next_runs: list[float] = []
        for job in self._jobs:
            counts[job.status] += 1
            if (next_run := job.next_run) is not None:
                next_runs.append(next_run)
        return SchedulerStatus(
            state=self._state,
            jobs=len(self._jobs),
            pending=counts[JobStatus.PENDING],
            running=counts[JobStatus.RUNNING],
            done=counts[JobStatus.DONE],
            cancelled=counts[JobStatus.CANCELLED],
            runs=sum(job.runs for job in self._jobs),
            failures=sum(job.failures for job in self._jobs),
            skipped=sum(job.skipped for job in self._jobs),
            next_run=min(next_runs, default=None),
        )

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<Scheduler {s.state.value} jobs={s.jobs} pending={s.pending} "
            f"running={s.running} done={s.done} cancelled={s.cancelled} "
            f"runs={s.runs} failures={s.failures}>"
        )

    def _check(self, afn: object) -> None:
        if not callable(afn):
            raise TypeError(f"afn must be an async callable, not {afn!r}")
        if self._state is SchedulerState.NEW:
            raise RuntimeError("the Scheduler is not open: use it inside `async with Scheduler()`")
        if self._state is not SchedulerState.OPEN:
            raise RuntimeError(f"the Scheduler is {self._state.value}: it takes no more jobs")

    def _add(self, job: Job[T]) -> Job[T]:
        assert self._tg is not None
        self._jobs.append(job)
        self._tg.start_soon(job._drive, name=f"aioproc scheduler job {job.id}")
        return job

"""One scheduled job: its ticks, its runs and its counters.

A :class:`Job` is driven by one task in its scheduler's task group::

    job scope ───────────── job.cancel() cancels this: the wait and any run
    └── runs task group ─── leaving it waits for the runs in progress
        ├── ticks scope ─── the scheduler closing cancels only this
        │     loop: clock.sleep_until(tick k) → overlap rule → start a run
        └── run task(s) ─── await afn(*args) → record result or error
                            → start the queued run at once, if one waits

*No drift.* Tick ``k`` of a periodic job is due at ``base + k * interval`` on the
monotonic clock, ``base`` being the moment the job was made plus its
``start_delay``; a late wake-up never shifts later ticks. If the driver wakes a
whole interval late (a blocked event loop, a big ``ManualClock.advance``), the
ticks it missed are coalesced into the latest one and counted in
:attr:`Job.skipped`, instead of firing in a burst.

*Overlap.* A tick that comes while a run is in progress: ``"skip"`` counts it in
``skipped``; ``"queue"`` marks one run as waiting (the run task starts it as soon
as the current run ends; a tick that finds one waiting is skipped); ``"allow"``
starts another run beside it. ``max_runs`` counts runs started, queued included.

*Wall clock.* A ``call_at`` job targets an epoch time. A monotonic sleep does not
notice the system clock being set (NTP step, manual change), so the driver sleeps
in monotonic chunks of at most :data:`WALL_RECHECK` seconds and re-reads the wall
clock after each: a jump is noticed within that bound, and the job never fires
before its wall time.

*States.* ``pending`` (waiting for its next tick, no run in progress) ⇄
``running`` (a run in progress or queued), until ``done`` (every run it was meant
to make has ended: the one-shot ran, or ``max_runs`` was reached) or
``cancelled`` (:meth:`Job.cancel`, or the scheduler closed first). ``done`` and
``cancelled`` are final.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._clock import Clock

__all__ = ["WALL_RECHECK", "Job", "JobStatus", "Overlap"]

T_co = TypeVar("T_co", covariant=True)

#: What a periodic job does with a tick that comes while a run is in progress.
Overlap = Literal["skip", "queue", "allow"]

#: Longest monotonic sleep between two readings of the wall clock by a
#: ``call_at`` job: the bound on how late a wall-clock jump is noticed.
WALL_RECHECK = 1.0

# Times closer than this count as equal, so that float rounding of
# ``base + k * interval`` never leaves a due tick asleep.
_EPSILON = 1e-9

_logger = logging.getLogger("aioproc.scheduler")


class JobStatus(StrEnum):
    """Where a :class:`Job` is in its life (the module docstring draws the states)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


def _format_epoch(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch).isoformat(" ", "milliseconds")
    except (OverflowError, OSError, ValueError):  # far outside what datetime can show
        return f"{epoch:.3f}"


def _describe(afn: Callable[..., object]) -> str:
    target = getattr(afn, "func", afn)  # a functools.partial names its function
    return str(getattr(target, "__qualname__", None) or repr(target))


class Job(Generic[T_co]):
    """One scheduled job, made by :meth:`Scheduler.call_later`, :meth:`~Scheduler.call_at`
    or :meth:`~Scheduler.every` (not constructed directly).

    ``runs`` counts runs that ended (returned or raised; a run interrupted by
    :meth:`cancel` is not counted), ``failures`` those that raised,
    ``skipped`` the ticks that started no run. ``last_result`` is the value of the
    latest successful run; ``last_error`` the exception of the latest failed run,
    and it stays set after later successes. All are read-only.
    """

    def __init__(
        self,
        job_id: int,
        clock: Clock,
        afn: Callable[..., Awaitable[T_co]],
        args: tuple[Any, ...],
        *,
        first_due: float,
        interval: float | None = None,
        wall_when: float | None = None,
        max_runs: int | None = 1,
        overlap: Overlap = "skip",
    ) -> None:
        self._id = job_id
        self._clock = clock
        self._afn = afn
        self._args = args
        self._base = first_due  # monotonic due time of tick 0
        self._interval = interval
        self._wall_when = wall_when
        self._max_runs = max_runs
        self._overlap = overlap
        self._name = _describe(afn)
        self._runs = 0
        self._failures = 0
        self._skipped = 0
        self._started = 0  # runs started, for max_runs
        self._running = 0  # runs in progress
        self._queued = False  # overlap="queue": one run waits for the current one
        self._next_due: float | None = first_due  # None once no tick is left
        self._last_result: T_co | None = None
        self._last_error: BaseException | None = None
        self._cancel_requested = False
        self._stopping = False  # the scheduler closes: no new ticks, no queued run
        self._exhausted = False  # every tick this job was meant to have has come
        self._interrupted = False  # a run was cancelled before it ended
        self._final: JobStatus | None = None
        self._scope = anyio.CancelScope()
        self._ticks_scope = anyio.CancelScope()
        self._done = anyio.Event()

    # -- public surface ---------------------------------------------------------

    @property
    def id(self) -> int:
        """Identifier, increasing from 1 in creation order within its scheduler."""
        return self._id

    @property
    def status(self) -> JobStatus:
        """``pending``, ``running``, ``done`` or ``cancelled`` (a :class:`str` enum)."""
        if self._final is not None:
            return self._final
        if self._cancel_requested:
            return JobStatus.CANCELLED
        if self._running or self._queued:
            return JobStatus.RUNNING
        return JobStatus.PENDING

    @property
    def runs(self) -> int:
        """Runs that ended, failed ones included."""
        return self._runs

    @property
    def failures(self) -> int:
        """Runs that raised an exception."""
        return self._failures

    @property
    def skipped(self) -> int:
        """Ticks that started no run: overlap ``skip``, a ``queue`` already full, or
        ticks coalesced because the scheduler woke a whole interval late."""
        return self._skipped

    @property
    def running(self) -> int:
        """Runs in progress now (more than one only with ``overlap="allow"``)."""
        return self._running

    @property
    def last_result(self) -> T_co | None:
        """What the latest successful run returned (``None`` before one)."""
        return self._last_result

    @property
    def last_error(self) -> BaseException | None:
        """The exception of the latest failed run; kept after later successes."""
        return self._last_error

    @property
    def next_run(self) -> float | None:
        """When the next tick is due, in epoch seconds; ``None`` when no tick is left
        (one-shot started, ``max_runs`` reached, done or cancelled)."""
        if self._next_due is None or self._final is not None or self._cancel_requested:
            return None
        if self._wall_when is not None:
            return self._wall_when
        return self._clock.time() + (self._next_due - self._clock.now())

    @property
    def interval(self) -> float | None:
        """Seconds between ticks of a periodic job; ``None`` for a one-shot."""
        return self._interval

    def cancel(self) -> bool:
        """Cancel the job: no further runs, and a run in progress is cancelled.

        A plain call; the job reads ``cancelled`` at once and :meth:`wait` returns
        once the cancelled run has unwound. Returns ``False`` when the job had
        already ended (or was already cancelled), else ``True``.
        """
        if self._final is not None or self._cancel_requested:
            return False
        self._cancel_requested = True
        self._scope.cancel()
        return True

    async def wait(self) -> None:
        """Return once the job is ``done`` or ``cancelled``.

        Never raises a run's error: read :attr:`last_error` and :attr:`failures`.
        """
        await self._done.wait()

    def __repr__(self) -> str:
        if self._wall_when is not None:
            kind = "at"
        elif self._interval is None:
            kind = "once"
        else:
            kind = f"every {self._interval:g}s"
        when = _format_epoch(self.next_run)
        return (
            f"<Job {self._id} {kind} {self._name} {self.status.value} runs={self._runs} "
            f"failures={self._failures} skipped={self._skipped} next_run={when}>"
        )

    # -- driven by the scheduler's task group -----------------------------------

    def _stop_ticks(self) -> None:
        self._stopping = True
        self._ticks_scope.cancel()

    async def _drive(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as runs:
                    with self._ticks_scope:
                        await self._tick_loop(runs)
        finally:
            self._next_due = None
            done = self._exhausted and not (self._cancel_requested or self._interrupted)
            self._final = JobStatus.DONE if done else JobStatus.CANCELLED
            self._done.set()

    async def _tick_loop(self, runs: TaskGroup) -> None:
        k = 0
        while self._max_runs is None or self._started + int(self._queued) < self._max_runs:
            if self._wall_when is not None:
                await self._sleep_until_wall(self._wall_when)
            else:
                due = self._base + k * (self._interval or 0.0)
                self._next_due = due
                await self._clock.sleep_until(due)
                if self._interval is not None:
                    late = (self._clock.now() - self._base) / self._interval
                    behind = math.floor(late + _EPSILON)
                    if behind > k:  # woke whole intervals late: coalesce
                        self._skipped += behind - k
                        k = behind
            self._tick(runs)
            k += 1
        self._next_due = None
        self._exhausted = True

    async def _sleep_until_wall(self, when: float) -> None:
        clock = self._clock
        while (remaining := when - clock.time()) > _EPSILON:
            await clock.sleep_until(clock.now() + min(remaining, WALL_RECHECK))

    def _tick(self, runs: TaskGroup) -> None:
        if self._running == 0 or self._overlap == "allow":
            self._running += 1
            self._started += 1
            runs.start_soon(self._run, name=f"aioproc job {self._id} ({self._name})")
        elif self._overlap == "queue" and not self._queued:
            self._queued = True
        else:
            self._skipped += 1

    async def _run(self) -> None:
        # The tick already counted this run in _running and _started.
        while True:
            try:
                await self._run_once()
            except BaseException:  # cancelled (or a BaseException we must not keep)
                self._interrupted = True
                raise
            finally:
                self._running -= 1
            if not self._queued or self._stopping:
                self._queued = False
                return
            self._queued = False  # the queued run starts at once
            self._running += 1
            self._started += 1

    async def _run_once(self) -> None:
        try:
            awaitable = self._afn(*self._args)
            if not inspect.isawaitable(awaitable):
                raise TypeError(
                    f"{self._name} returned {type(awaitable).__name__}, not an awaitable: "
                    "the scheduler runs async callables"
                )
            result = await awaitable
        except Exception as exc:
            self._runs += 1
            self._failures += 1
            self._last_error = exc
            _logger.warning("%r: run failed", self, exc_info=exc)
        else:
            self._runs += 1
            self._last_result = result

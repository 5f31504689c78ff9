"""The pool's scaling policy: pool figures and a time in, a decision out.

This module is pure. It does no I/O, reads no clock and imports no async library:
the supervisor (``_supervisor.py``) takes a :class:`PoolFigures` snapshot, calls
:func:`decide` with the current time, and carries out the :class:`Decision`. So
every rule below is tested without a single process (``tests/test_scaling.py``)::

    supervisor ──PoolFigures, now──▶ decide() ──Decision──▶ supervisor
                                        │                     ├─ start N workers
                                        │                     ├─ retire workers (reason)
                                        │                     ├─ mark the pool broken
                                        │                     └─ sleep until wake_at
                                      (pure)

The rules, in the order :func:`decide` applies them:

1. **Broken.** After ``max_start_failures`` (3) consecutive start failures the pool
   is broken: nothing is started any more (no fork bomb), ``broken`` is set.
2. **Recycling.** An *idle* worker (no call in flight) that has done
   ``max_tasks_per_worker`` tasks is retired with reason ``"tasks"``; one whose RSS,
   measured after its last task, exceeds ``max_memory_per_worker`` with reason
   ``"memory"``. A busy worker that crossed a limit is only retired once idle (the
   dispatcher stops feeding it), so its calls in flight finish normally.
3. **Idle reaping.** While no task waits and more than ``min_workers`` live
   workers remain, workers idle for at least ``idle_timeout`` are retired (longest
   idle first) with reason ``"idle"``; the next idle deadline not yet due becomes
   ``wake_at``.
4. **Starting.** In :attr:`Mode.OPEN` the pool tops up to ``min_workers`` (which
   also replaces any worker that exited); in :attr:`Mode.OPEN` and
   :attr:`Mode.DRAINING` it starts one worker per waiting task that no idle or
   starting worker will take, several at once, never past ``max_workers``. In
   :attr:`Mode.CLOSING` nothing is started or reaped: shutdown owns the workers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_START_FAILURES",
    "Decision",
    "Mode",
    "PoolFigures",
    "RetireReason",
    "ScalingLimits",
    "WorkerFigures",
    "WorkerState",
    "decide",
]

#: Consecutive start failures that break a pool.
MAX_START_FAILURES = 3


class WorkerState(enum.StrEnum):
    """Where one pool worker is in its life, as the policy sees it."""

    STARTING = "starting"  #: forked, no handshake yet
    IDLE = "idle"  #: ready, no call in flight
    BUSY = "busy"  #: ready, at least one call in flight
    STOPPING = "stopping"  #: retired or killed, not yet reaped


class RetireReason(enum.StrEnum):
    """Why the policy retires a worker (the keys of ``PoolStats.recycled``)."""

    TASKS = "tasks"
    MEMORY = "memory"
    IDLE = "idle"


class Mode(enum.Enum):
    """What the pool still wants from its workers."""

    OPEN = "open"  #: takes tasks; keeps min_workers alive
    DRAINING = "draining"  #: closed to new tasks; serves what is queued
    CLOSING = "closing"  #: shutting down; no starts, no reaping


@dataclass(frozen=True, slots=True)
class ScalingLimits:
    """The pool's knobs that the policy reads (validated by the pool)."""

    min_workers: int
    max_workers: int
    idle_timeout: float
    max_tasks_per_worker: int | None = None
    max_memory_per_worker: int | None = None
    max_start_failures: int = MAX_START_FAILURES


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    """One worker as the policy sees it.

    ``idle_since`` is when it last became idle (``None`` unless idle);
    ``tasks_done`` counts finished calls; ``rss`` is its resident set in bytes as
    measured after its last task (``None`` when not measured).
    """

    key: int
    state: WorkerState
    idle_since: float | None = None
    tasks_done: int = 0
    rss: int | None = None


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """A snapshot of the pool: waiting tasks, workers, start failures, mode.

    ``waiting`` counts tasks waiting for a free worker: in the pool's queue, or
    queued in a worker's pipe behind the call it runs (a task first in line on
    an idle worker is not waiting); ``start_failures`` the consecutive failed
    starts (reset by a success).
    """

    waiting: int
    workers: Sequence[WorkerFigures] = ()
    start_failures: int = 0
    mode: Mode = Mode.OPEN


@dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor should do now.

    ``start``: how many workers to start; ``retire``: ``(key, reason)`` pairs of
    workers to stop gracefully; ``wake_at``: when to call :func:`decide` again if
    nothing else happens first (``None``: only an event can change the answer);
    ``broken``: the pool may never start a worker again.
    """

    start: int = 0
    retire: tuple[tuple[int, RetireReason], ...] = ()
    wake_at: float | None = None
    broken: bool = False


def _recycle_reason(worker: WorkerFigures, limits: ScalingLimits) -> RetireReason | None:
    if limits.max_tasks_per_worker is not None and (
        worker.tasks_done >= limits.max_tasks_per_worker
    ):
        return RetireReason.TASKS
    if (
        limits.max_memory_per_worker is not None
        and worker.rss is not None
        and worker.rss > limits.max_memory_per_worker
    ):
        return RetireReason.MEMORY
    return None


def decide(limits: ScalingLimits, figures: PoolFigures, now: float) -> Decision:
    """The policy: which workers to start and retire given *figures* at time *now*."""
    broken = figures.start_failures >= limits.max_start_failures
    if figures.mode is Mode.CLOSING:
        return Decision(broken=broken)

    retire: list[tuple[int, RetireReason]] = []
    idle: list[WorkerFigures] = []
    live = starting = 0
    for worker in figures.workers:
        if worker.state is WorkerState.STOPPING:
            continue
        if worker.state is WorkerState.STARTING:
            starting += 1
            continue
        live += 1
        if worker.state is WorkerState.IDLE:
            reason = _recycle_reason(worker, limits)
            if reason is not None:
                retire.append((worker.key, reason))
            else:
                idle.append(worker)
    live -= len(retire)

    # Idle reaping, longest idle first, never below min_workers live workers.
    wake_at: float | None = None
    idle.sort(key=lambda w: w.idle_since if w.idle_since is not None else now)
    keep = list(idle)
    for worker in idle:
        if live <= limits.min_workers or figures.waiting:
            break
        since = worker.idle_since if worker.idle_since is not None else now
        deadline = since + limits.idle_timeout
        if deadline <= now:
            retire.append((worker.key, RetireReason.IDLE))
            keep.remove(worker)
            live -= 1
        else:
            wake_at = deadline  # the oldest not yet due: the next one to fall due
            break

    start = 0
    if not broken:
        total = live + starting
        need = 0
        if figures.mode is Mode.OPEN:
            need = limits.min_workers - total
        unserved = figures.waiting - starting - len(keep)
        need = max(need, unserved)
        start = max(0, min(need, limits.max_workers - total))
    return Decision(start=start, retire=tuple(retire), wake_at=wake_at, broken=broken)

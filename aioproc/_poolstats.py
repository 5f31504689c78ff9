"""Pool figures: the frozen :class:`PoolStats` snapshot and the cheap recorders
behind it.

The hot path (one task) only touches plain attributes: a counter increment, one
slot of a ring buffer per latency, and an integral update when a worker turns
busy or idle. Sorting for percentiles and psutil reads happen in
``Pool.stats()``, which builds a :class:`PoolStats` from these recorders::

    dispatcher ──task done──▶ TaskCounters  ┐
               ──latencies──▶ LatencyWindow ├──Pool.stats()──▶ PoolStats (frozen)
    supervisor ──busy/live──▶ UtilizationMeter┘                  + per_worker (psutil)
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "LATENCY_WINDOW",
    "LatencyWindow",
    "Percentiles",
    "PoolStats",
    "TaskCounts",
    "UtilizationMeter",
    "WorkerCounts",
    "WorkerInfo",
]

#: How many of the latest tasks the wait/run time percentiles cover.
LATENCY_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    """Workers by state. ``total`` counts every worker not yet stopping."""

    total: int = 0
    idle: int = 0
    busy: int = 0
    starting: int = 0


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """Tasks by outcome. ``completed`` counts successes; ``failed`` exceptions,
    crashes and timeouts; ``queued`` tasks not yet started; ``running`` started
    ones not yet finished."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Median and 99th percentile in seconds (``None`` before the first task)."""

    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker: pid, state (``"starting"``, ``"idle"``, ``"busy"``,
    ``"stopping"``), tasks finished, resident set in bytes, CPU percent since the
    previous ``stats()`` call."""

    pid: int
    state: str
    tasks_done: int
    rss: int
    cpu_percent: float


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A frozen snapshot of a pool, from ``pool.stats()``.

    ``success_rate`` is completed / finished (``None`` before any task finished);
    ``utilization`` the time-weighted fraction of live workers' time spent busy
    since the pool started (``None`` before a worker was live); ``wait_time`` (from
    submit to start) and ``run_time`` (from start to outcome) cover the last 10,000
    tasks; ``restarts`` counts workers started to replace one that exited or was
    stopped (crash, recycling, timeout, cancellation), ``crashes`` workers that
    died without the pool asking; ``recycled`` maps a reason (``"tasks"``,
    ``"memory"``, ``"idle"``) to how many workers the pool retired for it.
    """

    state: str
    workers: WorkerCounts
    tasks: TaskCounts
    success_rate: float | None
    utilization: float | None
    wait_time: Percentiles
    run_time: Percentiles
    restarts: int
    crashes: int
    recycled: Mapping[str, int] = field(default_factory=dict)
    per_worker: tuple[WorkerInfo, ...] = ()


class LatencyWindow:
    """The latest :data:`LATENCY_WINDOW` durations, in a fixed ring buffer."""

    __slots__ = ("_buf", "_filled", "_next", "_size")

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._size = size
        self._buf = array("d", bytes(8 * size))
        self._next = 0
        self._filled = 0

    def add(self, seconds: float) -> None:
        """Record one duration, forgetting the oldest once the window is full."""
        i = self._next
        self._buf[i] = seconds
        i += 1
        self._next = 0 if i == self._size else i
        if self._filled < self._size:
            self._filled += 1

    def __len__(self) -> int:
        return self._filled

    def percentiles(self) -> Percentiles:
        """p50 and p99 (nearest rank) of what the window holds."""
        n = self._filled
        if not n:
            return Percentiles()
        values = sorted(self._buf[:n])
        return Percentiles(
            p50=values[max(0, math.ceil(0.50 * n) - 1)],
            p99=values[max(0, math.ceil(0.99 * n) - 1)],
        )


class UtilizationMeter:
    """Integrates busy and live worker counts over time.

    :meth:`update` is called with the new counts whenever either changes; the
    utilization is the busy integral over the live integral.
    """

    __slots__ = ("_busy", "_busy_area", "_live", "_live_area", "_since")

    def __init__(self, now: float) -> None:
        self._since = now
        self._busy = 0
        self._live = 0
        self._busy_area = 0.0
        self._live_area = 0.0

    def update(self, now: float, busy: int, live: int) -> None:
        """The counts from *now* on are *busy* and *live*."""
        dt = now - self._since
        if dt > 0.0:
            self._busy_area += self._busy * dt
            self._live_area += self._live * dt
            self._since = now
        self._busy = busy
        self._live = live

    def value(self, now: float) -> float | None:
        """Busy fraction of live worker-time up to *now*; ``None`` if none yet."""
        dt = max(0.0, now - self._since)
        live_area = self._live_area + self._live * dt
        if live_area <= 0.0:
            return None
        busy_area = self._busy_area + self._busy * dt
        return min(1.0, busy_area / live_area)

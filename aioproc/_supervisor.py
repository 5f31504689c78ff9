"""The pool's supervisor: the one task that starts, replaces, reaps and recycles
workers.

It never polls. It sleeps on one wake-up event, or until the next deadline it
knows of (an idle worker falling due, a task timeout, the end of the shutdown
grace), and each time it wakes it asks the pure policy what to do::

    wake(): dispatcher (queue grew and the pool may grow, a retiring worker went
            idle, a worker exited, a timeout nearer than planned), a start
            finishing, Pool.aclose()
                │
                ▼
    ┌─ expire task timeouts ──▶ TaskTimeoutError, worker stopped (SIGTERM, grace, SIGKILL)
    ├─ closing? drained, or shutdown_timeout passed ──▶ kill busy workers, stop the rest
    ├─ _scaling.decide(limits, figures, now) ──▶ start N (each in its own short task),
    │                                           retire (STOP, then SIGTERM/SIGKILL),
    │                                           broken ──▶ queued tasks fail
    └─ sleep until wake() or min(idle deadline, next timeout, shutdown deadline)

Worker processes live in the supervisor's task group (each one's reader task is
``WorkerProcess.serve``), with the zygote when ``start_method="forkserver"``; so
when the supervisor ends, by a clean close, a cancellation or a bug, no worker
outlives it. Its ``finally`` cancels every task still pending, so no caller
waits forever, whatever happened.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from ._dispatch import Dispatcher, Slot, broken_error
from ._errors import WorkerStartError
from ._events import EventHub
from ._launcher import ExitWatch, Launcher, SpawnLauncher, Zygote
from ._scaling import (
    Mode,
    PoolFigures,
    RetireReason,
    ScalingLimits,
    WorkerFigures,
    WorkerState,
    decide,
)
from ._task import Task
from ._workerproc import WorkerOptions, WorkerProcess

__all__ = ["STOP_GRACE", "PoolConfig", "Supervisor"]

#: SIGTERM-to-SIGKILL grace for a worker the pool stops (timeout, cancel, close).
STOP_GRACE = 2.0
#: Timeout heaps are rebuilt without stale entries past this size.
_HEAP_COMPACT = 1024

monotonic = time.monotonic


@dataclass(frozen=True)
class PoolConfig:
    """The pool's options, validated (see :class:`aioproc.Pool`)."""

    min_workers: int
    max_workers: int
    idle_timeout: float
    max_tasks_per_worker: int | None
    max_memory_per_worker: int | None
    task_timeout: float | None
    max_queue: int | None
    start_timeout: float
    preload: tuple[str, ...]
    initializer: Callable[..., object] | str | None
    initargs: tuple[Any, ...]
    env: Mapping[str, str] | None
    cwd: str | None
    start_method: str
    max_frame: int
    shutdown_timeout: float


def _real_error(exc: BaseException) -> BaseException | None:
    """The first error in *exc* (a group, perhaps) that is not a cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _real_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return None
    return exc


class _AnnouncingLauncher:
    """A launcher that reports ``worker_started`` once the process exists."""

    def __init__(self, inner: Launcher, hub: EventHub) -> None:
        self._inner = inner
        self._hub = hub

    async def launch(self, in_fd: int, out_fd: int) -> ExitWatch:
        watch = await self._inner.launch(in_fd, out_fd)
        if self._hub.active:
            self._hub.emit("worker_started", pid=watch.pid)
        return watch


async def _serve_zygote(zygote: Zygote) -> None:
    """Run the pool's zygote; a failure to start reaches the workers asked of it."""
    with contextlib.suppress(WorkerStartError):
        await zygote.serve()


class Supervisor:
    """Owns the workers of one pool (see the module docstring)."""

    def __init__(self, config: PoolConfig, hub: EventHub) -> None:
        self.config = config
        self.hub = hub
        self.limits = ScalingLimits(
            min_workers=config.min_workers,
            max_workers=config.max_workers,
            idle_timeout=config.idle_timeout,
            max_tasks_per_worker=config.max_tasks_per_worker,
            max_memory_per_worker=config.max_memory_per_worker,
        )
        self.dispatcher = Dispatcher(
            hub,
            wake=self.wake,
            arm_timeout=self._arm_timeout,
            max_tasks_per_worker=config.max_tasks_per_worker,
            max_memory_per_worker=config.max_memory_per_worker,
        )
        self._options = WorkerOptions(
            preload=config.preload,
            initializer=config.initializer,
            initargs=config.initargs,
            cwd=config.cwd,
            max_frame=config.max_frame,
            start_timeout=config.start_timeout,
        )
        self.mode = Mode.OPEN
        self.restarts = 0
        self.crashes = 0
        self.recycled: dict[str, int] = {reason.value: 0 for reason in RetireReason}
        self.start_failures = 0
        self.last_start_error: BaseException | None = None
        self._owed_restarts = 0
        #: Keys of stopping workers whose replacement is already owed (see
        #: :meth:`_owe_replacements`).
        self._owed_for: set[int] = set()
        self._next_key = 1
        self._tg: anyio.abc.TaskGroup | None = None
        self._zygote: Zygote | None = None
        self._zygote_lock: anyio.Lock | None = None
        self._wakeup: anyio.Event | None = None
        self._woken = False
        self._planned = math.inf
        self._timeouts: list[tuple[float, int, Task[Any], Any]] = []
        self._timeout_seq = 0
        self._shutdown_at = math.inf
        self._killed = False
        self._finished: anyio.Event | None = None
        self.done = False
        #: The error that ended :meth:`run` other than by cancellation (a bug).
        self.crash: BaseException | None = None

    # -- waking -----------------------------------------------------------------------

    def wake(self) -> None:
        """Make the supervisor look at the pool again (cheap, idempotent)."""
        if not self._woken:
            self._woken = True
            if self._wakeup is not None:
                self._wakeup.set()

    async def _sleep(self, deadline: float | None) -> None:
        self._planned = math.inf if deadline is None else deadline
        if not self._woken:
            assert self._wakeup is not None
            if deadline is None:
                await self._wakeup.wait()
            else:
                with anyio.move_on_after(max(0.0, deadline - monotonic())):
                    await self._wakeup.wait()
        self._woken = False
        self._wakeup = anyio.Event()
        self._planned = math.inf

    # -- the task ---------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise until the pool closes; reports started once ``min_workers``
        are ready (or the pool is broken)."""
        self._wakeup = anyio.Event()
        self._finished = anyio.Event()
        self._zygote_lock = anyio.Lock()
        reported = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                while True:
                    now = monotonic()
                    self._expire_timeouts(now)
                    if self.mode is not Mode.OPEN and self._shutdown_step(now):
                        break
                    decision = decide(self.limits, self._figures(), now)
                    self._apply(decision.start, decision.retire, decision.broken)
                    if not reported and self._ready_enough():
                        task_status.started()
                        reported = True
                    await self._sleep(self._next_wake(decision.wake_at, now))
                await self._stop_all()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            self.crash = _real_error(exc)
            raise
        finally:
            self.mode = Mode.CLOSING
            self.dispatcher.cancel_all()
            self.done = True
            self._finished.set()

    async def wait_finished(self) -> None:
        """Wait until :meth:`run` has ended (workers stopped and reaped)."""
        if self._finished is not None and not self.done:
            await self._finished.wait()

    def _ready_enough(self) -> bool:
        if self.dispatcher.broken is not None or self.mode is not Mode.OPEN:
            return True
        ready = sum(
            1
            for s in self.dispatcher.slots.values()
            if s.state in (WorkerState.IDLE, WorkerState.BUSY)
        )
        return ready >= self.config.min_workers

    def _next_wake(self, idle_wake: float | None, now: float) -> float | None:
        deadlines = [d for d in (idle_wake, self._shutdown_at) if d is not None]
        if self._timeouts:
            deadlines.append(self._timeouts[0][0])
        if idle_wake is None and self.mode is Mode.OPEN:
            live = sum(
                1
                for s in self.dispatcher.slots.values()
                if s.state in (WorkerState.IDLE, WorkerState.BUSY)
            )
            if live > self.config.min_workers:
                # Busy workers beyond min_workers may go idle without telling us.
                deadlines.append(now + self.config.idle_timeout)
        finite = [d for d in deadlines if d != math.inf]
        return min(finite) if finite else None

    def _owe_replacements(self) -> None:
        """Count a restart as owed as soon as a worker is being stopped to be
        replaced (recycled, timed out, cancelled), before its replacement is
        started: that start may be ready before the old process has exited (then
        ``_on_exit`` would owe it too late and the restart would go uncounted)."""
        for slot in self.dispatcher.slots.values():
            if (
                slot.state is WorkerState.STOPPING
                and slot.stop_reason
                and slot.stop_reason not in (RetireReason.IDLE.value, "shutdown")
                and slot.key not in self._owed_for
            ):
                self._owed_for.add(slot.key)
                self._owed_restarts += 1

    def _figures(self) -> PoolFigures:
        dispatcher = self.dispatcher
        workers = [
            WorkerFigures(
                key=slot.key,
                state=slot.state,
                idle_since=slot.idle_since if slot.state is WorkerState.IDLE else None,
                tasks_done=slot.tasks_done,
                rss=slot.rss,
            )
            for slot in dispatcher.slots.values()
        ]
        return PoolFigures(
            waiting=dispatcher.backlog,
            workers=workers,
            start_failures=self.start_failures,
            mode=self.mode,
        )

    def _apply(
        self, start: int, retire: tuple[tuple[int, RetireReason], ...], broken: bool
    ) -> None:
        dispatcher = self.dispatcher
        for key, reason in retire:
            slot = dispatcher.slots.get(key)
            if slot is not None and slot.state is not WorkerState.STOPPING:
                dispatcher.mark_stopping(slot, reason.value)
                self.recycled[reason.value] += 1
                self._stop_soon(slot)
        self._owe_replacements()  # before any start below can complete
        if broken and dispatcher.broken is None:
            cause = self.last_start_error or WorkerStartError("workers failed to start")
            dispatcher.broken = cause
            dispatcher.fail_queued(cause)
        for _ in range(start):
            self._start_one()
        starting = sum(1 for s in dispatcher.slots.values() if s.state is WorkerState.STARTING)
        total = sum(1 for s in dispatcher.slots.values() if s.state is not WorkerState.STOPPING)
        dispatcher.n_starting = starting
        dispatcher.can_grow = (
            dispatcher.broken is None
            and self.mode is not Mode.CLOSING
            and total < self.config.max_workers
        )

    # -- starting workers -------------------------------------------------------------

    def _start_one(self) -> None:
        slot = Slot(self._next_key)
        self._next_key += 1
        self.dispatcher.slots[slot.key] = slot
        assert self._tg is not None
        self._tg.start_soon(self._start_worker, slot)

    async def _launcher(self) -> Launcher:
        config = self.config
        if config.start_method == "spawn":
            return SpawnLauncher(config.env)
        assert self._zygote_lock is not None
        assert self._tg is not None
        async with self._zygote_lock:
            zygote = self._zygote
            if zygote is None or zygote.state.value == "closed":
                zygote = Zygote(
                    preload=config.preload,
                    env=config.env,
                    cwd=config.cwd,
                    start_timeout=config.start_timeout,
                )
                self._zygote = zygote
                # Not awaited: the workers' fork requests go out while the zygote
                # starts and are served right after its handshake (cold start).
                self._tg.start_soon(_serve_zygote, zygote)
            return zygote

    async def _start_worker(self, slot: Slot) -> None:
        assert self._tg is not None
        try:
            launcher = await self._launcher()
            proc = WorkerProcess(
                self._options,
                _AnnouncingLauncher(launcher, self.hub),
                on_exit=lambda _proc: self._on_exit(slot),
                report_started=True,
            )
            slot.proc = proc
            await self._tg.start(proc.serve)
        except (WorkerStartError, OSError) as exc:
            self.dispatcher.slots.pop(slot.key, None)
            slot.state = WorkerState.STOPPING
            slot.dead = True
            self.start_failures += 1
            if isinstance(exc, OSError):
                error = WorkerStartError(f"cannot start a worker: {exc}")
                error.__cause__ = exc
                exc = error
            self.last_start_error = exc
            self.wake()
            return
        self.start_failures = 0
        if self._owed_restarts:
            self._owed_restarts -= 1
            self.restarts += 1
        if self.hub.active:
            self.hub.emit("worker_ready", pid=proc.pid)
        if self.mode is Mode.CLOSING:
            self.dispatcher.mark_stopping(slot, "shutdown")
            self._stop_soon(slot)
        else:
            self.dispatcher.add_ready(slot)
        self.wake()

    def _on_exit(self, slot: Slot) -> None:
        """A worker process ended (called once, from its reader task)."""
        if slot.state is WorkerState.STARTING:
            return  # a start failure: _start_worker accounts for it
        self.dispatcher.on_exit(slot)
        self.dispatcher.slots.pop(slot.key, None)
        reason = slot.stop_reason
        if not reason:
            self.crashes += 1
            self.dispatcher.crashes += 1
            self._owed_restarts += 1
            if self.hub.active:
                self.hub.emit(
                    "worker_crashed", pid=slot.pid, detail=self.dispatcher.crash_detail(slot)
                )
        elif reason != "shutdown":
            if reason != RetireReason.IDLE.value and slot.key not in self._owed_for:
                self._owed_restarts += 1
            self._owed_for.discard(slot.key)
            if self.hub.active:
                self.hub.emit("worker_recycled", pid=slot.pid, detail={"reason": reason})
        self.wake()

    # -- stopping workers -------------------------------------------------------------

    def _stop_soon(self, slot: Slot, grace: float = STOP_GRACE) -> None:
        if slot.proc is not None and self._tg is not None:
            self._tg.start_soon(slot.proc.stop, grace)

    # -- task timeouts ----------------------------------------------------------------

    def _arm_timeout(self, task: Task[Any], call: Any, deadline: float) -> None:
        heap = self._timeouts
        if len(heap) > _HEAP_COMPACT and len(heap) > 4 * (self.dispatcher.n_running + 1):
            heap[:] = [e for e in heap if e[2].call is e[3] and not e[2].done()]
            heapq.heapify(heap)
        self._timeout_seq += 1
        heapq.heappush(heap, (deadline, self._timeout_seq, task, call))
        if deadline < self._planned:
            self.wake()

    def _expire_timeouts(self, now: float) -> None:
        heap = self._timeouts
        while heap and heap[0][0] <= now:
            _, _, task, call = heapq.heappop(heap)
            slot = self.dispatcher.expire(task, call)
            if slot is not None:
                self._stop_soon(slot)

    # -- closing ----------------------------------------------------------------------

    def close(self, *, cancel_pending: bool) -> None:
        """Stop taking tasks; drain (or cancel) what is pending, then stop workers."""
        dispatcher = self.dispatcher
        if self.mode is Mode.OPEN:
            self.mode = Mode.DRAINING
            self._shutdown_at = monotonic() + self.config.shutdown_timeout
            dispatcher.on_drained = self.wake
        if cancel_pending:
            self.mode = Mode.CLOSING
            dispatcher.cancel_all()
        self.wake()

    def _shutdown_step(self, now: float) -> bool:
        """While closing: True once nothing is pending (workers may stop)."""
        dispatcher = self.dispatcher
        if not dispatcher.pending:
            return True
        if now >= self._shutdown_at and not self._killed:
            self._killed = True
            self.mode = Mode.CLOSING
            dispatcher.no_retry = True
            dispatcher.cancel_unstarted()
            for slot in list(dispatcher.slots.values()):
                if slot.inflight and slot.proc is not None:
                    dispatcher.mark_stopping(slot, "shutdown")
                    slot.proc.kill()
            self._shutdown_at = math.inf
            return not dispatcher.pending
        return False

    async def _stop_all(self) -> None:
        """Stop every worker (idle ones exit at once on STOP), then the zygote."""
        self.mode = Mode.CLOSING
        dispatcher = self.dispatcher
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for slot in list(dispatcher.slots.values()):
                    proc = slot.proc
                    if proc is None or slot.state is WorkerState.STARTING:
                        continue
                    dispatcher.mark_stopping(slot, "shutdown")
                    tg.start_soon(proc.stop, STOP_GRACE)
            if self._zygote is not None:
                await self._zygote.aclose()

    def broken_error(self) -> BaseException:
        """The error new tasks get once the pool is broken."""
        cause = self.dispatcher.broken
        assert cause is not None
        return broken_error(cause)

    def __repr__(self) -> str:
        workers = len(self.dispatcher.slots)
        return f"<Supervisor mode={self.mode.value} workers={workers} restarts={self.restarts}>"

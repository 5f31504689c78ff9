"""The pool's hot path: putting tasks on workers and settling them.

No task is ever handed to another asyncio/trio task to be dispatched: ``submit``
writes the call straight into an idle worker's pipe from the caller's own task,
and each worker's reader (inside :class:`~aioproc._workerproc.WorkerProcess`)
settles the task and refills that worker from the queue, all in synchronous
callbacks. The supervisor is only woken when the pool's shape may have to change::

    Pool.submit ──▶ Dispatcher.submit(task)
                      ├─ a ready worker has room ──▶ proc.submit(call)  (os.write, now)
                      └─ else ──▶ queue (deque) ──▶ wake supervisor if it may scale up

    worker reader ──STARTED──▶ _on_started: task running, wait time, timeout armed
                  ──RESULT/ERROR/CANCELLED──▶ _on_done: task settled once, run time,
                                             RSS check, refill this worker from queue
    worker exit ──▶ _on_exit: the started task crashed (WorkerCrashedError, or back to
                  the queue's front while it has retries); unstarted calls go back to
                  the front without using a retry; supervisor woken to replace it

**Pipelining.** A worker runs its calls one at a time, in order, so a few calls
are kept queued ahead in its pipe to hide the round trip. How many depends on
how long tasks take (an average of recent run times): 32 for tasks under 100
microseconds, one (no pipelining) for tasks of 5 ms and more, so a long
task never holds short ones hostage behind it while another worker is idle.
Only a call the worker reported ``STARTED`` is *running*; the rest stay
*queued* (and can be requeued on a crash without counting an attempt).

**Exactly once.** Every outcome goes through :meth:`Dispatcher.finish`, which
settles the :class:`~aioproc._task.Task` once and keeps the counts; a late
answer for a task that was cancelled or timed out is ignored.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from ._errors import (
    PoolBrokenError,
    ProtocolError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ._events import EventHub
from ._poolstats import LatencyWindow, UtilizationMeter
from ._scaling import RetireReason, WorkerState
from ._task import Task, TaskStatus, cancelled_error
from ._values import check_sendable, function_ref
from ._workerproc import Call, WorkerProcess

__all__ = ["Dispatcher", "Slot"]

#: Calls kept queued in one worker's pipe, by the recent average task run time
#: (one, no pipelining, until a first task has been timed).
_DEPTHS = ((100e-6, 32), (1e-3, 4), (5e-3, 2))
#: Weight of the newest run time in the moving average.
_AVG_WEIGHT = 0.1
_SHORT_TASK, _MAX_DEPTH = _DEPTHS[0]
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

monotonic = time.monotonic


def _depth_for(avg_run: float) -> int:
    for limit, depth in _DEPTHS:
        if avg_run < limit:
            return depth
    return 1


def read_rss(pid: int) -> int | None:
    """Resident set of *pid* in bytes, from ``/proc`` (cheaper than psutil)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class Slot:
    """The dispatcher's record of one worker process."""

    __slots__ = (
        "assigned",
        "dead",
        "idle_since",
        "inflight",
        "key",
        "proc",
        "retiring",
        "rss",
        "state",
        "stop_reason",
        "tasks_done",
    )

    def __init__(self, key: int) -> None:
        self.key = key
        self.proc: WorkerProcess | None = None
        self.state = WorkerState.STARTING
        #: Tasks whose call is on this worker, in the order it runs them.
        self.inflight: deque[Task[Any]] = deque()
        self.tasks_done = 0
        #: Calls ever put on this worker (stops feeding at max_tasks_per_worker).
        self.assigned = 0
        self.idle_since = 0.0
        self.rss: int | None = None
        #: Takes no new calls; stopped once its calls in flight are done.
        self.retiring: RetireReason | None = None
        #: Why the pool stopped it ("tasks", "memory", "idle", "timeout",
        #: "cancel", "shutdown"); None while it was not asked to stop.
        self.stop_reason: str | None = None
        self.dead = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def __repr__(self) -> str:
        return (
            f"<Slot {self.key} pid={self.pid} {self.state.value} inflight={len(self.inflight)}"
            f" done={self.tasks_done}>"
        )


class Dispatcher:
    """Queue, ready workers and the per-task callbacks (see the module docstring)."""

    def __init__(
        self,
        hub: EventHub,
        *,
        wake: Callable[[], None],
        arm_timeout: Callable[[Task[Any], Any, float], None],
        max_tasks_per_worker: int | None,
        max_memory_per_worker: int | None,
    ) -> None:
        self.hub = hub
        self._wake = wake
        self._arm_timeout = arm_timeout
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_memory_per_worker
        self.queue: deque[Task[Any]] = deque()
        self.slots: dict[int, Slot] = {}
        #: Ready workers that take calls (an ordered set), and those with none in flight.
        self._ready: dict[Slot, None] = {}
        self._idle: dict[Slot, None] = {}
        self.depth = 1
        self._avg_run: float | None = None
        self.n_queued = 0
        self.n_running = 0
        #: Tasks waiting behind another one: live ones in the deque, and those
        #: queued in a worker's pipe behind its first call (the policy's "waiting").
        self.n_deque = 0
        self.n_pipe = 0
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.crashes = 0
        self.wait_times = LatencyWindow()
        self.run_times = LatencyWindow()
        self.utilization = UtilizationMeter(monotonic())
        self._busy = 0
        self._live = 0
        #: Kept by the supervisor: whether more workers may be started, and how
        #: many are starting now (a growing queue wakes it only when useful).
        self.can_grow = True
        self.n_starting = 0
        #: Set when the pool is broken: waiting and new tasks fail with it.
        self.broken: BaseException | None = None
        #: After shutdown_timeout: crashed tasks are not retried any more.
        self.no_retry = False
        self._started_cb = self._on_started  # bound once: set on every call
        self._done_cb = self._on_done
        #: pool.stream() iterators waiting for their task to reach a worker.
        self.stream_waiters: dict[Task[Any], anyio.Event] = {}
        #: Called when a queued task left the queue (max_queue waiters).
        self.on_room: Callable[[], None] | None = None
        #: Called when nothing is queued or running any more (drain on close).
        self.on_drained: Callable[[], None] | None = None

    # -- submitting -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Tasks not finished yet (queued or running)."""
        return self.n_queued + self.n_running

    @property
    def backlog(self) -> int:
        """Tasks waiting for a worker to be free (not first in line on one)."""
        return self.n_deque + self.n_pipe

    def submit(self, task: Task[Any]) -> None:
        """Put *task* on a worker now, or in the queue.

        :raises TypeError: when the function or an argument cannot be sent.
        :raises ProtocolError: when the call is over ``max_frame`` (direct send).
        """
        slot = None
        if not self.queue:
            slot = self._pick()
        if slot is None or not self._send(slot, task, raise_errors=True):
            function_ref(task.fn)
            if task.args:
                check_sendable(task.args, "args")
            # Queued (every task submitted while all workers are busy).
            task.in_queue = True
            self.queue.append(task)
            self.n_deque += 1
            if self.can_grow and self.n_deque + self.n_pipe > self.n_starting:
                self._wake()
        self.n_queued += 1
        self.submitted += 1
        if self.hub.active:
            self.hub.emit("task_queued", task_id=task.id)

    def _pick(self) -> Slot | None:
        idle = self._idle
        if idle:
            return next(iter(idle))
        depth = self.depth
        if depth > 1:
            best = None
            least = depth
            for slot in self._ready:
                n = len(slot.inflight)
                if n < least:
                    best, least = slot, n
            return best
        return None

    def _send(self, slot: Slot, task: Task[Any], *, raise_errors: bool = False) -> bool:
        """Make *task*'s call on *slot*'s worker; False if that worker cannot take it."""
        proc = slot.proc
        assert proc is not None
        try:
            # A list packs as a plain array (a tuple would take the ext-type hook).
            call = proc.submit(task.fn, list(task.args), stream=task.stream)
        except (TypeError, ProtocolError) as exc:
            if raise_errors:
                raise
            self.finish(task, TaskStatus.FAILED, exc)
            return True
        except (WorkerCrashedError, RuntimeError):
            self._unready(slot)  # exiting: its exit will be reported shortly
            return False
        call.tag = task
        call.on_started = self._started_cb
        call.on_done = self._done_cb
        task.call = call
        task.slot = slot
        if task.stream:
            waiter = self.stream_waiters.pop(task, None)
            if waiter is not None:
                waiter.set()
        inflight = slot.inflight
        inflight.append(task)
        slot.assigned += 1
        if len(inflight) > 1:
            self.n_pipe += 1
            if self.can_grow and self.n_deque + self.n_pipe > self.n_starting:
                self._wake()
        else:
            self._idle.pop(slot, None)
            slot.state = WorkerState.BUSY
            self._busy += 1
            self.utilization.update(monotonic(), self._busy, self._live)
        if self._max_tasks is not None and slot.assigned >= self._max_tasks:
            self._retire_when_idle(slot, RetireReason.TASKS)
        return True

    def _next_queued(self) -> Task[Any] | None:
        queue = self.queue
        while queue:
            task = queue.popleft()
            if task.in_queue:  # else settled (e.g. cancelled) while it waited
                task.in_queue = False
                self.n_deque -= 1
                return task
        return None

    def _fill(self, slot: Slot) -> None:
        """Give *slot* queued tasks while it has room."""
        depth = self.depth
        inflight = slot.inflight
        queue = self.queue
        ready = self._ready
        while queue and len(inflight) < depth and slot in ready:
            task = queue.popleft()
            if not task.in_queue:  # settled (e.g. cancelled) while it waited
                continue
            task.in_queue = False
            self.n_deque -= 1
            if not self._send(slot, task):
                task.in_queue = True
                self.queue.appendleft(task)
                self.n_deque += 1
                return

    def drain_queue(self) -> None:
        """Hand queued tasks to every ready worker with room."""
        for slot in list(self._ready):
            if not self.queue:
                return
            self._fill(slot)

    # -- worker readiness -------------------------------------------------------------

    def add_ready(self, slot: Slot) -> None:
        """*slot*'s worker finished its handshake: it takes calls from now on."""
        slot.state = WorkerState.IDLE
        slot.idle_since = monotonic()
        self._live += 1
        self._ready[slot] = None
        self._idle[slot] = None
        self.utilization.update(slot.idle_since, self._busy, self._live)
        self._fill(slot)

    def _unready(self, slot: Slot) -> None:
        self._ready.pop(slot, None)
        self._idle.pop(slot, None)

    def _retire_when_idle(self, slot: Slot, reason: RetireReason) -> None:
        if slot.retiring is None:
            slot.retiring = reason
            self._unready(slot)
            if not slot.inflight:
                self._wake()

    def mark_stopping(self, slot: Slot, reason: str) -> None:
        """The pool is stopping *slot*'s worker: it takes no more calls."""
        if slot.stop_reason is None:
            slot.stop_reason = reason
        self._unready(slot)
        if slot.state is WorkerState.BUSY:
            self._busy -= 1
        if slot.state in (WorkerState.BUSY, WorkerState.IDLE):
            self._live -= 1
            self.utilization.update(monotonic(), self._busy, self._live)
        slot.state = WorkerState.STOPPING

    # -- callbacks from the worker's reader -------------------------------------------

    def _on_started(self, call: Call) -> None:
        task: Task[Any] = call.tag  # type: ignore[assignment]  # set by _send
        if task.call is not call:
            return
        slot: Slot = task.slot
        if task._callbacks is None:
            # Cancelled before it started: a sync function makes the worker stop.
            if call.cancel_requested and not call.is_async and call.stop_if_sync:
                self.mark_stopping(slot, "cancel")
            return
        now = monotonic()
        task._status = TaskStatus.RUNNING
        task.started_at = now
        task.attempts += 1
        self.n_queued -= 1
        self.n_running += 1
        if self.on_room is not None:
            self.on_room()
        self.wait_times.add(now - task.submitted_at)
        if task.timeout is not None:
            self._arm_timeout(task, call, now + task.timeout)
        if self.hub.active:
            self.hub.emit("task_started", pid=slot.pid, task_id=task.id)

    def _on_done(self, call: Call) -> None:
        task: Task[Any] = call.tag  # type: ignore[assignment]  # set by _send
        if task.call is not call:
            return
        slot: Slot = task.slot
        proc: WorkerProcess = slot.proc  # type: ignore[assignment]
        if proc.exit_info is not None:
            self._worker_died(slot)
            return
        task.call = task.slot = None
        inflight = slot.inflight
        if len(inflight) > 1:
            self.n_pipe -= 1
        if inflight[0] is task:
            inflight.popleft()
        else:
            inflight.remove(task)
        if call.started:
            slot.tasks_done += 1
            run = monotonic() - task.started_at
            if task._callbacks is not None:
                self.run_times.add(run)
                error = call._error
                if error is None:
                    if (
                        task._status is TaskStatus.RUNNING
                        and self.on_drained is None
                        and not self.hub.active
                    ):
                        # finish() inlined for the hot path: a running task's result.
                        task._resolve(TaskStatus.COMPLETED, call._value)
                        self.n_running -= 1
                        self.completed += 1
                    else:
                        self.finish(task, TaskStatus.COMPLETED, call._value)
                elif isinstance(error, TaskCancelledError):
                    self.finish(task, TaskStatus.CANCELLED, cancelled_error(task))
                else:
                    self.finish(task, TaskStatus.FAILED, error)
            avg = self._avg_run
            avg = self._avg_run = run if avg is None else avg + _AVG_WEIGHT * (run - avg)
            if avg >= _SHORT_TASK or self.depth != _MAX_DEPTH:
                self.depth = _depth_for(avg)
            if self._max_memory is not None:
                rss = read_rss(proc.pid or 0)
                slot.rss = rss
                if rss is not None and rss > self._max_memory:
                    self._retire_when_idle(slot, RetireReason.MEMORY)
        else:
            slot.assigned -= 1  # dropped unstarted (cancelled): it does not count
            if not task.done():  # the worker refused it without running it
                error = call.error
                if isinstance(error, TaskCancelledError):
                    self.finish(task, TaskStatus.CANCELLED, cancelled_error(task))
                else:
                    self.finish(task, TaskStatus.FAILED, error or RuntimeError("no result"))
        if self.queue and slot in self._ready:
            self._fill(slot)
        if not inflight and slot.state is WorkerState.BUSY:
            slot.state = WorkerState.IDLE
            slot.idle_since = monotonic()
            self._busy -= 1
            self.utilization.update(slot.idle_since, self._busy, self._live)
            if slot in self._ready:
                self._idle[slot] = None
            elif slot.retiring is not None:
                self._wake()

    def on_exit(self, slot: Slot) -> None:
        """*slot*'s worker process exited (exactly once per worker)."""
        self._worker_died(slot)

    def _worker_died(self, slot: Slot) -> None:
        if slot.dead:
            return
        slot.dead = True
        if slot.state is not WorkerState.STOPPING:
            self.mark_stopping(slot, "")  # "": nobody asked, it crashed
        proc = slot.proc
        assert proc is not None
        info = proc.exit_info
        requeue: list[Task[Any]] = []
        for task in slot.inflight:
            call = task.call
            task.call = task.slot = None
            if task.done():
                continue
            if call is None or not call.started:
                requeue.append(task)
                continue
            self.n_running -= 1
            self.n_queued += 1
            if task.retries > 0 and not self.no_retry and not task.stream:
                task.retries -= 1
                task._mark_queued()
                requeue.append(task)
            else:
                task._mark_queued()
                error = (
                    info.crash_error(task.id) if info is not None else WorkerCrashedError(task.id)
                )
                self.finish(task, TaskStatus.FAILED, error)
        self.n_pipe -= max(0, len(slot.inflight) - 1)
        slot.inflight.clear()
        for task in requeue:
            task.in_queue = True
        self.queue.extendleft(reversed(requeue))
        self.n_deque += len(requeue)
        if self.broken is not None:
            self.fail_queued(self.broken)
        else:
            self.drain_queue()
        self._wake()

    # -- settling -----------------------------------------------------------------------

    def finish(self, task: Task[Any], status: TaskStatus, outcome: Any) -> bool:
        """Settle *task* once, keeping the counts; False if it was settled already."""
        previous = task._status
        if not task._resolve(status, outcome):
            return False
        if previous is TaskStatus.RUNNING:
            self.n_running -= 1
        else:
            self.n_queued -= 1
            if task.in_queue:  # left in the deque: skipped when it comes up
                task.in_queue = False
                self.n_deque -= 1
            if self.on_room is not None:
                self.on_room()
        if status is TaskStatus.COMPLETED:
            self.completed += 1
        elif status is TaskStatus.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1
        if self.hub.active:
            self.hub.emit("task_done", task_id=task.id, detail={"outcome": status.value})
        if self.on_drained is not None and not (self.n_queued or self.n_running):
            self.on_drained()
        return True

    def cancel(self, task: Task[Any], *, stop_if_sync: bool = True) -> bool:
        """``task.cancel()``: see :meth:`aioproc.Task.cancel`. With *stop_if_sync*
        False a running sync function is left to finish (a sync generator stops
        at its next item)."""
        slot: Slot | None = task.slot
        call: Call | None = task.call
        if not self.finish(task, TaskStatus.CANCELLED, cancelled_error(task)):
            return False
        if slot is not None and call is not None and not slot.dead and slot.proc is not None:
            if call.started and not call.is_async and stop_if_sync:
                self.mark_stopping(slot, "cancel")
            slot.proc.cancel(call, stop_if_sync=stop_if_sync)
        return True

    def expire(self, task: Task[Any], call: Any) -> Slot | None:
        """A task ran past its timeout: fail it; the slot to stop, if any."""
        if task.call is not call or task.done():
            return None
        slot: Slot = task.slot
        timeout = task.timeout or 0.0
        error = TaskTimeoutError(
            f"task {task.id} timed out after {timeout:g} s (worker {slot.pid} stopped)",
            task_id=task.id,
        )
        self.finish(task, TaskStatus.FAILED, error)
        self.mark_stopping(slot, "timeout")
        return slot

    def cancel_all(self) -> None:
        """Cancel every task not finished (pool closing with cancel_pending)."""
        for slot in list(self.slots.values()):
            for task in list(slot.inflight):
                self.cancel(task)
        while self.queue:
            self.cancel(self.queue.popleft())

    def cancel_unstarted(self) -> None:
        """Cancel the tasks no worker has started (end of the shutdown timeout)."""
        while self.queue:
            self.cancel(self.queue.popleft())
        for slot in list(self.slots.values()):
            for task in list(slot.inflight):
                if task.status is TaskStatus.QUEUED:
                    self.cancel(task)

    def fail_queued(self, error: BaseException) -> None:
        """Fail every queued task with a copy of the pool-broken *error*."""
        while self.queue:
            task = self.queue.popleft()
            self.finish(task, TaskStatus.FAILED, broken_error(error))

    # -- figures --------------------------------------------------------------------------

    def crash_detail(self, slot: Slot) -> dict[str, Any]:
        """Event detail of a worker exit the pool did not ask for."""
        proc = slot.proc
        info = proc.exit_info if proc is not None else None
        detail: dict[str, Any] = {
            "exitcode": info.returncode if info else None,
            "signal": info.signal if info else None,
        }
        if info is not None and info.signal == 9 and not info.by_us:
            detail["reason"] = "out of memory suspected"
        return detail


def broken_error(cause: BaseException) -> PoolBrokenError:
    """A fresh PoolBrokenError whose ``__cause__`` is the last start error."""
    error = PoolBrokenError(f"the pool is broken: workers failed to start ({cause})")
    error.__cause__ = cause
    return error

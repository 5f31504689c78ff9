"""One pool task: :class:`Task`, its status, and the cheapest way to wait for it.

A task is resolved exactly once — a result, an exception or a cancellation —
through :meth:`Task._resolve`, which returns False to any later attempt (a late
result from a worker whose task was already cancelled, say). Resolution runs the
task's done-callbacks; the only thing a waiting caller registers is a wake-up.

Waiting is the hot path of ``pool.run()`` (one wait per task, 100k tasks/s), so it
uses each backend's native primitive rather than an ``anyio.Event``::

    asyncio/uvloop  a bare loop future, woken by fut.set_result(None)
    trio            wait_task_rescheduled(), woken by reschedule(task)
    anything else   anyio.Event

A cancelled waiter unregisters its wake-up and re-raises; cancelling a *waiter*
never cancels the task (several callers may await one task). The pool's
``run()``, ``map()`` and ``stream()`` cancel their task themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ._errors import TaskCancelledError
from ._workerstate import trio_running

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = ["Parker", "Task", "TaskStatus", "current_parker", "park_asyncio"]

T = TypeVar("T")

DoneCallback: TypeAlias = "Callable[[Task[Any]], None]"
#: Waits until a task is resolved (cancellable); one per backend.
Parker: TypeAlias = "Callable[[Task[Any]], Awaitable[None]]"


class TaskStatus(enum.StrEnum):
    """Where a task is: ``queued`` until a worker reports it started, then
    ``running``, then one of ``completed`` (a result), ``failed`` (an exception,
    crash or timeout) or ``cancelled``."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Task(Generic[T]):
    """A task submitted to a :class:`~aioproc.Pool`; await it for its result.

    ``await task`` returns the function's result or raises its exception
    (:class:`~aioproc.WorkerCrashedError`, :class:`~aioproc.TaskTimeoutError`,
    :class:`~aioproc.TaskCancelledError`, ...). It can be awaited several times
    and by several callers; a task that finished before its pool closed still
    returns its result. Cancelling a caller that awaits a task does not cancel
    the task: use :meth:`cancel`.
    """

    __slots__ = (
        "_callbacks",
        "_canceller",
        "_future",
        "_outcome",
        "_parker",
        "_status",
        "args",
        "attempts",
        "call",
        "fn",
        "id",
        "in_queue",
        "retries",
        "slot",
        "started_at",
        "stream",
        "submitted_at",
        "timeout",
    )

    def __init__(
        self,
        task_id: int,
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,
        retries: int,
        parker: Parker,
        canceller: Callable[[Task[Any]], bool],
        submitted_at: float = 0.0,
        stream: bool = False,
    ) -> None:
        self.id = task_id
        self.fn = fn
        self.args = args
        self.timeout = timeout
        self.retries = retries
        self.attempts = 0
        self.submitted_at = submitted_at
        self.started_at = 0.0
        #: Whether *fn* is a generator function served by ``pool.stream()``.
        self.stream = stream
        #: The dispatcher's record of the worker holding this task, and the call
        #: made there (``None`` while the task waits in the pool's queue).
        self.slot: Any = None
        self.call: Any = None
        #: Whether the task waits in the pool's queue (the deque) right now.
        self.in_queue = False
        self._status = TaskStatus.QUEUED
        self._outcome: Any = None
        self._callbacks: list[DoneCallback] | None = []
        #: asyncio: the loop future of the first waiter (woken without a callback).
        self._future: asyncio.Future[None] | None = None
        self._parker = parker
        self._canceller = canceller

    @property
    def status(self) -> TaskStatus:
        """``queued``, ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self._status

    def done(self) -> bool:
        """Whether the task has its outcome (result, exception or cancellation)."""
        return self._callbacks is None

    def cancel(self) -> bool:
        """Cancel the task: a queued task never starts; a running async function
        is cancelled in its worker; a running sync function's worker is stopped
        and replaced. Awaiting the task then raises TaskCancelledError.

        :returns: False if the task had already finished, else True.
        """
        if self._callbacks is None:
            return False
        return self._canceller(self)

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(task)`` once the task is resolved (now, if it is)."""
        if self._callbacks is None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: DoneCallback) -> None:
        """Forget *callback* if it has not run yet."""
        callbacks = self._callbacks
        if callbacks is not None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

    def _resolve(self, status: TaskStatus, outcome: Any) -> bool:
        """Settle the task once; False if it was already settled."""
        callbacks = self._callbacks
        if callbacks is None:
            return False
        self._callbacks = None
        self._status = status
        self._outcome = outcome
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)
        for callback in callbacks:
            callback(self)
        return True

    def _mark_running(self, now: float) -> None:
        if self._callbacks is not None:
            self._status = TaskStatus.RUNNING
            self.started_at = now

    def _mark_queued(self) -> None:
        if self._callbacks is not None:
            self._status = TaskStatus.QUEUED

    def result(self) -> T:
        """The result of a finished task, or its exception raised.

        :raises asyncio.InvalidStateError: when the task has not finished.
        """
        if self._callbacks is not None:
            raise asyncio.InvalidStateError(f"task {self.id} is {self._status.value}")
        if self._status is TaskStatus.COMPLETED:
            return self._outcome  # type: ignore[no-any-return]
        raise self._outcome

    async def _wait(self) -> T:
        if self._callbacks is not None:
            await self._parker(self)
        return self.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    def __repr__(self) -> str:
        return f"<Task {self.id} {self._status.value} attempts={self.attempts}>"


def cancelled_error(task: Task[Any]) -> TaskCancelledError:
    """The error a cancelled task raises."""
    return TaskCancelledError(f"task {task.id} was cancelled")


# -- parking: wait for a task on each backend's native primitive ----------------------


async def park_asyncio(task: Task[Any]) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if task._future is None or task._future.done():
        # The common case, one waiter (pool.run): woken directly by _resolve.
        task._future = fut
        try:
            await fut
        finally:
            if task._future is fut:
                task._future = None
        return

    def wake(_: Task[Any]) -> None:
        if not fut.done():
            fut.set_result(None)

    task.add_done_callback(wake)
    try:
        await fut
    except BaseException:
        task.remove_done_callback(wake)
        raise


async def _park_trio(task: Task[Any]) -> None:
    import trio

    me = trio.lowlevel.current_task()

    def wake(_: Task[Any]) -> None:
        trio.lowlevel.reschedule(me)

    def abort(_: Any) -> trio.lowlevel.Abort:
        task.remove_done_callback(wake)
        return trio.lowlevel.Abort.SUCCEEDED

    task.add_done_callback(wake)
    await trio.lowlevel.wait_task_rescheduled(abort)


async def _park_anyio(task: Task[Any]) -> None:  # pragma: no cover - no third backend
    event = anyio.Event()

    def wake(_: Task[Any]) -> None:
        event.set()

    task.add_done_callback(wake)
    try:
        await event.wait()
    finally:
        task.remove_done_callback(wake)


def current_parker() -> Parker:
    """The waiting primitive of the backend running the caller."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return park_asyncio
    if trio_running():
        return _park_trio
    return _park_anyio  # pragma: no cover

"""Calls in flight on a worker: :class:`Call` and :class:`StreamCall`.

A call is resolved exactly once, synchronously, by the reader of its
:class:`~aioproc._workerproc.WorkerProcess` (``_finish``); whoever waits is woken
through a one-shot waiter (see :func:`waiter_factory`): the asyncio loop's own
Future on asyncio and uvloop, a parked trio task on trio (both far cheaper than
an :class:`anyio.Event`, which costs ~1 µs just to make on trio).
"""

from __future__ import annotations

import functools
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._errors import TaskCancelledError
from ._workerstate import trio_running
from .protocol import Kind, encode_body

if TYPE_CHECKING:
    from ._workerproc import WorkerProcess

__all__ = [
    "AnsweredCheckpoint",
    "Call",
    "EventWaiter",
    "StreamCall",
    "TrioWaiter",
    "checkpoint_factory",
    "credit_frame",
    "plain_frame",
    "waiter_factory",
]

_pack_header = struct.Struct(">I").pack  # frame_header() without its range check
_PLAIN_ARGS = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN_MAX = 32 * 1024


def plain_frame(
    packer: Any, message: list[Any], args: Sequence[Any], max_frame: int
) -> bytes | None:
    """The frame of a call whose arguments are a few small exact scalars, else
    None (then the full check runs: it names the type and path of what is wrong)."""
    for arg in args:
        kind = type(arg)
        if kind not in _PLAIN_ARGS or ((kind is bytes or kind is str) and len(arg) > _PLAIN_MAX):
            return None
    try:
        body: bytes = packer.pack(message)
    except (TypeError, ValueError, OverflowError):
        return None
    size = len(body)
    if size >= _PLAIN_MAX or size > max_frame:
        return None
    return _pack_header(size) + body


def credit_frame(call_id: int, credit: int) -> bytes:
    """The frame of a ``CREDIT`` message."""
    body = encode_body([Kind.CREDIT, call_id, credit])
    return _pack_header(len(body)) + body


def waiter_factory(loop: Any) -> Callable[[], Any]:
    """What makes one-shot waiters in the running event loop (*loop*: the asyncio
    loop, or ``None`` on another backend)."""
    if loop is not None:
        return loop.create_future  # type: ignore[no-any-return]
    return TrioWaiter if trio_running() else EventWaiter


#: Calls answered at once (see :class:`AnsweredCheckpoint`) per schedule point.
ANSWERED_PER_YIELD = 16


class AnsweredCheckpoint:
    """What ``Worker.call`` awaits when the answer was read right after sending
    (``WorkerProcess.quick_call``, ``PipeEnds.read_now``), in place of the wait
    it skipped.

    Every time a cancellation point: a cancelled caller still gets its
    cancellation, not the result. Every :data:`ANSWERED_PER_YIELD`-th time also a
    schedule point (the backend's full checkpoint), so a loop of such calls
    cannot starve other tasks -- as :class:`~aioproc.OutputStream` reads that
    never have to wait do. A full checkpoint is one event-loop turn (about 2 µs on
    asyncio, 3 µs on trio), a good part of a whole round trip on one CPU.
    """

    __slots__ = ("_cancel_point", "_checkpoint", "_count")

    def __init__(self, loop: Any) -> None:
        self._count = 0
        self._checkpoint = checkpoint_factory(loop)
        self._cancel_point = _cancel_point_factory(loop)

    def __call__(self) -> Awaitable[None]:
        self._count += 1
        if self._count < ANSWERED_PER_YIELD:
            return self._cancel_point()
        self._count = 0
        return self._checkpoint()


def _asyncio_cancel_point_factory() -> Callable[[], Awaitable[None]]:
    """A cancellation point on asyncio: a plain asyncio cancellation of the task
    (``task.cancelling()``), then anyio's cancel scopes -- through the backend
    class looked up once, which saves anyio's per-call backend lookup (about a
    third of the point's cost, and the point is a good part of a round trip
    answered at once)."""
    import asyncio

    try:  # private in anyio 4 (absent: the public function)
        from anyio._core._eventloop import get_async_backend

        scopes_checkpoint = get_async_backend().checkpoint_if_cancelled
    except (ImportError, AttributeError):  # pragma: no cover - another anyio
        scopes_checkpoint = anyio.lowlevel.checkpoint_if_cancelled
    current_task = asyncio.current_task
    sleep = asyncio.sleep

    async def cancel_point() -> None:
        task = current_task()
        if task is not None and task.cancelling():  # a plain asyncio cancellation
            await sleep(0)
        else:
            await scopes_checkpoint()  # anyio cancel scopes

    return cancel_point


def _cancel_point_factory(loop: Any) -> Callable[[], Awaitable[None]]:
    """:func:`anyio.lowlevel.checkpoint_if_cancelled` of the running backend."""
    if loop is not None:
        return _asyncio_cancel_point_factory()
    trio = sys.modules.get("trio")
    if waiter_factory(None) is TrioWaiter and trio is not None:
        return trio.lowlevel.checkpoint_if_cancelled  # type: ignore[no-any-return]
    return anyio.lowlevel.checkpoint_if_cancelled


def checkpoint_factory(loop: Any) -> Callable[[], Awaitable[None]]:
    """:func:`anyio.lowlevel.checkpoint` of the running backend (*loop* as for
    :func:`waiter_factory`), without anyio's backend lookup on every call."""
    if loop is not None:
        import asyncio

        return functools.partial(asyncio.sleep, 0)  # anyio's asyncio checkpoint
    trio = sys.modules.get("trio")
    if waiter_factory(None) is TrioWaiter and trio is not None:
        return trio.lowlevel.checkpoint  # type: ignore[no-any-return]
    return anyio.lowlevel.checkpoint


class TrioWaiter:
    """A one-shot waiter for one task on trio: the task parks itself
    (``wait_task_rescheduled``) and ``set_result`` reschedules it — what
    ``trio.Event.wait`` does, without an Event and a ParkingLot per call.
    Cancellation is trio's own: a cancelled waiting task simply stops waiting."""

    __slots__ = ("_set", "_task")

    def __init__(self) -> None:
        self._set = False
        self._task: Any = None

    def done(self) -> bool:
        return self._set

    def set_result(self, _value: object) -> None:
        self._set = True
        task = self._task
        if task is not None:
            self._task = None
            sys.modules["trio"].lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> Any:
        self._task = None
        return sys.modules["trio"].lowlevel.Abort.SUCCEEDED

    def __await__(self) -> Generator[Any, Any, None]:
        lowlevel = sys.modules["trio"].lowlevel
        if self._set:
            yield from lowlevel.checkpoint().__await__()
            return
        self._task = lowlevel.current_task()
        yield from lowlevel.wait_task_rescheduled(self._abort).__await__()


class EventWaiter:
    """A one-shot waiter with the asyncio Future surface we use, over anyio.Event
    (trio); on asyncio the loop's own futures are used instead (cheaper)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, _value: object) -> None:
        self._event.set()

    def __await__(self) -> Any:
        return self._event.wait().__await__()


class Call:
    """One call sent to a worker. Resolved exactly once (result, error or cancel).

    ``started`` turns true when the worker reported ``STARTED`` (only asked for
    with ``report_started``); ``is_async`` then says whether the function is a
    coroutine function. ``on_started`` / ``on_done`` are called synchronously
    from the reader task. ``tag`` is free for the owner (the Pool's task).
    """

    __slots__ = (
        "_error",
        "_new_waiter",
        "_value",
        "_waiter",
        "cancel_requested",
        "done",
        "id",
        "is_async",
        "on_done",
        "on_started",
        "started",
        "stop_if_sync",
        "tag",
    )

    def __init__(self, call_id: int, new_waiter: Callable[[], Any] | None = None) -> None:
        self.id = call_id
        self._new_waiter = new_waiter or EventWaiter
        self.started = False
        self.is_async: bool | None = None
        self.done = False
        self.cancel_requested = False
        self.stop_if_sync = True
        self.on_started: Callable[[Call], None] | None = None
        self.on_done: Callable[[Call], None] | None = None
        self.tag: object = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiter: Any = None

    @property
    def error(self) -> BaseException | None:
        """The exception the call ended with (``None`` while pending or on success)."""
        return self._error

    @property
    def cancelled(self) -> bool:
        """True when the worker confirmed the call was cancelled (or never ran)."""
        return isinstance(self._error, TaskCancelledError)

    def result(self) -> Any:
        """The value, or raise the call's exception.

        :raises RuntimeError: while the call is still pending.
        """
        if not self.done:
            raise RuntimeError("call is still pending")
        if self._error is not None:
            raise self._error
        return self._value

    def waiter(self) -> Awaitable[None]:
        """A one-shot awaitable that wakes at the call's next change (its end; a
        stream's next item too). ``while not call.done: await call.waiter()``
        is :meth:`wait_done` without a coroutine of its own (hot path)."""
        waiter: Awaitable[None] = self._new_waiter()
        self._waiter = waiter
        return waiter

    async def wait(self) -> Any:
        """Wait for the call to end; its value (or its exception raised)."""
        while not self.done:  # a stream's waiter also wakes for items
            await self.waiter()
        return self.result()

    async def wait_done(self) -> None:
        """Wait for the call to end, raising nothing."""
        while not self.done:
            await self.waiter()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self._value = value
        self._error = error
        waiter = self._waiter
        if waiter is not None:  # _wake(), inline: every call ends here
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.on_done is not None:
            self.on_done(self)

    def __repr__(self) -> str:
        if not self.done:
            state = "started" if self.started else "pending"
        elif self._error is not None:
            state = f"failed={type(self._error).__name__}"
        else:
            state = "done"
        return f"<Call id={self.id} {state}>"


class StreamCall(Call):
    """A call of a (async) generator: items arrive into a buffer, credit flows back."""

    __slots__ = ("_items", "_owner", "_unacked", "window")

    def __init__(self, call_id: int, owner: WorkerProcess, window: int) -> None:
        super().__init__(call_id, owner._new_waiter)
        self._owner = owner
        self._items: deque[Any] = deque()
        self._unacked = 0
        self.window = window

    def _push(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None:
            self._wake()

    async def next_item(self) -> Any:
        """The next item; credit is returned to the worker as items are consumed.

        :raises StopAsyncIteration: after the generator finished.
        :raises Exception: whatever the generator raised (rebuilt), or a crash.
        """
        while not self._items:
            if self.done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self.waiter()
        item = self._items.popleft()
        self._unacked += 1
        if self._unacked * 2 >= self.window and not self.done:
            self._owner._send_body(encode_body([Kind.CREDIT, self.id, self._unacked]))
            self._unacked = 0
        return item

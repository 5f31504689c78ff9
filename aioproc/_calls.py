"""Calls in flight on a worker: :class:`Call` and :class:`StreamCall`.

A call is resolved exactly once, synchronously, by the reader of its
:class:`~aioproc._workerproc.WorkerProcess` (``_finish``); whoever waits is woken
through a one-shot waiter: the asyncio loop's own Future on asyncio and uvloop
(cheapest), an :class:`anyio.Event` elsewhere (trio).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import TaskCancelledError
from .protocol import Kind, encode_body

if TYPE_CHECKING:
    from ._workerproc import WorkerProcess

__all__ = ["Call", "EventWaiter", "StreamCall"]


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

    async def wait(self) -> Any:
        """Wait for the call to end; its value (or its exception raised)."""
        while not self.done:  # a stream's waiter also wakes for items
            waiter = self._waiter = self._new_waiter()
            await waiter
        return self.result()

    async def wait_done(self) -> None:
        """Wait for the call to end, raising nothing."""
        while not self.done:
            waiter = self._waiter = self._new_waiter()
            await waiter

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
        if self._waiter is not None:
            self._wake()
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
            waiter = self._waiter = self._new_waiter()
            await waiter
        item = self._items.popleft()
        self._unacked += 1
        if self._unacked * 2 >= self.window and not self.done:
            self._owner._send_body(encode_body([Kind.CREDIT, self.id, self._unacked]))
            self._unacked = 0
        return item

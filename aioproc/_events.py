"""Pool events: :class:`PoolEvent` and the per-reader buffers of ``pool.events()``.

Every reader gets its own bounded buffer, so a slow reader never slows the pool
or another reader: when its buffer is full the oldest event is dropped and the
reader's ``dropped`` count goes up. With no reader at all, emitting costs one
truth test (the pool checks :attr:`EventHub.active` before building an event)::

    pool / supervisor ──emit()──▶ EventHub ──▶ EventReader 1: deque(maxlen) ──▶ async for
                                           └─▶ EventReader 2: deque(maxlen) ──▶ async for

Readers are held weakly: an iterator the caller dropped stops receiving events.
When the pool closes, each reader yields what it still holds, then stops.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["DEFAULT_BUFFER", "EventHub", "EventKind", "EventReader", "PoolEvent"]

#: Events one reader may hold before the oldest are dropped.
DEFAULT_BUFFER = 1024

EventKind = Literal[
    "worker_started",
    "worker_ready",
    "worker_recycled",
    "worker_crashed",
    "task_queued",
    "task_started",
    "task_done",
]


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """Something that happened in a pool.

    ``kind`` is one of ``"worker_started"``, ``"worker_ready"``,
    ``"worker_recycled"`` (``detail["reason"]``), ``"worker_crashed"``
    (``detail["exitcode"]``, ``detail["signal"]``, and ``detail["out of memory
    suspected"]`` for a SIGKILL the pool did not send), ``"task_queued"``,
    ``"task_started"``, ``"task_done"`` (``detail["outcome"]``); ``time`` is epoch
    seconds; ``pid`` the worker's, ``task_id`` the task's, where they apply.
    """

    kind: EventKind
    time: float
    pid: int | None = None
    task_id: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class EventReader:
    """An async iterator over a pool's events, with its own bounded buffer.

    ``dropped`` counts the events lost because the buffer was full. The iteration
    ends once the pool has closed and the buffer is empty.
    """

    __slots__ = ("__weakref__", "_buffer", "_closed", "_wakeup", "dropped")

    def __init__(self, maxlen: int = DEFAULT_BUFFER) -> None:
        self._buffer: deque[PoolEvent] = deque(maxlen=maxlen)
        self._wakeup: anyio.Event | None = None
        self._closed = False
        self.dropped = 0

    def _push(self, event: PoolEvent) -> None:
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1
        buffer.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    def _finish(self) -> None:
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    def __aiter__(self) -> EventReader:
        return self

    async def __anext__(self) -> PoolEvent:
        """The next event, waiting for one if needed.

        :raises StopAsyncIteration: once the pool closed and the buffer is empty.
        """
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            try:
                await self._wakeup.wait()
            finally:
                self._wakeup = None
        await checkpoint()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop reading: the iterator ends and receives nothing more."""
        self._buffer.clear()
        self._finish()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventReader {state} buffered={len(self._buffer)} dropped={self.dropped}>"


class EventHub:
    """Fans events out to the live readers.

    :attr:`active` is a plain attribute (read on every task), kept up to date as
    readers come and go (a reader is dropped when collected or closed).
    """

    __slots__ = ("_closed", "_readers", "active")

    def __init__(self) -> None:
        self._readers: dict[int, weakref.ref[EventReader]] = {}
        self._closed = False
        #: Whether anyone listens (check it before building an event).
        self.active = False

    def _forget(self, key: int) -> None:
        self._readers.pop(key, None)
        self.active = bool(self._readers)

    def reader(self, maxlen: int = DEFAULT_BUFFER) -> EventReader:
        """A new reader that receives every event emitted from now on."""
        reader = EventReader(maxlen)
        if self._closed:
            reader._finish()
        else:
            key = id(reader)
            self._readers[key] = weakref.ref(reader, lambda _: self._forget(key))
            self.active = True
        return reader

    def emit(
        self,
        kind: EventKind,
        *,
        pid: int | None = None,
        task_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Give an event, stamped now, to every reader."""
        if not self.active:
            return
        event = PoolEvent(kind, time.time(), pid, task_id, detail if detail is not None else {})
        for key, ref in list(self._readers.items()):
            reader = ref()
            if reader is None or reader._closed:
                self._forget(key)
            else:
                reader._push(event)

    def close(self) -> None:
        """The pool closed: readers drain their buffers, then stop."""
        self._closed = True
        for ref in list(self._readers.values()):
            reader = ref()
            if reader is not None:
                reader._finish()
        self._readers.clear()
        self.active = False

"""``pool.map()`` and ``pool.stream()``: iterating results of pool tasks.

``map`` keeps a lazy window of tasks over a (possibly endless) iterable.

No task per item and no helper task at all: the consumer's own ``__anext__``
keeps the window full, then waits for the next result::

    iterable ──next item──▶ submit (waits for room under max_queue) ──▶ window
                  ▲                                                    │
                  └──── refill up to `window` tasks ◀── __anext__ ◀────┘
                          ordered: the oldest task   unordered: the first done

Each task has a done-callback that notes a failure (stop feeding: the first
failing item raises from the iterator) and, for ``ordered=False``, queues the
task as finished and wakes the consumer. Leaving the ``async with`` block (or an
error) cancels every task still outstanding.

``stream`` is one task whose call is a stream call: once the task reaches a
worker, items are read from that call (credit flows back as they are consumed).
A stream whose worker died before it started is requeued like any task, and the
iterator follows it to its new worker.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ._dispatch import Dispatcher
from ._task import Task, TaskStatus

__all__ = ["MapResults", "StreamResults", "Submitter"]

T = TypeVar("T")


class Submitter(Protocol):
    """What map needs from the pool."""

    async def submit_waiting(
        self,
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,  # noqa: ASYNC109 - the task's limit, not this call's
        retries: int,
    ) -> Task[Any]: ...

    def check_open(self) -> None: ...


class MapResults(Generic[T]):
    """``async with pool.map(fn, iterable) as results: async for r in results``.

    Results come in input order (``ordered=True``) or as they finish. At most
    ``window`` tasks are in flight; items are taken from the iterable only to
    refill the window, so an endless iterable is fine.
    """

    def __init__(
        self,
        pool: Submitter,
        fn: Callable[[Any], T | Awaitable[T]] | str,
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool,
        timeout: float | None,
        retries: int,
        window: int,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._source = iterable
        self._sync_it: Any = None
        self._async_it: Any = None
        self._ordered = ordered
        self._timeout = timeout
        self._retries = retries
        self._window = max(1, window)
        self._pending: deque[Task[Any]] = deque()  # in flight, in input order
        self._finished: deque[Task[Any]] = deque()  # unordered: done, not yet yielded
        self._exhausted = False
        self._failed = False
        self._closed = False
        self._wakeup: anyio.Event | None = None

    # -- context manager --------------------------------------------------------

    async def __aenter__(self) -> MapResults[T]:
        self._pool.check_open()
        source = self._source
        if isinstance(source, AsyncIterable):
            self._async_it = aiter(source)
        else:
            self._sync_it = iter(source)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every task still outstanding; the iteration ends."""
        self._closed = True
        while self._pending:
            self._pending.popleft().cancel()
        self._finished.clear()
        ait, self._async_it = self._async_it, None
        if ait is not None and inspect.isasyncgen(ait):
            with anyio.CancelScope(shield=True):
                await ait.aclose()

    # -- iteration ----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """The next result.

        :raises Exception: the first failing item's exception (the rest are cancelled).
        :raises StopAsyncIteration: when every item has been yielded.
        """
        if self._closed:
            raise StopAsyncIteration
        try:
            await self._refill()
            if self._ordered:
                if not self._pending:
                    raise StopAsyncIteration
                task = self._pending[0]
                if not task.done():
                    await task._parker(task)
                self._pending.popleft()
            else:
                task = await self._next_finished()
            return task.result()  # type: ignore[no-any-return]
        except StopAsyncIteration:
            self._closed = True
            raise
        except BaseException:
            await self.aclose()
            raise

    async def _next_finished(self) -> Task[Any]:
        while not self._finished:
            if not self._pending:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            try:
                await self._wakeup.wait()
            finally:
                self._wakeup = None
        task = self._finished.popleft()
        self._pending.remove(task)
        return task

    async def _refill(self) -> None:
        while not self._exhausted and not self._failed and len(self._pending) < self._window:
            try:
                if self._async_it is not None:
                    item = await anext(self._async_it)
                else:
                    item = next(self._sync_it)
            except (StopIteration, StopAsyncIteration):
                self._exhausted = True
                break
            task = await self._pool.submit_waiting(self._fn, (item,), self._timeout, self._retries)
            self._pending.append(task)
            task.add_done_callback(self._on_done)

    def _on_done(self, task: Task[Any]) -> None:
        if task.status is not TaskStatus.COMPLETED:
            self._failed = True
        if not self._ordered and not self._closed:
            self._finished.append(task)
            if self._wakeup is not None:
                self._wakeup.set()

    def __repr__(self) -> str:
        return (
            f"<MapResults in_flight={len(self._pending)} window={self._window}"
            f" ordered={self._ordered} exhausted={self._exhausted}>"
        )


class StreamResults(Generic[T]):
    """``async with pool.stream(genfn, *args) as items: async for item in items``.

    Leaving the block early cancels the generator in its worker (a sync
    generator stops at its next item; the worker lives on); a cancelled caller
    stops a sync generator's worker, as for any running sync function.
    """

    def __init__(self, dispatcher: Dispatcher, task: Task[Any]) -> None:
        self._dispatcher = dispatcher
        self._task = task
        self._call: Any = None

    @property
    def task(self) -> Task[Any]:
        """The pool task that runs the generator."""
        return self._task

    async def __aenter__(self) -> StreamResults[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task.done():
            return
        cancelled = exc_type is not None and issubclass(exc_type, anyio.get_cancelled_exc_class())
        call = task.call
        self._dispatcher.cancel(task, stop_if_sync=cancelled)
        if call is not None and not cancelled:
            # Let the generator's finally run in the worker before moving on.
            await call.wait_done()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def _dispatched(self) -> Any:
        task = self._task
        while task.call is None and not task.done():
            event = anyio.Event()
            self._dispatcher.stream_waiters[task] = event

            def wake(_: Task[Any], event: anyio.Event = event) -> None:
                event.set()

            task.add_done_callback(wake)
            try:
                await event.wait()
            finally:
                task.remove_done_callback(wake)
                self._dispatcher.stream_waiters.pop(task, None)
        return task.call

    async def __anext__(self) -> T:
        """The next item the generator yielded.

        :raises StopAsyncIteration: when the generator is exhausted.
        :raises Exception: what the generator raised, or WorkerCrashedError /
            TaskCancelledError for the stream's task.
        """
        task = self._task
        while True:
            call = self._call
            if call is None:
                call = self._call = await self._dispatched()
                if call is None:  # settled before it reached a worker
                    task.result()
                    raise StopAsyncIteration
            try:
                item: T = await call.next_item()
            except StopAsyncIteration:
                raise
            except Exception:
                if not call.started and not task.done():
                    self._call = None  # its worker died first: it was requeued
                    continue
                if task.done() and task.status is not TaskStatus.COMPLETED:
                    task.result()  # the task's own error (names the task id)
                raise
            return item

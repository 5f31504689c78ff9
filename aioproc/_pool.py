"""``Pool``: an autoscaling, crash-proof pool of Python worker processes (SPEC §3).

Data flow
=========
::

    caller ──run/submit──▶ Pool ──Task──▶ Dispatcher.submit ──▶ idle worker's pipe (write-through)
       ▲                    │                      └──────────▶ queue (deque)
       │                    │ map(): a lazy window of tasks     │  refilled by each worker's
       │                    │ stream(): one stream task         │  reader as results arrive
       │                    ▼                                   ▼
       │               Supervisor (one task) ◀─ wake ─ queue grew / worker exited / deadlines
       │                 │  decide() (pure policy, _scaling.py): start, retire, broken
       │                 └─ task group: zygote, WorkerProcess.serve per worker (reader)
       │
       └── Task settled exactly once by the worker's reader (result / error / crash /
           timeout / cancel) — the caller is woken by a bare loop future (trio: reschedule)

The modules: :mod:`._dispatch` (the hot path: queue, pipelining, callbacks,
crash requeue), :mod:`._supervisor` (worker lifecycle, timeouts, shutdown),
:mod:`._scaling` (pure policy), :mod:`._task` (``Task``), :mod:`._pooliter`
(``map``/``stream``), :mod:`._poolstats` (``PoolStats``), :mod:`._events`
(``pool.events()``).

Design of dispatch
==================
* **Write-through.** ``submit`` runs in the caller's task: it picks an idle
  worker (else one with room in its pipeline) and writes the call into its pipe
  with one ``os.write``. Only when every worker is full does the task wait in
  the pool's deque. No per-task asyncio/trio task, no task group, no channel.
* **Refill from the reader.** When a worker answers, its reader settles the task
  and moves the next queued tasks onto that worker, in the same callback.
* **Pipelining.** Each worker keeps calls queued in its pipe (32 for tasks under
  100 µs, none for tasks of 5 ms or more: adapted to a moving average of run
  times), so it never waits a round trip between two tasks, and reads and
  writes come in batches.
* **Running means started.** Workers report ``STARTED``; only then is a task
  *running* (wait time, timeout clock, attempt count). When a worker dies, its
  started task crashes (or is retried while it has ``retries``) and its
  unstarted ones go back to the front of the queue without using a retry.
* **The supervisor sleeps** unless the pool's shape may change: a queue that
  grows while the pool may grow, a worker exiting or going idle to be retired,
  a nearer timeout, closing. An idle pool does nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from time import monotonic
from types import TracebackType
from typing import Any, NoReturn, TypeVar, TypeVarTuple, overload

import anyio
import anyio.abc

from ._errors import PoolClosed, QueueFull
from ._events import EventHub, EventReader
from ._pooliter import MapResults, StreamResults
from ._poolstats import PoolStats, TaskCounts, WorkerCounts, WorkerInfo
from ._scaling import WorkerState
from ._supervisor import PoolConfig, Supervisor
from ._task import Parker, Task, current_parker, park_asyncio
from ._values import check_sendable, function_ref
from .protocol import DEFAULT_MAX_FRAME

__all__ = ["Pool", "PoolState"]

T = TypeVar("T")
A = TypeVar("A")
Ts = TypeVarTuple("Ts")

_START_METHODS = ("forkserver", "spawn")


class PoolState(enum.Enum):
    """Where a pool is in its life."""

    CREATED = "created"  #: not entered yet
    STARTING = "starting"  #: entering: waiting for min_workers
    OPEN = "open"  #: takes tasks
    BROKEN = "broken"  #: workers fail to start: takes no tasks
    CLOSING = "closing"  #: draining or cancelling; takes no tasks
    CLOSED = "closed"  #: every worker stopped


def _positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ValueError(f"{name} must be given")
        return
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


class Pool:
    """An async context manager that runs functions in a pool of worker processes.

    ``async with Pool(...) as pool`` starts ``min_workers`` and waits until they
    are ready (:class:`~aioproc.PoolBrokenError` when workers cannot start);
    leaving the block drains what is queued and running (or cancels it when the
    block raised) and stops every worker. Options are described in SPEC §3.
    """

    def __init__(
        self,
        *,
        min_workers: int = 1,
        max_workers: int | None = None,
        idle_timeout: float = 300.0,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        task_timeout: float | None = None,
        max_queue: int | None = None,
        start_timeout: float = 10.0,
        preload: Sequence[str] = (),
        initializer: Callable[..., object] | str | None = None,
        initargs: Sequence[Any] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        start_method: str = "forkserver",
        max_frame: int = 64 * 2**20,
        shutdown_timeout: float = 30.0,
    ) -> None:
        if max_workers is None:
            max_workers = max(1, len(os.sched_getaffinity(0)), min_workers)
        if min_workers < 0:
            raise ValueError(f"min_workers must be >= 0, not {min_workers}")
        if max_workers < 1 or max_workers < min_workers:
            raise ValueError(f"max_workers must be >= max(1, min_workers), not {max_workers}")
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("max_tasks_per_worker", max_tasks_per_worker),
            ("max_memory_per_worker", max_memory_per_worker),
            ("task_timeout", task_timeout),
            ("max_queue", max_queue),
            ("start_timeout", start_timeout),
            ("max_frame", max_frame),
        ):
            _positive(name, value)
        if shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, not {shutdown_timeout}")
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        if isinstance(preload, str):
            preload = (preload,)
        if initializer is not None:
            function_ref(initializer)  # TypeError now, not at every start
        check_sendable(list(initargs), "initargs")
        self._config = PoolConfig(
            min_workers=min_workers,
            max_workers=max_workers,
            idle_timeout=idle_timeout,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            task_timeout=task_timeout,
            max_queue=max_queue,
            start_timeout=start_timeout,
            preload=tuple(preload),
            initializer=initializer,
            initargs=tuple(initargs),
            env=dict(env) if env is not None else None,
            cwd=os.fspath(cwd) if cwd is not None else None,
            start_method=start_method,
            max_frame=max_frame if max_frame else DEFAULT_MAX_FRAME,
            shutdown_timeout=shutdown_timeout,
        )
        self._state = PoolState.CREATED
        self._hub = EventHub()
        self._sup = Supervisor(self._config, self._hub)
        self._dispatcher = self._sup.dispatcher
        self._tg: anyio.abc.TaskGroup | None = None
        self._parker: Parker = _not_entered  # the backend's own primitive once entered
        #: The running asyncio loop (asyncio/uvloop): run() waits on its futures.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Read on every task: kept as plain attributes.
        self._cancel = self._dispatcher.cancel
        self._task_timeout = task_timeout
        self._max_queue = max_queue
        self._next_id = 1
        self._room: list[anyio.Event] = []

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """The pool's :class:`PoolState`."""
        if self._state is PoolState.OPEN and self._dispatcher.broken is not None:
            return PoolState.BROKEN
        return self._state

    async def __aenter__(self) -> Pool:
        """Start the supervisor and wait until ``min_workers`` are ready.

        :raises PoolBrokenError: when workers fail to start three times in a row.
        :raises RuntimeError: when the pool was entered before.
        """
        if self._state is not PoolState.CREATED:
            raise RuntimeError(f"a Pool can be entered only once (it is {self._state.value})")
        self._state = PoolState.STARTING
        self._parker = current_parker()
        if self._parker is park_asyncio:
            self._loop = asyncio.get_running_loop()
        if self._config.max_queue is not None:
            self._dispatcher.on_room = self._on_room
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await tg.start(self._sup.run)
        except BaseException as exc:
            await self._abort(exc)
            if self._sup.crash is not None:
                _reraise(self._sup.crash)
            raise
        if self._dispatcher.broken is not None:
            error = self._sup.broken_error()
            await self._abort(error)
            raise error
        self._state = PoolState.OPEN
        return self

    async def _abort(self, exc: BaseException) -> None:
        """Entering failed: stop the supervisor and leave the task group."""
        tg, self._tg = self._tg, None
        self._state = PoolState.CLOSING
        with anyio.CancelScope(shield=True):
            self._sup.close(cancel_pending=True)
            await self._sup.wait_finished()
        if tg is not None:
            tg.cancel_scope.cancel()
            with contextlib.suppress(BaseException):  # the start error is what matters
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
        self._state = PoolState.CLOSED
        self._hub.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose(cancel_pending=exc_type is not None)
        finally:
            tg, self._tg = self._tg, None
            if tg is not None:
                try:
                    await tg.__aexit__(exc_type, exc, tb)
                except BaseException as error:
                    if self._sup.crash is not None:  # a bug in the supervisor: say so
                        _reraise(self._sup.crash)
                    # The task group wraps the block's own exception: unwrap it.
                    single = _single_error(error)
                    if single is not None and single is not error:
                        _reraise(single)
                    raise
        return None

    async def aclose(self, cancel_pending: bool = False) -> None:
        """Close the pool: no new tasks; drain queued and running ones (or cancel
        them with *cancel_pending*); workers busy after ``shutdown_timeout`` are
        killed (their tasks raise WorkerCrashedError); then every worker stops.
        Idempotent; waits until the workers are gone, shielded from cancellation."""
        if self._state in (PoolState.CREATED, PoolState.CLOSED):
            self._state = PoolState.CLOSED
            self._hub.close()
            return
        self._state = PoolState.CLOSING
        self._sup.close(cancel_pending=cancel_pending)
        self._wake_room()
        with anyio.CancelScope(shield=True):
            await self._sup.wait_finished()
        self._state = PoolState.CLOSED
        self._hub.close()

    # -- submitting -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not PoolState.OPEN:
            if self._state in (PoolState.CLOSING, PoolState.CLOSED):
                raise PoolClosed(f"the pool is {self._state.value}")
            raise RuntimeError(f"the pool is {self._state.value}: use 'async with Pool(...)'")
        if self._dispatcher.broken is not None:
            raise self._sup.broken_error()

    def check_open(self) -> None:
        """Raise unless the pool takes tasks (used by ``map``)."""
        self._check_open()

    def _queue_full(self) -> bool:
        max_queue = self._config.max_queue
        return max_queue is not None and self._dispatcher.n_queued >= max_queue

    def _new_task(
        self, fn: Any, args: tuple[Any, ...], timeout: float | None, retries: int, stream: bool
    ) -> Task[Any]:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if timeout is None:
            timeout = self._task_timeout
        elif timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        task_id = self._next_id
        self._next_id = task_id + 1
        task: Task[Any] = Task(
            task_id, fn, args, timeout, retries, self._parker, self._cancel, monotonic(), stream
        )
        self._dispatcher.submit(task)
        return task

    @overload
    def submit(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Task[T]: ...

    @overload
    def submit(
        self, fn: Callable[[*Ts], T], *args: *Ts, timeout: float | None = None, retries: int = 0
    ) -> Task[T]: ...

    @overload
    def submit(
        self, fn: str, *args: object, timeout: float | None = None, retries: int = 0
    ) -> Task[Any]: ...

    def submit(
        self,
        fn: Callable[[*Ts], Any] | str,
        *args: *Ts,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Task[Any]:
        """Submit ``fn(*args)``; returns its :class:`Task` at once.

        :raises QueueFull: when ``max_queue`` tasks are already waiting.
        :raises PoolClosed: when the pool is closing or closed.
        :raises PoolBrokenError: when the pool is broken.
        :raises TypeError: when *fn* or an argument cannot be sent to a worker.
        """
        self._check_open()
        if self._queue_full():
            raise QueueFull(f"{self._config.max_queue} tasks are already queued")
        return self._new_task(fn, args, timeout, retries, False)

    async def submit_waiting(
        self,
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,  # noqa: ASYNC109 - the task's limit, not this call's
        retries: int,
    ) -> Task[Any]:
        """Submit, waiting for room under ``max_queue`` (``run`` and ``map``).

        :raises PoolClosed: when the pool closes (before or while waiting).
        """
        self._check_open()
        while self._queue_full():
            event = anyio.Event()
            self._room.append(event)
            try:
                await event.wait()
            finally:
                if event in self._room:
                    self._room.remove(event)
            self._check_open()
        return self._new_task(fn, args, timeout, retries, False)

    def _on_room(self) -> None:
        if self._room and not self._queue_full():
            self._room.pop(0).set()

    def _wake_room(self) -> None:
        room, self._room = self._room, []
        for event in room:
            event.set()

    @overload
    async def run(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - the task's limit (SPEC)
        retries: int = 0,
    ) -> T: ...

    @overload
    async def run(
        self,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - the task's limit (SPEC)
        retries: int = 0,
    ) -> T: ...

    @overload
    async def run(
        self,
        fn: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 - the task's limit (SPEC)
        retries: int = 0,
    ) -> Any: ...

    async def run(
        self,
        fn: Callable[[*Ts], Any] | str,
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - the task's limit (SPEC), not ours
        retries: int = 0,
    ) -> Any:
        """Run ``fn(*args)`` in a worker; its result. Waits for room under
        ``max_queue``. Cancelling the caller cancels the task.

        :raises TaskTimeoutError: when one attempt ran longer than *timeout*
            (default ``task_timeout``); the worker was stopped and replaced.
        :raises WorkerCrashedError: when the worker died during the task (after
            *retries* more attempts on other workers).
        :raises PoolClosed: when the pool is closing or closed.
        :raises PoolBrokenError: when workers cannot start.
        :raises TypeError: when *fn* or an argument cannot be sent to a worker.
        :raises Exception: what *fn* raised, rebuilt, with the remote traceback
            as ``__cause__``.
        """
        max_queue = self._max_queue
        dispatcher = self._dispatcher
        if (
            self._state is PoolState.OPEN
            and dispatcher.broken is None
            and (max_queue is None or dispatcher.n_queued < max_queue)
        ):
            if timeout is None and not retries:  # _new_task's common case, inlined
                task_id = self._next_id
                self._next_id = task_id + 1
                task: Task[Any] = Task(
                    task_id,
                    fn,
                    args,
                    self._task_timeout,
                    0,
                    self._parker,
                    self._cancel,
                    monotonic(),
                )
                dispatcher.submit(task)
            else:
                task = self._new_task(fn, args, timeout, retries, False)
        else:
            task = await self.submit_waiting(fn, args, timeout, retries)
        if task._callbacks is not None:
            loop = self._loop
            try:
                if loop is not None and task._future is None:
                    # asyncio/uvloop, the only waiter: a bare loop future set by
                    # Task._resolve (no parker coroutine in between).
                    fut = task._future = loop.create_future()
                    await fut
                else:
                    await task._parker(task)
            except BaseException:
                task._future = None
                task.cancel()
                raise
        return task.result()

    def map(
        self,
        fn: Callable[[A], Awaitable[T]] | Callable[[A], T] | str,
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
        timeout: float | None = None,
        retries: int = 0,
    ) -> MapResults[T]:
        """``async with pool.map(fn, items) as results: async for r in results``.

        Items are taken lazily (about 2 x ``max_workers`` in flight); *timeout*
        and *retries* apply per item; the first failing item raises from the
        iterator and cancels the rest; leaving early cancels what is outstanding.

        :raises PoolClosed: when the pool is closing or closed.
        """
        self._check_open()
        return MapResults(
            self,
            fn,
            iterable,
            ordered=ordered,
            timeout=timeout,
            retries=retries,
            window=2 * self._config.max_workers,
        )

    def stream(
        self,
        genfn: Callable[[*Ts], AsyncIterator[T]] | Callable[[*Ts], Iterable[T]] | str,
        *args: *Ts,
    ) -> StreamResults[T]:
        """``async with pool.stream(genfn, *args) as items: async for item in items``:
        a (async) generator run in a worker, which it keeps until the end.

        :raises PoolClosed: when the pool is closing or closed.
        :raises TypeError: when *genfn* or an argument cannot be sent.
        """
        self._check_open()
        task = self._new_task(genfn, tuple(args), None, 0, True)
        return StreamResults(self._dispatcher, task)

    # -- figures --------------------------------------------------------------------------

    def events(self) -> EventReader:
        """An async iterator of :class:`~aioproc.PoolEvent` from now on, with its
        own bounded buffer (the oldest dropped, counted in ``.dropped``)."""
        return self._hub.reader()

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's figures (see :class:`PoolStats`)."""
        dispatcher = self._dispatcher
        counts = dict.fromkeys(WorkerState, 0)
        per_worker: list[WorkerInfo] = []
        for slot in dispatcher.slots.values():
            counts[slot.state] += 1
            rss, cpu = 0, 0.0
            proc = slot.proc
            if proc is not None and proc.pid is not None and slot.state is not WorkerState.STARTING:
                sample = proc.stats()
                rss, cpu = sample.rss, sample.cpu_percent
            per_worker.append(
                WorkerInfo(
                    pid=proc.pid if proc is not None and proc.pid is not None else 0,
                    state=slot.state.value,
                    tasks_done=slot.tasks_done,
                    rss=rss,
                    cpu_percent=cpu,
                )
            )
        finished = dispatcher.completed + dispatcher.failed + dispatcher.cancelled
        return PoolStats(
            state=self.state.value,
            workers=WorkerCounts(
                total=counts[WorkerState.IDLE]
                + counts[WorkerState.BUSY]
                + counts[WorkerState.STARTING],
                idle=counts[WorkerState.IDLE],
                busy=counts[WorkerState.BUSY],
                starting=counts[WorkerState.STARTING],
            ),
            tasks=TaskCounts(
                submitted=dispatcher.submitted,
                completed=dispatcher.completed,
                failed=dispatcher.failed,
                cancelled=dispatcher.cancelled,
                queued=dispatcher.n_queued,
                running=dispatcher.n_running,
            ),
            success_rate=dispatcher.completed / finished if finished else None,
            utilization=dispatcher.utilization.value(time.monotonic()),
            wait_time=dispatcher.wait_times.percentiles(),
            run_time=dispatcher.run_times.percentiles(),
            restarts=self._sup.restarts,
            crashes=self._sup.crashes,
            recycled=dict(self._sup.recycled),
            per_worker=tuple(per_worker),
        )

    def __repr__(self) -> str:
        d = self._dispatcher
        return (
            f"<Pool {self.state.value} workers={len(d.slots)}/{self._config.max_workers}"
            f" queued={d.n_queued} running={d.n_running} completed={d.completed}"
            f" failed={d.failed} cancelled={d.cancelled}>"
        )


async def _not_entered(task: Task[Any]) -> None:
    raise RuntimeError("use 'async with Pool(...)'")


def _single_error(error: BaseException) -> BaseException | None:
    """The one real (non-cancellation) error in *error*, if there is exactly one."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, cancelled):
            leaves.append(exc)

    walk(error)
    return leaves[0] if len(leaves) == 1 else None


def _reraise(exc: BaseException) -> NoReturn:
    """Raise *exc* as it was (its own cause and context, not the group it came in)."""
    context, suppress = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress

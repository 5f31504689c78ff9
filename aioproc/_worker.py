"""``Worker``: the public handle of one Python worker process (SPEC §2).

A thin layer over :class:`aioproc._workerproc.WorkerProcess`, the low-level
object the Pool drives directly. The pieces::

    Worker ──owns──► task group ──► [Zygote.serve]     (start_method="forkserver")
                                 └► WorkerProcess.serve ── pipes ──► worker process
                                                                     (aioproc._worker_main)

Internal API (for the Pool and the ProcessManager)
--------------------------------------------------
``aioproc._launcher``
    ``SpawnLauncher(env)`` and ``Zygote(preload=, env=, cwd=, start_timeout=)``
    both satisfy ``Launcher``: ``await launcher.launch(in_fd, out_fd) -> ExitWatch``.
    A zygote is started with ``await tg.start(zygote.serve)`` (raises
    ``WorkerStartError``; warns ``RuntimeWarning`` when preload left threads),
    serves any number of workers, and ends with ``await zygote.aclose()`` (its
    workers die with it). One zygote per Pool.

``aioproc._workerproc`` (also re-exporting ``Call``/``StreamCall`` from
``_calls`` and ``WorkerOptions``/``WorkerState``/``ExitInfo`` from ``_workerstate``;
the pipe I/O is the ``_pipeends.PipeEnds`` base class)
    ``WorkerOptions(preload, initializer, initargs, main, cwd, max_frame,
    start_timeout)`` — frozen, shared by all workers of a pool.

    ``proc = WorkerProcess(options, launcher, on_exit=cb, report_started=True)``
        ``await tg.start(proc.serve)`` launches and handshakes within
        ``start_timeout`` (else ``WorkerStartError`` with the cause: preload
        import error, initializer exception, exit code, timeout) and then serves
        until the process exits; ``proc.pid``, ``proc.state`` (:class:`WorkerState`).
    ``call = proc.submit(fn, args, stream=False, report_started=None)``
        synchronous: checks and sends at once (``TypeError``/``ProtocolError``
        before anything is sent; ``WorkerCrashedError``/``RuntimeError`` when
        not running). Any number may be in flight; the worker runs them one at
        a time in order. ``call.id``, ``call.started``/``call.is_async`` (after
        ``STARTED``, sent when ``report_started``), ``call.done``,
        ``call.result()``, ``await call.wait()``, ``call.on_started`` and
        ``call.on_done`` callbacks (run synchronously in the reader task, never
        block), ``call.tag`` (free for the owner). A call that never started
        when the worker died ends with ``WorkerCrashedError`` and
        ``call.started`` False: safe to requeue.
    ``proc.read_now()``
        handle what the worker has answered already, from the caller's task
        (right after a submit; see ``PipeEnds.read_now``); an answer read so
        still passes ``await proc.after_answer()`` (a cancellation point, and a
        schedule point every few such calls: see ``AnsweredCheckpoint``).
    ``answered, value = proc.quick_call(fn, args)``
        the hot path of ``Worker.call``: a plain call sent while nothing else
        is pending, its answer read right after the write without a ``Call``
        (``answered``: ``value`` is the result); else ``value`` is the ``Call``
        to wait for, or ``None`` when the call did not qualify (nothing sent).
    ``proc.cancel(call, stop_if_sync=True)``
        queued: the worker drops it (``TaskCancelledError``); running async:
        cancelled inside the worker, which lives on; running sync: the worker is
        stopped (SIGTERM, 5 s, SIGKILL) — decided when ``STARTED`` arrives if
        it had not yet.
    stream calls: ``proc.submit(genfn, args, stream=True)`` gives a
        ``StreamCall``; ``await call.next_item()`` (``StopAsyncIteration`` at the
        end); credit flows back as items are consumed (window 16).
    exit, exactly once: ``proc.exit_info`` (``ExitInfo(returncode, signal,
        by_us, protocol_error)``, ``.crash_error(task_id)``), the ``on_exit(proc)``
        callback, ``await proc.wait_exit()``. Pending calls fail with
        ``WorkerCrashedError`` (or ``ProtocolError`` after a bad frame).
    ``await proc.stop(grace)``: STOP (idle worker exits 0 at once), SIGTERM if
        busy (a ``main=`` worker: if still there ``MAIN_STOP_WAIT`` after STOP),
        SIGKILL after *grace*. ``proc.abort(grace)``: SIGTERM now, SIGKILL after
        *grace*, ends CRASHED (a given-up sync call). ``proc.kill()``. ``proc.stats()``.
        ``proc.pending``, ``proc.calls_done``.

Calls on one ``Worker`` are served one at a time, in order (the worker runs
them so); several may be queued on the pipe at once.

Giving up a call (its caller cancelled, or ``timeout``) follows the Pool: a
queued call is dropped by the worker (CANCEL); a running async one is cancelled
inside the worker, which lives on; a running sync one cannot be interrupted, so
the worker is stopped (SIGTERM, grace, SIGKILL, shielded) and the Worker is then
terminal. To tell a running sync call without asking every call for STARTED (a
message more on the hot path): a call sent while nothing is pending runs at once,
and whether it is async is read here from the function's code flags, as the
worker reads them; only calls queued behind others, string references and
callable objects ask for STARTED. (A sync function that returns an awaitable is
taken for sync: cancelling it stops its worker.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import FunctionType, TracebackType
from typing import Any, TypeVar, TypeVarTuple, overload

import anyio
import anyio.abc

from ._errors import TaskTimeoutError, WorkerStartError
from ._launcher import SpawnLauncher, Zygote
from ._monitor import ProcessStats
from ._worker_server import ASYNC_CODE_FLAGS, is_async_callable
from ._workerproc import (
    STREAM_WINDOW,
    Call,
    StreamCall,
    WorkerOptions,
    WorkerProcess,
    WorkerState,
)
from .protocol import DEFAULT_MAX_FRAME

__all__ = ["Worker", "WorkerState"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A standalone Worker's limit on its start (there is no option for it in SPEC §2).
WORKER_START_TIMEOUT = 60.0
#: Grace of the implicit stop when the Worker is closed, and of the stop of a
#: worker whose running sync call was cancelled or timed out.
CLOSE_GRACE = 5.0
#: Leaving a ``stream()`` block early: how long the worker may take to confirm
#: the generator closed before it is stopped (a sync generator stuck in next()).
STREAM_CLOSE_TIMEOUT = 2.0

_START_METHODS = ("spawn", "forkserver")


class Worker:
    """One Python worker process: call functions in it, stream from it, or talk
    to its ``main``.

    ``async with Worker(...) as worker`` starts it (raising
    :class:`~aioproc.WorkerStartError` with the cause when it cannot) and stops
    it on exit.
    """

    State = WorkerState

    def __init__(
        self,
        *,
        preload: Sequence[str] = (),
        initializer: Callable[..., object] | str | None = None,
        initargs: Sequence[Any] = (),
        main: Callable[..., object] | str | None = None,
        start_method: str = "spawn",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
        if isinstance(preload, str):
            preload = (preload,)
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.start_method = start_method
        self._env = dict(env) if env is not None else None
        self._cwd = os.fspath(cwd) if cwd is not None else None
        self._options = WorkerOptions(
            preload=tuple(preload),
            initializer=initializer,
            initargs=tuple(initargs),
            main=main,
            cwd=self._cwd,
            max_frame=max_frame,
            start_timeout=WORKER_START_TIMEOUT,
        )
        self._proc: WorkerProcess | None = None
        self._zygote: Zygote | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        #: The id of its record when started by a :class:`~aioproc.ProcessManager`.
        self.id: int | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        if self._tg is not None or self._closed:
            raise RuntimeError("a Worker can be started only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            if self.start_method == "forkserver":
                self._zygote = Zygote(
                    preload=self._options.preload,
                    env=self._env,
                    cwd=self._cwd,
                    start_timeout=WORKER_START_TIMEOUT,
                )
                await tg.start(self._zygote.serve)
                launcher: Any = self._zygote
            else:
                launcher = SpawnLauncher(self._env)
            self._proc = WorkerProcess(self._options, launcher)
            await tg.start(self._proc.serve)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if self._zygote is not None:
                    await self._zygote.aclose()
            # Exit the task group in its own scope (not inside the shield above,
            # which would leave the cancel-scope stack out of order). Cancelled
            # first, it returns at once unless an outer cancellation is pending,
            # which then propagates.
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            self._closed = True
            if isinstance(exc, WorkerStartError | TypeError | ValueError):
                raise exc from exc.__cause__
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            tg, self._tg = self._tg, None
            if tg is not None:
                # The body's own exception propagates as it is (not wrapped in
                # an ExceptionGroup); only a failure of our tasks would surface.
                await tg.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Stop the worker (and its zygote); idempotent and cancellation-safe."""
        with anyio.CancelScope(shield=True):
            await self.stop(CLOSE_GRACE)
            if self._zygote is not None:
                await self._zygote.aclose()
        self._closed = True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the worker: an idle one exits at once; a busy one gets SIGTERM,
        then SIGKILL after *grace* seconds. A ``main=`` worker is told to stop
        (its channel ends) and gets SIGTERM if it has not ended soon after, then
        SIGKILL after *grace*. Calls in flight raise
        :class:`~aioproc.WorkerCrashedError`."""
        proc = self._proc
        if proc is not None:
            await proc.stop(grace)

    # -- state -------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        """Where the worker is in its life (:class:`WorkerState`)."""
        if self._proc is None:
            return WorkerState.FAILED if self._closed else WorkerState.CREATED
        return self._proc.state

    @property
    def pid(self) -> int:
        """The worker's process id.

        :raises RuntimeError: before the worker was started.
        """
        if self._proc is None or self._proc.pid is None:
            raise RuntimeError("the worker has not been started")
        return self._proc.pid

    def stats(self) -> ProcessStats:
        """psutil figures of the worker process."""
        if self._proc is None:
            raise RuntimeError("the worker has not been started")
        return self._proc.stats()

    def _running(self) -> WorkerProcess:
        proc = self._proc
        if proc is None:
            raise RuntimeError("the worker is not started: use 'async with Worker(...)'")
        return proc

    def _serving(self) -> WorkerProcess:
        """The process, for call()/stream(): not for a worker that runs main."""
        proc = self._running()
        if self._options.main is not None:
            raise RuntimeError(
                "this worker runs main=...; talk to it with send()/receive(), not call()/stream()"
            )
        return proc

    # -- calls -------------------------------------------------------------------

    @overload
    async def call(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - SPEC §2 per-call timeout
    ) -> T: ...

    @overload
    async def call(
        self,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - SPEC §2 per-call timeout
    ) -> T: ...

    @overload
    async def call(
        self,
        fn: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any: ...

    # mypy cannot check an implementation against *Ts overloads (it rejects every
    # one); the overloads above are what callers are checked against.
    async def call(  # type: ignore[misc]
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - SPEC §2 per-call timeout
    ) -> Any:
        """Run ``fn(*args)`` in the worker; its result.

        :raises TypeError: when *fn* is a lambda, closure, local function or bound
            method, or an argument is not sendable (nothing is sent).
        :raises ProtocolError: when the call message is over ``max_frame``.
        :raises TaskTimeoutError: when *timeout* seconds passed: an async *fn*
            is cancelled in the worker (which lives on); a sync one's worker is
            stopped and this Worker is then terminal.
        :raises WorkerCrashedError: when the worker died (now or before).
        :raises Exception: what *fn* raised, rebuilt (or :class:`TaskError`),
            with the remote traceback as ``__cause__``.
        """
        proc = self._proc
        if proc is None or self._options.main is not None:
            proc = self._serving()  # raises
        if type(fn) is FunctionType:  # the usual case, read as _is_async() would
            is_async: bool | None = bool(fn.__code__.co_flags & ASYNC_CODE_FLAGS)
            if not is_async and timeout is None:
                answered, value = proc.quick_call(fn, args)
                if answered:  # still a cancellation point, as a wait would be
                    await proc.after_answer()
                    return value
                if value is not None:  # sent alone: it runs now
                    return await _wait_call(proc, value, head=True, running_sync=True)
        else:
            is_async = _is_async(fn)
        # Calls run one at a time, in order: one sent while nothing is pending
        # runs at once. For a sync one that is all a cancellation needs to know,
        # so only the others ask the worker for STARTED (it costs a message).
        head = proc.pending == 0
        report = timeout is not None or is_async is None or (not is_async and not head)
        call = proc.submit(fn, args, report_started=report)
        proc.read_now()  # the answer may be there already (see read_now)
        running_sync = head and is_async is False and not report
        if timeout is None:
            return await _wait_call(proc, call, head=head, running_sync=running_sync)
        with anyio.move_on_after(timeout) as scope:
            try:
                if call.done:
                    await proc.after_answer()
                return await call.wait()
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    with anyio.CancelScope(shield=True):
                        await _give_up(proc, call, head=head, running_sync=running_sync)
                raise
        # Timed out.
        if call.done:
            return call.result()
        with anyio.CancelScope(shield=True):
            await _give_up(proc, call, head=head, running_sync=running_sync)
        raise TaskTimeoutError(f"call of {_name(fn)} timed out after {timeout:g} s")

    def stream(
        self,
        genfn: Callable[[*Ts], Iterable[T]] | Callable[[*Ts], AsyncIterator[T]] | str,
        *args: *Ts,
    ) -> _StreamContext[T]:
        """Iterate a (async) generator running in the worker.

        ``async with worker.stream(genfn, *args) as items: async for x in items``.
        The worker runs at most 16 items ahead; leaving the block early cancels
        the generator in the worker (its ``finally`` runs).

        :raises TypeError: as for :meth:`call`, when entering the block.
        """
        return _StreamContext(self, genfn, args)

    # -- main() channel ----------------------------------------------------------

    async def send(self, message: object) -> None:
        """Send *message* to the worker's ``main``.

        :raises TypeError: when *message* is not sendable (nothing is sent).
        :raises ProtocolError: when it is over ``max_frame``.
        :raises EndOfChannel: when ``main`` has returned.
        :raises RuntimeError: when this worker has no ``main``.
        """
        proc = self._running()
        if self._options.main is None:
            raise RuntimeError("send() needs a Worker started with main=...")
        proc.send_message(message)
        if proc.write_backlog:
            await proc.drained()
        else:
            await anyio.lowlevel.checkpoint()

    async def receive(self) -> Any:
        """The next message from the worker's ``main``.

        :raises EndOfChannel: once ``main`` returned (after its messages were read).
        :raises Exception: ``main``'s exception, rebuilt, if it raised.
        :raises WorkerCrashedError: when the worker died.
        :raises RuntimeError: when this worker has no ``main``.
        """
        proc = self._running()
        if self._options.main is None:
            raise RuntimeError("receive() needs a Worker started with main=...")
        return await proc.receive_message()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        done = self._proc.calls_done if self._proc is not None else 0
        return (
            f"<Worker pid={pid} state={self.state.value} start_method={self.start_method} "
            f"calls_done={done}>"
        )


async def _wait_call(proc: WorkerProcess, call: Call, *, head: bool, running_sync: bool) -> Any:
    """``Worker.call``'s wait without a timeout (``call.wait()`` inline); a
    cancelled caller gives the call up (see :func:`_give_up`)."""
    try:
        # An answer read already still passes a cancellation point (and now and
        # then a schedule point), as a wait would.
        if call.done:
            await proc.after_answer()
        while not call.done:
            await call.waiter()
        return call.result()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _give_up(proc, call, head=head, running_sync=running_sync)
        raise


async def _give_up(proc: WorkerProcess, call: Call, *, head: bool, running_sync: bool) -> None:
    """The caller of *call* was cancelled or timed out: end the call (shielded).

    A queued call is dropped by the worker (``CANCEL``); a running async one is
    cancelled inside the worker, which lives on; a running sync one cannot be
    interrupted, so the worker is stopped (SIGTERM, grace, SIGKILL) and this
    waits for its exit. *running_sync* says the call is known to be sync and
    was sent to an idle worker (so it runs now, without a ``STARTED`` to say so).
    """
    if call.done:
        return
    if running_sync or (call.started and call.is_async is False):
        proc.abort(CLOSE_GRACE)
        await proc.wait_exit()
        return
    proc.cancel(call)  # a sync call that STARTED later stops its worker then
    if head and not call.started and not call.done:
        # It runs now (nothing was ahead of it) but has not told us whether it
        # is sync yet: wait (bounded) for STARTED, or for the outcome.
        told = anyio.Event()
        call.on_started = call.on_done = lambda _call: told.set()
        with anyio.move_on_after(CLOSE_GRACE):
            await told.wait()
        if not (call.started or call.done):
            proc.abort(CLOSE_GRACE)  # the worker does not answer
    if not call.done and (proc.state is WorkerState.STOPPING or proc.state.terminal):
        await proc.wait_exit()


def _is_async(fn: object) -> bool | None:
    """Whether the worker will run *fn* as async (as its loop decides: by the code
    flags of the function a reference names); None when this side cannot tell
    (a string reference, a callable object)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, str):
        return None
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    if code is None:
        return None
    return is_async_callable(fn)


def _name(fn: object) -> str:
    if isinstance(fn, str):
        return fn
    return str(getattr(fn, "__qualname__", None) or repr(fn))


class _StreamContext(AsyncIterator[T]):
    """``async with worker.stream(...) as items`` — also the iterator itself."""

    def __init__(self, worker: Worker, genfn: object, args: tuple[Any, ...]) -> None:
        self._worker = worker
        self._genfn = genfn
        self._args = args
        self._call: StreamCall | None = None
        self._proc: WorkerProcess | None = None

    async def __aenter__(self) -> _StreamContext[T]:
        proc = self._worker._serving()
        call = proc.submit(self._genfn, self._args, stream=True, window=STREAM_WINDOW)  # type: ignore[arg-type]
        assert isinstance(call, StreamCall)
        self._proc = proc
        self._call = call
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        call, proc = self._call, self._proc
        if call is None or proc is None or call.done:
            return
        proc.cancel(call, stop_if_sync=False)
        # Wait for the worker to close the generator (its finally runs): a sync
        # one reads CANCEL between items, an async one is cancelled at once. One
        # stuck inside next() would never answer: after STREAM_CLOSE_TIMEOUT its
        # worker is stopped (SIGTERM, grace, SIGKILL). Shielded, so leaving on a
        # cancellation closes the generator the same way.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(STREAM_CLOSE_TIMEOUT):
                await call.wait_done()
            if not call.done:
                proc.abort(CLOSE_GRACE)
                await proc.wait_exit()

    def __aiter__(self) -> _StreamContext[T]:
        return self

    async def __anext__(self) -> T:
        call = self._call
        if call is None:
            raise RuntimeError("use 'async with worker.stream(...) as items'")
        item: T = await call.next_item()
        return item

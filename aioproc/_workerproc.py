"""One started worker process, parent side: the low-level object the Pool drives.

See the module docstring of :mod:`aioproc._worker` for the contract. Data flow::

    submit(fn, args) ─pack─► _write ─os.write─► in pipe ─► worker
      │   (direct when the pipe has room; else _wbuf ─► _writer task)
      └─► Call (registered in _calls by id)

    worker ─► out pipe ─► _read_loop: wait_readable ─► readv(256 KiB) ─► Decoder.feed
                                   ─► _handle(message): STARTED / RESULT / ERROR /
                                      ITEM / END / CANCELLED / MESSAGE ─► Call resolved,
                                      callbacks run synchronously

    exit watch (pidfd) ─► _watch_exit ─► drain the pipe ─► ExitInfo ─► pending calls
                                         fail (WorkerCrashedError / ProtocolError)
                                         ─► on_exit(proc), exited event

Everything runs in the task that awaits :meth:`WorkerProcess.serve` (reader) and
two helper tasks (writer, exit watch) of its own task group; callbacks run in the
reader, so they must not block.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from ._errors import (
    EndOfChannel,
    ProtocolError,
    TaskCancelledError,
    WorkerCrashedError,
    WorkerStartError,
)
from ._fdio import set_pipe_size
from ._launcher import ExitWatch, Launcher, caller_sys_path, default_main_source
from ._monitor import ProcessStats, StatsSampler
from ._values import check_sendable, decode_exception, function_ref, pack_checked
from .protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    CallFlag,
    Decoder,
    Kind,
    encode_body,
    frame_header,
)

__all__ = [
    "Call",
    "ExitInfo",
    "StreamCall",
    "WorkerOptions",
    "WorkerProcess",
    "WorkerState",
]

#: Bytes read per wake-up (one readv into a reused buffer).
READ_CHUNK = 256 * 1024
#: Both protocol pipes are enlarged to this (F_SETPIPE_SZ), for big messages.
PIPE_SIZE = 1 << 20
#: Bodies at least this big are written header and body apart (no copy).
_WRITEV_MIN = 64 * 1024
#: After the worker closed its pipe, how long it may take to exit before SIGKILL.
EOF_EXIT_GRACE = 2.0
#: Default stream window (items the worker may run ahead of the consumer).
STREAM_WINDOW = 16


class WorkerState(enum.Enum):
    """Lifecycle of a worker process (and of the :class:`~aioproc.Worker` handle)."""

    CREATED = "created"  #: not started yet
    STARTING = "starting"  #: process launched, waiting for its handshake
    RUNNING = "running"  #: handshake done; takes calls
    STOPPING = "stopping"  #: being stopped; takes no more calls
    STOPPED = "stopped"  #: exited after stop()/aclose()
    CRASHED = "crashed"  #: exited on its own, or was killed (sync call cancelled, timeout)
    FAILED = "failed"  #: never became ready

    @property
    def terminal(self) -> bool:
        return self in (WorkerState.STOPPED, WorkerState.CRASHED, WorkerState.FAILED)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a worker ended, learnt exactly once.

    ``returncode`` is the exit code or ``-signum`` (``None`` when nobody could
    tell, e.g. the zygote died first); ``signal`` the positive signal number;
    ``by_us`` is true when that signal was one we sent (stop, kill);
    ``protocol_error`` is set when we killed it for a bad frame.
    """

    returncode: int | None
    signal: int | None
    by_us: bool
    protocol_error: ProtocolError | None = None

    def crash_error(self, task_id: int | None = None) -> WorkerCrashedError:
        """A :class:`WorkerCrashedError` describing this exit."""
        detail = ""
        if self.by_us:
            detail = "stopped by aioproc"
        elif self.signal == signal.SIGKILL:
            detail = "out of memory suspected"
        return WorkerCrashedError(task_id, self.returncode, self.signal, detail)


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker is started with (shared by every worker of a Pool)."""

    preload: tuple[str, ...] = ()
    initializer: object = None
    initargs: tuple[Any, ...] = ()
    main: object = None
    cwd: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    start_timeout: float = 60.0

    def handshake_config(self) -> dict[str, Any]:
        """The config sent in the parent's HELLO (call from inside the event loop).

        :raises TypeError: when the initializer, initargs or main cannot be sent.
        """
        config: dict[str, Any] = {
            "sys_path": caller_sys_path(),
            "main_source": default_main_source(),
            "cwd": self.cwd,
            "preload": list(self.preload),
            "max_frame": self.max_frame,
            **_backend_config(),
        }
        if self.initializer is not None:
            config["initializer"] = list(function_ref(self.initializer))
            initargs = list(self.initargs)
            check_sendable(initargs, "initargs")
            config["initargs"] = initargs
        if self.main is not None:
            config["entry"] = list(function_ref(self.main))
        return config


def _backend_config() -> dict[str, Any]:
    """Tell the worker which backend to run async code on: the caller's."""
    loop = _asyncio_loop()
    if loop is None:
        return {"backend": "trio"}
    options: dict[str, Any] = {}
    if type(loop).__module__.startswith("uvloop"):
        options["use_uvloop"] = True
    return {"backend": "asyncio", "backend_options": options}


def _asyncio_loop() -> Any:
    """The running asyncio (or uvloop) loop, or None on another backend (trio)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _EventWaiter:
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
        self._new_waiter = new_waiter or _EventWaiter
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
        if not self.done:
            waiter = self._waiter = self._new_waiter()
            await waiter
        return self.result()

    async def wait_done(self) -> None:
        """Wait for the call to end, raising nothing."""
        if not self.done:
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


class WorkerProcess:
    """A worker process and its pipes, from launch to exit (parent side).

    Start it with ``await tg.start(proc.serve)`` (raises
    :class:`WorkerStartError`); it serves until the process exits.
    """

    def __init__(
        self,
        options: WorkerOptions,
        launcher: Launcher,
        *,
        on_exit: Callable[[WorkerProcess], None] | None = None,
        report_started: bool = False,
    ) -> None:
        self.options = options
        self.launcher = launcher
        self.on_exit = on_exit
        #: Ask the worker for STARTED on every call (the Pool wants it).
        self.report_started = report_started
        self.state = WorkerState.CREATED
        self.pid: int | None = None
        self.exit_info: ExitInfo | None = None
        #: Calls answered (result, error or cancelled) so far.
        self.calls_done = 0
        self._calls: dict[int, Call] = {}
        self._next_id = 1
        self._in_w = -1
        self._out_r = -1
        self._wbuf: deque[bytes | memoryview] = deque()
        self._wevent: anyio.Event | None = None
        self._exited: anyio.Event | None = None
        self._decoder = Decoder(options.max_frame)
        self._watch: ExitWatch | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._signals_sent: set[int] = set()
        self._stop_requested = False
        self._protocol_error: ProtocolError | None = None
        self._sampler: StatsSampler | None = None
        self._inbox: deque[Any] = deque()
        self._inbox_event: anyio.Event | None = None
        self._main_outcome: list[Any] | None = None
        self._broken_pipe = False
        self._rbuf = bytearray(READ_CHUNK)
        self._new_waiter: Callable[[], Any] = _EventWaiter
        self._loop: Any = None  # the asyncio loop, when on asyncio (fast paths)

    # -- lifecycle ---------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[WorkerProcess] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Launch, handshake (``start_timeout``), report started, serve until exit.

        :raises WorkerStartError: when the worker cannot start (cause attached).
        :raises TypeError: when the initializer/initargs/main cannot be sent.
        """
        if self.state is not WorkerState.CREATED:
            raise RuntimeError(f"worker process is {self.state.value}, not created")
        self.state = WorkerState.STARTING
        self._loop = _asyncio_loop()
        if self._loop is not None:
            self._new_waiter = self._loop.create_future
        self._wevent = anyio.Event()
        self._exited = anyio.Event()
        config = self.options.handshake_config()
        hello = encode_body([Kind.HELLO, PROTOCOL_VERSION, config])
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        for fd in (in_w, out_w):
            set_pipe_size(fd, PIPE_SIZE)
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        self._in_w, self._out_r = in_w, out_r
        self._wbuf.append(frame_header(len(hello)) + hello)
        try:
            self._watch = await self.launcher.launch(in_r, out_w)
        except BaseException:
            self.state = WorkerState.FAILED
            self._close_fds()
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        self.pid = self._watch.pid
        self._sampler = StatsSampler(self.pid)
        start_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                tg.start_soon(self._watch_exit)
                try:
                    with anyio.fail_after(self.options.start_timeout):
                        await self._handshake()
                except BaseException as exc:
                    start_error = exc
                    tg.cancel_scope.cancel()
                else:
                    self.state = WorkerState.RUNNING
                    task_status.started(self)
                    await self._read_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish_exit()
        if start_error is not None:
            self.state = WorkerState.FAILED
            raise self._start_failure(start_error)

    def _start_failure(self, error: BaseException) -> BaseException:
        if isinstance(error, anyio.get_cancelled_exc_class()):
            return error
        if isinstance(error, WorkerStartError):
            return error
        info = self.exit_info
        if isinstance(error, TimeoutError):
            message = f"worker {self.pid} sent no handshake within {self.options.start_timeout:g} s"
            new = WorkerStartError(message)
        elif isinstance(error, EOFError):
            code = info.returncode if info is not None else None
            new = WorkerStartError(
                f"worker {self.pid} exited with code {code} before its handshake"
            )
        else:
            new = WorkerStartError(f"worker {self.pid} failed to start: {error}")
            new.__cause__ = error
            return new
        new.__cause__ = error if not isinstance(error, EOFError | TimeoutError) else None
        return new

    async def _handshake(self) -> None:
        fd = self._out_r
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not data:
                # Died before the handshake: wait for its code to say why.
                assert self._exited is not None
                with anyio.move_on_after(2.0):
                    await self._exited.wait()
                raise EOFError
            messages = self._decoder.feed(data)
            if not messages:
                continue
            hello = messages[0]
            if not (isinstance(hello, list) and len(hello) >= 4 and hello[0] == Kind.HELLO):
                raise ProtocolError(f"the worker's first message is not a handshake: {hello!r}")
            if hello[1] != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol version mismatch: the worker speaks {hello[1]}, "
                    f"this aioproc speaks {PROTOCOL_VERSION}"
                )
            if hello[3] is not None:
                cause = decode_exception(hello[3])
                error = WorkerStartError(f"worker failed to start: {type(cause).__name__}: {cause}")
                error.__cause__ = cause
                raise error
            for message in messages[1:]:
                self._handle(message)
            return

    async def _finish_exit(self) -> None:
        """Make sure the process is gone and reaped; record how it ended. Shielded."""
        watch = self._watch
        if self.exit_info is None and watch is not None:
            self._signal(signal.SIGKILL)
            code = await watch.wait()
            self._on_exited(code)
        elif self.exit_info is None:
            self._on_exited(None)
        if watch is not None:
            watch.close()
        self._close_fds()

    def _close_fds(self) -> None:
        for name in ("_in_w", "_out_r"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(Exception):
                    anyio.notify_closing(fd)
                os.close(fd)

    async def _watch_exit(self) -> None:
        assert self._watch is not None
        code = await self._watch.wait()
        self._on_exited(code)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _on_exited(self, code: int | None) -> None:
        if self.exit_info is not None:
            return
        self._drain()
        sig = -code if code is not None and code < 0 else None
        self.exit_info = ExitInfo(code, sig, sig is not None and sig in self._signals_sent,
                                  self._protocol_error)  # fmt: skip
        if self.state is WorkerState.STARTING:
            self.state = WorkerState.FAILED
        elif self._stop_requested:
            self.state = WorkerState.STOPPED
        else:
            self.state = WorkerState.CRASHED
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call._finish(None, self._exit_error())
        if self._inbox_event is not None:
            self._inbox_event.set()
        if self._wevent is not None:
            self._wevent.set()
        assert self._exited is not None
        self._exited.set()
        if self.on_exit is not None:
            self.on_exit(self)

    def _exit_error(self) -> BaseException:
        if self._protocol_error is not None:
            return ProtocolError(str(self._protocol_error))
        assert self.exit_info is not None
        return self.exit_info.crash_error()

    def _drain(self) -> None:
        """Read what a dead worker left in the pipe (results written before exit)."""
        fd = self._out_r
        if fd < 0 or self._protocol_error is not None:
            return
        for _ in range(64):  # bounded: a grandchild may still hold the pipe open
            try:
                data = os.read(fd, READ_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            try:
                for message in self._decoder.feed(data):
                    self._handle(message)
            except ProtocolError as exc:
                self._protocol_error = exc
                return

    # -- reading -----------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            if self._loop is not None:
                await self._read_with_callback()
            else:
                await self._read_with_waits()
        except ProtocolError as exc:
            self._protocol_failure(exc)
        finally:
            # EOF or a bad frame: the process should be exiting; make sure it does.
            if self.exit_info is None and self._exited is not None:
                with anyio.move_on_after(EOF_EXIT_GRACE):
                    await self._exited.wait()
                if self.exit_info is None:
                    self._signal(signal.SIGKILL)
                    await self._exited.wait()

    def _read_available(self) -> bool:
        """Read and handle what the pipe holds; False at end of stream."""
        fd = self._out_r
        buf = self._rbuf
        size = len(buf)
        with memoryview(buf) as view:
            while True:
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    return True
                if n == 0:
                    return False
                for message in self._decoder.feed(view[:n]):
                    self._handle(message)
                if n < size:
                    return True

    async def _read_with_waits(self) -> None:
        """The portable reader: wait_readable, then read what is there."""
        fd = self._out_r
        while True:
            await anyio.wait_readable(fd)
            if not self._read_available():
                return

    async def _read_with_callback(self) -> None:
        """asyncio/uvloop: a persistent reader callback, no task switch per read."""
        loop = self._loop
        fd = self._out_r
        finished = loop.create_future()

        def on_readable() -> None:
            try:
                more = self._read_available()
            except BaseException as exc:
                loop.remove_reader(fd)
                if not finished.done():
                    finished.set_exception(exc)
                return
            if not more:
                loop.remove_reader(fd)
                if not finished.done():
                    finished.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await finished
        finally:
            loop.remove_reader(fd)

    def _protocol_failure(self, exc: ProtocolError) -> None:
        if self._protocol_error is None:
            self._protocol_error = exc
            print(
                f"aioproc: worker {self.pid} sent a bad frame ({exc}); killing it", file=sys.stderr
            )
        self._signal(signal.SIGKILL)

    def _handle(self, message: Any) -> None:
        try:
            kind = message[0]
            if kind == Kind.RESULT:
                call_id = message[1]
                call = self._calls.pop(call_id, None)
                if call is not None:
                    self.calls_done += 1
                    call._finish(message[2], None)
                elif call_id == 0:
                    self._main_done([Kind.RESULT, None])
            elif kind == Kind.ERROR:
                call_id = message[1]
                call = self._calls.pop(call_id, None)
                if call is not None:
                    self.calls_done += 1
                    call._finish(None, decode_exception(message[2]))
                elif call_id == 0:
                    self._main_done([Kind.ERROR, message[2]])
            elif kind == Kind.STARTED:
                call = self._calls.get(message[1])
                if call is not None:
                    call.started = True
                    call.is_async = bool(message[2])
                    if call.cancel_requested and not call.is_async and call.stop_if_sync:
                        self._stop_soon()
                    if call.on_started is not None:
                        call.on_started(call)
            elif kind == Kind.ITEM:
                call = self._calls.get(message[1])
                if isinstance(call, StreamCall):
                    call._push(message[2])
            elif kind in (Kind.END, Kind.CANCELLED):
                call = self._calls.pop(message[1], None)
                if call is not None:
                    self.calls_done += 1
                    error = None
                    if kind == Kind.CANCELLED:
                        error = TaskCancelledError("cancelled in the worker before it finished")
                    call._finish(None, error)
            elif kind == Kind.MESSAGE:
                self._inbox.append(message[1])
                if self._inbox_event is not None:
                    self._inbox_event.set()
            elif kind == Kind.HELLO:
                raise ProtocolError("second handshake from the worker")
            # Unknown kinds are ignored (forward compatibility).
        except (IndexError, TypeError, KeyError) as exc:
            raise ProtocolError(f"malformed message from the worker: {message!r}") from exc

    def _main_done(self, outcome: list[Any]) -> None:
        if self._main_outcome is None:
            self._main_outcome = outcome
            if self._inbox_event is not None:
                self._inbox_event.set()

    # -- writing -----------------------------------------------------------------

    def _send_body(self, body: bytes) -> None:
        size = len(body)
        if size < _WRITEV_MIN:
            self._write(frame_header(size) + body)
            return
        header = frame_header(size)
        if self._wbuf or self._in_w < 0:
            self._wbuf.append(header)
            self._wbuf.append(body)
            return
        try:
            written = os.writev(self._in_w, [header, body])
        except BlockingIOError:
            written = 0
        except OSError:
            self._broken_pipe = True
            return
        if written < 4:
            self._wbuf.append(header[written:])
            self._wbuf.append(body)
        elif written < size + 4:
            self._wbuf.append(memoryview(body)[written - 4 :])
        else:
            return
        assert self._wevent is not None
        self._wevent.set()

    def _write(self, data: bytes) -> None:
        if self._wbuf or self._in_w < 0:
            self._wbuf.append(data)
            return
        try:
            written = os.write(self._in_w, data)
        except BlockingIOError:
            written = 0
        except OSError:  # the worker is gone; the exit watch will tell
            self._broken_pipe = True
            return
        if written < len(data):
            self._wbuf.append(memoryview(data)[written:])
            assert self._wevent is not None
            self._wevent.set()

    async def _writer(self) -> None:
        wbuf = self._wbuf
        while True:
            if not wbuf:
                assert self._wevent is not None
                await self._wevent.wait()
                self._wevent = anyio.Event()
                continue
            fd = self._in_w
            if fd < 0 or self._broken_pipe:
                wbuf.clear()
                continue
            try:
                written = os.write(fd, wbuf[0])
            except BlockingIOError:
                await anyio.wait_writable(fd)
                continue
            except OSError:
                self._broken_pipe = True
                wbuf.clear()
                continue
            head = wbuf[0]
            if written < len(head):
                wbuf[0] = memoryview(head)[written:]
            else:
                wbuf.popleft()

    @property
    def write_backlog(self) -> int:
        """Bytes queued for the worker that the pipe has not taken yet."""
        return sum(len(chunk) for chunk in self._wbuf)

    async def drained(self) -> None:
        """Wait until the write backlog is empty (backpressure for big sends)."""
        while self._wbuf and not self._broken_pipe and self.exit_info is None:
            await anyio.wait_writable(self._in_w)
            await anyio.lowlevel.checkpoint()

    # -- calls -------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.state is not WorkerState.RUNNING:
            raise self.not_running_error()

    def not_running_error(self) -> BaseException:
        """The error a call on this worker raises now that it does not run."""
        if self.exit_info is not None and self.state is WorkerState.CRASHED:
            return self._exit_error()
        if self.state is WorkerState.STOPPING and not self._stop_requested:
            return WorkerCrashedError(detail="the worker is being stopped")
        return RuntimeError(f"the worker is {self.state.value}")

    def submit(
        self,
        fn: Callable[..., Any] | str,
        args: Sequence[Any] = (),
        *,
        stream: bool = False,
        report_started: bool | None = None,
        window: int = STREAM_WINDOW,
    ) -> Call:
        """Send a call; returns at once with its :class:`Call` (or :class:`StreamCall`).

        :raises TypeError: when *fn* is not referenceable or an argument is not
            sendable (nothing is sent).
        :raises ProtocolError: when the message is over ``max_frame`` (nothing is sent).
        :raises WorkerCrashedError: when the worker has died.
        :raises RuntimeError: when the worker is not running (not started, stopped).
        """
        self._check_running()
        ref, bound, kwargs = function_ref(fn)
        call_args = [*bound, *args] if bound else args
        flags = 0
        if report_started or (report_started is None and self.report_started):
            flags = CallFlag.REPORT_STARTED
        if stream:
            flags |= CallFlag.STREAM
        call_id = self._next_id
        self._next_id = call_id + 1
        body = pack_checked([Kind.CALL, call_id, ref, call_args, kwargs, flags], args, "args")
        if len(body) > self.options.max_frame:
            raise ProtocolError(
                f"call message of {len(body)} bytes exceeds max_frame={self.options.max_frame}"
            )
        call: Call = (
            StreamCall(call_id, self, window) if stream else Call(call_id, self._new_waiter)
        )
        self._calls[call_id] = call
        self._send_body(body)
        if stream:
            self._write(_credit_frame(call_id, window))
        return call

    def cancel(self, call: Call, *, stop_if_sync: bool = True) -> None:
        """Cancel *call*: a queued one never runs, a running async one is cancelled
        in the worker; a running sync one stops the worker when *stop_if_sync*."""
        if call.done or call.cancel_requested or self.exit_info is not None:
            return
        call.cancel_requested = True
        call.stop_if_sync = stop_if_sync
        if call.started and not call.is_async:
            if stop_if_sync:
                self._stop_soon()
            return
        self._send_body(encode_body([Kind.CANCEL, call.id]))

    @property
    def pending(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._calls)

    # -- main() messages ---------------------------------------------------------

    def send_message(self, message: object) -> None:
        """Send a user message to ``main`` (nothing is sent when it is unsendable).

        :raises TypeError: when *message* is not sendable.
        :raises ProtocolError: when it is over ``max_frame``.
        :raises EndOfChannel: when ``main`` has returned.
        """
        if self._main_outcome is not None:
            raise EndOfChannel("the worker's main() has returned")
        self._check_running()
        body = pack_checked([Kind.MESSAGE, message], message, "message")
        if len(body) > self.options.max_frame:
            raise ProtocolError(
                f"message of {len(body)} bytes exceeds max_frame={self.options.max_frame}"
            )
        self._send_body(body)

    async def receive_message(self) -> Any:
        """The next message from ``main``.

        :raises EndOfChannel: once ``main`` returned and every message was read.
        :raises Exception: ``main``'s exception (rebuilt) if it raised.
        :raises WorkerCrashedError: when the worker died without ``main`` finishing.
        """
        while not self._inbox:
            outcome = self._main_outcome
            if outcome is not None:
                if outcome[0] == Kind.ERROR:
                    raise decode_exception(outcome[1])
                raise EndOfChannel("the worker's main() returned")
            if self.exit_info is not None or self.state.terminal:
                raise self.not_running_error()
            self._inbox_event = anyio.Event()
            await self._inbox_event.wait()
        return self._inbox.popleft()

    # -- stopping ----------------------------------------------------------------

    def _signal(self, sig: int) -> bool:
        watch = self._watch
        if watch is None or self.exit_info is not None:
            return False
        self._signals_sent.add(sig)
        return watch.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL now (the exit is reported as usual)."""
        self._signal(signal.SIGKILL)

    def _stop_soon(self, grace: float = 5.0) -> None:
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING):
            self.state = WorkerState.STOPPING
        if self._tg is not None and self.exit_info is None:
            self._tg.start_soon(self._terminate, grace)

    async def _terminate(self, grace: float) -> None:
        self._signal(signal.SIGTERM)
        assert self._exited is not None
        with anyio.move_on_after(grace):
            await self._exited.wait()
        self._signal(signal.SIGKILL)

    async def stop(self, grace: float = 5.0) -> ExitInfo | None:
        """Stop the worker: STOP (an idle worker exits at once), SIGTERM when it
        is busy, SIGKILL after *grace* seconds. Idempotent; waits for the exit."""
        if self.exit_info is not None or self._exited is None:
            if self.state is WorkerState.CREATED:
                self.state = WorkerState.STOPPED
            return self.exit_info
        self._stop_requested = True
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING):
            self.state = WorkerState.STOPPING
        with anyio.CancelScope(shield=True):
            self._send_body(encode_body([Kind.STOP]))
            if self._calls:
                # Busy: a sync call would not read STOP before it returns.
                self._signal(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self._exited.wait()
            if self.exit_info is None:
                self._signal(signal.SIGKILL)
                await self._exited.wait()
        return self.exit_info

    async def wait_exit(self) -> ExitInfo:
        """Wait until the process has exited and been reaped."""
        if self._exited is None:
            raise RuntimeError("the worker was never started")
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def stats(self) -> ProcessStats:
        """psutil figures of the worker process (``status="dead"`` once gone)."""
        if self._sampler is None or self.pid is None:
            return ProcessStats.dead(self.pid or 0)
        if self.exit_info is not None:
            return ProcessStats.dead(self.pid)
        return self._sampler.sample()

    def __repr__(self) -> str:
        return (
            f"<WorkerProcess pid={self.pid} state={self.state.value} "
            f"pending={len(self._calls)} done={self.calls_done}>"
        )


def _credit_frame(call_id: int, credit: int) -> bytes:
    body = encode_body([Kind.CREDIT, call_id, credit])
    return frame_header(len(body)) + body


def make_launcher(start_method: str, env: Mapping[str, str] | None) -> Launcher:
    """The spawn launcher (the zygote is made by its owner)."""
    from ._launcher import SpawnLauncher

    if start_method != "spawn":
        raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
    return SpawnLauncher(env)

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

import os
import signal
import struct
from collections import deque
from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any

import anyio
import anyio.abc

from ._calls import (
    AnsweredCheckpoint,
    Call,
    StreamCall,
    credit_frame,
    plain_frame,
    waiter_factory,
)
from ._errors import (
    EndOfChannel,
    ProtocolError,
    TaskCancelledError,
    WorkerCrashedError,
    WorkerStartError,
)
from ._fdio import set_pipe_size
from ._launcher import ExitWatch, Launcher
from ._monitor import ProcessStats, StatsSampler
from ._pipeends import IN_PLACE_MIN, PipeEnds
from ._values import (
    PLAIN_REFS,
    check_sendable,
    decode_exception,
    explain_unsendable,
    function_ref,
    pack_checked,
)
from ._workerstate import ExitInfo, WorkerOptions, WorkerState, asyncio_loop
from .protocol import (
    PROTOCOL_VERSION,
    CallFlag,
    Kind,
    decode,
    encode_body,
    frame_header,
    make_packer,
)

_pack_header = struct.Struct(">I").pack
_unpack_header = struct.Struct(">I").unpack_from

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
#: After the worker closed its pipe, how long it may take to exit before SIGKILL.
EOF_EXIT_GRACE = 2.0
#: How long a ``main=`` worker may take to end after STOP before SIGTERM.
MAIN_STOP_WAIT = 0.5
#: Default stream window (items the worker may run ahead of the consumer).
STREAM_WINDOW = 16
#: WorkerState.RUNNING, looked up once (an enum member costs ~65 ns per look-up).
_RUNNING = WorkerState.RUNNING


class WorkerProcess(PipeEnds):
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
        super().__init__(options.max_frame)
        self._packer = make_packer()  # used from the event loop's thread only
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
        self._exited: anyio.Event | None = None
        self._watch: ExitWatch | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._signals_sent: set[int] = set()
        self._stop_requested = False
        self._sampler: StatsSampler | None = None
        self._inbox: deque[Any] = deque()
        self._inbox_event: anyio.Event | None = None
        self._main_outcome: list[Any] | None = None

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
        self._loop = asyncio_loop()
        self._new_waiter = waiter_factory(self._loop)
        self.after_answer = AnsweredCheckpoint(self._loop)
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
        # The handshake goes into the empty pipe before the launch: a forked
        # worker finds it waiting (no wait for the zygote's SPAWNED reply and
        # our writer task); what the pipe cannot take is left to the writer.
        frame = frame_header(len(hello)) + hello
        try:
            written = os.write(in_w, frame)
        except BlockingIOError:  # pragma: no cover - a fresh pipe has room
            written = 0
        if written < len(frame):
            self._wbuf.append(memoryview(frame)[written:])
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

    def _protocol_failure(self, exc: ProtocolError) -> None:
        if self._protocol_error is None:
            self._protocol_error = exc  # pending calls will raise it
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

    # -- calls -------------------------------------------------------------------

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
        if self.state is not _RUNNING:
            raise self.not_running_error()
        ref = PLAIN_REFS.get(fn) if type(fn) is FunctionType else None
        if ref is not None:  # a plain function sent before: no checks to redo
            call_args: list[Any] = list(args)
            kwargs: dict[str, Any] = {}
        else:
            ref, bound, kwargs = function_ref(fn)
            call_args = [*bound, *args] if bound else list(args)
        flags = 0
        if report_started or (report_started is None and self.report_started):
            flags = CallFlag.REPORT_STARTED
        if stream:
            flags |= CallFlag.STREAM
        call_id = self._next_id
        self._next_id = call_id + 1
        message = [Kind.CALL, call_id, ref, call_args, kwargs, flags]
        frame = plain_frame(self._packer, message, args, self.options.max_frame)
        if frame is not None:  # the common case: a few small exact scalars
            self._write(frame)
        elif _has_big_bytes(args) and self._can_send_in_place():
            # Checked, then packed and written from a reused buffer (no copy).
            check_sendable(args, "args")
            try:
                self._send_in_place(message, self.options.max_frame)
            except (TypeError, ValueError, OverflowError) as exc:
                raise explain_unsendable(args, "args", exc) from None
        else:
            body = pack_checked(message, args, "args")
            if len(body) > self.options.max_frame:
                raise ProtocolError(
                    f"call message of {len(body)} bytes exceeds max_frame={self.options.max_frame}"
                )
            self._send_body(body)
        call: Call = (
            StreamCall(call_id, self, window) if stream else Call(call_id, self._new_waiter)
        )
        self._calls[call_id] = call
        if stream:
            self._write(credit_frame(call_id, window))
        return call

    def quick_call(self, fn: FunctionType, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """Send a plain call of *fn* and read its answer at once, when nothing
        else is in flight; the hot path of ``Worker.call``.

        Returns ``(True, value)`` when the answer was there right after the
        write: on one CPU the worker runs as soon as our write wakes it, and has
        answered by the time the write returns about 99% of the time. That skips
        the :class:`Call`, the decoder and :meth:`_handle`. Otherwise
        ``(False, call)``: the call is registered and whatever was read went the
        usual way, so the caller waits for *call* -- or ``(False, None)`` when
        the call does not qualify (nothing sent: use :meth:`submit`). It
        qualifies when *fn* is a plain function sent before, its arguments are
        a few small exact scalars, no call is pending and nothing waits to be
        written or decoded.
        """
        ref = PLAIN_REFS.get(fn)
        if (
            ref is None
            or self._calls
            or self.state is not _RUNNING
            or self._wbuf
            or self._held is not None
            or self._in_w < 0
            or self._out_r < 0
            or self._protocol_error is not None
            or self._decoder.buffered
        ):
            return False, None
        call_id = self._next_id
        if args:
            frame = plain_frame(
                self._packer,
                [Kind.CALL, call_id, ref, list(args), {}, 0],
                args,
                self.options.max_frame,
            )
            if frame is None:
                return False, None
        else:  # no arguments: nothing to check
            body = self._packer.pack([Kind.CALL, call_id, ref, [], {}, 0])
            if len(body) > self.options.max_frame:
                return False, None  # submit() raises the ProtocolError
            frame = _pack_header(len(body)) + body
        self._next_id = call_id + 1
        self._write(frame)
        buf = self._rbuf
        try:
            n = os.readv(self._out_r, [buf])
        except BlockingIOError:
            n = -1
        if n > 4 and _unpack_header(buf)[0] + 4 == n:
            try:
                message = decode(self._rview[4:n])
            except ProtocolError:
                message = None  # the decoder below raises it again, and is broken
            if (
                type(message) is list
                and len(message) == 3
                and message[0] == Kind.RESULT
                and message[1] == call_id
            ):
                self.calls_done += 1
                return True, message[2]
        call = Call(call_id, self._new_waiter)
        self._calls[call_id] = call
        if n > 0:  # (at end of stream, 0: the reader meets it too)
            try:
                self._handle_read(n, False)
            except ProtocolError as exc:
                self._protocol_failure(exc)
            else:
                self.read_now()  # there may be more
        return False, call

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
            # Pool hook: a running sync *stream* reads CANCEL between items, so it
            # can stop without its worker (pool.stream() left early).
            if not isinstance(call, StreamCall):
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
        if self.state is not WorkerState.RUNNING:
            raise self.not_running_error()
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

    def abort(self, grace: float = 5.0) -> None:
        """Stop the worker because the sync call it runs was given up (cancelled,
        timed out): SIGTERM now, SIGKILL after *grace* seconds, in the background.
        It takes no more calls and ends ``CRASHED`` (not a requested stop); await
        :meth:`wait_exit` for the end."""
        self._stop_soon(grace)

    async def _terminate(self, grace: float) -> None:
        self._signal(signal.SIGTERM)
        assert self._exited is not None
        with anyio.move_on_after(grace):
            await self._exited.wait()
        self._signal(signal.SIGKILL)

    async def stop(self, grace: float = 5.0) -> ExitInfo | None:
        """Stop the worker: STOP (an idle worker exits at once), SIGTERM when it
        is busy (a ``main=`` worker: when it has not ended within
        :data:`MAIN_STOP_WAIT`), SIGKILL after *grace* seconds. Idempotent;
        waits for the exit."""
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
            elif self.options.main is not None and self._main_outcome is None:
                # A main() that reads its channel ends at STOP; one that never
                # reads it would not notice: SIGTERM after a short wait.
                with anyio.move_on_after(min(grace, MAIN_STOP_WAIT)):
                    await self._exited.wait()
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


def _has_big_bytes(args: Sequence[Any]) -> bool:
    """True when a positional argument is a big bytes object (worth the no-copy path)."""
    for arg in args:  # noqa: SIM110 - a plain loop (no generator) on every call's path
        if type(arg) is bytes and len(arg) >= IN_PLACE_MIN:
            return True
    return False

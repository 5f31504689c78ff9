"""The loop that serves calls inside a worker process (:class:`Server`).

:mod:`aioproc._worker_main` makes the process, shakes hands and hands over to
:meth:`Server.run`::

    in_fd ─readv─► _serve_lone_calls ── one CALL of a sync function met before,
                    │                    no flags ─► run it ─► one write ─► out_fd
                    │ anything else
                    ▼
                  run(): queue ─► _run_call ─► resolve, STARTED, stream, or call
                    │             handle_control: CANCEL, CREDIT, STOP
                    │ first async function / awaitable result
                    ▼
                  aioproc._worker_async (anyio.run on the caller's backend;
                  serves every later call with the same Server state)

A worker stays a plain blocking loop for as long as it only meets synchronous
functions: one ``readv`` waits for the next call, the function runs, one
``write`` answers. Only an async function (or an async ``main``) imports anyio
and the backend the caller runs on (told in the handshake). Calls run one at a
time, in the order they arrived; calls queued behind a running one can be
cancelled (``CANCELLED``) before they start.
"""

from __future__ import annotations

import os
import struct
import sys
from collections import deque

from ._channel import PipeConn
from ._errors import ProtocolError
from ._values import encode_exception, pack_checked, resolve_ref
from .protocol import CallFlag, Kind, decode, encode_body, make_packer

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ASYNC_CODE_FLAGS", "Server", "is_async_callable"]

#: Code flags of a function the worker runs as async: CO_COROUTINE,
#: CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR (the values of :mod:`inspect`'s,
#: which a worker does not import).
ASYNC_CODE_FLAGS = 0x80 | 0x100 | 0x200

#: Result types packed straight away (exact types; the packer checks the rest).
_PLAIN_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
#: Below this, a frame is written as one header+body string.
_SMALL_BODY = 64 * 1024
_pack_header = struct.Struct(">I").pack
_unpack_header = struct.Struct(">I").unpack_from

#: bytes results at least this big are sent without copying the body.
_IN_PLACE_MIN = 64 * 1024


def is_async_callable(fn: object) -> bool:
    """True for coroutine and async generator functions (without importing inspect)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        func = getattr(fn, "__func__", None)  # bound/class methods
        code = getattr(func, "__code__", None)
    if code is None:
        return False
    return bool(code.co_flags & ASYNC_CODE_FLAGS)


class _SwitchToAsync(Exception):
    """Raised inside the sync loop to continue in :mod:`aioproc._worker_async`."""

    def __init__(self, message: list[Any], fn: Any, awaitable: Any = None) -> None:
        super().__init__()
        self.message = message
        self.fn = fn
        self.awaitable = awaitable


class Server:
    """State shared by the sync loop and the async loop of one worker."""

    def __init__(self, conn: PipeConn, config: dict[str, Any]) -> None:
        self.conn = conn
        self.config = config
        self.queue: deque[list[Any]] = deque()
        self.stopping = False
        self.exit_code: int | None = None
        #: Stream credit granted by the parent, per call id (queued or running).
        self.credits: dict[int, int] = {}
        #: Id of the call running now, if any.
        self.current_id: int | None = None
        self._refs: dict[str, Any] = {}
        #: ref -> (function, is async): the hot path's one dict lookup.
        self._kinds: dict[str, tuple[Any, bool]] = {}
        self._main_loaded = False
        self._packer = make_packer()  # this loop's own (no thread-local lookup)

    # -- helpers shared with the async loop ------------------------------------

    def resolve(self, ref: str) -> Any:
        fn = self._refs.get(ref)
        if fn is None:
            if ref.startswith("__main__:"):
                self.load_main()
            fn = resolve_ref(ref)
            self._refs[ref] = fn
        return fn

    def load_main(self) -> None:
        """Run the caller's main script as ``__mp_main__`` (once), as multiprocessing does."""
        if self._main_loaded:
            return
        self._main_loaded = True
        source = self.config.get("main_source")
        if not source:
            return
        import runpy
        import types

        kind, where = source
        if kind == "module":
            namespace = runpy.run_module(where, run_name="__mp_main__", alter_sys=False)
        else:
            namespace = runpy.run_path(where, run_name="__mp_main__")
        module = types.ModuleType("__mp_main__")
        module.__dict__.update(namespace)
        sys.modules["__mp_main__"] = module
        sys.modules["__main__"] = module

    def send_error(self, call_id: int, exc: BaseException) -> None:
        try:
            body = encode_body([Kind.ERROR, call_id, encode_exception(exc)])
        except Exception:
            text = ascii(str(exc))
            info = [type(exc).__module__, type(exc).__qualname__, None, text, text]
            body = encode_body([Kind.ERROR, call_id, info])
        self.send_body(body)

    def send_value(self, kind: int, call_id: int, value: object, path: str) -> bool:
        """Send RESULT/ITEM; on an unsendable or oversize value send ERROR. True if sent."""
        kind_of = type(value)
        if kind_of in _PLAIN_SCALARS and not (
            (kind_of is bytes or kind_of is str) and len(value) >= _SMALL_BODY  # type: ignore[arg-type]
        ):
            # The common case, kept short: an exact scalar needs no walk; the
            # packer itself rejects what it cannot carry (then: the slow path).
            try:
                body = self._packer.pack([kind, call_id, value])
            except (TypeError, ValueError, OverflowError):
                pass
            else:
                size = len(body)
                if size < _SMALL_BODY and size <= self.conn.max_frame:
                    frame = _pack_header(size) + body
                    written = os.write(self.conn.out_fd, frame)  # write_all(), inline
                    if written < size + 4:  # a full pipe took part of it
                        self.conn.write_all(memoryview(frame)[written:])
                    return True
        if type(value) is bytes and len(value) >= _IN_PLACE_MIN:
            # A big binary result: written from the packer's buffer, not copied.
            try:
                self.conn.send_in_place([kind, call_id, value])
            except ProtocolError as exc:
                self.send_error(call_id, ProtocolError(f"{path}: {exc}"))
                return False
            return True
        try:
            body = pack_checked([kind, call_id, value], value, path)
            if len(body) > self.conn.max_frame:
                raise ProtocolError(
                    f"{path} of {len(body)} bytes exceeds max_frame={self.conn.max_frame}"
                )
        except (TypeError, ProtocolError) as exc:
            self.send_error(call_id, exc)
            return False
        self.send_body(body)
        return True

    def send_body(self, body: bytes) -> None:
        self.conn.send_body(body)

    def apply_controls(self, batch: list[Any], call_id: int | None) -> bool:
        """Apply every message of *batch* read while call *call_id* runs (see
        :meth:`handle_control`); True when one of them cancels that call."""
        cancelled = False
        for message in batch:
            control = self.handle_control(message)
            if control is not None and control[0] == Kind.CANCEL and control[1] == call_id:
                cancelled = True
        return cancelled

    def handle_control(self, message: list[Any]) -> list[Any] | None:
        """Apply a non-CALL message; return a CREDIT/CANCEL the caller must see."""
        kind = message[0]
        if kind == Kind.CALL:
            self.queue.append(message)
        elif kind == Kind.CANCEL:
            call_id = message[1]
            for queued in self.queue:
                if queued[1] == call_id:
                    self.queue.remove(queued)
                    self.conn.send([Kind.CANCELLED, call_id])
                    return None
            return message
        elif kind == Kind.CREDIT:
            call_id = message[1]
            if call_id == self.current_id or any(q[1] == call_id for q in self.queue):
                self.credits[call_id] = self.credits.get(call_id, 0) + int(message[2])
            return message
        elif kind == Kind.STOP:
            self.stopping = True
        elif kind == Kind.HELLO:
            raise ProtocolError("second HELLO from the parent")
        # MESSAGE without main, unknown kinds: ignored (forward compatible).
        return None

    def report_failure(self, call_id: int, exc: BaseException) -> None:
        """Answer call *call_id* with what its function raised (and, for a
        ``SystemExit``, end the worker with its code)."""
        if isinstance(exc, SystemExit):
            self.system_exit(call_id, exc)
        else:
            self.send_error(call_id, exc)

    def system_exit(self, call_id: int, exc: SystemExit) -> None:
        self.send_error(call_id, exc)
        code = exc.code
        if code is None:
            self.exit_code = 0
        elif isinstance(code, int):
            self.exit_code = code
        else:
            print(code, file=sys.stderr)
            self.exit_code = 1

    # -- the synchronous loop ------------------------------------------------------

    def run(self) -> int:
        conn = self.conn
        queue = self.queue
        fresh = False  # just read: no need to poll before the next call
        try:
            while self.exit_code is None:
                if queue:
                    if not fresh and conn.readable():
                        self._dispatch(conn.read_batch(block=False))
                        fresh = True
                        continue
                else:
                    if self.stopping or conn.eof:
                        return 0
                    batch = self._serve_lone_calls()
                    if len(batch) == 1 and batch[0][0] == Kind.CALL:
                        # One call, nothing queued: run it now (through the
                        # queue it would be the same).
                        self._run_call(batch[0])
                        continue
                    self._dispatch(batch)
                    fresh = True
                    continue
                if self.stopping:
                    return 0
                fresh = False
                self._run_call(queue.popleft())
        except _SwitchToAsync as switch:
            from ._worker_async import run_async

            return run_async(self, switch.message, switch.fn, switch.awaitable)
        return self.exit_code

    def _serve_lone_calls(self) -> list[Any]:
        """Serve calls that come one per read, while nothing else comes; return
        the messages of the first read that is anything else (``[]`` at end of
        stream or after a ``SystemExit``), for :meth:`run` to handle.

        The hot path of a worker called in turn, with everything it needs bound
        once: one ``readv`` into the read buffer; a read that is exactly one
        whole frame holding a CALL without flags, of a sync function met
        before, is decoded here and run here; an exact scalar result (not str
        or bytes, which may be big) is packed and written here. That skips the
        layers of ``read_batch``/``Decoder.feed``, :meth:`run`'s checks and
        queue, :meth:`_run_call`'s look-ups and :meth:`send_value`'s checks (each
        call costs them again: ~0.4 µs of a ~3 µs turn). Whatever else is read,
        raised or returned takes the general path: the bytes go through
        ``Decoder.feed`` (which also raises for a bad frame), the messages back
        to :meth:`run`, other results to :meth:`send_value`.
        """
        conn = self.conn
        decoder = conn.decoder
        buf, view, in_fd, out_fd, max_frame = (
            conn.buf,
            conn.view,
            conn.in_fd,
            conn.out_fd,
            conn.max_frame,
        )
        kinds = self._kinds
        pack = self._packer.pack
        if conn.eof or decoder.buffered:  # (nothing below feeds the decoder and goes on)
            return conn.read_batch(block=True)
        while True:
            n = os.readv(in_fd, [buf])
            if n == 0:
                conn.eof = True
                return []
            if n < 4 or _unpack_header(buf)[0] + 4 != n or n - 4 > max_frame:
                # Part of a frame, several, or too big: the decoder's job.
                return decoder.feed(view[:n]) or conn.read_batch(block=True)
            try:
                message = decode(view[4:n])
            except ProtocolError:
                return decoder.feed(view[:n])  # raises it again, and breaks the decoder
            if not (type(message) is list and len(message) == 6):
                return [message]
            kind, call_id, ref, args, kwargs, flags = message
            known = kinds.get(ref) if kind == Kind.CALL and not flags and type(ref) is str else None
            if known is None or known[1]:
                return [message]  # a first or async call, flags, another kind
            fn = known[0]
            try:
                result = fn(*args, **kwargs)
            except SystemExit as exc:
                self.system_exit(call_id, exc)
                return []
            except BaseException as exc:
                self.send_error(call_id, exc)
                continue
            kind_of = type(result)
            if kind_of in _PLAIN_SCALARS and kind_of is not str and kind_of is not bytes:
                try:
                    body = pack([Kind.RESULT, call_id, result])  # at most 18 bytes
                except OverflowError:  # an int past 64 bits: send_value explains it
                    body = b""
                if 0 < len(body) <= max_frame:
                    frame = _pack_header(len(body)) + body
                    written = os.write(out_fd, frame)
                    if written < len(frame):  # a full pipe took part of it
                        conn.write_all(memoryview(frame)[written:])
                    continue
            if hasattr(result, "__await__"):
                raise _SwitchToAsync(message, fn, result)
            self.send_value(Kind.RESULT, call_id, result, "result")

    def _dispatch(self, batch: list[Any]) -> None:
        for message in batch:
            self.handle_control(message)

    def known_function(self, call_id: int, ref: str) -> tuple[Any, bool] | None:
        """The function *ref* names and whether it is async (looked up once per
        ref); ``None`` when it cannot be resolved -- the call's error is sent."""
        known = self._kinds.get(ref)
        if known is None:
            try:
                fn = self.resolve(ref)
            except BaseException as exc:
                self.send_error(call_id, exc)
                return None
            known = self._kinds[ref] = (fn, is_async_callable(fn))
        return known

    def _run_call(self, message: list[Any]) -> None:
        _, call_id, ref, args, kwargs, flags = message
        known = self.known_function(call_id, ref)
        if known is None:
            return
        fn, is_async = known
        if is_async:
            raise _SwitchToAsync(message, fn)
        if flags:
            if flags & CallFlag.STREAM:
                self._run_stream(call_id, fn, args, kwargs, flags)
                return
            if flags & CallFlag.REPORT_STARTED:
                self.conn.send([Kind.STARTED, call_id, False])
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.report_failure(call_id, exc)
            return
        if hasattr(result, "__await__"):
            raise _SwitchToAsync(message, fn, result)
        self.send_value(Kind.RESULT, call_id, result, "result")

    def _run_stream(
        self, call_id: int, fn: Any, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> None:
        conn = self.conn
        if flags & CallFlag.REPORT_STARTED:
            conn.send([Kind.STARTED, call_id, False])
        try:
            iterator = iter(fn(*args, **kwargs))
        except BaseException as exc:
            self.report_failure(call_id, exc)
            return
        credits = self.credits
        self.current_id = call_id
        try:
            while True:
                if credits.get(call_id, 0) <= 0 or conn.readable():
                    batch = conn.read_batch(block=credits.get(call_id, 0) <= 0)
                    if conn.eof and not batch:
                        return
                    if self.apply_controls(batch, call_id):
                        _close(iterator)
                        conn.send([Kind.CANCELLED, call_id])
                        return
                    continue
                try:
                    item = next(iterator)
                except StopIteration:
                    conn.send([Kind.END, call_id])
                    return
                except BaseException as exc:
                    self.report_failure(call_id, exc)
                    return
                if not self.send_value(Kind.ITEM, call_id, item, "item"):
                    return
                credits[call_id] -= 1
        finally:
            self.current_id = None
            credits.pop(call_id, None)
            _close(iterator)


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:  # noqa: SIM105 - no contextlib in a worker (start-up time)
            close()
        except BaseException:
            pass

"""The parent's two pipe ends to one worker: non-blocking, tight, backend-aware.

Reading: a reused 256 KiB buffer, one ``readv`` per wake-up, the
:class:`~aioproc.protocol.Decoder`, then ``_handle(message)`` for each message
(the subclass's job). On asyncio and uvloop a persistent ``add_reader`` callback
does this inside the loop's own poll step (no task switch per read); elsewhere a
task loops on ``wait_readable``. A caller that has just sent a call may also
read what is already there itself (:meth:`PipeEnds.read_now`): on the same CPU
the worker has usually answered by then, and the reader is not woken at all.

Writing: straight ``os.write``/``os.writev`` while the pipe has room (no task
switch, no copy of big bodies); what does not fit waits in ``_wbuf`` for the
writer task, in order.

Pool hook: frames written while a read batch is being handled (the pool
refilling this worker from its queue as results arrive) are held and leave in
one ``os.writev`` after the batch, instead of one write (and one wake-up of the
worker) per frame.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._calls import EventWaiter, TrioWaiter
from ._errors import ProtocolError
from .protocol import Decoder, frame_header, make_packer

__all__ = ["IN_PLACE_MIN", "PipeEnds"]

#: Bytes read per wake-up (one readv into a reused buffer).
READ_CHUNK = 256 * 1024
#: Bodies at least this big are written header and body apart (no copy).
_WRITEV_MIN = 64 * 1024
#: Frames held during a read batch are joined into one buffer up to this size.
_JOIN_MAX = 64 * 1024
#: Messages carrying a bytes value at least this big are packed into a reused
#: buffer and written from it (see :meth:`PipeEnds._send_in_place`).
IN_PLACE_MIN = 64 * 1024


class PipeEnds:
    """Our write end of the worker's input pipe and read end of its output pipe."""

    def __init__(self, max_frame: int) -> None:
        self._in_w = -1
        self._out_r = -1
        self._wbuf: deque[bytes | memoryview] = deque()
        self._wevent: anyio.Event | None = None
        self._decoder = Decoder(max_frame)
        self._rbuf = bytearray(READ_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._new_waiter: Callable[[], Any] = EventWaiter
        #: anyio.lowlevel.checkpoint of the running backend (set when serving starts).
        self.checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        self._broken_pipe = False
        self._protocol_error: ProtocolError | None = None
        self._loop: Any = None  # the asyncio loop, when on asyncio (fast paths)
        self._big_packer: Any = None  # for _send_in_place
        # Pool hook: frames held while a read batch is handled (see the docstring).
        self._held: list[bytes | memoryview] | None = None
        self._held_list: list[bytes | memoryview] = []

    def _handle(self, message: Any) -> None:
        raise NotImplementedError

    def _protocol_failure(self, exc: ProtocolError) -> None:
        """The worker sent a bad frame: end it (the subclass's job)."""
        raise NotImplementedError

    def read_now(self) -> None:
        """Handle what the worker has already answered, from the caller's task.

        Right after a call is sent its answer is often there already: on the
        same CPU the worker runs as soon as our write wakes it. Reading it here
        spares the event loop a turn to wake the reader (on trio, a task switch
        to the reader task and back). Nothing is lost when the pipe is empty
        (one ``readv``). The reader stays the one that ends at end of stream
        (the pipe stays readable, so it reads the end again); a bad frame is
        handled as the reader handles one.
        """
        if self._out_r < 0 or self._protocol_error is not None:
            return
        try:
            self._read_available()
        except ProtocolError as exc:
            self._protocol_failure(exc)

    def _can_send_in_place(self) -> bool:
        """Nothing queued ahead (order) and not inside a read batch (Pool hook)."""
        return not self._wbuf and self._held is None and self._in_w >= 0

    def _send_in_place(self, message: object, max_frame: int) -> None:
        """Pack *message* into a reused buffer and write it from there; only the
        part the pipe does not take now is copied (into the write backlog).

        :raises ProtocolError: when the body is over *max_frame* (nothing written).
        :raises TypeError, OverflowError: when msgpack cannot carry it.
        """
        packer = self._big_packer
        if packer is None:
            packer = self._big_packer = make_packer(autoreset=False)
        try:
            packer.pack(message)
            with packer.getbuffer() as body:
                size = len(body)
                if size > max_frame:
                    raise ProtocolError(
                        f"call message of {size} bytes exceeds max_frame={max_frame}"
                    )
                header = frame_header(size)
                try:
                    written = os.writev(self._in_w, [header, body])
                except BlockingIOError:
                    written = 0
                except OSError:  # the worker is gone; the exit watch will tell
                    self._broken_pipe = True
                    return
                if written < 4:
                    self._wbuf.append(header[written:])
                    self._wbuf.append(bytes(body))
                elif written < size + 4:
                    self._wbuf.append(bytes(body[written - 4 :]))
                else:
                    return
        finally:
            packer.reset()
        assert self._wevent is not None
        self._wevent.set()

    def _read_available(self) -> bool:
        """Read and handle what the pipe holds; False at end of stream."""
        fd = self._out_r
        buf = self._rbuf
        decoder = self._decoder
        while True:
            big = decoder.read_buffer()  # the rest of a big frame: read it in place
            try:
                if big is None:
                    n = os.readv(fd, [buf])
                else:
                    with big:
                        n = os.readv(fd, [big])
            except BlockingIOError:
                return True
            if n == 0:
                return False
            self._handle_read(n, big is not None)
            if big is None and n < READ_CHUNK:
                return True

    def _handle_read(self, n: int, big: bool) -> None:
        """Handle *n* bytes just read into the read buffer (or, with *big*, into
        the decoder's :meth:`~aioproc.protocol.Decoder.read_buffer`)."""
        held = self._held_list  # reused: no list per read
        self._held = held
        try:
            decoder = self._decoder
            messages = decoder.filled(n) if big else decoder.feed(self._rview[:n])
            for message in messages:
                self._handle(message)
        finally:
            self._held = None
            if held:
                try:
                    self._write_held(held)
                finally:
                    held.clear()

    async def _read_with_waits(self) -> None:
        """The portable reader: wait_readable, then read what is there."""
        fd = self._out_r
        trio = sys.modules.get("trio")
        if trio is not None and self._new_waiter is TrioWaiter:
            # On trio: trio's own wait_readable, without anyio's backend lookup
            # per wait (its ClosedResourceError is anyio's, as anyio would make it).
            wait_readable = trio.lowlevel.wait_readable
            try:
                while True:
                    await wait_readable(fd)
                    if not self._read_available():
                        return
            except trio.ClosedResourceError:
                raise anyio.ClosedResourceError from None
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

    def _write_held(self, held: list[bytes | memoryview]) -> None:
        """Pool hook: write the frames held during a read batch, in one writev."""
        if self._wbuf or self._in_w < 0:
            self._wbuf.extend(held)
            return
        if len(held) > 2 and sum(map(len, held)) <= _JOIN_MAX:
            held = [b"".join(held)]  # small frames: one copy beats many iovecs
        try:
            written = os.writev(self._in_w, held[:1024])  # IOV_MAX
        except BlockingIOError:
            written = 0
        except OSError:  # the worker is gone; the exit watch will tell
            self._broken_pipe = True
            return
        for chunk in held:
            if written >= len(chunk):
                written -= len(chunk)
                continue
            self._wbuf.append(memoryview(chunk)[written:] if written else chunk)
            written = 0
        if self._wbuf:
            assert self._wevent is not None
            self._wevent.set()

    def _send_body(self, body: bytes) -> None:
        held = self._held
        if held is not None:  # Pool hook: inside a read batch, written after it
            held.append(frame_header(len(body)))
            held.append(body)
            return
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
        held = self._held
        if held is not None:  # Pool hook: inside a read batch, written after it
            held.append(data)
            return
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
        while self._wbuf and not self._broken_pipe and self._in_w >= 0:
            await anyio.wait_writable(self._in_w)
            await anyio.lowlevel.checkpoint()

    def _close_fds(self) -> None:
        for name in ("_in_w", "_out_r"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(Exception):
                    anyio.notify_closing(fd)
                os.close(fd)

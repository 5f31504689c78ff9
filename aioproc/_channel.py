"""A framed message channel over two pipes, as seen from inside a worker.

The worker talks to its parent on two pipes of its own (not stdin/stdout, so
``print()`` never corrupts the protocol)::

    parent ──frames──► in_fd ──► PipeConn.read_batch() ──► worker loop
    parent ◄──frames── out_fd ◄── PipeConn.send()     ◄── worker loop / Channel

:class:`PipeConn` is the blocking transport the worker's loops use: one big
``readv`` into a reused buffer, :class:`~aioproc.protocol.Decoder`, and blocking
``write``/``writev`` (the parent always drains its end, so a blocking write in
the worker cannot deadlock). :class:`Channel` is what a synchronous
``main(channel)`` gets: ``send``/``receive`` of user messages. The asynchronous
twin lives in :mod:`aioproc._worker_async` so that a sync worker never imports
an async library.
"""

from __future__ import annotations

import _socket  # not socket: its enum conversions cost a starting zygote ~2.5 ms
import array
import os
import select
from collections import deque

from ._errors import EndOfChannel, ProtocolError
from ._values import check_sendable
from .protocol import Decoder, Kind, decode, encode, encode_body, frame_header, make_packer

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_RECORD", "Channel", "PipeConn", "recv_record", "send_record"]

#: Size of the reused read buffer (one ``readv`` per wake-up). Small: an idle
#: worker's memory is mostly this buffer; big frames just take several reads.
READ_CHUNK = 64 * 1024
#: Bodies at least this big are written with writev (no header+body copy).
_WRITEV_MIN = 64 * 1024


class PipeConn:
    """Blocking framed I/O on the worker's two pipe ends (worker side)."""

    __slots__ = (
        "_big_packer",
        "_poll",
        "buf",
        "decoder",
        "eof",
        "in_fd",
        "max_frame",
        "out_fd",
        "view",
    )

    def __init__(self, in_fd: int, out_fd: int, max_frame: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.max_frame = max_frame
        self.decoder = Decoder(max_frame)
        self.eof = False
        #: The reused read buffer and a view of it (the worker's hot loop reads
        #: into them directly, see Server._serve_lone_calls).
        self.buf = bytearray(READ_CHUNK)
        self.view = memoryview(self.buf)
        self._poll = select.poll()
        self._poll.register(in_fd, select.POLLIN)
        self._big_packer: Any = None

    def read_batch(self, *, block: bool = True) -> list[Any]:
        """The messages that are ready; with *block*, wait for at least one read.

        Returns ``[]`` at end of stream (then :attr:`eof` is set) or, without
        *block*, when nothing is waiting.

        :raises ProtocolError: when the parent sent a bad frame.
        """
        while True:
            if self.eof:
                return []
            if not block and not self._poll.poll(0):
                return []
            try:
                messages = self._read_once()
            except BlockingIOError:
                if not block:
                    return []
                self._poll.poll()
                continue
            if messages is None:  # end of stream
                if self.decoder.buffered:
                    raise ProtocolError("pipe closed in the middle of a frame")
                return []
            if messages or not block:
                return messages

    def _read_once(self) -> list[Any] | None:
        """One ``readv``: into the reused buffer, or straight into a big frame.

        ``None`` at end of stream (and :attr:`eof` is set).
        """
        decoder = self.decoder
        big = decoder.read_buffer()
        if big is None:
            n = os.readv(self.in_fd, [self.buf])
            if n == 0:
                self.eof = True
                return None
            return decoder.feed(self.view[:n])
        with big:
            n = os.readv(self.in_fd, [big])
        if n == 0:
            self.eof = True
            return None
        return decoder.filled(n)

    def read_ready(self) -> list[Any]:
        """The messages in what one non-blocking read returns (fd must be O_NONBLOCK).

        :raises ProtocolError: when the parent sent a bad frame.
        """
        try:
            return self._read_once() or []
        except BlockingIOError:
            return []

    def readable(self) -> bool:
        """True when a read would not block."""
        return bool(self._poll.poll(0))

    def send_body(self, body: bytes) -> None:
        """Write one frame with msgpack *body* (blocking until all is written).

        :raises ProtocolError: when *body* is longer than ``max_frame``.
        :raises BrokenPipeError: when the parent closed its end.
        """
        size = len(body)
        if size > self.max_frame:
            raise ProtocolError(f"message of {size} bytes exceeds max_frame={self.max_frame}")
        if size < _WRITEV_MIN:
            self.write_all(frame_header(size) + body)
        else:
            header = frame_header(size)
            written = os.writev(self.out_fd, [header, body])
            if written < 4:
                self.write_all(header[written:])
                self.write_all(body)
            elif written < size + 4:
                self.write_all(memoryview(body)[written - 4 :])

    def send_in_place(self, message: object) -> None:
        """Encode *message* into a reused buffer and write it from there (no copy
        of the body: for big values). The caller has checked it is sendable.

        :raises ProtocolError: when the body is longer than ``max_frame``.
        :raises TypeError: when msgpack cannot carry it (nothing is written).
        """
        packer = self._big_packer
        if packer is None:
            packer = self._big_packer = make_packer(autoreset=False)
        try:
            packer.pack(message)
            with packer.getbuffer() as body:
                size = len(body)
                if size > self.max_frame:
                    raise ProtocolError(
                        f"message of {size} bytes exceeds max_frame={self.max_frame}"
                    )
                header = frame_header(size)
                written = os.writev(self.out_fd, [header, body])
                if written < 4:
                    self.write_all(header[written:])
                    self.write_all(body)
                elif written < size + 4:
                    self.write_all(body[written - 4 :])
        finally:
            packer.reset()

    def send(self, message: object) -> None:
        """Encode and write *message* (must be sendable: internal messages)."""
        self.send_body(encode_body(message))

    def write_all(self, data: bytes | memoryview) -> None:
        """Write all of *data* (blocking); one ``write`` in the usual case."""
        written = os.write(self.out_fd, data)
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                written = os.write(self.out_fd, view)
                view = view[written:]


class Channel:
    """The channel a synchronous ``main(channel)`` gets in a worker.

    ``send(message)`` writes a user message to the parent; ``receive()`` blocks
    for the next one. Messages are sendable values (see
    :func:`aioproc._values.check_sendable`).
    """

    __slots__ = ("_closed", "_conn", "_inbox")

    def __init__(self, conn: PipeConn) -> None:
        self._conn = conn
        self._inbox: deque[Any] = deque()
        self._closed = False

    def send(self, message: object) -> None:
        """Send *message* to the parent.

        :raises TypeError: when *message* is not sendable (nothing is sent).
        :raises EndOfChannel: when the parent has gone away.
        """
        check_sendable(message, "message")
        try:
            self._conn.send([Kind.MESSAGE, message])
        except BrokenPipeError:
            raise EndOfChannel("the parent closed the channel") from None

    def receive(self) -> Any:
        """The next message from the parent (blocks).

        :raises EndOfChannel: when the parent stopped the worker or went away.
        """
        while not self._inbox:
            if self._closed:
                raise EndOfChannel("the parent closed the channel")
            batch = self._conn.read_batch(block=True)
            if not batch:
                self._closed = True
            for message in batch:
                kind = message[0]
                if kind == Kind.MESSAGE:
                    self._inbox.append(message[1])
                elif kind == Kind.STOP:
                    self._closed = True
        return self._inbox.popleft()

    def __iter__(self) -> Channel:
        return self

    def __next__(self) -> Any:
        try:
            return self.receive()
        except EndOfChannel:
            raise StopIteration from None


# -- the zygote control socket: one SEQPACKET record per frame, fds alongside --

#: Largest control record (the handshake config carries sys.path).
MAX_RECORD = 1 << 20
_FDS_SPACE = _socket.CMSG_SPACE(4 * array.array("i").itemsize)


def send_record(
    sock: _socket.socket, message: object, fds: list[int] | tuple[int, ...] = ()
) -> None:
    """Send one frame (and *fds*) as one SEQPACKET record."""
    frame = encode(message)
    ancillary = []
    if fds:
        ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))]
    sock.sendmsg([frame], ancillary)


def recv_record(sock: _socket.socket) -> tuple[Any, list[int]] | None:
    """One record: (message, received fds); ``None`` at end of stream.

    :raises ProtocolError: when the record is not one well-formed frame.
    :raises BlockingIOError: when the socket is non-blocking and empty.
    """
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_RECORD, _FDS_SPACE)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            received = array.array("i")
            usable = len(payload) - len(payload) % received.itemsize
            received.frombytes(payload[:usable])
            fds.extend(received)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    if len(data) < 4 or frame_header(len(data) - 4) != data[:4]:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("control record is not one frame")
    return decode(data[4:]), fds

"""The wire protocol between aioproc and its workers: framing, limits, message kinds.

Sans-IO: bytes in, messages out. Nothing here touches a file descriptor or an
event loop (and this module never imports anyio), so the same code serves the
parent's event loop, the worker's blocking loop, the zygote and the tests::

    sender                                        receiver
    ──────                                        ────────
    message ─encode()─► [N: u32 BE][N bytes]  ──► Decoder.feed(chunk)
    (list)                 one msgpack value       │  header > max_frame? ─► ProtocolError
                                                   │  not msgpack?         ─► ProtocolError
                                                   └► [message, ...]  (complete frames only)

A frame is a 4-byte big-endian unsigned length ``N`` followed by ``N`` bytes that
hold exactly one msgpack value. Arrays decode as lists, maps may have int keys,
strings are UTF-8, and a Python ``tuple`` travels as msgpack ext type
:data:`TUPLE_EXT` (1) whose payload is a msgpack array, so it comes back a tuple.

Every message is a msgpack array whose first element is its kind (a small int,
see :class:`Kind`). The full table, with the order of the handshake and the
meaning of every field, is in ``docs/protocol.md``; it is written so that a
worker could be implemented in another language from it alone.
"""

from __future__ import annotations

import struct
from _thread import _local  # threading.local itself, without importing threading

import msgpack

from ._errors import ProtocolError

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "BIG_FRAME",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "TUPLE_EXT",
    "CallFlag",
    "Decoder",
    "Kind",
    "ProtocolError",
    "decode",
    "encode",
    "encode_body",
    "frame_header",
    "make_packer",
]

#: Version spoken by this aioproc; both handshake frames carry it.
PROTOCOL_VERSION: Final = 1
#: Default limit on the body of one frame, in bytes (64 MiB).
DEFAULT_MAX_FRAME: Final = 64 * 2**20
#: msgpack ext type code of a tuple; its payload is a msgpack array.
TUPLE_EXT: Final = 1
#: Bytes of the length prefix.
HEADER_SIZE: Final = 4

_HEADER = struct.Struct(">I")
_MAX_U32 = 2**32 - 1


class Kind:
    """Message kinds: the first element of every message array (plain ints).

    Parent → worker: ``HELLO`` (first), ``CALL``, ``CREDIT``, ``CANCEL``,
    ``MESSAGE``, ``STOP``. Worker → parent: ``HELLO`` (first), ``STARTED``,
    ``RESULT``, ``ERROR``, ``ITEM``, ``END``, ``CANCELLED``, ``MESSAGE``.
    Zygote control socket: ``SPAWN``, ``SPAWNED``, ``EXITED``. (Plain ints
    rather than an IntEnum: msgpack packs an exact int without a Python hook.)
    """

    __slots__ = ()

    HELLO: Final = 0
    CALL: Final = 1
    STARTED: Final = 2
    RESULT: Final = 3
    ERROR: Final = 4
    ITEM: Final = 5
    END: Final = 6
    CREDIT: Final = 7
    CANCEL: Final = 8
    CANCELLED: Final = 9
    MESSAGE: Final = 10
    STOP: Final = 11
    SPAWN: Final = 20
    SPAWNED: Final = 21
    EXITED: Final = 22

    @classmethod
    def name_of(cls, kind: int) -> str:
        """``"CALL"`` for 1; ``"kind 99"`` for an unknown number."""
        for name, value in vars(cls).items():
            if name.isupper() and value == kind:
                return name
        return f"kind {kind}"


class CallFlag:
    """Bits of a ``CALL`` message's ``flags`` field (plain ints)."""

    __slots__ = ()

    #: Send ``STARTED`` right before the function runs.
    REPORT_STARTED: Final = 1
    #: The function is a (async) generator: answer with ``ITEM``s and ``END``.
    STREAM: Final = 2


# -- encoding ---------------------------------------------------------------------


def _default(obj: object) -> object:
    """msgpack ``default`` hook (with ``strict_types``): tuples and subclasses."""
    if isinstance(obj, tuple):
        return msgpack.ExtType(TUPLE_EXT, _packer().pack(list(obj)))
    # Subclasses of the base types travel as the base type (IntEnum -> int).
    if isinstance(obj, int):
        return int.__index__(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, bytes):
        return bytes.__bytes__(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    raise TypeError(f"cannot encode an object of type {type(obj).__qualname__}")


class _Packers(_local):
    """One reusable msgpack Packer per thread and nesting depth.

    A Packer is about 3x cheaper than :func:`msgpack.packb` but not reentrant
    (the tuple hook packs the tuple's items while the outer pack is running), so
    nested packs take the next one down the stack.
    """

    def __init__(self) -> None:
        self.stack: list[msgpack.Packer] = []
        self.depth = 0


_packers = _Packers()


class _PackerLease:
    __slots__ = ()

    def pack(self, obj: object) -> bytes:
        local = _packers
        depth = local.depth
        stack = local.stack
        if depth == len(stack):
            stack.append(msgpack.Packer(default=_default, strict_types=True))
        local.depth = depth + 1
        try:
            return stack[depth].pack(obj)
        finally:
            local.depth = depth


_LEASE = _PackerLease()


def _packer() -> _PackerLease:
    return _LEASE


def make_packer(*, autoreset: bool = True) -> msgpack.Packer:
    """A msgpack Packer with this protocol's rules (tuples, subclasses, strict types).

    With ``autoreset=False`` a writer can send ``packer.getbuffer()`` without the
    copy that ``pack()`` makes for its return value, then ``reset()``.
    """
    return msgpack.Packer(default=_default, strict_types=True, autoreset=autoreset)


def encode_body(message: object) -> bytes:
    """The msgpack bytes of *message*, without the length prefix.

    :raises TypeError: when *message* holds a value msgpack cannot carry.
    :raises OverflowError: when it holds an int outside the 64-bit range.
    """
    return _LEASE.pack(message)


def frame_header(size: int) -> bytes:
    """The 4-byte length prefix of a *size*-byte body.

    :raises ProtocolError: when *size* does not fit in 32 bits.
    """
    if size > _MAX_U32:
        raise ProtocolError(f"a frame of {size} bytes does not fit the 32-bit length prefix")
    return _HEADER.pack(size)


def encode(message: object, *, max_frame: int | None = None) -> bytes:
    """One complete frame (length prefix + msgpack body) holding *message*.

    :raises TypeError: when *message* holds a value msgpack cannot carry.
    :raises ProtocolError: when the body is longer than *max_frame* bytes.
    """
    body = _LEASE.pack(message)
    size = len(body)
    if max_frame is not None and size > max_frame:
        raise ProtocolError(f"message of {size} bytes exceeds max_frame={max_frame}")
    return frame_header(size) + body


# -- decoding ---------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> object:
    if code == TUPLE_EXT:
        items = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
        if not isinstance(items, list):
            raise ProtocolError("tuple ext payload is not an array")
        return tuple(items)
    raise ProtocolError(f"unknown msgpack ext type {code}")


_unpackb = msgpack.unpackb
_unpack_header = _HEADER.unpack_from


def decode(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body (exactly one msgpack value).

    :raises ProtocolError: when *body* is not exactly one valid msgpack value.
    """
    try:
        return _unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, its own errors
        raise ProtocolError(f"frame is not a valid msgpack value: {exc}") from exc


#: A partial frame at least this big gets its own buffer of the exact size, which a
#: reader can fill straight from the pipe (see :meth:`Decoder.read_buffer`).
BIG_FRAME = 128 * 1024


class Decoder:
    """Splits a byte stream into messages.

    ``feed(data)`` returns the messages completed by *data* (possibly none) and
    keeps the partial tail. It never holds more than one partial frame, and a
    frame header announcing more than ``max_frame`` bytes raises at once, before
    any of that body is buffered. After an error the decoder stays broken: every
    later ``feed`` raises the same :class:`ProtocolError`.

    Big frames (at least :data:`BIG_FRAME` bytes) can skip a copy: while one is
    incomplete, :meth:`read_buffer` returns a writable view of its missing part;
    a reader fills it (``os.readv(fd, [view])``) and reports the count with
    :meth:`filled`. ``feed`` keeps working at any time.
    """

    __slots__ = ("_big", "_big_filled", "_broken", "_buf", "_spare", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._big: memoryview | None = None  # body of an incomplete big frame
        self._big_filled = 0
        self._spare = bytearray()  # reused for big frames (no fresh pages each time)
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf) + (4 + self._big_filled if self._big is not None else 0)

    def read_buffer(self) -> memoryview | None:
        """A writable view of the missing part of an incomplete big frame, else ``None``."""
        big = self._big
        if big is None:
            return None
        return big[self._big_filled :]

    def filled(self, count: int) -> list[Any]:
        """*count* bytes were written into :meth:`read_buffer`; the message, once complete.

        :raises ProtocolError: when the completed body is not one msgpack value.
        """
        big = self._big
        if big is None:
            raise RuntimeError("filled() without a read_buffer()")
        self._big_filled += count
        if self._big_filled < len(big):
            return []
        self._big = None
        self._big_filled = 0
        try:
            return [decode(big)]
        except ProtocolError as exc:
            self._broken = exc
            raise
        finally:
            big.release()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add *data*; return every message it completes, in order.

        :raises ProtocolError: when a header announces more than ``max_frame``
            bytes or a body is not one msgpack value (the decoder is then broken).
        """
        if not self._buf and self._big is None and self._broken is None:
            # Fast path: exactly one whole frame and nothing held back (a small
            # call or result, the usual read). Anything else, including a body
            # that fails to decode, goes the general way below, which raises.
            total = len(data)
            if total >= 4:
                size = _unpack_header(data)[0]
                if size + 4 == total and size <= self.max_frame:
                    try:
                        return [
                            _unpackb(data[4:], ext_hook=_ext_hook, raw=False, strict_map_key=False)
                        ]
                    except Exception:
                        pass
        if self._broken is not None:
            raise self._broken
        out: list[Any] = []
        if self._big is not None:
            view = self.read_buffer()
            assert view is not None
            with memoryview(data) as incoming:
                taken = min(len(view), len(incoming))
                view[:taken] = incoming[:taken]
                view.release()
                out.extend(self.filled(taken))
                if taken == len(incoming):
                    return out
                data = bytes(incoming[taken:])
        buf = self._buf
        if buf:
            buf += data
            source: bytes | bytearray | memoryview = buf
        else:
            source = data
        total = len(source)
        pos = 0
        max_frame = self.max_frame
        unpack_header = _HEADER.unpack_from
        try:
            with memoryview(source) as view:
                while total - pos >= 4:
                    (size,) = unpack_header(view, pos)
                    if size > max_frame:
                        raise ProtocolError(
                            f"frame header announces {size} bytes, over max_frame={max_frame}"
                        )
                    end = pos + 4 + size
                    if end > total:
                        if size >= BIG_FRAME:
                            # Give the body a buffer of its own, to be read into.
                            if len(self._spare) < size:
                                self._spare = bytearray(size)
                            big = memoryview(self._spare)[:size]
                            part = total - pos - 4
                            big[:part] = view[pos + 4 : total]
                            self._big, self._big_filled = big, part
                            pos = total
                        break
                    out.append(decode(view[pos + 4 : end]))
                    pos = end
        except ProtocolError as exc:
            self._broken = exc
            self._buf = bytearray()
            raise
        if source is buf:
            if pos:
                del buf[:pos]
        elif pos < total:
            self._buf = bytearray(source[pos:])
        return out

    def __repr__(self) -> str:
        state = "broken" if self._broken is not None else f"buffered={self.buffered}"
        return f"<Decoder max_frame={self.max_frame} {state}>"

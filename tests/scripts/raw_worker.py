"""A worker written from docs/protocol.md alone: only os, sys, struct and msgpack.

``python raw_worker.py IN_FD OUT_FD`` serves ``raw:add``, ``raw:fail``,
``raw:pair`` (returns a tuple), ``raw:count`` (a stream) and ``raw:slow`` (sleeps;
cancellable while queued). It proves the document is complete: the test suite
drives it with aioproc's own parent code.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import time
from typing import Any

import msgpack

HELLO, CALL, STARTED, RESULT, ERROR, ITEM, END, CREDIT, CANCEL, CANCELLED = range(10)
MESSAGE, STOP = 10, 11
REPORT_STARTED, STREAM = 1, 2
TUPLE_EXT = 1


def ext_hook(code: int, data: bytes) -> Any:
    if code != TUPLE_EXT:
        raise ValueError(f"unknown ext type {code}")
    return tuple(msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False))


def default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return msgpack.ExtType(
            TUPLE_EXT, msgpack.packb(list(obj), default=default, strict_types=True)
        )
    raise TypeError(type(obj).__name__)


class Conn:
    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd, self.out_fd = in_fd, out_fd
        self.buf = b""
        self.pending: list[Any] = []

    def read(self) -> Any:
        """The next message, or None at end of file."""
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + size:
                    body, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
                    return msgpack.unpackb(body, ext_hook=ext_hook, strict_map_key=False)
            chunk = os.read(self.in_fd, 65536)
            if not chunk:
                return None
            self.buf += chunk

    def ready(self) -> list[Any]:
        """Every complete message already sent, without blocking."""
        while select.select([self.in_fd], [], [], 0)[0]:
            chunk = os.read(self.in_fd, 65536)
            if not chunk:
                break
            self.buf += chunk
        out = []
        while len(self.buf) >= 4:
            (size,) = struct.unpack(">I", self.buf[:4])
            if len(self.buf) < 4 + size:
                break
            body, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
            out.append(msgpack.unpackb(body, ext_hook=ext_hook, strict_map_key=False))
        return out

    def send(self, message: Any) -> None:
        body = msgpack.packb(message, default=default, strict_types=True)
        data = struct.pack(">I", len(body)) + body
        while data:
            data = data[os.write(self.out_fd, data) :]


def error_info(kind: str, message: str) -> list[Any]:
    return ["builtins", kind, [message], message, f"raw_worker: {kind}: {message}\n"]


def serve(conn: Conn) -> int:
    hello = conn.read()
    if hello is None or hello[0] != HELLO:
        return 3
    if hello[1] != 1:
        conn.send([HELLO, 1, os.getpid(), error_info("RuntimeError", "version mismatch")])
        return 3
    conn.send([HELLO, 1, os.getpid(), None])
    queue: list[Any] = []
    credit: dict[int, int] = {}
    while True:
        if not queue:
            message = conn.read()
            if message is None:
                return 0
            queue.append(message)
        message = queue.pop(0)
        kind = message[0]
        if kind == STOP:
            return 0
        if kind == CREDIT:
            credit[message[1]] = credit.get(message[1], 0) + message[2]
            continue
        if kind != CALL:
            continue  # CANCEL of something not queued, MESSAGE, unknown kinds
        _, call_id, ref, args, _kwargs, flags = message
        # Read what else is waiting: a CANCEL for this very call drops it.
        queue.extend(conn.ready())
        if any(m[0] == CANCEL and m[1] == call_id for m in queue):
            conn.send([CANCELLED, call_id])
            continue
        if flags & REPORT_STARTED:
            conn.send([STARTED, call_id, False])
        if ref == "raw:add":
            conn.send([RESULT, call_id, sum(args)])
        elif ref == "raw:pair":
            conn.send([RESULT, call_id, (args[0], (args[1],))])
        elif ref == "raw:slow":
            time.sleep(args[0])
            conn.send([RESULT, call_id, "slow"])
        elif ref == "raw:count" and flags & STREAM:
            for waiting in [m for m in queue if m[0] == CREDIT and m[1] == call_id]:
                queue.remove(waiting)
                credit[call_id] = credit.get(call_id, 0) + waiting[2]
            for i in range(args[0]):
                while credit.get(call_id, 0) <= 0:
                    nxt = conn.read()
                    if nxt is None:
                        return 0
                    if nxt[0] == CREDIT and nxt[1] == call_id:
                        credit[call_id] = credit.get(call_id, 0) + nxt[2]
                    else:
                        queue.append(nxt)
                conn.send([ITEM, call_id, i])
                credit[call_id] -= 1
            conn.send([END, call_id])
        else:
            conn.send([ERROR, call_id, error_info("LookupError", f"no function {ref}")])


if __name__ == "__main__":
    sys.exit(serve(Conn(int(sys.argv[1]), int(sys.argv[2]))))

"""Byte streams over raw non-blocking file descriptors (pipe ends).

anyio has no public stream over a bare fd, and the event loops' own subprocess
transports reap children behind our back (losing ``wait4``'s rusage). So aioproc
starts children itself and talks to their pipes through these two small classes,
written only against ``anyio.wait_readable`` / ``anyio.wait_writable``: one code
path for asyncio, uvloop and trio.

Reads try ``os.read`` first and only wait for readiness when the pipe is empty,
so a busy pipe costs one system call per chunk. Closing calls
``anyio.notify_closing`` first, so a task blocked on the fd wakes with
``ClosedResourceError`` instead of waiting on a recycled fd number.
"""

from __future__ import annotations

import fcntl
import os

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint

__all__ = [
    "PIPE_SIZE",
    "FdReceiveStream",
    "FdSendStream",
    "close_fd",
    "close_fd_now",
    "grow_pipe_after",
    "set_pipe_size",
]

# Linux-only fcntl commands (absent from the fcntl module on other systems).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


#: What a child's output pipe grows to once it has been seen full.
PIPE_SIZE = 1 << 20
#: A read this big came from a full default-size (64 KiB) pipe.
_FULL_DEFAULT_PIPE = 1 << 16


def grow_pipe_after(fd: int, got: int) -> bool:
    """Grow *fd*'s pipe to :data:`PIPE_SIZE` when a read of *got* bytes shows the
    default pipe was full; True once grown (the caller stops asking).

    Pipes start at the default size: growing one costs about 8 µs, which a
    short-lived child (``true``) would pay on every start for nothing, while a
    child that fills its pipe streams faster (fewer wake-ups) with 1 MiB.
    """
    if got < _FULL_DEFAULT_PIPE:
        return False
    set_pipe_size(fd, PIPE_SIZE)
    return True


def set_pipe_size(fd: int, size: int) -> int:
    """Ask the kernel for a pipe buffer of *size* bytes; returns what it gave.

    Unprivileged processes are capped by ``/proc/sys/fs/pipe-max-size`` (1 MiB by
    default); on failure the pipe keeps its current size.
    """
    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        try:
            return fcntl.fcntl(fd, _F_GETPIPE_SZ)
        except OSError:
            return 0


def close_fd_now(fd: int) -> None:
    """Wake any task waiting on *fd*, then close it (a plain call)."""
    anyio.notify_closing(fd)
    os.close(fd)


async def close_fd(fd: int) -> None:
    """Wake any task waiting on *fd*, then close it."""
    close_fd_now(fd)


class FdReceiveStream(anyio.abc.ByteReceiveStream):
    """The read end of a pipe as an anyio byte stream. Owns (closes) the fd."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    @property
    def fd(self) -> int:
        """The file descriptor, or -1 once closed."""
        return self._fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next chunk, at most *max_bytes*.

        :raises anyio.EndOfStream: when the writer closed its end.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        waited = False
        while True:
            fd = self._fd
            if fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                waited = True
                continue
            if not waited:
                # Keep receive() a checkpoint even when data was already there,
                # so a reader of an endless fast pipe cannot starve the loop.
                await checkpoint()
            if not data:
                raise anyio.EndOfStream
            return data

    def receive_nowait(self, max_bytes: int = 65536) -> bytes | None:
        """A chunk if one is ready now, ``b""`` at end of stream, else ``None``."""
        if self._fd < 0:
            raise anyio.ClosedResourceError
        try:
            return os.read(self._fd, max_bytes)
        except BlockingIOError:
            return None

    async def wait_readable(self) -> None:
        if self._fd < 0:
            raise anyio.ClosedResourceError
        await anyio.wait_readable(self._fd)

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await close_fd(fd)

    def close_now(self) -> None:
        """Synchronous close, for finalizers; wakes waiters like :meth:`aclose`."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            close_fd_now(fd)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


class FdSendStream(anyio.abc.ByteSendStream):
    """The write end of a pipe as an anyio byte stream. Owns (closes) the fd."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    @property
    def fd(self) -> int:
        """The file descriptor, or -1 once closed."""
        return self._fd

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Write all of *item*, waiting while the pipe is full (backpressure).

        :raises anyio.BrokenResourceError: when the reader closed its end.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        view = memoryview(item).cast("B")
        waited = False
        while view:
            fd = self._fd
            if fd < 0:
                raise anyio.ClosedResourceError
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await anyio.wait_writable(fd)
                waited = True
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise anyio.BrokenResourceError from exc
            view = view[written:]
        if not waited:
            await checkpoint()

    def send_nowait(self, item: bytes | bytearray | memoryview) -> int:
        """Write what fits now; returns the number of bytes written.

        :raises anyio.BrokenResourceError: when the reader closed its end.
        """
        if self._fd < 0:
            raise anyio.ClosedResourceError
        try:
            return os.write(self._fd, item)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise anyio.BrokenResourceError from exc

    async def wait_writable(self) -> None:
        if self._fd < 0:
            raise anyio.ClosedResourceError
        await anyio.wait_writable(self._fd)

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await close_fd(fd)

    def close_now(self) -> None:
        """Synchronous close, for finalizers; wakes waiters like :meth:`aclose`."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            close_fd_now(fd)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"

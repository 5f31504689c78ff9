"""Waiting for any of several fds from one task.

``run`` has to move data on up to four fds at once (stdin, stdout, stderr and
the child's pidfd) and ``Process.output()`` merges two pipes in arrival order.
With one task per fd that costs a task group and one loop round trip per fd per
wake-up. Instead, on Linux, the fds go into an epoll instance of their own, and
the task waits for *that* fd to become readable (an epoll fd is itself pollable,
so one wait works on asyncio, uvloop and trio alike)::

    stdout ─┐
    stderr ─┼─> epoll fd ──wait readable──> one task: ready() -> [fd, ...]
    pidfd  ─┤
    stdin  ─┘  (writable)

On asyncio and uvloop the wait is a loop future behind ``add_reader``; on trio
it is ``anyio.wait_readable``.

Elsewhere :class:`Poller` falls back to ``select`` with a short back-off sleep.
"""

from __future__ import annotations

import asyncio
import select

import anyio

__all__ = ["Poller"]

_HAVE_EPOLL = hasattr(select, "epoll")


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) loop; None on another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _wake(future: asyncio.Future[None]) -> None:
    # Level-triggered: the loop may call this again before the waiter runs.
    if not future.done():
        future.set_result(None)


class Poller:
    """A set of fds, each watched for reading or for writing.

    ``ready()`` lists the fds that are ready now (readable, writable, at EOF or in
    error: in every case the owner should act on it); ``await wait()`` waits
    until that list is not empty. One task at a time may wait.
    """

    __slots__ = ("_delay", "_epoll", "_future", "_readers", "_waiting", "_writers")

    def __init__(self, *, use_epoll: bool = _HAVE_EPOLL) -> None:
        self._epoll = select.epoll() if use_epoll else None
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._delay = 0.0
        self._waiting = False
        self._future: asyncio.Future[None] | None = None  # see _wait_on_loop

    def register(self, fd: int, *, write: bool = False) -> None:
        """Watch *fd* for readability (or writability with *write*)."""
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
        (self._writers if write else self._readers).add(fd)

    def unregister(self, fd: int) -> None:
        """Stop watching *fd* (do this before closing it); unknown fds are ignored."""
        if fd not in self._readers and fd not in self._writers:
            return
        self._readers.discard(fd)
        self._writers.discard(fd)
        if self._epoll is not None:
            self._epoll.unregister(fd)

    def __bool__(self) -> bool:
        return bool(self._readers or self._writers)

    def ready(self) -> list[int]:
        """The watched fds that are ready now, without waiting."""
        if self._epoll is not None:
            return [fd for fd, _ in self._epoll.poll(0)]
        readable, writable, _ = select.select(self._readers, self._writers, (), 0)
        return readable + writable

    async def wait(self, *, check_first: bool = True) -> list[int]:
        """Wait until at least one watched fd is ready; those fds. Pass
        ``check_first=False`` when ``ready()`` just came back empty.

        :raises anyio.ClosedResourceError: when :meth:`close` is called meanwhile.
        """
        fds = self.ready() if check_first else []
        while not fds:
            self._waiting = True
            try:
                if self._epoll is None:
                    self._delay = min(self._delay * 2 or 0.0005, 0.02)
                    await anyio.sleep(self._delay)
                elif (loop := _asyncio_loop()) is not None:
                    await self._wait_on_loop(loop, self._epoll.fileno())
                else:
                    await anyio.wait_readable(self._epoll.fileno())
            finally:
                self._waiting = False
            fds = self.ready()
        self._delay = 0.0
        return fds

    async def _wait_on_loop(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """``anyio.wait_readable(fd)`` for asyncio and uvloop, without anyio's
        bookkeeping: a plain loop future (a ``run()`` waits once per child, and
        this path costs about 9 µs less CPU per wait there)."""
        future = self._future = loop.create_future()
        loop.add_reader(fd, _wake, future)
        try:
            await future
        finally:
            self._future = None
            if not self._epoll_closed():
                loop.remove_reader(fd)

    def _epoll_closed(self) -> bool:
        return self._epoll is None or self._epoll.closed

    def close(self) -> None:
        """Release the epoll fd (the watched fds are not touched); a task waiting
        in :meth:`wait` gets :class:`anyio.ClosedResourceError`."""
        if self._epoll is not None and not self._epoll.closed:
            future = self._future
            if future is not None:  # a task waits on its loop's future
                future.get_loop().remove_reader(self._epoll.fileno())
                if not future.done():
                    future.set_exception(anyio.ClosedResourceError())
            elif self._waiting:  # only a waiting task needs waking (and unregistering)
                anyio.notify_closing(self._epoll.fileno())
            self._epoll.close()
        self._readers.clear()
        self._writers.clear()

"""Waiting for any of several fds from one task.

``run`` has to move data on up to four fds at once (stdin, stdout, stderr and
the child's pidfd) and ``Process.output()`` merges two pipes in arrival order.
With one task per fd that costs a task group and one loop round trip per fd per
wake-up. Instead, on Linux, the fds go into an epoll instance of their own, and
the task waits for *that* fd to become readable (an epoll fd is itself pollable,
so ``anyio.wait_readable`` works on it on asyncio, uvloop and trio alike)::

    stdout ─┐
    stderr ─┼─> epoll fd ──anyio.wait_readable──> one task: ready() -> [fd, ...]
    pidfd  ─┤
    stdin  ─┘  (writable)

Elsewhere :class:`Poller` falls back to ``select`` with a short back-off sleep.
"""

from __future__ import annotations

import select

import anyio

__all__ = ["Poller"]

_HAVE_EPOLL = hasattr(select, "epoll")


class Poller:
    """A set of fds, each watched for reading or for writing.

    ``ready()`` lists the fds that are ready now (readable, writable, at EOF or in
    error: in every case the owner should act on it); ``await wait()`` waits
    until that list is not empty. One task at a time may wait.
    """

    __slots__ = ("_delay", "_epoll", "_readers", "_waiting", "_writers")

    def __init__(self, *, use_epoll: bool = _HAVE_EPOLL) -> None:
        self._epoll = select.epoll() if use_epoll else None
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._delay = 0.0
        self._waiting = False

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
        ``check_first=False`` when ``ready()`` just came back empty."""
        fds = self.ready() if check_first else []
        while not fds:
            self._waiting = True
            try:
                if self._epoll is not None:
                    await anyio.wait_readable(self._epoll.fileno())
                else:
                    self._delay = min(self._delay * 2 or 0.0005, 0.02)
                    await anyio.sleep(self._delay)
            finally:
                self._waiting = False
            fds = self.ready()
        self._delay = 0.0
        return fds

    def close(self) -> None:
        """Release the epoll fd (the watched fds are not touched)."""
        if self._epoll is not None and not self._epoll.closed:
            if self._waiting:  # only a waiting task needs waking (and unregistering)
                anyio.notify_closing(self._epoll.fileno())
            self._epoll.close()
        self._readers.clear()
        self._writers.clear()

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

On trio the wait is ``anyio.wait_readable``. On asyncio and uvloop the poller's
epoll fd goes one level further down, into the loop's *hub*: one more epoll
instance per loop, which the loop watches for good (one ``add_reader`` for the
life of the loop). A wait arms the poller's fd in the hub (``EPOLLONESHOT``) and
parks on a plain loop future; the hub's reader callback wakes the futures whose
fds fired. That spares ``add_reader`` and ``remove_reader`` on every wait, the
largest single cost of a short ``run()`` on asyncio::

    poller epoll fd ─┐ (armed once per wait)
    poller epoll fd ─┼─> hub epoll fd ──add_reader (once)──> wakes each future
    poller epoll fd ─┘

The hub closes when the loop shuts down its async generators (``asyncio.run``,
``asyncio.Runner`` and anyio do): it parks one of its own there. A loop closed
without that takes its hub along when it is collected: only the loop's reader
callback holds the hub, and nothing of ours holds the loop.

Elsewhere :class:`Poller` falls back to ``select`` with a short back-off sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import sys
import weakref
from collections.abc import AsyncGenerator, Callable

import anyio

__all__ = ["FdWait", "Poller"]

_HAVE_EPOLL = hasattr(select, "epoll")


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) loop; None on another backend (trio).
    (No exception on trio, unlike ``get_running_loop``: this runs once per wait.)"""
    return asyncio.events._get_running_loop()


_ARMED = select.EPOLLIN | select.EPOLLONESHOT if _HAVE_EPOLL else 0
#: Events taken from the hub per poll (it loops while the batch comes back full).
_HUB_BATCH = 64


class _LoopHub:
    """The one epoll fd an asyncio loop watches for all pollers (see the module
    docstring). Only touched from its loop's thread."""

    __slots__ = ("__weakref__", "_guard", "_loop", "epoll", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.epoll = select.epoll()
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self._loop = weakref.ref(loop)
        loop.add_reader(self.epoll.fileno(), self._dispatch)
        # Park a generator of our own in the loop's async generators: the loop's
        # shutdown_asyncgens() closes it, and the hub with it.
        self._guard = _close_at_shutdown(self)
        with contextlib.suppress(StopIteration):
            self._guard.asend(None).send(None)

    def owned_by(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._loop() is loop and not self.epoll.closed

    def _dispatch(self) -> None:
        while True:
            events = self.epoll.poll(0, _HUB_BATCH)
            for fd, _ in events:
                future = self.waiters.pop(fd, None)
                if future is not None and not future.done():
                    future.set_result(None)
            if len(events) < _HUB_BATCH:
                return

    def arm(self, fd: int, future: asyncio.Future[None], *, known: bool) -> None:
        """Wake *future* once *fd* is readable; *known*: *fd* was armed here before
        (and not closed since)."""
        try:
            if known:
                self.epoll.modify(fd, _ARMED)
            else:
                self.epoll.register(fd, _ARMED)
        except FileExistsError:  # a copy of the file outlived its fd (fork)
            self.epoll.modify(fd, _ARMED)
        except FileNotFoundError:
            self.epoll.register(fd, _ARMED)
        self.waiters[fd] = future

    def disarm(self, fd: int, future: asyncio.Future[None]) -> None:
        if self.waiters.get(fd) is future:
            del self.waiters[fd]

    def close(self) -> None:
        if self.epoll.closed:
            return
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
        for future in self.waiters.values():
            if not future.done():
                future.set_exception(anyio.ClosedResourceError())
        self.waiters.clear()


async def _close_at_shutdown(hub: _LoopHub) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        hub.close()


#: Each loop's hub, by id(loop) (checked with owned_by: ids are reused). Held
#: weakly: the loop's own reader callback holds its hub for as long as the loop
#: watches it, so the hub never outlives its loop, nor keeps it alive.
_hubs: weakref.WeakValueDictionary[int, _LoopHub] = weakref.WeakValueDictionary()


def _no_hub() -> _LoopHub | None:
    return None


#: The hub looked up last (weakly, as in _hubs).
_last_hub: Callable[[], _LoopHub | None] = _no_hub


def _hub_for(loop: asyncio.AbstractEventLoop) -> _LoopHub:
    global _last_hub
    hub = _last_hub()
    if hub is not None and hub.owned_by(loop):
        return hub
    hub = _hubs.get(id(loop))
    if hub is None or not hub.owned_by(loop):
        hub = _hubs[id(loop)] = _LoopHub(loop)
    _last_hub = weakref.ref(hub)
    return hub


class FdWait:
    """Waits, as often as asked, for one fd to become readable: through the
    loop's hub on asyncio and uvloop, ``anyio.wait_readable`` on trio. One task
    at a time may wait. Call :meth:`close` before closing the fd."""

    __slots__ = ("_future", "_hub", "_waiting", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._future: asyncio.Future[None] | None = None  # the loop's, while waiting
        self._hub: _LoopHub | None = None  # the hub *fd* is armed in, if any
        self._waiting = False

    async def wait(self) -> None:
        """Return once the fd is readable (or at once if it is now).

        :raises anyio.ClosedResourceError: when :meth:`close` is called meanwhile.
        """
        loop = _asyncio_loop()
        if loop is None:
            self._waiting = True
            try:
                if (trio := sys.modules.get("trio")) is not None:
                    try:  # what anyio.wait_readable calls, one layer less
                        await trio.lowlevel.wait_readable(self.fd)
                    except trio.ClosedResourceError as exc:
                        raise anyio.ClosedResourceError from exc
                else:  # pragma: no cover - another anyio backend
                    await anyio.wait_readable(self.fd)
            finally:
                self._waiting = False
            return
        # A plain loop future, without anyio's bookkeeping and without
        # add_reader/remove_reader (a run() waits once per child).
        hub = _hub_for(loop)
        future = self._future = loop.create_future()
        hub.arm(self.fd, future, known=self._hub is hub)
        self._hub = hub
        try:
            await future
        finally:
            self._future = None
            hub.disarm(self.fd, future)

    def close(self) -> None:
        """Wake a task waiting here with :class:`anyio.ClosedResourceError` (the
        fd itself is not touched)."""
        future = self._future
        if future is not None:  # a task waits on its loop's future
            if self._hub is not None:
                self._hub.disarm(self.fd, future)
            if not future.done():
                future.set_exception(anyio.ClosedResourceError())
        elif self._waiting:  # only a waiting task needs waking (and unregistering)
            anyio.notify_closing(self.fd)


class Poller:
    """A set of fds, each watched for reading or for writing.

    ``ready()`` lists the fds that are ready now (readable, writable, at EOF or in
    error: in every case the owner should act on it); ``await wait()`` waits
    until that list is not empty. One task at a time may wait.
    """

    __slots__ = ("_delay", "_epoll", "_readers", "_waiter", "_writers")

    def __init__(self, *, use_epoll: bool = _HAVE_EPOLL) -> None:
        self._epoll = select.epoll() if use_epoll else None
        self._waiter = FdWait(self._epoll.fileno()) if self._epoll is not None else None
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._delay = 0.0

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
            count = len(self._readers) + len(self._writers)
            return [fd for fd, _ in self._epoll.poll(0, count or 1)]
        readable, writable, _ = select.select(self._readers, self._writers, (), 0)
        return readable + writable

    async def wait(self, *, check_first: bool = True) -> list[int]:
        """Wait until at least one watched fd is ready; those fds. Pass
        ``check_first=False`` when ``ready()`` just came back empty.

        :raises anyio.ClosedResourceError: when :meth:`close` is called meanwhile.
        """
        fds = self.ready() if check_first else []
        while not fds:
            if self._waiter is not None:
                await self._waiter.wait()
            else:
                self._delay = min(self._delay * 2 or 0.0005, 0.02)
                await anyio.sleep(self._delay)
            fds = self.ready()
        self._delay = 0.0
        return fds

    def close(self) -> None:
        """Release the epoll fd (the watched fds are not touched); a task waiting
        in :meth:`wait` gets :class:`anyio.ClosedResourceError`."""
        if self._epoll is not None and not self._epoll.closed:
            assert self._waiter is not None
            self._waiter.close()
            self._epoll.close()
        self._readers.clear()
        self._writers.clear()

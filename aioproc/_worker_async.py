"""The worker's asynchronous mode: imported only when an async function needs it.

The synchronous loop of :mod:`aioproc._worker_main` hands over here the first
time it meets a coroutine function, an async generator, an awaitable result or
an async ``main``. From then on one ``anyio.run`` on the caller's backend serves
every call::

    in_fd ─wait_readable─► reader task ── CALL ──► server.queue ──► runner (one call
                              │                                      at a time, each
                              ├── CANCEL (running) ─► cancel scope   in its own
                              ├── CANCEL (queued)  ─► CANCELLED      CancelScope)
                              └── CREDIT ─► server.credits ─► stream runner

Synchronous functions keep running inline (they block the loop; nothing else is
waiting). Writes stay blocking: the parent always drains its end.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from ._errors import EndOfChannel, ProtocolError
from ._values import check_sendable
from ._worker_main import EXIT_PROTOCOL_ERROR, main_ended
from ._worker_server import Server, is_async_callable
from .protocol import CallFlag, Kind

__all__ = ["AsyncChannel", "run_async", "run_async_main", "run_awaitable"]


def _run(config: dict[str, Any], fn: Any, *args: Any) -> Any:
    backend = config.get("backend") or "asyncio"
    options = dict(config.get("backend_options") or {})
    if options.get("use_uvloop"):
        try:
            import uvloop  # noqa: F401
        except ImportError:  # pragma: no cover - the caller had it, we should too
            options.pop("use_uvloop")
    return anyio.run(fn, *args, backend=backend, backend_options=options)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_awaitable(config: dict[str, Any], awaitable: Any) -> Any:
    """Run one awaitable to completion on the configured backend (async initializer)."""
    return _run(config, _await, awaitable)


class _AsyncServer:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn = server.conn
        self.scope: anyio.CancelScope | None = None
        self._wake = anyio.Event()

    def _notify(self) -> None:
        self._wake.set()

    async def _wait(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    async def reader(self) -> None:
        conn = self.conn
        server = self.server
        fd = conn.in_fd
        os.set_blocking(fd, False)
        while True:
            await anyio.wait_readable(fd)
            try:
                batch = conn.read_ready()
            except ProtocolError as exc:
                print(f"aioproc worker {os.getpid()}: {exc}; exiting", file=sys.stderr)
                server.exit_code = EXIT_PROTOCOL_ERROR
                if self.scope is not None:
                    self.scope.cancel()
                self._notify()
                return
            if server.apply_controls(batch, server.current_id) and self.scope is not None:
                self.scope.cancel()
            if conn.eof:
                # The parent is gone: stop what runs, then leave.
                server.stopping = True
                if self.scope is not None:
                    self.scope.cancel()
                self._notify()
                return
            self._notify()

    async def serve(self, first: list[Any] | None, fn: Any, awaitable: Any) -> int:
        server = self.server
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.reader)
            if first is not None:
                await self.run_call(first, fn, awaitable)
            while server.exit_code is None:
                if server.stopping:
                    break
                if not server.queue:
                    await self._wait()
                    continue
                await self.run_call(server.queue.popleft())
            tg.cancel_scope.cancel()
        return server.exit_code or 0

    async def run_call(self, message: list[Any], fn: Any = None, awaitable: Any = None) -> None:
        server = self.server
        _, call_id, ref, args, kwargs, flags = message
        if fn is None:
            known = server.known_function(call_id, ref)
            if known is None:
                return
            fn = known[0]
        if flags & CallFlag.STREAM:
            await self.run_stream(call_id, fn, args, kwargs, flags)
            return
        outcome: tuple[str, Any] | None = None
        server.current_id = call_id
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if awaitable is None and flags & CallFlag.REPORT_STARTED:
                    server.conn.send([Kind.STARTED, call_id, is_async_callable(fn)])
                outcome = await self._invoke(fn, args, kwargs, awaitable)
        finally:
            self.scope = None
            server.current_id = None
        if outcome is None:
            server.conn.send([Kind.CANCELLED, call_id])
            return
        what, value = outcome
        if what == "ok":
            server.send_value(Kind.RESULT, call_id, value, "result")
        elif what == "exit":
            server.system_exit(call_id, value)
        else:
            server.send_error(call_id, value)

    @staticmethod
    async def _invoke(
        fn: Any, args: list[Any], kwargs: dict[str, Any], awaitable: Any
    ) -> tuple[str, Any]:
        try:
            if awaitable is None:
                result = fn(*args, **kwargs)
                if hasattr(result, "__await__"):
                    result = await result
            else:
                result = await awaitable
        except anyio.get_cancelled_exc_class():
            raise
        except SystemExit as exc:
            return ("exit", exc)
        except BaseException as exc:
            return ("error", exc)
        return ("ok", result)

    async def run_stream(
        self, call_id: int, fn: Any, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> None:
        server = self.server
        conn = self.conn
        credits = server.credits
        if flags & CallFlag.REPORT_STARTED:
            conn.send([Kind.STARTED, call_id, is_async_callable(fn)])
        try:
            gen = fn(*args, **kwargs)
            is_async = hasattr(gen, "__anext__")
            iterator = gen if is_async else iter(gen)
        except BaseException as exc:
            server.report_failure(call_id, exc)
            return
        finished = False
        server.current_id = call_id
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                while True:
                    while credits.get(call_id, 0) <= 0:
                        await self._wait()
                    try:
                        if is_async:
                            item = await iterator.__anext__()
                        else:
                            item = next(iterator)
                            await checkpoint()  # let the reader see CANCEL/CREDIT
                    except (StopAsyncIteration, StopIteration):
                        conn.send([Kind.END, call_id])
                        finished = True
                        break
                    except anyio.get_cancelled_exc_class():
                        raise
                    except BaseException as exc:
                        server.report_failure(call_id, exc)
                        finished = True
                        break
                    if not server.send_value(Kind.ITEM, call_id, item, "item"):
                        finished = True
                        break
                    credits[call_id] -= 1
        finally:
            self.scope = None
            server.current_id = None
            credits.pop(call_id, None)
            with anyio.CancelScope(shield=True):
                await _aclose(iterator, is_async)
        if not finished:
            conn.send([Kind.CANCELLED, call_id])


async def _aclose(iterator: Any, is_async: bool) -> None:
    try:
        if is_async:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        else:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
    except BaseException:
        pass


def run_async(server: Server, first: list[Any] | None, fn: Any, awaitable: Any) -> int:
    """Serve the rest of the worker's life on the caller's async backend."""

    async def serve() -> int:
        return await _AsyncServer(server).serve(first, fn, awaitable)

    try:
        code: int = _run(server.config, serve)
    except BaseException as exc:
        if _only_broken_pipe(exc):
            return 0  # the parent went away
        raise
    return code


def _only_broken_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipe(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


class AsyncChannel:
    """The channel an ``async def main(channel)`` gets in a worker.

    ``await send(message)`` writes a user message to the parent; ``await
    receive()`` waits for the next one.
    """

    __slots__ = ("_closed", "_inbox", "_server")

    def __init__(self, server: Server) -> None:
        self._server = server
        self._inbox: deque[Any] = deque()
        self._closed = False
        os.set_blocking(server.conn.in_fd, False)

    async def send(self, message: object) -> None:
        """Send *message* to the parent.

        :raises TypeError: when *message* is not sendable (nothing is sent).
        :raises EndOfChannel: when the parent has gone away.
        """
        check_sendable(message, "message")
        try:
            self._server.conn.send([Kind.MESSAGE, message])
        except BrokenPipeError:
            raise EndOfChannel("the parent closed the channel") from None
        await checkpoint()

    async def receive(self) -> Any:
        """The next message from the parent.

        :raises EndOfChannel: when the parent stopped the worker or went away.
        """
        conn = self._server.conn
        while not self._inbox:
            if self._closed:
                raise EndOfChannel("the parent closed the channel")
            await anyio.wait_readable(conn.in_fd)
            for message in conn.read_ready():
                if message[0] == Kind.MESSAGE:
                    self._inbox.append(message[1])
                elif message[0] == Kind.STOP:
                    self._closed = True
            if conn.eof:
                self._closed = True
        return self._inbox.popleft()

    def __aiter__(self) -> AsyncChannel:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except EndOfChannel:
            raise StopAsyncIteration from None


def run_async_main(server: Server, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> int:
    """Run ``async main(channel)`` as call 0 on the caller's backend."""

    async def run_main() -> int:
        channel = AsyncChannel(server)
        try:
            await fn(channel, *args, **kwargs)
        except BaseException as exc:
            return main_ended(server, exc)
        return main_ended(server, None)

    code: int = _run(server.config, run_main)
    return code

"""Importable worker targets for the tests (never defined inside a test body)."""

from __future__ import annotations

import enum
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

#: Set by :func:`init_marker` in a worker's initializer.
INITIALIZED: list[Any] = []


class Color(enum.IntEnum):
    RED = 1


class Custom(Exception):
    """An importable exception constructible from its args."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class NeedsKeyword(Exception):
    """Importable but not constructible from its args alone."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"because {reason}")


class Local:
    def method(self) -> int:
        return 1

    @classmethod
    def create(cls, value: int) -> int:
        return value * 10


class Adder:
    def __call__(self, a: int) -> int:
        return a + 1


adder = Adder()


def noop() -> None:
    return None


def exit_when(code: int | None) -> None:
    """Return, or raise ``SystemExit(code)`` (the same function, called twice)."""
    if code is not None:
        raise SystemExit(code)


async def _later(value: str) -> str:
    return value


def maybe_awaitable(later: bool) -> object:
    """A sync function that returns "now", or an awaitable of "later"."""
    return _later("later") if later else "now"


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


def type_name(value: Any) -> str:
    return type(value).__name__


def echo_bytes_len(value: bytes) -> int:
    return len(value)


def join(*parts: str, sep: str = "-") -> str:
    return sep.join(parts)


async def async_add(a: int, b: int) -> int:
    await anyio.sleep(0)
    return a + b


async def async_backend() -> str:
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio" if "trio" in sys.modules else "unknown"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def fail(message: str) -> None:
    raise ValueError(message)


def fail_custom(code: int) -> None:
    raise Custom(code, "custom failure")


def fail_keyword() -> None:
    raise NeedsKeyword(reason="keyword only")


def fail_system_exit(code: int) -> None:
    raise SystemExit(code)


def fail_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def return_unsendable() -> object:
    return {1, 2, 3}


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


async def async_sleep(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "slept"


async def async_sleep_then_mark(seconds: float, path: str) -> None:
    try:
        await anyio.sleep(seconds)
    finally:
        with open(path, "w") as fh:
            fh.write("cancelled-cleanly")


def getpid() -> int:
    return os.getpid()


def getppid() -> int:
    return os.getppid()


def getcwd() -> str:
    return os.getcwd()


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def sys_path() -> list[str]:
    return list(sys.path)


def sigint_handler() -> str:
    return str(signal.getsignal(signal.SIGINT))


def crash(code: int) -> None:
    os._exit(code)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def write_garbage_to_parent() -> None:
    """Writes a frame header announcing 4 GiB on the protocol pipe (fd 4 in a spawned worker)."""
    os.write(4, b"\xff\xff\xff\xff")
    time.sleep(30)


def print_lots(lines: int) -> int:
    for i in range(lines):
        print(f"line {i} " + "x" * 100)
    sys.stdout.flush()
    return lines


def count(n: int) -> Iterator[int]:
    yield from range(n)


async def async_count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.sleep(0)
        yield i


def count_forever(path: str) -> Iterator[int]:
    """Counts until closed; writes how far it got to *path* when closed."""
    i = 0
    try:
        while True:
            with open(path, "w") as fh:
                fh.write(str(i))
            yield i
            i += 1
    finally:
        with open(path + ".closed", "w") as fh:
            fh.write(str(i))


async def async_count_forever(path: str) -> AsyncIterator[int]:
    i = 0
    try:
        while True:
            with open(path, "w") as fh:
                fh.write(str(i))
            yield i
            i += 1
            await anyio.sleep(0)
    finally:
        with open(path + ".closed", "w") as fh:
            fh.write(str(i))


def fail_after_items(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"failed after {n}")


def init_marker(*values: Any) -> None:
    INITIALIZED.extend(values)


def initialized() -> list[Any]:
    return list(INITIALIZED)


def init_fails() -> None:
    raise RuntimeError("initializer refused")


def init_hangs() -> None:
    time.sleep(30)


def preloaded() -> bool:
    return "tests.preload_marker" in sys.modules


def start_thread() -> None:
    """Leaves a thread running (as OpenBLAS would at import)."""
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()


def echo_main(channel: Any) -> None:
    """A sync main: echoes messages until told 'quit' or the channel ends."""
    for message in channel:
        if message == "quit":
            return
        channel.send(["echo", message])


async def async_echo_main(channel: Any) -> None:
    async for message in channel:
        if message == "quit":
            return
        await channel.send(["echo", message])


def greet_main(channel: Any, greeting: str) -> None:
    channel.send(greeting)


def failing_main(channel: Any) -> None:
    channel.send("before")
    raise Custom(7, "main failed")


bound_add = functools.partial(add, 100)


def sleep_then_mark(seconds: float, path: str) -> None:
    """Sleeps, then writes *path*: the file exists only if it ran to the end."""
    time.sleep(seconds)
    with open(path, "w") as fh:
        fh.write("ran")


def mark(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("ran")


def stuck_after_first_item(seconds: float, path: str) -> Iterator[int]:
    """Yields 0, then blocks inside next() (where it cannot read CANCEL), having
    written *path* to say so."""
    yield 0
    with open(path, "w") as fh:
        fh.write("stuck")
    time.sleep(seconds)
    yield 1


def deaf_main(channel: Any) -> None:
    """A main that never reads its channel."""
    time.sleep(60)

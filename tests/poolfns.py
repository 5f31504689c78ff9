"""Worker target functions for the pool tests (importable by the workers).

Kept light on purpose (anyio is imported inside the async functions only): a
fresh worker imports this module on its first call.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

#: Keeps allocations alive inside a worker (memory recycling tests).
_HOARD: list[bytes] = []


def noop() -> None:
    return None


def echo(value: object) -> object:
    return value


def add(a: int, b: int) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def getpid() -> int:
    return os.getpid()


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_sync(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def sleep_async(seconds: float) -> float:
    import anyio

    await anyio.sleep(seconds)
    return seconds


def spin(seconds: float) -> int:
    """Burn CPU for *seconds* (a sync function that never yields)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def fail(message: str) -> None:
    raise ValueError(message)


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleepy_square(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def crash_exit(code: int) -> None:
    os._exit(code)


def crash_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_segfault() -> None:
    ctypes.string_at(0)


def crash_once(marker: str) -> str:
    """Crash the first time (the marker file does not exist yet), succeed after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(3)
    return "survived"


def hoard(nbytes: int) -> int:
    """Allocate *nbytes* and keep them: the worker's RSS grows."""
    block = bytearray(nbytes)
    block[::4096] = b"x" * len(block[::4096])
    _HOARD.append(bytes(block))
    return os.getpid()


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


async def acount_up(n: int, delay: float = 0.0) -> AsyncIterator[int]:
    import anyio

    for i in range(n):
        if delay:
            await anyio.sleep(delay)
        yield i


def fail_initializer() -> None:
    raise RuntimeError("initializer refuses")


def remember_initargs(value: str) -> None:
    os.environ["POOLFNS_INIT"] = value


def read_initargs() -> str | None:
    return os.environ.get("POOLFNS_INIT")


def echo_after(pair: tuple[float, object]) -> object:
    """``(delay, value)``: sleep *delay*, return *value* (map passes one item)."""
    delay, value = pair
    time.sleep(delay)
    return value


def where_am_i(name: str) -> tuple[str, str | None]:
    """``(cwd, os.environ.get(name))`` of the worker."""
    return os.getcwd(), os.environ.get(name)

"""Run as a script: its functions live in ``__main__``; workers run it as ``__mp_main__``."""

from __future__ import annotations

import sys

import anyio

from aioproc import Worker


def square(x: int) -> int:
    return x * x


def module_name() -> str:
    return __name__


async def main(start_method: str) -> None:
    async with Worker(start_method=start_method) as worker:
        print(await worker.call(square, 7))
        print(await worker.call(module_name))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])

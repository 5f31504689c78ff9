"""Starts a spawn worker and a forkserver worker, prints their pids, then waits to be killed."""

from __future__ import annotations

import sys
import time

import anyio

from aioproc import Worker


async def main() -> None:
    async with Worker() as spawned, Worker(start_method="forkserver") as forked:
        zygote = forked._zygote
        assert zygote is not None
        print(spawned.pid, forked.pid, zygote.pid, flush=True)
        while True:
            time.sleep(1)  # blocked, as a hung or killed caller would be


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")

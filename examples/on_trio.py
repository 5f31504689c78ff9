"""The same pool, under trio: aioproc runs on any anyio backend.

Run it: ``python examples/on_trio.py``
"""

from __future__ import annotations

import anyio
from _tasks import add, burn  # examples/ is on sys.path when run as a script

import aioproc


async def main() -> None:
    async with aioproc.Pool(min_workers=2, max_workers=2) as pool:
        print(f"add(10, 20) = {await pool.run(add, 10, 20)}")
        async with pool.map(burn, [5] * 8) as results:
            pids = {pid async for pid in results}
        print(f"8 tasks spread over workers {sorted(pids)}")
        print(f"stats: {pool.stats().tasks}")


if __name__ == "__main__":
    anyio.run(main, backend="trio")

"""A one-shot job and a periodic job with ``max_runs``, both running on a pool.

Run it: ``python examples/scheduler.py``
"""

from __future__ import annotations

import time

import anyio
from _tasks import add, burn  # examples/ is on sys.path when run as a script

import aioproc


async def main() -> None:
    t0 = time.monotonic()

    async def tick(pool: aioproc.Pool) -> int:
        """One periodic run: 20 ms of CPU in a pool worker."""
        pid = await pool.run(burn, 20)
        print(f"  +{time.monotonic() - t0:.2f}s periodic run on worker {pid}")
        return pid

    async with aioproc.Pool(min_workers=2) as pool, aioproc.Scheduler() as sched:
        # Targets are any async callable: pool.run itself, or a coroutine function.
        once = sched.call_later(0.5, pool.run, add, 10, 20)
        ticks = sched.every(0.2, tick, pool, max_runs=5)
        print(f"scheduled {once!r}\n          {ticks!r}")

        await ticks.wait()
        await once.wait()
        print(f"  one-shot ran at +0.5 s: add(10, 20) = {once.last_result}")
        print(f"periodic job: runs={ticks.runs} failures={ticks.failures} skipped={ticks.skipped}")
        print(f"scheduler: {sched.status()}")


if __name__ == "__main__":
    anyio.run(main)

"""A one-shot job and a periodic job with ``max_runs``, both running on a pool.

Run it: ``python examples/scheduler.py``
"""

from __future__ import annotations

import time

import anyio
from _tasks import add, burn  # examples/ is on sys.path when run as a script

import aioproc


async def main() -> None:
    async with aioproc.Pool(min_workers=2) as pool, aioproc.Scheduler() as sched:
        t0 = time.monotonic()
        once = sched.call_later(0.3, pool.run, add, 10, 20)
        ticks = sched.every(0.2, pool.run, burn, 20, max_runs=5)
        print(f"scheduled: {once!r}\n           {ticks!r}")

        await once.wait()
        print(f"+{time.monotonic() - t0:.2f}s one-shot ran: add(10, 20) = {once.last_result}")
        while ticks.status != "done":
            runs = ticks.runs
            await anyio.sleep(0.05)
            if ticks.runs != runs:
                print(
                    f"+{time.monotonic() - t0:.2f}s periodic run {ticks.runs}/5 "
                    f"on worker {ticks.last_result}"
                )
        await ticks.wait()
        print(f"periodic job: runs={ticks.runs} failures={ticks.failures} skipped={ticks.skipped}")


if __name__ == "__main__":
    anyio.run(main)

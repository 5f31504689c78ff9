"""A pool scaling up under a burst of CPU-bound tasks and back down when idle,
printing its figures as it goes; then a task that kills its worker, and the pool
carrying on.

Run it: ``python examples/pool.py``
"""

from __future__ import annotations

import anyio
from _tasks import burn, crash  # examples/ is on sys.path when run as a script

import aioproc


def show(label: str, pool: aioproc.Pool) -> None:
    s = pool.stats()
    print(
        f"  {label:<22} workers total={s.workers.total} busy={s.workers.busy} "
        f"idle={s.workers.idle} starting={s.workers.starting} | tasks done={s.tasks.completed} "
        f"queued={s.tasks.queued} running={s.tasks.running}"
    )


async def watch(pool: aioproc.Pool) -> None:
    """Print the pool's worker lifecycle events as they happen."""
    async for event in pool.events():
        if event.kind in ("worker_ready", "worker_recycled", "worker_crashed"):
            detail = f" {event.detail}" if event.detail else ""
            print(f"  event: {event.kind:<16} pid={event.pid}{detail}")


async def main() -> None:
    async with (
        aioproc.Pool(min_workers=1, max_workers=4, idle_timeout=1.0) as pool,
        anyio.create_task_group() as watchers,
    ):
        watchers.start_soon(watch, pool)
        show("started", pool)

        print("== a burst of 40 CPU-bound tasks: the pool scales up")
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(pool.run, burn, 50)
            for _ in range(4):
                await anyio.sleep(0.2)
                show("during the burst", pool)
        show("burst done", pool)

        print("== idle for 1.5 s (idle_timeout=1.0): the pool scales back down")
        await anyio.sleep(1.5)
        show("after idling", pool)

        print("== a task that kills its worker")
        try:
            await pool.run(crash)
        except aioproc.WorkerCrashedError as exc:
            print(f"  WorkerCrashedError: {exc} (exitcode={exc.exitcode})")
        pid = await pool.run(burn, 1)
        print(f"  the pool carries on: next task ran in worker {pid}")
        s = pool.stats()
        print(f"  crashes={s.crashes} restarts={s.restarts} success_rate={s.success_rate:.2f}")
        watchers.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)

"""The pool under fire: workers SIGKILLed at random while tasks flow; and an idle
pool that costs nothing."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import anyio
import psutil
import pytest

from aioproc import Pool, Task, WorkerCrashedError

from . import poolfns

pytestmark = pytest.mark.timeout(60)

TASKS = 2_000
#: Each "tiny" task sleeps this long, so that the run lasts long enough for ~20 kills.
TASK_SECONDS = 0.0003


async def run_under_fire(pool: Pool, retries: int) -> tuple[list[Task[float]], int]:
    """Submit TASKS tiny tasks while a killer SIGKILLs a random worker every 20 ms."""
    kills = 0
    tasks = [pool.submit(poolfns.sleep_sync, TASK_SECONDS, retries=retries) for _ in range(TASKS)]

    async def killer() -> None:
        nonlocal kills
        rng = random.Random(4)
        while True:
            await anyio.sleep(0.02)
            pids = [w.pid for w in pool.stats().per_worker if w.state in ("idle", "busy")]
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        for task in tasks:
            with contextlib.suppress(WorkerCrashedError):
                await task
        tg.cancel_scope.cancel()
    return tasks, kills


async def test_chaos_every_task_resolves_once_while_workers_are_killed() -> None:
    async with Pool(min_workers=2, max_workers=2, preload=["tests.poolfns"]) as pool:
        tasks, kills = await run_under_fire(pool, retries=0)
        stats = pool.stats()
    completed = sum(t.status == "completed" for t in tasks)
    failed = sum(t.status == "failed" for t in tasks)
    assert kills >= 5
    assert completed + failed == TASKS
    assert stats.tasks.submitted == TASKS
    assert stats.tasks.completed == completed
    assert stats.tasks.failed == failed
    assert stats.tasks.queued == stats.tasks.running == 0
    # A killed worker takes down at most the one task it had started (an idle
    # victim takes none: the parent, sharing two cores, is often the slower side).
    assert failed <= kills
    assert stats.crashes >= kills - 1  # the last kill may land as the pool closes


async def test_chaos_with_retries_every_task_succeeds() -> None:
    async with Pool(min_workers=2, max_workers=2, preload=["tests.poolfns"]) as pool:
        tasks, kills = await run_under_fire(pool, retries=3)
        stats = pool.stats()
    assert kills >= 5
    assert [t.status for t in tasks] == ["completed"] * TASKS
    assert stats.crashes >= 1
    assert stats.tasks.completed == TASKS


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# A 5-second measurement: asyncio only (the supervisor and readers are the same
# code on every backend; each backend's idle wait is the event loop's own).
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_idle_pool_of_four_workers_uses_under_two_percent_of_a_cpu() -> None:
    async with Pool(min_workers=4, max_workers=4) as pool:
        for _ in range(8):
            await pool.run(poolfns.noop)
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        assert len(procs) >= 5  # parent, zygote, four workers
        await anyio.sleep(0.2)
        before, start = cpu_seconds(procs), time.monotonic()
        await anyio.sleep(5.0)
        used, elapsed = cpu_seconds(procs) - before, time.monotonic() - start
    assert used / elapsed < 0.02

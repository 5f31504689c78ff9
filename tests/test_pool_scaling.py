"""The supervisor at work with real workers: autoscaling, idle reaping, recycling,
stats and events (SPEC §3)."""

from __future__ import annotations

import anyio
import pytest

from aioproc import Pool, PoolEvent, PoolStats, WorkerCrashedError

from . import poolfns

pytestmark = pytest.mark.timeout(30)


async def wait_for(pool: Pool, predicate: object, timeout: float = 5.0) -> PoolStats:
    """Poll ``pool.stats()`` (test side only) until ``predicate(stats)`` holds."""
    with anyio.fail_after(timeout):
        while True:
            stats = pool.stats()
            if predicate(stats):  # type: ignore[operator]
                return stats
            await anyio.sleep(0.02)


async def test_pool_scales_up_to_max_under_load_and_back_to_min_when_idle() -> None:
    async with Pool(min_workers=1, max_workers=3, idle_timeout=0.15) as pool:
        assert pool.stats().workers.total == 1
        tasks = [pool.submit(poolfns.sleep_sync, 0.2) for _ in range(6)]
        stats = await wait_for(pool, lambda s: s.workers.total == 3)
        assert stats.workers.starting + stats.workers.busy + stats.workers.idle == 3
        for task in tasks:
            await task
        stats = await wait_for(pool, lambda s: s.workers.total == 1)
        assert stats.recycled["idle"] == 2
        assert stats.restarts == 0


async def test_max_tasks_per_worker_gives_fresh_pids() -> None:
    async with Pool(min_workers=1, max_workers=1, max_tasks_per_worker=3) as pool:
        pids = [await pool.run(poolfns.getpid) for _ in range(9)]
        stats = pool.stats()
    assert [len(set(pids[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
    assert len(set(pids)) == 3
    assert stats.recycled["tasks"] >= 2


async def test_worker_over_the_memory_limit_after_a_task_is_recycled() -> None:
    async with Pool(min_workers=1, max_workers=1, max_memory_per_worker=150 * 2**20) as pool:
        first = await pool.run(poolfns.hoard, 200 * 2**20)
        second = await pool.run(poolfns.getpid)
        stats = pool.stats()
    assert first != second
    assert stats.recycled["memory"] == 1


async def test_stats_snapshot_counts_workers_tasks_and_latencies() -> None:
    async with Pool(min_workers=2, max_workers=2) as pool:
        before = pool.stats()
        for i in range(10):
            await pool.run(poolfns.square, i)
        stats = pool.stats()
    assert before.success_rate is None  # nothing finished yet
    assert before.wait_time.p50 is None
    assert stats.workers.total == 2
    assert stats.workers.idle + stats.workers.busy == 2
    assert stats.tasks.submitted == stats.tasks.completed == 10
    assert stats.success_rate == 1.0
    assert stats.utilization is not None
    assert 0.0 <= stats.utilization <= 1.0
    assert stats.wait_time.p50 is not None
    assert stats.run_time.p99 is not None
    assert stats.run_time.p50 <= stats.run_time.p99  # type: ignore[operator]
    assert stats.recycled == {"tasks": 0, "memory": 0, "idle": 0}
    assert len(stats.per_worker) == 2
    assert sum(w.tasks_done for w in stats.per_worker) == 10
    assert all(w.pid > 0 and w.rss > 0 for w in stats.per_worker)
    with pytest.raises(AttributeError):
        stats.restarts = 3  # type: ignore[misc]


async def test_pool_repr_states_state_and_counters() -> None:
    async with Pool(min_workers=1) as pool:
        await pool.run(poolfns.noop)
        text = repr(pool)
    assert "open" in text
    assert "completed=1" in text


async def test_events_tell_worker_and_task_lifecycles() -> None:
    pool = Pool(min_workers=1, max_workers=1, max_tasks_per_worker=1)
    events = pool.events()
    async with pool:
        await pool.run(poolfns.noop)
        await wait_for(pool, lambda s: s.restarts == 1)
    got: list[PoolEvent] = [e async for e in events]
    kinds = [e.kind for e in got]
    for kind in ("worker_started", "worker_ready", "task_queued", "task_started", "task_done"):
        assert kind in kinds
    recycled = [e for e in got if e.kind == "worker_recycled"]
    assert recycled[0].detail["reason"] == "tasks"
    assert recycled[0].pid is not None
    done = next(e for e in got if e.kind == "task_done")
    assert done.task_id is not None
    assert done.time > 1e9  # epoch seconds


async def test_crash_event_carries_exit_code_and_signal() -> None:
    async with Pool(min_workers=1, max_workers=1) as pool:
        events = pool.events()
        task = pool.submit(poolfns.crash_sigkill)
        with pytest.raises(WorkerCrashedError):
            await task
        await wait_for(pool, lambda s: s.restarts == 1)
    crashed = [e async for e in events if e.kind == "worker_crashed"]
    assert len(crashed) == 1
    assert crashed[0].detail["exitcode"] == -9
    assert crashed[0].detail["signal"] == 9
    assert crashed[0].detail["reason"] == "out of memory suspected"


async def test_slow_event_reader_loses_the_oldest_and_counts_them() -> None:
    async with Pool(min_workers=1, max_workers=1) as pool:
        events = pool.events()
        async with pool.map(poolfns.square, range(600)) as results:
            async for _ in results:
                pass
    got = [e async for e in events]
    assert len(got) == 1024
    assert events.dropped == 3 * 600 - 1024

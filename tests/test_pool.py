"""Pool basics (SPEC §3): run, submit, map, stream, closing, queue limits, typing."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioproc
from aioproc import Pool, PoolClosed, QueueFull, Task, TaskCancelledError

from . import poolfns

pytestmark = pytest.mark.timeout(30)


async def consume_map(pool: Pool, fn: Any, items: Any, **options: Any) -> list[Any]:
    """Every result of ``pool.map(fn, items, **options)``."""
    async with pool.map(fn, items, **options) as results:
        return [r async for r in results]


def small_pool(**options: object) -> Pool:
    options.setdefault("min_workers", 1)
    options.setdefault("max_workers", 2)
    return Pool(**options)  # type: ignore[arg-type]


# -- construction ---------------------------------------------------------------------


def test_max_workers_defaults_to_the_cpus_this_process_may_use() -> None:
    pool = Pool()
    assert f"/{len(os.sched_getaffinity(0))}" in repr(pool)


def test_invalid_options_raise_value_error() -> None:
    with pytest.raises(ValueError):
        Pool(min_workers=3, max_workers=2)
    with pytest.raises(ValueError):
        Pool(start_method="fork")
    with pytest.raises(ValueError):
        Pool(idle_timeout=0)


def test_a_lambda_initializer_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="lambda"):
        Pool(initializer=lambda: None)


def test_public_names_are_exported() -> None:
    for name in ("Pool", "Task", "PoolStats", "PoolEvent"):
        assert name in aioproc.__all__
        assert hasattr(aioproc, name)


# -- run ------------------------------------------------------------------------------


async def test_run_returns_the_result_of_a_sync_function() -> None:
    async with small_pool() as pool:
        assert await pool.run(poolfns.add, 2, 3) == 5


async def test_run_returns_the_result_of_an_async_function() -> None:
    async with small_pool() as pool:
        assert await pool.run(poolfns.sleep_async, 0.001) == 0.001


async def test_calling_convention_of_workers_holds_for_pool_tasks() -> None:
    async with small_pool() as pool:
        assert await pool.run("tests.poolfns:add", 1, 1) == 2  # a qualname string
        assert await pool.run(functools.partial(poolfns.add, b=10), 1) == 11  # keywords
        assert await pool.run(poolfns.echo, (1, [2, (3,)])) == (1, [2, (3,)])  # tuples


async def test_exception_of_the_function_comes_back_with_its_type() -> None:
    async with small_pool() as pool:
        with pytest.raises(ValueError, match="boom") as info:
            await pool.run(poolfns.fail, "boom")
    assert "Traceback" in str(info.value.__cause__)


async def test_unsendable_argument_raises_type_error_before_sending() -> None:
    async with small_pool() as pool:
        with pytest.raises(TypeError, match="object"):
            await pool.run(poolfns.echo, object())
        with pytest.raises(TypeError, match="lambda"):
            pool.submit(lambda: None)
        assert pool.stats().tasks.submitted == 0


async def test_tasks_spread_over_several_workers() -> None:
    pids: set[int] = set()

    async def one(pool: Pool) -> None:
        pids.add(await pool.run(poolfns.pid_after, 0.05))

    async with small_pool(min_workers=2) as pool, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one, pool)
    assert len(pids) == 2


# -- submit / Task --------------------------------------------------------------------


async def test_submit_returns_an_awaitable_task_with_id_and_status() -> None:
    async with small_pool() as pool:
        task = pool.submit(poolfns.square, 7)
        assert isinstance(task, Task)
        assert isinstance(task.id, int)
        assert task.status in ("queued", "running")
        assert await task == 49
        assert task.status == "completed"
        assert await task == 49  # awaiting again gives the same result


async def test_cancel_of_a_queued_task_means_it_never_starts() -> None:
    async with small_pool(max_workers=1) as pool:
        blocker = pool.submit(poolfns.sleep_sync, 0.1)
        queued = pool.submit(poolfns.square, 3)
        assert queued.cancel()
        with pytest.raises(TaskCancelledError):
            await queued
        assert await blocker == 0.1
        stats = pool.stats()
    assert stats.tasks.cancelled == 1
    assert stats.tasks.completed == 1


async def test_cancel_of_a_finished_task_returns_false() -> None:
    async with small_pool() as pool:
        task = pool.submit(poolfns.square, 2)
        await task
        assert not task.cancel()
        assert await task == 4


async def test_task_finished_before_close_still_returns_its_result() -> None:
    async with small_pool() as pool:
        task = pool.submit(poolfns.square, 5)
    assert task.status == "completed"
    assert await task == 25


# -- map ------------------------------------------------------------------------------


async def test_map_yields_results_in_input_order() -> None:
    async with small_pool() as pool, pool.map(poolfns.square, range(20)) as results:
        assert [r async for r in results] == [x * x for x in range(20)]


async def test_unordered_map_yields_every_result() -> None:
    async with small_pool() as pool:
        got = await consume_map(pool, poolfns.square, range(20), ordered=False)
    assert sorted(got) == [x * x for x in range(20)]


async def test_unordered_map_yields_fast_items_first() -> None:
    items = [(0.15, 0), (0.0, 1)]
    async with small_pool(min_workers=2) as pool:
        got = await consume_map(pool, poolfns.echo_after, items, ordered=False)
    assert got == [1, 0]


async def test_map_over_an_async_iterable() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    async with small_pool() as pool, pool.map(poolfns.square, numbers()) as results:
        assert [r async for r in results] == [0, 1, 4, 9, 16]


async def test_map_takes_an_endless_iterable_lazily() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    async with small_pool(max_workers=2) as pool:
        async with pool.map(poolfns.square, endless()) as results:
            got = []
            async for r in results:
                got.append(r)
                if len(got) == 10:
                    break
            assert pool.stats().tasks.submitted <= 10 + 2 * 2 + 1
        await anyio.sleep(0)
        assert pool.stats().tasks.queued == 0


async def test_map_first_failing_item_raises_and_cancels_the_rest() -> None:
    async with small_pool() as pool:
        with pytest.raises(ValueError, match="bad item 3"):
            await consume_map(pool, functools.partial(poolfns.fail_if, bad=3), range(100))
        stats = pool.stats()
    assert stats.tasks.submitted < 100
    assert stats.tasks.queued == 0


async def test_leaving_map_early_cancels_outstanding_items() -> None:
    async with small_pool() as pool:
        async with pool.map(functools.partial(poolfns.sleepy_square, delay=0.05), range(50)) as r:
            async for _ in r:
                break
        stats = pool.stats()
        assert stats.tasks.queued == 0
        assert stats.tasks.cancelled >= 1


async def test_map_applies_timeout_per_item() -> None:
    async with small_pool() as pool:
        with pytest.raises(aioproc.TaskTimeoutError):
            await consume_map(pool, poolfns.sleep_sync, [0.0, 5.0], timeout=0.1)


# -- stream ---------------------------------------------------------------------------


async def test_stream_yields_what_a_sync_generator_yields() -> None:
    async with small_pool() as pool, pool.stream(poolfns.count_up, 40) as items:
        assert [i async for i in items] == list(range(40))


async def test_stream_yields_what_an_async_generator_yields() -> None:
    async with small_pool() as pool, pool.stream(poolfns.acount_up, 5) as items:
        assert [i async for i in items] == list(range(5))


async def test_leaving_a_stream_early_keeps_the_worker() -> None:
    async with small_pool(max_workers=1) as pool:
        pid = await pool.run(poolfns.getpid)
        async with pool.stream(poolfns.count_up, 10_000) as items:
            async for i in items:
                if i == 3:
                    break
        assert await pool.run(poolfns.getpid) == pid
        stats = pool.stats()
    assert stats.tasks.cancelled == 1
    assert stats.crashes == 0


# -- closing --------------------------------------------------------------------------


async def test_clean_exit_drains_queued_and_running_tasks() -> None:
    async with small_pool(max_workers=1) as pool:
        tasks = [pool.submit(poolfns.sleepy_square, i, 0.02) for i in range(5)]
    assert [t.status for t in tasks] == ["completed"] * 5
    assert [await t for t in tasks] == [0, 1, 4, 9, 16]


async def submit_then_raise(tasks: list[Task[int]]) -> None:
    async with small_pool(max_workers=1) as pool:
        tasks.extend(pool.submit(poolfns.sleepy_square, i, 0.1) for i in range(3))
        await anyio.sleep(0.05)
        raise KeyError("leave")


async def test_exit_on_an_exception_cancels_pending_tasks() -> None:
    tasks: list[Task[int]] = []
    with pytest.raises(KeyError):
        await submit_then_raise(tasks)
    assert {t.status for t in tasks} == {"cancelled"}


async def test_aclose_with_cancel_pending_cancels_pending_tasks() -> None:
    async with small_pool(max_workers=1) as pool:
        task = pool.submit(poolfns.sleep_sync, 5.0)
        await anyio.sleep(0.05)
        with anyio.fail_after(5):
            await pool.aclose(cancel_pending=True)
        with pytest.raises(TaskCancelledError):
            await task


async def test_shutdown_timeout_kills_busy_workers_and_their_tasks_crash() -> None:
    async with small_pool(max_workers=1, shutdown_timeout=0.2) as pool:
        task = pool.submit(poolfns.sleep_sync, 30.0)
        await anyio.sleep(0.05)
    assert task.status == "failed"
    with pytest.raises(aioproc.WorkerCrashedError) as info:
        await task
    assert info.value.task_id == task.id


async def test_run_submit_and_map_after_close_raise_pool_closed() -> None:
    async with small_pool() as pool:
        pass
    with pytest.raises(PoolClosed):
        await pool.run(poolfns.noop)
    with pytest.raises(PoolClosed):
        pool.submit(poolfns.noop)
    with pytest.raises(PoolClosed):
        pool.map(poolfns.square, [1])
    assert "closed" in repr(pool)


async def test_cancelled_caller_of_async_with_pool_leaves_no_worker() -> None:
    with anyio.move_on_after(0.3):
        async with small_pool(min_workers=2) as pool:
            await pool.run(poolfns.sleep_sync, 10.0)
    assert pool.state.value == "closed"


# -- max_queue --------------------------------------------------------------------------


async def test_submit_on_a_full_queue_raises_queue_full() -> None:
    async with small_pool(max_workers=1, max_queue=2) as pool:
        first = pool.submit(poolfns.sleep_sync, 0.15)
        await anyio.sleep(0.05)  # running: no longer queued
        rest = [pool.submit(poolfns.noop) for _ in range(2)]
        with pytest.raises(QueueFull):
            pool.submit(poolfns.noop)
        assert await first == 0.15
        for task in rest:
            await task


async def test_run_waits_for_room_in_a_full_queue() -> None:
    async with small_pool(max_workers=1, max_queue=1) as pool:
        results = []

        async def one(i: int) -> None:
            results.append(await pool.run(poolfns.sleepy_square, i, 0.01))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        assert sorted(results) == [i * i for i in range(6)]
        assert pool.stats().tasks.submitted == 6


# -- options ----------------------------------------------------------------------------


async def test_env_and_cwd_reach_the_workers(tmp_path: Path) -> None:
    env = {**os.environ, "POOL_TEST_VAR": "yes"}
    async with small_pool(env=env, cwd=tmp_path) as pool:
        cwd, value = await pool.run(poolfns.where_am_i, "POOL_TEST_VAR")
    assert cwd == str(tmp_path)
    assert value == "yes"


async def test_spawn_start_method_runs_tasks_too() -> None:
    async with small_pool(start_method="spawn", max_workers=1) as pool:
        assert await pool.run(poolfns.add, 20, 22) == 42


async def test_call_over_max_frame_fails_that_task_only() -> None:
    async with small_pool(max_frame=4096) as pool:
        with pytest.raises(aioproc.ProtocolError):
            await pool.run(poolfns.echo, b"x" * 10_000)
        assert await pool.run(poolfns.echo, b"small") == b"small"


async def raise_from_the_block() -> None:
    async with small_pool() as pool:
        await pool.run(poolfns.fail, "from the worker")


async def test_an_error_leaving_the_block_keeps_its_type_and_remote_traceback() -> None:
    with pytest.raises(ValueError, match="from the worker") as info:
        await raise_from_the_block()
    assert "Traceback" in str(info.value.__cause__)

"""The pool's parts that need no worker: Task, events, the stats recorders."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioproc import TaskCancelledError
from aioproc._events import EventHub, PoolEvent
from aioproc._poolstats import LatencyWindow, Percentiles, UtilizationMeter
from aioproc._task import Task, TaskStatus, cancelled_error, current_parker


def make_task(task_id: int = 1) -> Task[Any]:
    def cancel(task: Task[Any]) -> bool:
        return task._resolve(TaskStatus.CANCELLED, cancelled_error(task))

    return Task(
        task_id, "m:f", (), timeout=None, retries=0, parker=current_parker(), canceller=cancel
    )


# -- Task ---------------------------------------------------------------------------


async def test_awaiting_a_resolved_task_returns_its_result() -> None:
    task = make_task()
    task._resolve(TaskStatus.COMPLETED, 42)
    assert task.done()
    assert await task == 42


async def test_waiter_wakes_when_the_task_resolves() -> None:
    task = make_task()
    got: list[int] = []

    async def wait() -> None:
        got.append(await task)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(wait)
        await anyio.sleep(0.01)
        assert got == []
        task._resolve(TaskStatus.COMPLETED, 7)
    assert got == [7, 7]


async def test_task_resolves_exactly_once() -> None:
    task = make_task()
    assert task._resolve(TaskStatus.COMPLETED, 1)
    assert not task._resolve(TaskStatus.FAILED, ValueError("late"))
    assert await task == 1
    assert task.status == "completed"


async def test_awaiting_a_failed_task_raises_its_exception() -> None:
    task = make_task()
    task._resolve(TaskStatus.FAILED, KeyError("x"))
    with pytest.raises(KeyError):
        await task
    assert task.status is TaskStatus.FAILED


async def test_cancel_returns_true_then_awaiting_raises_task_cancelled() -> None:
    task = make_task()
    assert task.cancel()
    assert task.status == "cancelled"
    with pytest.raises(TaskCancelledError):
        await task


async def test_cancel_of_a_finished_task_returns_false() -> None:
    task = make_task()
    task._resolve(TaskStatus.COMPLETED, None)
    assert not task.cancel()
    assert task.status == "completed"


async def test_cancelling_a_waiter_leaves_the_task_pending() -> None:
    task = make_task()
    with anyio.move_on_after(0.01) as scope:
        await task
    assert scope.cancelled_caught
    assert task.status == "queued"
    assert not task.done()
    task._resolve(TaskStatus.COMPLETED, 3)  # nobody left to wake: must not fail
    assert await task == 3


async def test_task_repr_states_id_and_status() -> None:
    task = make_task(9)
    assert "9" in repr(task)
    assert "queued" in repr(task)


# -- events --------------------------------------------------------------------------


async def test_each_reader_gets_every_event_after_it_subscribed() -> None:
    hub = EventHub()
    hub.emit("task_queued", task_id=0)  # before anyone listens: nobody gets it
    first, second = hub.reader(), hub.reader()
    hub.emit("worker_started", pid=11)
    hub.emit("task_done", task_id=1, detail={"outcome": "completed"})
    hub.close()
    for reader in (first, second):
        events = [e async for e in reader]
        assert [e.kind for e in events] == ["worker_started", "task_done"]
        assert events[0].pid == 11
        assert events[1].task_id == 1
        assert events[1].detail == {"outcome": "completed"}
        assert isinstance(events[0], PoolEvent)


async def test_full_reader_buffer_drops_the_oldest_and_counts_them() -> None:
    hub = EventHub()
    reader = hub.reader(maxlen=3)
    for i in range(5):
        hub.emit("task_queued", task_id=i)
    hub.close()
    assert [e.task_id async for e in reader] == [2, 3, 4]
    assert reader.dropped == 2


async def test_reader_waits_for_the_next_event() -> None:
    hub = EventHub()
    reader = hub.reader()
    got: list[PoolEvent] = []

    async def read() -> None:
        async for event in reader:
            got.append(event)  # noqa: PERF401 - the test looks at `got` while reading

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.01)
        hub.emit("worker_ready", pid=5)
        await anyio.sleep(0.01)
        assert [e.kind for e in got] == ["worker_ready"]
        hub.close()
    assert len(got) == 1


async def test_event_time_is_epoch_seconds() -> None:
    import time

    hub = EventHub()
    reader = hub.reader()
    hub.emit("worker_started", pid=1)
    hub.close()
    (event,) = [e async for e in reader]
    assert abs(event.time - time.time()) < 5


async def test_closed_reader_receives_nothing_more() -> None:
    hub = EventHub()
    reader = hub.reader()
    await reader.aclose()
    hub.emit("worker_started", pid=1)
    assert [e async for e in reader] == []
    assert not hub.active  # the closed reader was dropped on the next emit


def test_no_reader_means_no_listener() -> None:
    hub = EventHub()
    assert len(hub._readers) == 0
    reader = hub.reader()
    assert hub.active
    del reader
    assert not hub.active  # readers are held weakly


# -- stats recorders ----------------------------------------------------------------------


def test_latency_window_percentiles_by_nearest_rank() -> None:
    window = LatencyWindow()
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.percentiles() == Percentiles(p50=0.050, p99=0.099)


def test_latency_window_is_empty_before_any_task() -> None:
    assert LatencyWindow().percentiles() == Percentiles(None, None)


def test_latency_window_keeps_only_the_latest_values() -> None:
    window = LatencyWindow(size=10)
    for _ in range(10):
        window.add(100.0)
    for _ in range(10):
        window.add(1.0)
    assert len(window) == 10
    assert window.percentiles() == Percentiles(1.0, 1.0)


def test_utilization_is_time_weighted_over_live_workers() -> None:
    meter = UtilizationMeter(now=0.0)
    assert meter.value(0.0) is None
    meter.update(0.0, busy=0, live=2)
    meter.update(1.0, busy=2, live=2)  # 1 s: 0 of 2 busy
    meter.update(2.0, busy=1, live=2)  # 1 s: 2 of 2 busy
    assert meter.value(4.0) == pytest.approx((0 + 2 + 2) / (2 + 2 + 4))  # then 1 of 2 for 2 s

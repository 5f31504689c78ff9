"""aioproc.testing: the ManualClock and settle()."""

from __future__ import annotations

import math

import anyio
import pytest

import aioproc
import aioproc.testing
from aioproc.testing import ManualClock, settle
from tests.scheduler_targets import Recorder


def test_testing_is_a_module_outside_all() -> None:
    assert "testing" not in aioproc.__all__
    assert aioproc.testing.ManualClock is ManualClock


def test_clock_starts_where_it_is_told() -> None:
    clock = ManualClock(5.0, wall=1_000.0)
    assert (clock.now(), clock.time()) == (5.0, 1_000.0)


def test_wall_defaults_to_the_real_time_when_made() -> None:
    assert ManualClock().time() == pytest.approx(__import__("time").time(), abs=5)


def test_advance_moves_monotonic_and_wall_time_together() -> None:
    clock = ManualClock(wall=1_000.0)
    clock.advance(2.5)
    assert (clock.now(), clock.time()) == (2.5, 1_002.5)


def test_many_small_advances_add_up_exactly() -> None:
    clock = ManualClock()
    for _ in range(100):
        clock.advance(0.1)
    assert clock.now() == 10.0


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_advance_rejects_going_back_or_not_finite(seconds: float) -> None:
    with pytest.raises(ValueError):
        ManualClock().advance(seconds)


def test_advance_rejects_a_non_number() -> None:
    with pytest.raises(TypeError):
        ManualClock().advance("1")  # type: ignore[arg-type]


def test_jump_wall_moves_the_wall_clock_alone() -> None:
    clock = ManualClock(wall=1_000.0)
    clock.jump_wall(-30)
    assert (clock.now(), clock.time()) == (0.0, 970.0)


async def test_advance_wakes_the_sleepers_that_are_due_and_only_them() -> None:
    clock = ManualClock()
    woken: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep_and_note, clock, 1.0, woken)
        tg.start_soon(sleep_and_note, clock, 2.0, woken)
        await settle()
        clock.advance(1.5)
        await settle()
        assert woken == [1.0]
        clock.advance(0.5)
    assert woken == [1.0, 2.0]


async def test_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = ManualClock(10.0)
    with anyio.fail_after(1):
        await clock.sleep_until(3.0)
    assert clock.next_deadline() is None


async def test_next_deadline_is_the_earliest_sleeper() -> None:
    clock = ManualClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep_and_note, clock, 7.0, [])
        tg.start_soon(sleep_and_note, clock, 3.0, [])
        await settle()
        assert clock.next_deadline() == 3.0
        clock.advance(7)


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock()
    with anyio.move_on_after(0.01):
        await clock.sleep(100)
    assert clock.next_deadline() is None


async def test_jump_wall_wakes_no_sleeper() -> None:
    clock = ManualClock()
    woken: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep_and_note, clock, 1.0, woken)
        await settle()
        clock.jump_wall(3600)
        await settle()
        assert woken == []
        clock.advance(1)


async def test_the_documented_example_runs_hourly_jobs_instantly() -> None:
    clock = ManualClock()
    rec = Recorder(clock)
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(3600, rec.tick, max_runs=3)
        await settle()
        for _ in range(2):
            clock.advance(3600)
            await settle()
        with anyio.fail_after(1):
            await job.wait()
    assert rec.starts == [0.0, 3600.0, 7200.0]


def test_repr_shows_the_time_and_the_sleepers() -> None:
    assert repr(ManualClock(2, wall=10)) == "<ManualClock now=2 time=10.000 sleepers=0>"


async def sleep_and_note(clock: ManualClock, seconds: float, woken: list[float]) -> None:
    await clock.sleep(seconds)
    woken.append(seconds)

"""Scheduler and Job behaviour, driven by a ManualClock: every test is instant."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

import aioproc
from aioproc._job import WALL_RECHECK
from aioproc.testing import ManualClock, settle
from tests.scheduler_targets import Recorder

WALL = 1_700_000_000.0  # the manual clock's wall time at now() == 0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=WALL)


@pytest.fixture
def rec(clock: ManualClock) -> Recorder:
    return Recorder(clock)


async def step(clock: ManualClock, seconds: float) -> None:
    """Advance the manual clock and let every woken task run."""
    clock.advance(seconds)
    await settle()


async def finish(job: aioproc.Job[object]) -> None:
    """Wait for *job* to end, failing the test (not hanging it) if it does not."""
    with anyio.fail_after(5):
        await job.wait()


# -- one-shot jobs ----------------------------------------------------------------


async def test_call_later_runs_once_after_its_delay(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(5, rec.tick, "hello")
        await step(clock, 4.9)
        assert rec.starts == []
        await step(clock, 0.1)
        assert rec.starts == [5.0]
        await finish(job)
    assert (job.status, job.runs, job.last_result) == ("done", 1, "hello")


async def test_call_later_zero_runs_at_once(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, rec.tick)
        await finish(job)
    assert rec.starts == [0.0]


async def test_call_later_accepts_a_timedelta(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.call_later(timedelta(minutes=1), rec.tick)
        await step(clock, 60)
    assert rec.starts == [60.0]


async def test_call_at_with_an_aware_datetime_runs_at_that_wall_time(
    clock: ManualClock, rec: Recorder
) -> None:
    when = datetime.fromtimestamp(WALL + 10, tz=timezone(timedelta(hours=2)))
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_at(when, rec.tick)
        assert job.next_run == WALL + 10
        await step(clock, 9.5)
        assert rec.starts == []
        await step(clock, 0.5)
        assert rec.starts == [10.0]


async def test_call_at_with_epoch_seconds_runs_at_that_wall_time(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.call_at(WALL + 3, rec.tick)
        await step(clock, 2.9)
        assert rec.starts == []
        await step(clock, 0.1)
        assert rec.starts == [3.0]


async def test_call_at_in_the_past_runs_at_once(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_at(WALL - 60, rec.tick)
        await finish(job)
    assert rec.starts == [0.0]


async def test_call_at_notices_a_wall_clock_jump_within_the_recheck_bound(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.call_at(WALL + 3600, rec.tick)
        await settle()
        clock.jump_wall(3600)  # the system time is set an hour ahead
        await settle()
        assert rec.starts == []  # a monotonic sleep cannot notice by itself
        await step(clock, WALL_RECHECK)
        assert rec.starts == [WALL_RECHECK]


async def test_call_at_follows_a_wall_clock_set_back(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.call_at(WALL + 10, rec.tick)
        await settle()
        clock.jump_wall(-5)
        await step(clock, 10)
        assert rec.starts == []  # the wall clock reads WALL + 5 only
        await step(clock, 5)
        assert rec.starts == [15.0]


async def test_call_at_rejects_a_naive_datetime(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(ValueError, match="aware datetime"):
            sched.call_at(datetime(2030, 1, 1), rec.tick)
        assert sched.jobs() == []


@pytest.mark.parametrize("when", ["2030-01-01", True, None])
async def test_call_at_rejects_what_is_not_a_time(
    clock: ManualClock, rec: Recorder, when: object
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(TypeError, match="datetime or epoch seconds"):
            sched.call_at(when, rec.tick)  # type: ignore[arg-type]


async def test_positional_args_go_to_the_function(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, rec.tick, ("a", 1))
        await finish(job)
    assert job.last_result == ("a", 1)


async def test_keyword_args_go_through_functools_partial(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, functools.partial(rec.keyword, b=2), 40)
        await finish(job)
    assert job.last_result == 42


# -- periodic jobs ----------------------------------------------------------------


async def test_every_starts_run_k_at_k_intervals(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.tick, max_runs=3)
        await settle()
        for _ in range(2):
            await step(clock, 10)
        await finish(job)
    assert rec.starts == [0.0, 10.0, 20.0]
    assert (job.status, job.runs) == ("done", 3)


async def test_every_start_delay_shifts_the_first_run(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.tick, max_runs=2, start_delay=3)
        await settle()
        await step(clock, 2.9)
        assert rec.starts == []
        await step(clock, 0.1)
        await step(clock, 10)
        await finish(job)
    assert rec.starts == [3.0, 13.0]


async def test_every_does_not_drift_after_a_late_wakeup(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.every(10, rec.tick, max_runs=3)
        await settle()
        await step(clock, 10.5)  # tick 1 fires late
        await step(clock, 9.5)  # tick 2 is still due at 20
    assert rec.starts == [0.0, 10.5, 20.0]


async def test_every_coalesces_ticks_missed_by_a_whole_interval(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.tick)
        await settle()
        await step(clock, 35)  # ticks 1, 2 and 3 all due: one run, two skipped
        assert rec.starts == [0.0, 35.0]
        assert job.skipped == 2
        assert job.next_run == pytest.approx(WALL + 40)
        job.cancel()


async def test_every_counts_failed_runs_toward_max_runs(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(1, rec.fail_on, frozenset({0, 1}), max_runs=2)
        await settle()
        await step(clock, 1)
        await finish(job)
    assert (job.status, job.runs, job.failures) == ("done", 2, 2)


# -- overlap ----------------------------------------------------------------------


async def test_overlap_skip_skips_ticks_while_a_run_is_going(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.slow, 25, max_runs=2, overlap="skip")
        await settle()
        await step(clock, 10)
        await step(clock, 10)
        assert (job.status, job.skipped) == ("running", 2)
        await step(clock, 5)  # run 0 ends at 25
        assert job.status == "pending"
        await step(clock, 5)  # tick 3 at 30 starts run 1
        await step(clock, 25)
        await finish(job)
    assert rec.starts == [0.0, 30.0]
    assert (job.runs, job.skipped, job.status) == (2, 2, "done")


async def test_overlap_queue_starts_the_waiting_run_when_the_previous_ends(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.slow, 25, max_runs=2, overlap="queue")
        await settle()
        await step(clock, 10)  # tick 1 queues a run
        assert (job.running, job.skipped) == (1, 0)
        await step(clock, 15)  # run 0 ends at 25: the queued run starts at once
        assert rec.starts == [0.0, 25.0]
        await step(clock, 25)
        await finish(job)
    assert (job.runs, job.status) == (2, "done")


async def test_overlap_queue_skips_a_tick_that_finds_a_run_waiting(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.slow, 25, overlap="queue")
        await settle()
        await step(clock, 10)  # queued
        await step(clock, 10)  # one is waiting already: skipped
        assert job.skipped == 1
        await step(clock, 5)
        assert rec.starts == [0.0, 25.0]
        job.cancel()


async def test_overlap_allow_runs_concurrently(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.slow, 25, max_runs=3, overlap="allow")
        await settle()
        await step(clock, 10)
        await step(clock, 10)
        assert job.running == 3
        assert rec.starts == [0.0, 10.0, 20.0]
        await step(clock, 25)
        await finish(job)
    assert (job.runs, job.skipped, job.status) == (3, 0, "done")


# -- cancel and wait --------------------------------------------------------------


async def test_cancel_a_pending_job_prevents_its_run(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(5, rec.tick)
        await settle()
        assert job.cancel() is True
        assert job.status == "cancelled"
        await finish(job)
        await step(clock, 10)
    assert rec.starts == []
    assert job.next_run is None


async def test_cancel_twice_returns_false(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(5, rec.tick)
        job.cancel()
        assert job.cancel() is False


async def test_cancel_a_finished_job_returns_false_and_keeps_it_done(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, rec.tick)
        await finish(job)
        assert job.cancel() is False
    assert job.status == "done"


async def test_cancel_also_cancels_a_run_in_progress(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, rec.slow, 100)
        await settle()
        assert job.status == "running"
        job.cancel()
        await finish(job)
    assert (rec.cancelled, rec.ends) == (1, [])
    assert (job.status, job.runs, job.failures) == ("cancelled", 0, 0)


async def test_cancel_a_periodic_job_stops_its_runs(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.tick)
        await settle()
        await step(clock, 10)
        job.cancel()
        await step(clock, 50)
    assert rec.starts == [0.0, 10.0]
    assert (job.status, job.runs) == ("cancelled", 2)


async def test_wait_does_not_raise_the_error_of_a_run(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(0, rec.fail_on, frozenset({0}))
        await finish(job)
    assert (job.status, job.failures) == ("done", 1)
    assert isinstance(job.last_error, ValueError)


# -- failures ---------------------------------------------------------------------


async def test_a_failing_run_is_recorded_and_the_job_goes_on(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.fail_on, frozenset({1}), "fine", max_runs=3)
        await settle()
        await step(clock, 10)
        assert (job.runs, job.failures) == (2, 1)
        await step(clock, 10)
        await finish(job)
    assert rec.starts == [0.0, 10.0, 20.0]
    assert (job.runs, job.failures, job.last_result) == (3, 1, "fine")


async def test_last_error_stays_set_after_later_successes(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.fail_on, frozenset({0}), max_runs=3)
        await settle()
        await step(clock, 10)
        await step(clock, 10)
        await finish(job)
    assert isinstance(job.last_error, ValueError)
    assert str(job.last_error) == "run 0 fails"


async def test_a_failing_job_does_not_disturb_other_jobs(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        bad = sched.every(1, rec.fail_on, frozenset(range(100)))
        good = sched.call_later(5, rec.tick, "still here")
        await settle()
        for _ in range(5):
            await step(clock, 1)
        await finish(good)
        bad.cancel()
    assert good.last_result == "still here"
    assert bad.failures == 6


async def test_a_sync_callable_is_recorded_as_a_type_error(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job: aioproc.Job[object] = sched.call_later(0, rec.not_async)  # type: ignore[arg-type]
        await finish(job)
    assert isinstance(job.last_error, TypeError)
    assert "not an awaitable" in str(job.last_error)


# -- next_run ---------------------------------------------------------------------


async def test_next_run_follows_the_ticks_in_epoch_seconds(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.tick, max_runs=2, start_delay=5)
        assert job.next_run == pytest.approx(WALL + 5)
        await step(clock, 5)
        assert job.next_run == pytest.approx(WALL + 15)
        await step(clock, 10)
        assert job.next_run is None  # max_runs reached
        await finish(job)


async def test_next_run_of_a_started_one_shot_is_none(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(2, rec.slow, 10)
        assert job.next_run == pytest.approx(WALL + 2)
        await step(clock, 2)
        assert (job.status, job.next_run) == ("running", None)
        job.cancel()


# -- leaving the context ----------------------------------------------------------


async def test_leaving_cancels_pending_jobs(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(100, rec.tick)
        await settle()
    assert (job.status, rec.starts) == ("cancelled", [])


async def test_leaving_waits_for_a_running_run() -> None:
    rec = Recorder()  # real time: nobody advances a manual clock while we leave
    async with aioproc.Scheduler() as sched:
        job = sched.call_later(0, rec.slow, 0.05)
        await anyio.sleep(0.01)
        assert job.status == "running"
    assert (job.status, job.runs, job.last_result) == ("done", 1, "slow done")


async def test_leaving_lets_a_periodic_run_finish_and_starts_no_more() -> None:
    rec = Recorder()
    async with aioproc.Scheduler() as sched:
        job = sched.every(0.02, rec.slow, 0.05, overlap="queue")
        await anyio.sleep(0.03)  # run 0 going, run 1 queued
    assert (len(rec.starts), len(rec.ends)) == (1, 1)
    assert (job.runs, job.status, job.next_run) == (1, "cancelled", None)


async def fail_inside_a_scheduler(
    clock: ManualClock, rec: Recorder, jobs: list[aioproc.Job[object]]
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        jobs.append(sched.call_later(0, rec.slow, 100))
        await settle()
        _ = 1 / 0


async def test_leaving_on_an_exception_cancels_running_runs(
    clock: ManualClock, rec: Recorder
) -> None:
    jobs: list[aioproc.Job[object]] = []
    with pytest.raises(ZeroDivisionError):
        await fail_inside_a_scheduler(clock, rec, jobs)
    assert (jobs[0].status, rec.cancelled) == ("cancelled", 1)


async def test_aclose_cancels_pending_jobs_and_is_idempotent(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.call_later(100, rec.tick)
        await sched.aclose()
        await sched.aclose()
        assert job.status == "cancelled"
        assert sched.state == "closing"


async def test_use_after_close_raises_runtime_error(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        pass
    assert sched.state == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        sched.call_later(1, rec.tick)


async def test_use_before_entering_raises_runtime_error(clock: ManualClock, rec: Recorder) -> None:
    sched = aioproc.Scheduler(clock=clock)
    with pytest.raises(RuntimeError, match="async with"):
        sched.every(1, rec.tick)


async def test_entering_twice_raises_runtime_error(clock: ManualClock) -> None:
    sched = aioproc.Scheduler(clock=clock)
    async with sched:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with sched:
            pass


# -- bad arguments ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval must be > 0"),
        ({"interval": -1}, "interval must be > 0"),
        ({"interval": math.nan}, "finite"),
        ({"start_delay": -0.5}, "start_delay must be >= 0"),
        ({"max_runs": 0}, "max_runs must be >= 1"),
        ({"overlap": "later"}, "overlap must be one of"),
    ],
)
async def test_every_rejects_bad_options_before_anything_starts(
    clock: ManualClock, rec: Recorder, options: dict[str, object], message: str
) -> None:
    options = dict(options)
    interval = options.pop("interval", 1)
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(ValueError, match=message):
            sched.every(interval, rec.tick, **options)  # type: ignore[arg-type]
        assert sched.jobs() == []


@pytest.mark.parametrize("delay", [-1, math.inf, math.nan])
async def test_call_later_rejects_a_bad_delay(
    clock: ManualClock, rec: Recorder, delay: float
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(ValueError, match="delay"):
            sched.call_later(delay, rec.tick)


async def test_call_later_rejects_a_non_number_delay(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(TypeError, match="delay must be seconds"):
            sched.call_later("5", rec.tick)  # type: ignore[arg-type]


async def test_a_non_callable_target_raises_type_error(clock: ManualClock) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        with pytest.raises(TypeError, match="async callable"):
            sched.call_later(1, "not a function")  # type: ignore[arg-type]


# -- introspection ----------------------------------------------------------------


async def test_jobs_lists_every_job_in_creation_order(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        first = sched.call_later(0, rec.tick)
        second = sched.every(5, rec.tick)
        assert sched.jobs() == [first, second]
        assert (first.id, second.id) == (1, 2)
        second.cancel()


async def test_forget_finished_drops_done_and_cancelled_jobs(
    clock: ManualClock, rec: Recorder
) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        done = sched.call_later(0, rec.tick)
        cancelled = sched.call_later(9, rec.tick)
        pending = sched.call_later(5, rec.tick)
        cancelled.cancel()
        await finish(done)
        await finish(cancelled)
        assert sched.forget_finished() == 2
        assert sched.jobs() == [pending]


async def test_status_counts_jobs_by_status(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        done = sched.call_later(0, rec.fail_on, frozenset(range(9)))
        slow = sched.call_later(0, rec.slow, 10)
        sched.call_later(7, rec.tick)
        sched.call_later(8, rec.tick).cancel()
        await finish(done)
        await settle()
        status = sched.status()
        assert status.by_status == {"pending": 1, "running": 1, "done": 1, "cancelled": 1}
        assert (status.state, status.jobs, status.runs, status.failures) == ("open", 4, 1, 1)
        assert status.next_run == pytest.approx(WALL + 7)
        slow.cancel()


async def test_job_repr_shows_state_and_counters(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        job = sched.every(10, rec.fail_on, frozenset({0}), max_runs=2)
        await settle()
        text = repr(job)
        job.cancel()
    assert text.startswith("<Job 1 every 10s Recorder.fail_on pending")
    assert "runs=1 failures=1 skipped=0" in text
    when = datetime.fromtimestamp(WALL + 10, tz=UTC).astimezone().replace(tzinfo=None)
    assert f"next_run={when.isoformat(' ', 'milliseconds')}" in text


async def test_scheduler_repr_shows_state_and_counts(clock: ManualClock, rec: Recorder) -> None:
    async with aioproc.Scheduler(clock=clock) as sched:
        sched.call_later(3, rec.tick)
        assert repr(sched).startswith("<Scheduler open jobs=1 pending=1 running=0")


def test_scheduler_and_job_are_public_names() -> None:
    assert {"Scheduler", "Job"} <= set(aioproc.__all__)
    assert aioproc.Scheduler.__module__ == "aioproc._scheduler"

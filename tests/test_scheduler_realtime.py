"""The scheduler on the real clock: drift, prompt wake-ups, no busy loop."""

from __future__ import annotations

import time

import anyio

import aioproc
from tests.scheduler_targets import Recorder

INTERVAL = 0.05
RUNS = 20
TOLERANCE = 0.025


async def test_twenty_runs_at_50ms_start_within_25ms_of_their_ticks() -> None:
    rec = Recorder()
    async with aioproc.Scheduler() as sched:
        start = time.monotonic()
        job = sched.every(INTERVAL, rec.tick, max_runs=RUNS)
        with anyio.fail_after(RUNS * INTERVAL + 2):
            await job.wait()
    assert job.runs == RUNS
    lateness = [t - (start + k * INTERVAL) for k, t in enumerate(rec.starts)]
    assert min(lateness) > -0.002  # never (meaningfully) early
    assert max(lateness) < TOLERANCE, lateness


async def test_call_at_epoch_seconds_runs_at_that_wall_time() -> None:
    rec = Recorder()
    async with aioproc.Scheduler() as sched:
        start = time.monotonic()
        job = sched.call_at(time.time() + 0.1, rec.tick)
        with anyio.fail_after(2):
            await job.wait()
    assert 0.1 - 0.002 < rec.starts[0] - start < 0.1 + TOLERANCE


async def test_cancelling_a_far_off_job_ends_it_at_once() -> None:
    rec = Recorder()
    async with aioproc.Scheduler() as sched:
        job = sched.call_later(3600, rec.tick)
        await anyio.sleep(0)
        job.cancel()
        with anyio.fail_after(0.5):
            await job.wait()
    assert (job.status, rec.starts) == ("cancelled", [])


async def test_leaving_with_only_far_off_jobs_is_prompt() -> None:
    rec = Recorder()
    begun = time.monotonic()
    with anyio.fail_after(0.5):
        async with aioproc.Scheduler() as sched:
            sched.every(3600, rec.tick, start_delay=3600)
            sched.call_at(time.time() + 3600, rec.tick)
            await anyio.sleep(0.01)
    assert time.monotonic() - begun < 0.5
    assert [job.status for job in sched.jobs()] == ["cancelled", "cancelled"]


async def test_an_idle_scheduler_uses_no_cpu() -> None:
    rec = Recorder()
    async with aioproc.Scheduler() as sched:
        sched.every(3600, rec.tick, start_delay=3600)
        sched.call_at(time.time() + 3600, rec.tick)
        await anyio.sleep(0.01)
        cpu = time.process_time()
        await anyio.sleep(0.3)
        used = time.process_time() - cpu
        sched.jobs()[0].cancel()
        sched.jobs()[1].cancel()
    assert used < 0.03  # a busy loop would burn most of the 0.3 s

"""The pool's scaling policy, rule by rule, without a single process."""

from __future__ import annotations

from aioproc._scaling import (
    Decision,
    Mode,
    PoolFigures,
    RetireReason,
    ScalingLimits,
    WorkerFigures,
    WorkerState,
    decide,
)

IDLE, BUSY = WorkerState.IDLE, WorkerState.BUSY
STARTING, STOPPING = WorkerState.STARTING, WorkerState.STOPPING

LIMITS = ScalingLimits(min_workers=1, max_workers=4, idle_timeout=10.0)


def idle(
    key: int, since: float = 0.0, tasks_done: int = 0, rss: int | None = None
) -> WorkerFigures:
    return WorkerFigures(key, IDLE, idle_since=since, tasks_done=tasks_done, rss=rss)


def busy(key: int, tasks_done: int = 0) -> WorkerFigures:
    return WorkerFigures(key, BUSY, tasks_done=tasks_done)


def test_empty_pool_starts_min_workers() -> None:
    limits = ScalingLimits(min_workers=3, max_workers=4, idle_timeout=10.0)
    assert decide(limits, PoolFigures(waiting=0), now=0.0) == Decision(start=3)


def test_min_workers_counts_workers_already_starting() -> None:
    limits = ScalingLimits(min_workers=3, max_workers=4, idle_timeout=10.0)
    figures = PoolFigures(waiting=0, workers=[WorkerFigures(1, STARTING), idle(2)])
    assert decide(limits, figures, now=0.0).start == 1


def test_exited_worker_is_replaced_to_keep_min_alive() -> None:
    limits = ScalingLimits(min_workers=2, max_workers=4, idle_timeout=10.0)
    figures = PoolFigures(waiting=0, workers=[idle(1), WorkerFigures(2, STOPPING)])
    assert decide(limits, figures, now=0.0).start == 1


def test_waiting_tasks_start_several_workers_at_once() -> None:
    figures = PoolFigures(waiting=3, workers=[busy(1)])
    assert decide(LIMITS, figures, now=0.0).start == 3


def test_scale_up_never_passes_max_workers() -> None:
    figures = PoolFigures(waiting=100, workers=[busy(1), busy(2)])
    assert decide(LIMITS, figures, now=0.0).start == 2


def test_no_start_when_max_workers_exist() -> None:
    figures = PoolFigures(waiting=5, workers=[busy(k) for k in range(4)])
    assert decide(LIMITS, figures, now=0.0).start == 0


def test_starting_workers_absorb_waiting_tasks() -> None:
    figures = PoolFigures(waiting=2, workers=[busy(1), WorkerFigures(2, STARTING)])
    assert decide(LIMITS, figures, now=0.0).start == 1


def test_idle_workers_absorb_waiting_tasks() -> None:
    figures = PoolFigures(waiting=1, workers=[busy(1), idle(2)])
    assert decide(LIMITS, figures, now=0.0).start == 0


def test_stopping_workers_do_not_count_toward_max() -> None:
    figures = PoolFigures(
        waiting=9, workers=[busy(1), *(WorkerFigures(k, STOPPING) for k in (2, 3))]
    )
    assert decide(LIMITS, figures, now=0.0).start == 3


def test_worker_idle_past_timeout_beyond_min_is_retired() -> None:
    figures = PoolFigures(waiting=0, workers=[idle(1, since=0.0), idle(2, since=5.0)])
    decision = decide(LIMITS, figures, now=10.0)
    assert decision.retire == ((1, RetireReason.IDLE),)
    assert decision.start == 0


def test_idle_reaping_keeps_min_workers() -> None:
    limits = ScalingLimits(min_workers=2, max_workers=4, idle_timeout=10.0)
    figures = PoolFigures(waiting=0, workers=[idle(1), idle(2), idle(3)])
    decision = decide(limits, figures, now=100.0)
    assert len(decision.retire) == 1
    assert decision.start == 0


def test_idle_reaping_retires_the_longest_idle_first() -> None:
    figures = PoolFigures(waiting=0, workers=[idle(1, since=8.0), idle(2, since=3.0)])
    assert decide(LIMITS, figures, now=20.0).retire == ((2, RetireReason.IDLE),)


def test_busy_workers_are_never_reaped_as_idle() -> None:
    figures = PoolFigures(waiting=0, workers=[busy(1), busy(2), idle(3, since=50.0)])
    decision = decide(LIMITS, figures, now=100.0)
    assert decision.retire == ((3, RetireReason.IDLE),)


def test_next_idle_deadline_is_the_wake_time() -> None:
    figures = PoolFigures(waiting=0, workers=[idle(1, since=2.0), idle(2, since=4.0)])
    decision = decide(LIMITS, figures, now=5.0)
    assert decision.retire == ()
    assert decision.wake_at == 12.0


def test_no_wake_time_at_min_workers() -> None:
    figures = PoolFigures(waiting=0, workers=[idle(1, since=0.0)])
    assert decide(LIMITS, figures, now=5.0) == Decision()


def test_no_idle_reaping_while_tasks_wait() -> None:
    figures = PoolFigures(waiting=1, workers=[idle(1, since=0.0), idle(2, since=0.0)])
    assert decide(LIMITS, figures, now=50.0).retire == ()


def test_worker_that_did_max_tasks_is_recycled_and_replaced() -> None:
    limits = ScalingLimits(min_workers=1, max_workers=2, idle_timeout=10.0, max_tasks_per_worker=3)
    figures = PoolFigures(waiting=0, workers=[idle(1, tasks_done=3)])
    decision = decide(limits, figures, now=0.0)
    assert decision.retire == ((1, RetireReason.TASKS),)
    assert decision.start == 1


def test_worker_below_max_tasks_is_kept() -> None:
    limits = ScalingLimits(min_workers=1, max_workers=2, idle_timeout=10.0, max_tasks_per_worker=3)
    figures = PoolFigures(waiting=0, workers=[idle(1, tasks_done=2)])
    assert decide(limits, figures, now=0.0) == Decision()


def test_busy_worker_past_max_tasks_waits_until_idle() -> None:
    limits = ScalingLimits(min_workers=1, max_workers=2, idle_timeout=10.0, max_tasks_per_worker=3)
    figures = PoolFigures(waiting=0, workers=[busy(1, tasks_done=5)])
    assert decide(limits, figures, now=0.0).retire == ()


def test_worker_over_memory_limit_after_a_task_is_recycled() -> None:
    limits = ScalingLimits(
        min_workers=1, max_workers=2, idle_timeout=10.0, max_memory_per_worker=100
    )
    figures = PoolFigures(waiting=0, workers=[idle(1, rss=101), idle(2, rss=100)])
    decision = decide(limits, figures, now=0.0)
    assert decision.retire == ((1, RetireReason.MEMORY),)
    assert decision.start == 0  # worker 2 keeps min_workers alive


def test_unmeasured_memory_never_recycles() -> None:
    limits = ScalingLimits(
        min_workers=1, max_workers=2, idle_timeout=10.0, max_memory_per_worker=100
    )
    figures = PoolFigures(waiting=0, workers=[idle(1, rss=None)])
    assert decide(limits, figures, now=0.0).retire == ()


def test_three_consecutive_start_failures_break_the_pool() -> None:
    figures = PoolFigures(waiting=5, start_failures=3)
    assert decide(LIMITS, figures, now=0.0) == Decision(broken=True)


def test_two_start_failures_still_retry() -> None:
    figures = PoolFigures(waiting=1, start_failures=2)
    decision = decide(LIMITS, figures, now=0.0)
    assert not decision.broken
    assert decision.start == 1


def test_closing_pool_never_starts_or_reaps() -> None:
    figures = PoolFigures(
        waiting=5, workers=[idle(1, since=0.0), idle(2, since=0.0)], mode=Mode.CLOSING
    )
    assert decide(LIMITS, figures, now=100.0) == Decision()


def test_draining_pool_serves_waiting_tasks_but_not_min_workers() -> None:
    limits = ScalingLimits(min_workers=2, max_workers=4, idle_timeout=10.0)
    assert decide(limits, PoolFigures(waiting=0, mode=Mode.DRAINING), now=0.0).start == 0
    assert decide(limits, PoolFigures(waiting=1, mode=Mode.DRAINING), now=0.0).start == 1

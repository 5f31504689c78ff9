"""Cancelling a Worker's caller, leaving a stream stuck in next(), stopping a deaf
main: the standalone Worker follows the Pool's rules (SPEC §2, §3, fine points)."""

from __future__ import annotations

import os
import pathlib
import select
import signal
import time
from typing import Any

import anyio
import pytest

import aioproc._worker
import aioproc._workerproc
from aioproc import Worker, WorkerCrashedError
from aioproc.protocol import Kind, decode
from tests import workerfns as wf


def _exit_signal(worker: Worker) -> int | None:
    assert worker._proc is not None
    info = worker._proc.exit_info
    assert info is not None, "the worker has not exited"
    return info.signal


@pytest.mark.parametrize("fn", [wf.sleep_then_mark, "tests.workerfns:sleep_then_mark"])
async def test_cancelling_the_caller_of_a_running_sync_call_stops_the_worker(
    tmp_path: pathlib.Path, fn: object
) -> None:
    marker = tmp_path / "ran"
    async with Worker() as worker:
        begun = time.monotonic()
        with anyio.move_on_after(0.3):
            await worker.call(fn, 3, str(marker))  # type: ignore[call-overload]
        # The cancellation reached us only after the worker was gone (shielded stop).
        assert _exit_signal(worker) == signal.SIGTERM
        assert time.monotonic() - begun < 2.5
        assert worker.state is Worker.State.CRASHED
        with pytest.raises(WorkerCrashedError):
            await worker.call(wf.noop)
    assert not marker.exists()


async def test_cancelling_a_sync_call_that_started_behind_another_stops_the_worker() -> None:
    async with Worker() as worker:
        first_done = anyio.Event()

        async def first() -> None:
            assert await worker.call(wf.sleep, 0.05) == "slept"
            first_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await _until_pending(worker, 1)  # the next call queues behind it
            with anyio.CancelScope() as scope:
                tg.start_soon(_cancel_when_started, scope, worker, first_done)
                await worker.call(wf.sleep, 30)
        assert scope.cancelled_caught
        assert _exit_signal(worker) == signal.SIGTERM
        with pytest.raises(WorkerCrashedError):
            await worker.call(wf.noop)


async def _cancel_when_started(
    scope: anyio.CancelScope, worker: Worker, first_done: anyio.Event
) -> None:
    await first_done.wait()
    assert worker._proc is not None
    with anyio.fail_after(5):
        while not any(call.started for call in worker._proc._calls.values()):
            await anyio.sleep(0.01)
    scope.cancel()


async def test_cancelling_the_caller_of_a_queued_call_drops_it_and_the_worker_lives(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "ran"
    async with Worker() as worker:
        results: list[str] = []

        async def first() -> None:
            results.append(await worker.call(wf.sleep, 0.3))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await _until_pending(worker, 1)
            with anyio.move_on_after(0.05):
                await worker.call(wf.mark, str(marker))  # queued behind the sleep
        assert results == ["slept"]
        assert await worker.call(wf.add, 1, 1) == 2
        assert worker.state is Worker.State.RUNNING
    assert not marker.exists()


async def test_cancelling_the_caller_of_a_running_async_call_keeps_the_worker(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "mark"
    async with Worker() as worker:
        await worker.call(wf.async_add, 1, 1)  # async mode up (anyio imported) first
        pid = worker.pid
        with anyio.move_on_after(0.15):
            await worker.call("tests.workerfns:async_sleep_then_mark", 30, str(marker))
        assert await worker.call(wf.getpid) == pid
        assert marker.read_text() == "cancelled-cleanly"


async def test_a_sync_call_timed_out_as_it_was_sent_never_keeps_its_worker_busy() -> None:
    # Dropped by the worker before it started (the worker lives), or stopped with
    # its worker: either way the 30 s sleep is not left running.
    async with Worker() as worker:
        with pytest.raises(TimeoutError):
            await worker.call(wf.sleep, 30, timeout=0.001)
        with anyio.fail_after(3):
            if worker.state is Worker.State.RUNNING:
                assert await worker.call(wf.add, 1, 1) == 2
            else:
                assert worker.state is Worker.State.CRASHED
                with pytest.raises(WorkerCrashedError):
                    await worker.call(wf.noop)


async def test_leaving_a_stream_stuck_in_next_stops_the_worker_after_a_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(aioproc._worker, "STREAM_CLOSE_TIMEOUT", 0.3)
    stuck = tmp_path / "stuck"
    async with Worker() as worker:
        with anyio.fail_after(5):
            async with worker.stream(wf.stuck_after_first_item, 30, str(stuck)) as items:
                assert await items.__anext__() == 0
                await _until_exists(stuck)
                begun = time.monotonic()
        assert time.monotonic() - begun < 3
        assert _exit_signal(worker) == signal.SIGTERM
        with pytest.raises(WorkerCrashedError):
            await worker.call(wf.noop)


async def test_cancelled_inside_a_stuck_stream_the_worker_is_stopped_before_reraising(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(aioproc._worker, "STREAM_CLOSE_TIMEOUT", 0.3)
    stuck = tmp_path / "stuck"
    async with Worker() as worker:
        with anyio.CancelScope() as scope:
            async with worker.stream(wf.stuck_after_first_item, 30, str(stuck)) as items:
                async for _ in items:
                    await _until_exists(stuck)
                    scope.cancel()
        # The cancellation came out of the block only after the worker was gone.
        assert scope.cancelled_caught
        assert _exit_signal(worker) == signal.SIGTERM


async def _until_pending(worker: Worker, calls: int) -> None:
    assert worker._proc is not None
    with anyio.fail_after(5):
        while worker._proc.pending < calls:
            await anyio.sleep(0.001)


async def _until_exists(path: pathlib.Path) -> None:
    with anyio.fail_after(5):
        while not path.exists():
            await anyio.sleep(0.01)


async def test_stop_sends_sigterm_to_a_main_that_never_reads_its_channel() -> None:
    async with Worker(main=wf.deaf_main) as worker:
        begun = time.monotonic()
        await worker.stop(grace=30)
        assert time.monotonic() - begun < 5
        assert _exit_signal(worker) == signal.SIGTERM
        assert worker.state is Worker.State.STOPPED
        with pytest.raises(ProcessLookupError):
            os.kill(worker.pid, 0)


def _read_only_once_answered(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the read right after sending find the answer (as it usually does when
    the worker shares our CPU): each call written is followed by a wait until
    the pipe is readable, both on the quick path (``quick_call``) and on the
    general one (``submit`` + ``read_now``)."""
    proc = worker._proc
    assert proc is not None
    write = proc._write

    def write_then_wait(data: bytes) -> None:
        write(data)
        if decode(memoryview(data)[4:])[0] == Kind.CALL:
            select.select([proc._out_r], [], [], 10)

    monkeypatch.setattr(proc, "_write", write_then_wait)


async def test_a_call_answered_at_once_is_still_a_cancellation_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Worker() as worker:
        _read_only_once_answered(worker, monkeypatch)
        reached = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            await worker.call(wf.add, 1, 2)
            reached = True
        assert not reached
        # The call had ended: nothing to give up, the worker serves on.
        assert worker.state is Worker.State.RUNNING
        assert await worker.call(wf.add, 2, 3) == 5


async def test_a_call_with_a_timeout_answered_at_once_returns_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Worker() as worker:
        _read_only_once_answered(worker, monkeypatch)
        assert await worker.call(wf.add, 1, 2, timeout=10) == 3
        with pytest.raises(ValueError, match="boom"):
            await worker.call(wf.fail, "boom", timeout=10)


async def test_calls_answered_at_once_still_let_other_tasks_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with Worker() as worker:
        _read_only_once_answered(worker, monkeypatch)
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await anyio.lowlevel.checkpoint()  # the other task is running now
            turns = 0
            for i in range(64):
                assert await worker.call(wf.add, i, 1) == i + 1
            tg.cancel_scope.cancel()
    # A schedule point every 16 calls answered at once: 4 here (trio's random
    # batch order may let the other task miss one); none would mean starved.
    assert turns >= 64 // 16 - 1


async def test_calls_answered_at_once_return_results_and_raise_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Worker() as worker:
        await worker.call(wf.add, 0, 0)  # met before: the quick path from now on
        _read_only_once_answered(worker, monkeypatch)
        made: list[object] = []
        real_call = aioproc._workerproc.Call

        def counting_call(*args: Any) -> object:
            made.append(real_call(*args))
            return made[-1]

        monkeypatch.setattr(aioproc._workerproc, "Call", counting_call)
        for i in range(20):
            assert await worker.call(wf.add, i, i) == 2 * i
        assert made == []  # each answer was read right after its call: no Call made
        monkeypatch.setattr(aioproc._workerproc, "Call", real_call)
        assert await worker.call(wf.echo, (1, "two", None)) == (1, "two", None)
        with pytest.raises(ValueError, match="boom"):
            await worker.call(wf.fail, "boom")
        with pytest.raises(TypeError, match="set"):
            await worker.call(wf.return_unsendable)
        assert worker.state is Worker.State.RUNNING
        assert await worker.call(wf.add, 2, 3) == 5


async def test_a_call_whose_answer_is_not_there_at_once_waits_for_it() -> None:
    async with Worker() as worker:
        await worker.call(wf.sleep, 0)
        assert [await worker.call(wf.sleep, 0.02) for _ in range(3)] == ["slept"] * 3
        # the waits leave nothing pending behind them
        assert worker._proc is not None
        assert worker._proc.pending == 0
        assert await worker.call(wf.add, 1, 1) == 2


async def test_cancelling_a_call_the_quick_path_waits_for_stops_the_worker() -> None:
    async with Worker() as worker:
        await worker.call(wf.sleep, 0)  # met before
        with anyio.move_on_after(0.1) as scope:
            await worker.call(wf.sleep, 30)  # sync, running: only stopping ends it
        assert scope.cancelled_caught
        # Given up, not asked to stop: the worker was ended (SIGTERM) and crashed.
        assert worker.state is Worker.State.CRASHED
        assert _exit_signal(worker) == signal.SIGTERM

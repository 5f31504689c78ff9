"""The internal API the Pool builds on: WorkerProcess, launchers, the zygote."""

from __future__ import annotations

import select
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from aioproc import ProtocolError, TaskCancelledError, WorkerCrashedError, WorkerStartError
from aioproc._launcher import SpawnLauncher, Zygote
from aioproc._workerproc import ExitInfo, WorkerOptions, WorkerProcess, WorkerState
from tests import workerfns as wf


@asynccontextmanager
async def started(
    options: WorkerOptions | None = None, **kwargs: Any
) -> AsyncIterator[WorkerProcess]:
    proc = WorkerProcess(options or WorkerOptions(), SpawnLauncher(), **kwargs)
    error: WorkerStartError | None = None
    async with anyio.create_task_group() as tg:
        try:
            await tg.start(proc.serve)
        except WorkerStartError as exc:
            error = exc  # raised outside the group, unwrapped
        else:
            try:
                yield proc
            finally:
                await proc.stop(grace=1.0)
    if error is not None:
        raise error


async def _start_only(options: WorkerOptions) -> None:
    async with started(options):
        pass


async def _start_zygote_only(zygote: Zygote) -> None:
    error: WorkerStartError | None = None
    async with anyio.create_task_group() as tg:
        try:
            await tg.start(zygote.serve)
        except WorkerStartError as exc:
            error = exc
    if error is not None:
        raise error


async def test_many_calls_in_flight_resolve_in_order() -> None:
    async with started() as proc:
        calls = [proc.submit(wf.add, (i, 1)) for i in range(50)]
        assert [await c.wait() for c in calls] == [i + 1 for i in range(50)]
        assert proc.calls_done == 50


async def test_a_waiter_woken_before_it_is_awaited_returns_at_once() -> None:
    async with started() as proc:
        call = proc.submit(wf.add, (1, 2))
        waiter = call.waiter()
        with anyio.fail_after(10):
            while not call.done:
                await anyio.sleep(0.001)
            await waiter
        assert call.result() == 3


async def test_a_cancelled_call_waiter_leaves_the_call_to_finish() -> None:
    async with started() as proc:
        call = proc.submit(wf.sleep, (0.2,))
        with anyio.move_on_after(0.05):
            await call.waiter()
        assert not call.done
        with anyio.fail_after(10):
            assert await call.wait() == "slept"


def _until_answered(proc: WorkerProcess) -> None:
    """Block (the loop too, so no reader runs) until the worker's pipe is readable."""
    readable, _, _ = select.select([proc._out_r], [], [], 10)
    assert readable, "the worker did not answer"


async def test_read_now_handles_an_answer_already_in_the_pipe() -> None:
    async with started() as proc:
        call = proc.submit(wf.add, (1, 2))
        _until_answered(proc)
        proc.read_now()
        assert call.done
        assert call.result() == 3


async def test_read_now_with_nothing_to_read_leaves_the_call_to_the_reader() -> None:
    async with started() as proc:
        call = proc.submit(wf.sleep, (0.2,))
        proc.read_now()
        assert not call.done
        with anyio.fail_after(10):
            assert await call.wait() == "slept"


async def test_a_bad_frame_met_by_read_now_fails_the_calls_as_the_reader_would() -> None:
    async with started() as proc:
        call = proc.submit(wf.write_garbage_to_parent, ())
        _until_answered(proc)
        proc.read_now()
        with anyio.fail_after(10), pytest.raises(ProtocolError):
            await call.wait()
        assert (await proc.wait_exit()).protocol_error is not None


async def test_end_of_stream_met_by_read_now_is_still_seen_by_the_reader() -> None:
    async with started() as proc:
        call = proc.submit(wf.crash, (3,))
        _until_answered(proc)
        proc.read_now()
        with anyio.fail_after(10), pytest.raises(WorkerCrashedError):
            await call.wait()
        assert (await proc.wait_exit()).returncode == 3


async def test_started_is_reported_when_asked_with_sync_or_async() -> None:
    async with started(report_started=True) as proc:
        seen: list[tuple[int, bool | None]] = []
        sync_call = proc.submit(wf.add, (1, 2))
        sync_call.on_started = lambda c: seen.append((c.id, c.is_async))
        async_call = proc.submit(wf.async_add, (1, 2))
        async_call.on_started = lambda c: seen.append((c.id, c.is_async))
        assert await sync_call.wait() == 3
        assert await async_call.wait() == 3
        assert seen == [(sync_call.id, False), (async_call.id, True)]


async def test_on_done_callback_runs_once_per_call() -> None:
    async with started() as proc:
        done: list[int] = []
        call = proc.submit(wf.add, (2, 2))
        call.on_done = lambda c: done.append(c.id)
        await call.wait()
        assert done == [call.id]


async def test_cancel_of_a_queued_call_means_it_never_runs() -> None:
    async with started(report_started=True) as proc:
        blocker = proc.submit(wf.sleep, (0.2,))
        queued = proc.submit(wf.getpid, ())
        proc.cancel(queued)
        assert await blocker.wait() == "slept"
        with pytest.raises(TaskCancelledError):
            await queued.wait()
        assert not queued.started
        assert proc.state is WorkerState.RUNNING


async def test_cancel_of_a_running_async_call_keeps_the_worker(tmp_path: Any) -> None:
    marker = tmp_path / "mark"
    async with started(report_started=True) as proc:
        call = proc.submit(wf.async_sleep_then_mark, (30, str(marker)))
        while not call.started:
            await anyio.sleep(0.01)
        proc.cancel(call)
        with pytest.raises(TaskCancelledError):
            await call.wait()
        assert marker.read_text() == "cancelled-cleanly"
        assert await proc.submit(wf.add, (1, 1)).wait() == 2


async def test_cancel_of_a_running_sync_call_stops_the_worker() -> None:
    exits: list[ExitInfo] = []
    async with started(report_started=True, on_exit=lambda p: exits.append(p.exit_info)) as proc:
        call = proc.submit(wf.sleep, (30,))
        while not call.started:
            await anyio.sleep(0.01)
        proc.cancel(call)
        info = await proc.wait_exit()
        assert info.signal == signal.SIGTERM
        assert info.by_us
        assert exits == [info]
        with pytest.raises(WorkerCrashedError):
            call.result()


async def test_crash_fails_pending_calls_and_tells_which_had_started() -> None:
    async with started(report_started=True) as proc:
        running = proc.submit(wf.crash, (7,))
        queued = proc.submit(wf.noop, ())
        info = await proc.wait_exit()
        assert info.returncode == 7
        assert not info.by_us
        for call in (running, queued):
            with pytest.raises(WorkerCrashedError) as err:
                call.result()
            assert err.value.exitcode == 7
        assert running.started
        assert not queued.started
        assert proc.state is WorkerState.CRASHED


async def test_kill_by_an_outside_signal_is_not_counted_as_ours() -> None:
    async with started() as proc:
        assert proc.pid is not None
        call = proc.submit(wf.kill_self, (signal.SIGKILL,))
        info = await proc.wait_exit()
        assert (info.returncode, info.signal, info.by_us) == (-9, 9, False)
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            call.result()


async def test_submit_after_exit_raises_the_crash() -> None:
    async with started() as proc:
        proc.submit(wf.crash, (3,))
        await proc.wait_exit()
        with pytest.raises(WorkerCrashedError) as err:
            proc.submit(wf.noop, ())
        assert err.value.exitcode == 3


async def test_stop_of_an_idle_worker_exits_cleanly() -> None:
    async with started() as proc:
        info = await proc.stop(grace=5)
        assert info is not None
        assert info.returncode == 0
        assert proc.state is WorkerState.STOPPED


async def test_stop_of_a_busy_worker_sends_sigterm() -> None:
    async with started() as proc:
        call = proc.submit(wf.sleep, (30,))
        info = await proc.stop(grace=5)
        assert info is not None
        assert info.signal == signal.SIGTERM
        assert info.by_us
        with pytest.raises(WorkerCrashedError):
            call.result()


async def test_stream_call_delivers_items_then_stops() -> None:
    async with started() as proc:
        call = proc.submit(wf.count, (40,), stream=True)
        items = []
        while True:
            try:
                items.append(await call.next_item())
            except StopAsyncIteration:
                break
        assert items == list(range(40))


async def test_start_failure_from_preload_carries_the_import_error() -> None:
    with pytest.raises(WorkerStartError) as err:
        await _start_only(WorkerOptions(preload=("no_such_module_xyz",)))
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


async def test_start_failure_from_initializer_carries_its_exception() -> None:
    with pytest.raises(WorkerStartError) as err:
        await _start_only(WorkerOptions(initializer=wf.init_fails))
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "initializer refused" in str(err.value.__cause__)


async def test_start_timeout_kills_a_worker_that_never_handshakes() -> None:
    options = WorkerOptions(initializer=wf.init_hangs, start_timeout=0.3)
    with anyio.fail_after(10), pytest.raises(WorkerStartError, match="no handshake"):
        await _start_only(options)


async def test_one_zygote_serves_several_workers() -> None:
    zygote = Zygote()
    async with anyio.create_task_group() as tg:
        await tg.start(zygote.serve)
        procs = [WorkerProcess(WorkerOptions(), zygote) for _ in range(3)]
        for proc in procs:
            await tg.start(proc.serve)
        pids = [await p.submit(wf.getpid, ()).wait() for p in procs]
        parents = {await p.submit(wf.getppid, ()).wait() for p in procs}
        assert pids == [p.pid for p in procs]
        assert parents == {zygote.pid}
        await procs[0].stop()
        assert procs[0].exit_info is not None
        assert procs[0].exit_info.returncode == 0
        procs[1].submit(wf.crash, (5,))
        assert (await procs[1].wait_exit()).returncode == 5
        for proc in procs[2:]:
            await proc.stop()
        await zygote.aclose()


async def test_zygote_warns_when_preload_leaves_threads() -> None:
    zygote = Zygote(preload=("tests.workerfns_threads",))
    async with anyio.create_task_group() as tg:
        with pytest.warns(RuntimeWarning, match="threads"):
            await tg.start(zygote.serve)
        await zygote.aclose()


async def test_zygote_start_failure_carries_the_preload_error() -> None:
    with pytest.raises(WorkerStartError) as err:
        await _start_zygote_only(Zygote(preload=("no_such_module_xyz",)))
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


async def test_protocol_version_mismatch_is_a_clear_start_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioproc._workerproc

    monkeypatch.setattr(aioproc._workerproc, "PROTOCOL_VERSION", 99)
    with pytest.raises(WorkerStartError) as err:
        await _start_only(WorkerOptions())
    assert "version mismatch" in str(err.value.__cause__)

"""ProcessManager.start_worker: workers in the registry (SPEC §5)."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

import aioproc
from tests import workerfns


async def test_start_worker_registers_a_running_worker_with_matching_id() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker()
        assert await worker.call(workerfns.add, 10, 20) == 30
        assert worker.id is not None
        info = pm.get(worker.id)
        assert info.kind == "worker"
        assert info.status == "running"
        assert info.pid == worker.pid
        assert [i.id for i in pm.running()] == [worker.id]


async def test_start_worker_main_talks_over_messages() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker(main="tests.workerfns:echo_main")
        await worker.send([10, 20])
        assert await worker.receive() == ["echo", [10, 20]]


async def test_closing_the_manager_stops_its_workers() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker(start_method="forkserver")
        pid = worker.pid
        ident = worker.id
        assert ident is not None
    info = pm.get(ident)
    assert info.status == "exited"
    assert info.ended_at is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_worker_killed_from_outside_is_recorded_with_its_signal() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker()
        assert worker.id is not None
        os.kill(worker.pid, signal.SIGKILL)
        with anyio.fail_after(5):
            while pm.get(worker.id).status == "running":
                await anyio.sleep(0.01)
        info = pm.get(worker.id)
        assert info.status == "exited"
        assert info.returncode == -signal.SIGKILL
        assert info.signal == signal.SIGKILL
        with pytest.raises(aioproc.WorkerCrashedError):
            await worker.call(workerfns.noop)


async def test_worker_that_cannot_start_is_registered_as_failed() -> None:
    async with aioproc.ProcessManager() as pm:
        with pytest.raises(aioproc.WorkerStartError):
            await pm.start_worker(preload=["no_such_module_for_aioproc_tests"])
        [info] = pm.list()
        assert info.kind == "worker"
        assert info.status == "failed"
        assert info.error is not None
        assert "WorkerStartError" in info.error


async def test_stop_all_stops_workers_within_the_grace() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call_ignoring_crash, worker)
            await anyio.sleep(0.2)  # the call is running in the worker
            with anyio.fail_after(5):
                await pm.stop_all(grace=0.2)
        assert pm.running() == []


async def _call_ignoring_crash(worker: aioproc.Worker) -> None:
    with pytest.raises(aioproc.WorkerCrashedError):
        await worker.call(workerfns.sleep, 30)


async def test_record_is_final_as_soon_as_aclose_returns() -> None:
    async with aioproc.ProcessManager() as pm:
        worker = await pm.start_worker()
        assert worker.id is not None
        await worker.aclose()
        info = pm.get(worker.id)
        assert info.status == "exited"
        assert info.returncode == 0

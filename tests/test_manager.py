"""ProcessManager / ProcessInfo: the registry of everything started through it."""

from __future__ import annotations

import signal
import time

import anyio
import pytest

import aioproc
from aioproc._manager import TAIL_BYTES


async def test_run_is_registered_with_increasing_ids_and_its_outcome() -> None:
    async with aioproc.ProcessManager() as pm:
        first = await pm.run(["echo", "one"])
        await pm.run(["sh", "-c", "exit 2"], check=False)
        infos = pm.list()
    assert [info.id for info in infos] == [1, 2]
    assert infos[0].kind == "run"
    assert infos[0].args == ["echo", "one"]
    assert infos[0].pid == first.pid
    assert infos[0].status == "exited"
    assert infos[0].returncode == 0
    assert infos[0].stdout_tail == b"one\n"
    assert infos[0].ended_at is not None
    assert infos[0].duration is not None
    assert infos[0].ended_at >= infos[0].started_at
    assert infos[1].returncode == 2


async def test_run_shell_is_registered_as_shell_with_the_command() -> None:
    async with aioproc.ProcessManager() as pm:
        await pm.run_shell("echo hi >&2")
        info = pm.get(1)
    assert info.kind == "shell"
    assert info.args == "echo hi >&2"
    assert info.stderr_tail == b"hi\n"


async def test_a_run_that_raises_is_still_recorded_as_exited() -> None:
    async with aioproc.ProcessManager() as pm:
        with pytest.raises(aioproc.ProcessTimeoutError):
            await pm.run(["sleep", "100"], timeout=0.05)
        info = pm.get(1)
    assert info.status == "exited"
    assert info.returncode == -signal.SIGTERM
    assert info.signal == signal.SIGTERM


async def test_a_process_that_cannot_start_is_registered_as_failed() -> None:
    async with aioproc.ProcessManager() as pm:
        with pytest.raises(aioproc.CommandNotFoundError):
            await pm.run(["aioproc-no-such-program"])
        with pytest.raises(aioproc.CommandNotFoundError):
            await pm.start(["aioproc-no-such-program"])
        infos = pm.list()
    assert [info.status for info in infos] == ["failed", "failed"]
    assert all(info.pid is None for info in infos)
    assert all(info.error and "CommandNotFoundError" in info.error for info in infos)


async def test_start_returns_a_running_process_with_the_matching_id() -> None:
    async with aioproc.ProcessManager() as pm:
        await pm.run(["true"])
        proc = await pm.start(["sh", "-c", "echo hello; exit 5"])
        assert proc.id == 2
        assert pm.get(2).kind == "spawn"
        assert pm.get(2).pid == proc.pid
        assert await proc.wait() == 5
        info = pm.get(2)
    assert info.status == "exited"
    assert info.returncode == 5
    assert info.rusage is not None


async def test_start_tails_capture_what_the_user_reads_unchanged() -> None:
    async with aioproc.ProcessManager() as pm:
        proc = await pm.start(["sh", "-c", "echo a; echo b; echo c >&2"])
        assert proc.stdout is not None
        lines = [line async for line in proc.stdout.lines()]
        assert lines == ["a", "b"]
        await proc.wait()
        assert pm.get(proc.id or 0).stdout_tail == b"a\nb\n"
    # stderr was never read: it is drained (and tailed) when the manager closes.
    assert pm.get(1).stderr_tail == b"c\n"


async def test_tails_keep_only_the_last_64_kib() -> None:
    async with aioproc.ProcessManager() as pm:
        result = await pm.run(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a; echo end"])
        info = pm.get(1)
    assert len(result.stdout) == 100_004
    assert len(info.stdout_tail) == TAIL_BYTES
    assert info.stdout_tail == result.stdout[-TAIL_BYTES:]


async def test_running_and_forget_finished() -> None:
    async with aioproc.ProcessManager() as pm:
        await pm.run(["true"])
        proc = await pm.start(["sleep", "100"])
        assert [info.id for info in pm.running()] == [proc.id]
        assert pm.forget_finished() == 1
        assert [info.id for info in pm.list()] == [proc.id]
        with pytest.raises(KeyError):
            pm.get(1)


async def test_stop_all_stops_started_processes_and_runs_in_flight() -> None:
    async with aioproc.ProcessManager() as pm, anyio.create_task_group() as tg:
        proc = await pm.start(["sleep", "100"])
        results: list[int] = []

        async def runner() -> None:
            done = await pm.run(["sleep", "100"], check=False)
            results.append(done.returncode)

        tg.start_soon(runner)
        with anyio.fail_after(5):
            while len(pm.running()) < 2:
                await anyio.sleep(0.005)
        started = time.monotonic()
        await pm.stop_all(grace=1)
        assert time.monotonic() - started < 3
        assert pm.running() == []
        assert proc.returncode == -signal.SIGTERM
    assert results == [-signal.SIGTERM]


async def test_leaving_the_manager_stops_everything() -> None:
    async with aioproc.ProcessManager() as pm:
        proc = await pm.start(["sh", "-c", "trap '' TERM; echo ready; sleep 100"], kill_grace=0.1)
        assert proc.stdout is not None
        assert await proc.stdout.receive() == b"ready\n"
    assert proc.returncode == -signal.SIGKILL
    assert pm.get(1).status == "exited"


async def test_the_manager_refuses_work_outside_async_with() -> None:
    pm = aioproc.ProcessManager()
    with pytest.raises(RuntimeError, match="new"):
        await pm.run(["true"])
    async with pm:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await pm.start(["true"])
    assert "closed" in repr(pm)

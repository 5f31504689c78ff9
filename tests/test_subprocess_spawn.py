"""aioproc.spawn / Process: streaming, stdin, signals, stop, close, groups."""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

import aioproc
from tests.conftest import python
from tests.subprocess_programs import PRINT_PGID, wait_dead


async def _first_line(proc: aioproc.Process) -> str:
    assert proc.stdout is not None
    async for line in proc.stdout.lines():
        return line
    raise AssertionError("no output")


async def test_spawn_streams_stdout_as_it_is_written() -> None:
    async with aioproc.spawn(["sh", "-c", "echo one; read x; echo two"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert await proc.stdout.receive() == b"one\n"
        await proc.stdin.send(b"go\n")
        assert await proc.stdout.receive() == b"two\n"
        assert await proc.wait() == 0


async def test_spawn_stdin_streams_to_cat_and_back() -> None:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        for word in (b"alpha\n", b"beta\n"):
            await proc.stdin.send(word)
            assert await proc.stdout.receive() == word
        await proc.stdin.aclose()
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 0


async def test_wait_returns_the_code_and_sets_rusage() -> None:
    async with aioproc.spawn(["sh", "-c", "exit 4"]) as proc:
        assert proc.returncode is None
        assert proc.rusage is None
        assert await proc.wait() == 4
        assert proc.returncode == 4
        assert proc.rusage is not None
        assert await proc.wait() == 4


async def test_two_tasks_can_wait_for_the_same_process() -> None:
    codes: list[int] = []
    async with aioproc.spawn(["sleep", "0.05"]) as proc:

        async def waiter() -> None:
            codes.append(await proc.wait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(waiter)
    assert codes == [0, 0]


async def test_stop_terminates_the_child_and_its_grandchild() -> None:
    async with aioproc.spawn(["sh", "-c", "sleep 100 & echo $!; wait"]) as proc:
        grandchild = int(await _first_line(proc))
        assert await proc.stop() == -signal.SIGTERM
        assert proc.signal == signal.SIGTERM
    assert await wait_dead(grandchild)


async def test_stop_kills_a_child_that_traps_sigterm_after_the_grace() -> None:
    async with aioproc.spawn(["sh", "-c", "trap '' TERM; echo ready; sleep 100"]) as proc:
        assert await _first_line(proc) == "ready"
        started = time.monotonic()
        assert await proc.stop(grace=0.2) == -signal.SIGKILL
        assert 0.2 <= time.monotonic() - started < 3


async def test_leaving_spawn_stops_a_running_child() -> None:
    started = time.monotonic()
    async with aioproc.spawn(["sleep", "100"], kill_grace=1) as proc:
        pid = proc.pid
    assert time.monotonic() - started < 3
    assert proc.returncode == -signal.SIGTERM
    assert await wait_dead(pid)


async def test_leaving_spawn_stops_what_the_exited_leader_left_behind() -> None:
    async with aioproc.spawn(["sh", "-c", "sleep 100 & echo $!"]) as proc:
        grandchild = int(await _first_line(proc))
        assert await proc.wait() == 0
    assert await wait_dead(grandchild)


async def test_leaving_spawn_drains_unread_output() -> None:
    async with aioproc.spawn(["sh", "-c", "head -c 3000000 /dev/zero"]) as proc:
        pass
    assert proc.returncode is not None
    assert proc.stdout is not None
    assert proc.stdout.fd == -1


async def test_aclose_is_idempotent() -> None:
    async with aioproc.spawn(["sleep", "100"]) as proc:
        await proc.aclose()
        await proc.aclose()
        assert proc.returncode == -signal.SIGTERM


async def test_cancelling_inside_spawn_kills_the_child_and_grandchild() -> None:
    with anyio.move_on_after(5) as outer:
        with anyio.CancelScope() as scope:
            async with aioproc.spawn(["sh", "-c", "sleep 100 & echo $!; wait"]) as proc:
                grandchild = int(await _first_line(proc))
                scope.cancel()
                await proc.wait()
    assert not outer.cancelled_caught
    assert scope.cancelled_caught
    assert proc.returncode == -signal.SIGTERM
    assert await wait_dead(grandchild)


async def test_send_signal_terminate_and_kill_reach_the_child() -> None:
    async with aioproc.spawn(["sleep", "100"]) as proc:
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == -signal.SIGINT
    async with aioproc.spawn(["sleep", "100"]) as proc:
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM
    async with aioproc.spawn(["sleep", "100"]) as proc:
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        proc.kill()  # after the reap: a no-op, never a stray signal


async def test_each_child_leads_its_own_process_group() -> None:
    async with aioproc.spawn(python(PRINT_PGID)) as proc:
        pgid, pid = map(int, (await _first_line(proc)).split())
    assert pgid == pid == proc.pid


async def test_stdin_inherit_keeps_the_child_in_our_process_group() -> None:
    async with aioproc.spawn(python(PRINT_PGID), stdin="inherit") as proc:
        pgid, _ = map(int, (await _first_line(proc)).split())
        assert proc.stdin is None
    assert pgid == os.getpgrp()


async def test_stats_reports_a_live_child_then_dead() -> None:
    async with aioproc.spawn(["sleep", "100"]) as proc:
        stats = proc.stats()
        assert stats.pid == proc.pid
        assert stats.rss > 0
        assert stats.status != "dead"
        await proc.stop()
        assert proc.stats().status == "dead"


async def test_repr_shows_the_state() -> None:
    async with aioproc.spawn(["sh", "-c", "exit 3"]) as proc:
        assert "running" in repr(proc)
        await proc.wait()
        assert "exited with code 3" in repr(proc)
    assert "closed" in repr(proc)


async def test_spawn_missing_command_raises_on_enter() -> None:
    with pytest.raises(aioproc.CommandNotFoundError):
        async with aioproc.spawn(["aioproc-no-such-program"]):
            raise AssertionError("not reached")


async def test_spawn_devnull_and_merged_streams() -> None:
    async with aioproc.spawn(
        ["sh", "-c", "echo a; echo b >&2"], stdin="devnull", stderr="stdout"
    ) as proc:
        assert proc.stdin is None
        assert proc.stderr is None
        assert proc.stdout is not None
        assert await proc.stdout.read() == b"a\nb\n"

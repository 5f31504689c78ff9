"""docs/protocol.md is complete: aioproc's parent drives a worker written from it alone."""

from __future__ import annotations

import fcntl
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from aioproc import TaskCancelledError
from aioproc._reap import ChildWatch
from aioproc._workerproc import WorkerOptions, WorkerProcess

RAW_WORKER = pathlib.Path(__file__).parent / "scripts" / "raw_worker.py"


class RawLauncher:
    """Starts tests/scripts/raw_worker.py with its pipes on fds 3 and 4."""

    async def launch(self, in_fd: int, out_fd: int) -> ChildWatch:
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (in_fd, out_fd)]
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, str(RAW_WORKER), "3", "4"],
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, high[0], 3),
                    (os.POSIX_SPAWN_DUP2, high[1], 4),
                ],
            )
        finally:
            for fd in high:
                os.close(fd)
        return ChildWatch(pid)


@asynccontextmanager
async def raw_worker() -> AsyncIterator[WorkerProcess]:
    proc = WorkerProcess(WorkerOptions(start_timeout=10), RawLauncher(), report_started=True)
    async with anyio.create_task_group() as tg:
        await tg.start(proc.serve)
        try:
            yield proc
        finally:
            await proc.stop(grace=2)


async def test_raw_worker_answers_calls_and_tuples() -> None:
    async with raw_worker() as proc:
        assert await proc.submit("raw:add", (1, 2, 3)).wait() == 6
        assert await proc.submit("raw:pair", ("a", 1)).wait() == ("a", (1,))


async def test_raw_worker_error_is_rebuilt() -> None:
    async with raw_worker() as proc:
        with pytest.raises(LookupError, match="no function raw:nothing"):
            await proc.submit("raw:nothing", ()).wait()


async def test_raw_worker_streams_with_credit() -> None:
    async with raw_worker() as proc:
        call = proc.submit("raw:count", (40,), stream=True)
        items = []
        while True:
            try:
                items.append(await call.next_item())
            except StopAsyncIteration:
                break
        assert items == list(range(40))


async def test_raw_worker_drops_a_cancelled_queued_call() -> None:
    async with raw_worker() as proc:
        slow = proc.submit("raw:slow", (0.2,))
        queued = proc.submit("raw:add", (1,))
        proc.cancel(queued)
        assert await slow.wait() == "slow"
        with pytest.raises(TaskCancelledError):
            await queued.wait()


async def test_raw_worker_stops_cleanly() -> None:
    async with raw_worker() as proc:
        info = await proc.stop(grace=2)
        assert info is not None
        assert (info.returncode, info.by_us) == (0, False)
        assert info.signal != signal.SIGKILL

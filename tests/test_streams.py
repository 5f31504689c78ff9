"""OutputStream: chunks, lines() rules, read(), max_output, merged output(),
backpressure."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import anyio
import psutil
import pytest

import aioproc
from tests.conftest import python
from tests.subprocess_programs import PING_PONG


async def _count_chunks(stream: aioproc.OutputStream, sizes: list[int]) -> None:
    async for chunk in stream:
        sizes += [len(chunk)]  # one by one: the error interrupts the loop


async def test_chunks_come_as_bytes_until_eof() -> None:
    async with aioproc.spawn(["head", "-c", "5000000", "/dev/zero"]) as proc:
        assert proc.stdout is not None
        total = 0
        async for chunk in proc.stdout:
            assert isinstance(chunk, bytes)
            total += len(chunk)
    assert total == 5_000_000


async def test_receive_raises_end_of_stream_at_eof() -> None:
    async with aioproc.spawn(["true"]) as proc:
        assert proc.stdout is not None
        with pytest.raises(anyio.EndOfStream):
            await proc.stdout.receive()


async def test_read_returns_everything_to_eof() -> None:
    async with aioproc.spawn(["sh", "-c", "echo a; sleep 0.02; echo b"]) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.read() == b"a\nb\n"


async def test_read_past_max_output_raises_with_what_was_read() -> None:
    async with aioproc.spawn(["yes"], max_output=10_000) as proc:
        assert proc.stdout is not None
        with pytest.raises(aioproc.OutputLimitExceeded) as info:
            await proc.stdout.read()
    assert info.value.stream == "stdout"
    assert info.value.stdout == b"y\n" * 5000


async def test_read_exactly_max_output_is_fine() -> None:
    async with aioproc.spawn(["printf", "12345"], max_output=5) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.read() == b"12345"


async def test_chunks_past_max_output_raise_and_keep_raising() -> None:
    async with aioproc.spawn(["yes"], max_output=100_000) as proc:
        assert proc.stdout is not None
        received: list[int] = []
        with pytest.raises(aioproc.OutputLimitExceeded):
            await _count_chunks(proc.stdout, received)
        assert sum(received) == 100_000
        with pytest.raises(aioproc.OutputLimitExceeded):
            await proc.stdout.receive()


async def test_reading_a_closed_stream_raises_closed_resource_error() -> None:
    async with aioproc.spawn(["sleep", "100"]) as proc:
        assert proc.stdout is not None
        await proc.stdout.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await proc.stdout.receive()


async def test_output_merges_stdout_and_stderr_in_arrival_order() -> None:
    async with aioproc.spawn(python(PING_PONG)) as proc:
        assert proc.stdin is not None
        seen = []
        async for name, line in proc.output():
            seen.append((name, line))
            if line != "out2":  # the child exits after out2: its stdin is gone
                await proc.stdin.send(b"next\n")
    assert seen == [("stdout", "out1"), ("stderr", "err1"), ("stdout", "out2")]


async def test_unread_stdout_applies_backpressure() -> None:
    async with aioproc.spawn(["yes"]) as proc:
        assert proc.stdout is not None
        child = psutil.Process(proc.pid)
        with anyio.fail_after(5):
            while child.status() != psutil.STATUS_SLEEPING:  # blocked on the full pipe
                await anyio.sleep(0.01)
        cpu = sum(child.cpu_times()[:2])
        await anyio.sleep(0.2)
        assert sum(child.cpu_times()[:2]) - cpu < 0.05
        pending = struct.unpack("i", fcntl.ioctl(proc.stdout.fd, termios.FIONREAD, b"\0" * 4))
        assert pending[0] <= 2**20  # all the unread data sits in the pipe, none here


def _pipe_size(fd: int) -> int:
    return int(fcntl.fcntl(fd, 1032))  # F_GETPIPE_SZ


def _default_pipe_size() -> int:
    read_end, write_end = os.pipe()
    try:
        return _pipe_size(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_pipe_grows_to_1mib_once_the_child_has_filled_it() -> None:
    async with aioproc.spawn(["head", "-c", "1000000", "/dev/zero"]) as proc:
        assert proc.stdout is not None
        assert _pipe_size(proc.stdout.fd) == _default_pipe_size()  # short-lived: nothing paid
        assert len(await proc.stdout.read()) == 1_000_000
        assert _pipe_size(proc.stdout.fd) == 2**20


async def test_a_pipe_that_never_fills_keeps_its_default_size() -> None:
    async with aioproc.spawn(["echo", "hello"]) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.read() == b"hello\n"
        assert _pipe_size(proc.stdout.fd) == _default_pipe_size()

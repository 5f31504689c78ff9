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


async def _lines(data: bytes, keepends: bool = False) -> list[str]:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await proc.stdin.send(data)
        await proc.stdin.aclose()
        return [line async for line in proc.stdout.lines(keepends=keepends)]


async def _count_chunks(stream: aioproc.OutputStream, sizes: list[int]) -> None:
    async for chunk in stream:
        sizes += [len(chunk)]  # one by one: the error interrupts the loop


async def test_lines_split_on_lf_and_crlf() -> None:
    assert await _lines(b"a\nb\r\nc\n") == ["a", "b", "c"]


async def test_lines_keep_a_lone_cr_as_content() -> None:
    assert await _lines(b"a\rb\n") == ["a\rb"]


async def test_lines_yield_a_final_line_without_newline() -> None:
    assert await _lines(b"first\nlast") == ["first", "last"]


async def test_lines_keepends_keeps_each_terminator() -> None:
    assert await _lines(b"a\nb\r\nc", keepends=True) == ["a\n", "b\r\n", "c"]


async def test_lines_replace_invalid_utf8() -> None:
    assert await _lines(b"ok \xff\xfe\n") == ["ok \ufffd\ufffd"]


async def test_lines_keep_empty_lines() -> None:
    assert await _lines(b"\n\nx\n") == ["", "", "x"]


async def test_lines_join_a_character_and_a_crlf_split_across_writes() -> None:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        for part in (b"caf\xc3", b"\xa9\r", b"\nnext\n"):
            await proc.stdin.send(part)
            await anyio.sleep(0.01)  # let each part arrive as its own chunk
        await proc.stdin.aclose()
        assert [line async for line in lines] == ["café", "next"]


async def test_a_3mib_line_comes_out_in_pieces_of_at_most_1mib() -> None:
    size = 3 * 2**20 + 5
    async with aioproc.spawn(["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x; echo"]) as proc:
        assert proc.stdout is not None
        pieces = [piece async for piece in proc.stdout.lines()]
    assert len(pieces) >= 4
    assert all(len(piece) <= 2**20 for piece in pieces)
    assert "".join(pieces) == "x" * size


async def test_lines_of_a_big_burst_come_all_and_in_order() -> None:
    async with aioproc.spawn(["seq", "50000"]) as proc:
        assert proc.stdout is not None
        lines = [line async for line in proc.stdout.lines()]
    assert lines == [str(i) for i in range(1, 50001)]


async def test_a_fast_lines_reader_lets_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg, aioproc.spawn(["seq", "200000"]) as proc:
        assert proc.stdout is not None
        tg.start_soon(ticker)
        await anyio.sleep(0.05)  # the pipe fills: the reader never has to wait
        before = ticks
        count = 0
        async for _line in proc.stdout.lines():
            count += 1
        tg.cancel_scope.cancel()
    assert count == 200000
    assert ticks - before >= 10


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

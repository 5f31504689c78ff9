"""OutputStream.lines(): the splitting rules, pieces of long lines, checkpoints,
and the iterator's own protocol, on both implementations (the C line iterator
and the async generator used where it is not built)."""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig

import anyio
import pytest

import aioproc
from aioproc import _streams

C_BUILT = _streams.fast_lines() is not None


@pytest.fixture(params=["c", "generator"])
def lines_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on each implementation of lines()."""
    impl: str = request.param
    if impl == "c" and not C_BUILT:
        pytest.skip("the C line iterator is not built here (no C compiler at install)")
    monkeypatch.setattr(_streams, "USE_C_LINES", impl == "c")
    return impl


@pytest.fixture
def c_lines() -> None:
    """For a test of what only the C line iterator does."""
    if not C_BUILT:
        pytest.skip("the C line iterator is not built here (no C compiler at install)")


def test_the_c_line_iterator_is_built_where_there_is_a_compiler() -> None:
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    wanted = shutil.which(compiler) is not None and not os.environ.get("AIOPROC_NO_C")
    assert wanted == C_BUILT


async def _lines(data: bytes, keepends: bool = False) -> list[str]:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await proc.stdin.send(data)
        await proc.stdin.aclose()
        return [line async for line in proc.stdout.lines(keepends=keepends)]


async def test_lines_split_on_lf_and_crlf(lines_impl: str) -> None:
    assert await _lines(b"a\nb\r\nc\n") == ["a", "b", "c"]


async def test_lines_keep_a_lone_cr_as_content(lines_impl: str) -> None:
    assert await _lines(b"a\rb\n") == ["a\rb"]


async def test_lines_yield_a_final_line_without_newline(lines_impl: str) -> None:
    assert await _lines(b"first\nlast") == ["first", "last"]


async def test_lines_keepends_keeps_each_terminator(lines_impl: str) -> None:
    assert await _lines(b"a\nb\r\nc", keepends=True) == ["a\n", "b\r\n", "c"]


async def test_lines_replace_invalid_utf8(lines_impl: str) -> None:
    assert await _lines(b"ok \xff\xfe\n") == ["ok \ufffd\ufffd"]


async def test_lines_keep_empty_lines(lines_impl: str) -> None:
    assert await _lines(b"\n\nx\n") == ["", "", "x"]


async def test_lines_join_a_character_and_a_crlf_split_across_writes(lines_impl: str) -> None:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        for part in (b"caf\xc3", b"\xa9\r", b"\nnext\n"):
            await proc.stdin.send(part)
            await anyio.sleep(0.01)  # let each part arrive as its own chunk
        await proc.stdin.aclose()
        assert [line async for line in lines] == ["café", "next"]


async def test_a_3mib_line_comes_out_in_pieces_of_at_most_1mib(lines_impl: str) -> None:
    size = 3 * 2**20 + 5
    async with aioproc.spawn(["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x; echo"]) as proc:
        assert proc.stdout is not None
        pieces = [piece async for piece in proc.stdout.lines()]
    assert len(pieces) >= 4
    assert all(len(piece) <= 2**20 for piece in pieces)
    assert "".join(pieces) == "x" * size


async def test_lines_of_a_big_burst_come_all_and_in_order(lines_impl: str) -> None:
    async with aioproc.spawn(["seq", "50000"]) as proc:
        assert proc.stdout is not None
        lines = [line async for line in proc.stdout.lines()]
    assert lines == [str(i) for i in range(1, 50001)]


async def test_a_fast_lines_reader_lets_other_tasks_run(lines_impl: str) -> None:
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


async def test_aclose_ends_the_iteration(lines_impl: str) -> None:
    async with aioproc.spawn(["seq", "10000"]) as proc:
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        assert await lines.__anext__() == "1"
        await lines.aclose()  # type: ignore[attr-defined]
        assert [line async for line in lines] == []


async def test_the_anext_builtin_and_its_default_work(lines_impl: str) -> None:
    async with aioproc.spawn(["printf", "a\\nb\\n"]) as proc:
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        assert await anext(lines) == "a"
        assert await anext(lines, None) == "b"
        assert await anext(lines, None) is None


async def test_two_steps_asked_before_either_is_awaited_get_their_own_lines(
    c_lines: None,
) -> None:
    async with aioproc.spawn(["seq", "3"]) as proc:
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        assert await lines.__anext__() == "1"  # loads the chunk: 2 and 3 are held
        second, third = lines.__anext__(), lines.__anext__()
        assert await third == "3"
        assert await second == "2"


async def test_a_cancelled_wait_for_data_loses_no_line(c_lines: None) -> None:
    async with aioproc.spawn(["cat"]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines = proc.stdout.lines()
        with anyio.move_on_after(0.05) as scope:
            await lines.__anext__()  # nothing written yet: waits, then is cancelled
        assert scope.cancelled_caught
        await proc.stdin.send(b"after\nthe cancel\n")
        await proc.stdin.aclose()
        assert [line async for line in lines] == ["after", "the cancel"]


M = _streams.MAX_LINE
# Inputs where cutting lines is easy to get wrong, each written in the parts given
# (the parts arrive as chunks of their own): long lines around MAX_LINE with and
# without a newline, CRLF and lone CR, a CRLF and a UTF-8 character split
# between chunks, empty lines.
TRICKY_INPUTS = [
    [b"a\r\nb\rc\n\n\nd"],
    [b"x" * (M - 1) + b"\n" + b"y" * M + b"\n" + b"z" * (M + 1) + b"\nend\n"],
    [b"x" * (2 * M) + b"\n", b"w" * (2 * M + 1)],
    [b"x" * (M - 1) + b"\r", b"\n" + b"y" * (M - 1) + b"\r\n"],
    [b"caf\xc3", b"\xa9\r", b"\nnext\n", b"\xff\xfe end\n"],
    # not ASCII: the iterator's general cutting path (ASCII text has its own)
    [("é" * (M + 1) + "\n" + "ü" * (M - 1) + "\n").encode(), b"x" * 5 + b"\n"],
]


async def _lines_in_parts(parts: list[bytes], keepends: bool) -> list[str]:
    async with aioproc.spawn(["cat"]) as proc, anyio.create_task_group() as tg:
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None
        assert stdout is not None

        async def write() -> None:
            for part in parts:
                await stdin.send(part)
                await anyio.sleep(0.02)  # let each part arrive as its own chunk
            await stdin.aclose()

        tg.start_soon(write)  # read meanwhile: cat blocks once its stdout pipe is full
        return [line async for line in stdout.lines(keepends=keepends)]


@pytest.mark.parametrize("keepends", [False, True])
@pytest.mark.parametrize("parts", TRICKY_INPUTS, ids=range(len(TRICKY_INPUTS)))
async def test_the_c_iterator_cuts_lines_as_the_generator_does(
    c_lines: None, monkeypatch: pytest.MonkeyPatch, parts: list[bytes], keepends: bool
) -> None:
    by_c = await _lines_in_parts(parts, keepends)
    monkeypatch.setattr(_streams, "USE_C_LINES", False)
    by_generator = await _lines_in_parts(parts, keepends)
    assert by_c == by_generator
    assert all(len(line) <= M for line in by_c)
    if keepends:  # then nothing is dropped: the lines are the text, in order
        assert "".join(by_c) == b"".join(parts).decode("utf-8", "replace")

"""How children are started: both start paths (posix_spawn and Popen) give the
child the same fds, signals and program lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aioproc
from tests.conftest import python
from tests.subprocess_programs import LIST_FDS

# cwd forces the Popen path; without it, run() takes the posix_spawn fast path.
START_PATHS = [pytest.param(None, id="posix_spawn"), pytest.param("/", id="popen")]


@pytest.mark.parametrize("cwd", START_PATHS)
async def test_an_inheritable_fd_of_ours_does_not_leak_into_the_child(cwd: str | None) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        result = await aioproc.run(python(LIST_FDS), cwd=cwd, text=True)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert str(write_end) not in result.stdout.split()


@pytest.mark.parametrize("cwd", START_PATHS)
async def test_the_child_gets_default_sigpipe_handling(cwd: str | None) -> None:
    result = await aioproc.run(["sh", "-c", "grep SigIgn /proc/self/status"], cwd=cwd, text=True)
    ignored = int(result.stdout.split()[1], 16)
    assert not ignored & (1 << (13 - 1))  # SIGPIPE


@pytest.mark.parametrize("cwd", START_PATHS)
async def test_the_child_reads_the_fd_we_pass_as_stdin(cwd: str | None, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n")
    with source.open("rb") as handle:
        async with aioproc.spawn(["cat"], stdin=handle.fileno(), cwd=cwd) as proc:
            assert proc.stdout is not None
            assert await proc.stdout.read() == b"from a file\n"


async def test_a_bare_name_is_looked_up_on_the_path_of_env(tmp_path: Path) -> None:
    program = tmp_path / "only-here"
    program.write_text("#!/bin/sh\necho found\n")
    program.chmod(0o755)
    result = await aioproc.run(["only-here"], env={"PATH": str(tmp_path)})
    assert result.stdout == b"found\n"


async def test_a_bare_name_missing_from_the_path_of_env_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(aioproc.CommandNotFoundError):
        await aioproc.run(["sh", "-c", "true"], env={"PATH": str(tmp_path)})


async def test_unknown_stdio_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="stdout"):
        await aioproc.run(["true"], stdout="tty")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="stderr"):
        await aioproc.run(["true"], stderr=1.5)  # type: ignore[call-overload]

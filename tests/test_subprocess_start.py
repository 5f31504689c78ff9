"""How children are started: every start path (run()'s C core, glibc's
posix_spawn, os.posix_spawn, Popen) gives the child the same fds, signals and
program lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aioproc
import aioproc._posix_spawn
from aioproc import _run
from tests.conftest import c_run_core_built, python
from tests.subprocess_programs import LIST_FDS

# cwd forces the Popen path. Without it, run() starts the child from its C core
# (_runcore.c) and spawn() -- or run() without the C core -- takes the
# posix_spawn fast path: glibc's with a closefrom action, or (C libraries
# without one) os.posix_spawn with a close action per inheritable fd found.
START_PATHS = [
    pytest.param("c-core", id="c-core"),
    pytest.param(None, id="posix_spawn-closefrom"),
    pytest.param("scan", id="posix_spawn-fd-scan"),
    pytest.param("/", id="popen"),
]


@pytest.fixture
def start_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The cwd that selects the start path under test (see START_PATHS)."""
    choice: str | None = request.param
    if choice == "c-core":
        if not c_run_core_built():
            pytest.skip("the C run core is not built here (no C compiler at install)")
        return None
    monkeypatch.setattr(_run, "USE_C_CORE", False)
    if choice == "scan":
        monkeypatch.setattr(aioproc._posix_spawn, "_loaded", True)
        monkeypatch.setattr(aioproc._posix_spawn, "_glibc", None)
        return None
    return choice


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_an_inheritable_fd_of_ours_does_not_leak_into_the_child(
    start_path: str | None,
) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        result = await aioproc.run(python(LIST_FDS), cwd=start_path, text=True)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert str(write_end) not in result.stdout.split()


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_the_child_gets_default_sigpipe_handling(start_path: str | None) -> None:
    result = await aioproc.run(
        ["sh", "-c", "grep SigIgn /proc/self/status"], cwd=start_path, text=True
    )
    ignored = int(result.stdout.split()[1], 16)
    assert not ignored & (1 << (13 - 1))  # SIGPIPE


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_the_child_reads_the_fd_we_pass_as_stdin(
    start_path: str | None, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n")
    with source.open("rb") as handle:
        async with aioproc.spawn(["cat"], stdin=handle.fileno(), cwd=start_path) as proc:
            assert proc.stdout is not None
            assert await proc.stdout.read() == b"from a file\n"


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_the_child_gets_exactly_the_env_we_pass(start_path: str | None) -> None:
    env = {"PATH": os.environ["PATH"], "AIOPROC_PROBE": "value with spaces"}
    result = await aioproc.run(["env"], env=env, cwd=start_path, text=True)
    assert sorted(result.stdout.splitlines()) == [
        "AIOPROC_PROBE=value with spaces",
        f"PATH={env['PATH']}",
    ]


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_the_child_inherits_our_environment_by_default(
    start_path: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOPROC_PROBE", "set after start-up")
    result = await aioproc.run(["sh", "-c", 'echo "$AIOPROC_PROBE"'], cwd=start_path, text=True)
    assert result.stdout == "set after start-up\n"


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_a_nul_byte_in_an_argument_is_a_value_error(start_path: str | None) -> None:
    with pytest.raises(ValueError, match="null"):
        await aioproc.run(["echo", "a\0b"], cwd=start_path)


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_an_environment_name_with_an_equals_sign_is_a_value_error(
    start_path: str | None,
) -> None:
    env = {"PATH": os.environ["PATH"], "A=B": "x"}
    with pytest.raises(ValueError, match="environment variable name"):
        await aioproc.run(["true"], env=env, cwd=start_path)


@pytest.mark.parametrize("start_path", START_PATHS, indirect=True)
async def test_a_missing_program_is_command_not_found_on_every_path(
    start_path: str | None,
) -> None:
    with pytest.raises(aioproc.CommandNotFoundError):
        await aioproc.run(["aioproc-no-such-program"], cwd=start_path)


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

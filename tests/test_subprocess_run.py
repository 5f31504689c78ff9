"""aioproc.run / run_shell: buffered runs, errors, timeouts, limits, groups;
every test on both of run()'s cores (C and Python)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

import aioproc
from tests.conftest import python
from tests.subprocess_programs import ALLOCATE_100MB, BURN_CPU, wait_dead

pytestmark = pytest.mark.usefixtures("run_core")


async def _wait_for_file(path: Path) -> str:
    with anyio.fail_after(5):
        while not path.exists() or not path.read_text().strip():
            await anyio.sleep(0.01)
    return path.read_text().strip()


async def test_run_captures_stdout_and_stderr() -> None:
    result = await aioproc.run(["sh", "-c", "echo out; echo err >&2"])
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.returncode == 0
    assert result.ok
    assert result.signal is None
    assert result.args == ["sh", "-c", "echo out; echo err >&2"]
    assert result.pid > 0
    assert 0 < result.duration < 5


async def test_run_text_mode_decodes_with_encoding() -> None:
    result = await aioproc.run(["printf", "caf\\351"], text=True, encoding="latin-1")
    assert result.stdout == "café"


async def test_run_text_mode_strict_errors_raise_on_bad_bytes() -> None:
    with pytest.raises(UnicodeDecodeError):
        await aioproc.run(["printf", "\\377"], text=True)


async def test_run_feeds_input_to_stdin() -> None:
    result = await aioproc.run(["cat"], input=b"hello\nworld\n")
    assert result.stdout == b"hello\nworld\n"


async def test_run_feeds_input_bigger_than_a_pipe_while_reading_the_output() -> None:
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB: both pipes fill many times
    result = await aioproc.run(["cat"], input=data)
    assert result.stdout == data


async def test_run_input_to_a_program_that_never_reads_it_is_not_an_error() -> None:
    result = await aioproc.run(["sh", "-c", "exec 0<&-; echo done"], input=b"x" * (4 << 20))
    assert result.stdout == b"done\n"


async def test_run_output_over_the_limit_written_before_the_exit_is_cut_at_the_limit() -> None:
    # All of it sits in the pipe by the time the exit is seen.
    with pytest.raises(aioproc.OutputLimitExceeded) as info:
        await aioproc.run(["head", "-c", "60000", "/dev/zero"], max_output=1000)
    assert info.value.stdout == bytes(1000)


async def test_run_encodes_str_input() -> None:
    result = await aioproc.run(["cat"], input="héllo", text=True)
    assert result.stdout == "héllo"


async def test_run_gives_devnull_stdin_without_input() -> None:
    result = await aioproc.run(["cat"], timeout=5)
    assert result.stdout == b""


async def test_run_env_replaces_the_environment() -> None:
    result = await aioproc.run(["/usr/bin/env"], env={"ONLY": "this"})
    assert result.stdout == b"ONLY=this\n"


async def test_run_cwd_sets_the_working_directory(tmp_path: Path) -> None:
    result = await aioproc.run(["pwd"], cwd=tmp_path)
    assert result.stdout.decode().strip() == str(tmp_path)


async def test_run_check_raises_called_process_error_with_stderr_tail() -> None:
    with pytest.raises(aioproc.CalledProcessError) as info:
        await aioproc.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert info.value.returncode == 3
    assert info.value.stderr == b"oops\n"
    assert "oops" in str(info.value)
    assert "3" in str(info.value)


async def test_run_check_false_returns_the_nonzero_code() -> None:
    result = await aioproc.run(["sh", "-c", "exit 7"], check=False)
    assert result.returncode == 7
    assert not result.ok
    with pytest.raises(aioproc.CalledProcessError):
        result.check_returncode()


async def test_run_reports_a_signal_death_as_negative_code() -> None:
    result = await aioproc.run(["sh", "-c", "kill -9 $$"], check=False)
    assert result.returncode == -9
    assert result.signal == signal.SIGKILL


async def test_run_missing_command_raises_command_not_found() -> None:
    with pytest.raises(aioproc.CommandNotFoundError) as info:
        await aioproc.run(["aioproc-no-such-program"])
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.filename == "aioproc-no-such-program"


async def test_run_missing_command_in_cwd_raises_command_not_found(tmp_path: Path) -> None:
    with pytest.raises(aioproc.CommandNotFoundError):
        await aioproc.run(["./missing"], cwd=tmp_path)


async def test_run_bad_cwd_raises_plain_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await aioproc.run(["true"], cwd=tmp_path / "missing")
    assert not isinstance(info.value, aioproc.CommandNotFoundError)


async def test_run_not_executable_raises_permission_error(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermissionError):
        await aioproc.run([str(script)])


async def test_run_rejects_an_empty_command() -> None:
    with pytest.raises(ValueError, match="must name a program"):
        await aioproc.run([])


async def test_run_rejects_a_string_for_args() -> None:
    with pytest.raises(TypeError):
        await aioproc.run("echo hi")  # type: ignore[call-overload]


async def test_run_shell_runs_through_sh_and_reports_the_command() -> None:
    result = await aioproc.run_shell("echo $((2 + 3)) | sed s/5/five/", text=True)
    assert result.stdout == "five\n"
    assert result.args == "echo $((2 + 3)) | sed s/5/five/"


async def test_run_stdout_to_a_file_and_stderr_to_devnull(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with target.open("wb") as handle:
        result = await aioproc.run(
            ["sh", "-c", "echo to-file; echo hidden >&2"], stdout=handle, stderr="devnull"
        )
    assert target.read_bytes() == b"to-file\n"
    assert result.stdout is None
    assert result.stderr is None


async def test_run_stderr_stdout_merges_the_streams() -> None:
    result = await aioproc.run(["sh", "-c", "echo a; echo b >&2; echo c"], stderr="stdout")
    assert result.stdout == b"a\nb\nc\n"
    assert result.stderr is None


async def test_run_timeout_raises_with_partial_output_and_kills_the_grandchild() -> None:
    started = time.monotonic()
    with pytest.raises(aioproc.ProcessTimeoutError) as info:
        await aioproc.run(["sh", "-c", "sleep 100 & echo $!; wait"], timeout=0.3)
    assert time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.3
    assert isinstance(info.value.stdout, bytes)
    grandchild = int(info.value.stdout)
    assert await wait_dead(grandchild)


async def test_run_returns_when_the_leader_exits_despite_a_background_child() -> None:
    started = time.monotonic()
    result = await aioproc.run(["sh", "-c", "echo started; sleep 100 & echo $!"])
    assert time.monotonic() - started < 3
    lines = result.stdout.split()
    assert lines[0] == b"started"
    assert await wait_dead(int(lines[1]))


async def test_run_stops_a_background_child_that_holds_no_pipe() -> None:
    result = await aioproc.run(["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"])
    assert await wait_dead(int(result.stdout))


async def test_run_kills_a_child_that_traps_sigterm_after_the_grace() -> None:
    started = time.monotonic()
    with pytest.raises(aioproc.ProcessTimeoutError):
        await aioproc.run(
            ["sh", "-c", "trap '' TERM; echo ready; sleep 100"], timeout=0.1, kill_grace=0.3
        )
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 3


async def test_run_max_output_raises_with_the_partial_output() -> None:
    with pytest.raises(aioproc.OutputLimitExceeded) as info:
        await aioproc.run(["yes"], max_output=100_000)
    assert info.value.stream == "stdout"
    assert info.value.limit == 100_000
    assert isinstance(info.value.stdout, bytes)
    assert len(info.value.stdout) == 100_000
    assert info.value.stdout.startswith(b"y\ny\n")


async def test_run_max_output_applies_to_stderr_too() -> None:
    with pytest.raises(aioproc.OutputLimitExceeded) as info:
        await aioproc.run(["sh", "-c", "yes >&2"], max_output=1000)
    assert info.value.stream == "stderr"
    assert info.value.stderr is not None
    assert len(info.value.stderr) == 1000


async def test_run_100mb_on_stdout_and_stderr_at_once_does_not_deadlock() -> None:
    size = 100_000_000
    with anyio.fail_after(30):
        result = await aioproc.run(
            [
                "sh",
                "-c",
                f"head -c {size} /dev/zero & head -c {size} /dev/zero >&2; wait",
            ],
            max_output=None,
        )
    assert len(result.stdout) == size
    assert len(result.stderr) == size


async def test_run_reports_user_cpu_time() -> None:
    result = await aioproc.run(python(BURN_CPU))
    assert result.rusage is not None
    assert result.rusage.user_time >= 0.2


async def test_run_reports_peak_rss() -> None:
    result = await aioproc.run(python(ALLOCATE_100MB))
    assert result.rusage is not None
    assert result.rusage.max_rss >= 90 * 2**20


async def test_cancelling_run_kills_the_child_and_its_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    command = f"sleep 100 & echo $$ $! > {pidfile}; wait"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(aioproc.run_shell, command)
            pids = [int(p) for p in (await _wait_for_file(pidfile)).split()]
            started = time.monotonic()
            scope.cancel()
    assert scope.cancelled_caught
    assert time.monotonic() - started < 3
    for pid in pids:
        assert await wait_dead(pid)


async def test_run_is_fast_for_a_trivial_program() -> None:
    for _ in range(20):
        await aioproc.run(["true"])
    started = time.perf_counter()
    for _ in range(20):
        await aioproc.run(["true"])
    assert (time.perf_counter() - started) / 20 < 0.05


def test_run_works_from_anyio_run_without_pytest_plugin() -> None:
    result = anyio.run(aioproc.run, [sys.executable, "-c", "print('ok')"])
    assert result.stdout == b"ok\n"
    assert os.getpid() != result.pid

"""The bench launcher and the measuring session, driven directly on every backend."""

from __future__ import annotations

import io
import shutil
import sys

import anyio
import psutil
import pytest

from aioproc._bench import RunFailedError, measure, resolve
from aioproc._bench_client import LauncherError, open_launcher
from aioproc._bench_console import ConsoleReport
from aioproc._bench_stats import Settings

TRUE = shutil.which("true") or "/bin/true"
SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = "/bin/sh"


def _report() -> ConsoleReport:
    return ConsoleReport(io.StringIO(), io.StringIO())


async def test_launcher_reports_exit_code_and_stderr_tail() -> None:
    async with open_launcher() as launcher:
        report = await launcher.run(SH, ["sh", "-c", "echo oops >&2; exit 5"])
    assert report.returncode == 5
    assert report.stderr == b"oops\n"
    assert report.stderr_size == 5


async def test_launcher_keeps_only_the_last_4_kib_of_stderr() -> None:
    async with open_launcher() as launcher:
        report = await launcher.run(SH, ["sh", "-c", "head -c 10000 /dev/zero >&2; echo end >&2"])
    assert report.stderr_size == 10004
    assert len(report.stderr) == 4096
    assert report.stderr.endswith(b"end\n")


async def test_launcher_reports_a_signal_as_negative_code() -> None:
    async with open_launcher() as launcher:
        report = await launcher.run(SH, ["sh", "-c", "kill -TERM $$"])
    assert report.returncode == -15


async def test_launcher_reports_exec_failure_as_127_with_the_reason() -> None:
    async with open_launcher() as launcher:
        report = await launcher.run("/nonexistent/prog", ["prog"])
    assert report.returncode == 127
    assert b"cannot run '/nonexistent/prog'" in report.stderr


async def test_launcher_measures_the_childs_cpu_time() -> None:
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    async with open_launcher() as launcher:
        report = await launcher.run(sys.executable, [sys.executable, "-c", code])
    cpu = report.rusage.user_time + report.rusage.system_time
    assert cpu >= 0.15
    assert report.wall_time >= cpu * 0.9


async def test_launcher_runs_requests_concurrently() -> None:
    async with open_launcher() as launcher:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(launcher.run, SLEEP, ["sleep", "0.2"])
        elapsed = anyio.current_time() - started
    assert elapsed < 0.5  # one at a time: 0.6 s


async def test_leaving_the_launcher_kills_runs_in_flight() -> None:
    async with open_launcher() as launcher:
        with anyio.move_on_after(0.3):
            await launcher.run(SLEEP, ["sleep", "27.1828"])
        pid = launcher.pid
    assert not psutil.pid_exists(pid)
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == ["27.1828"]
    ]
    assert leftovers == []


async def test_run_after_the_launcher_died_raises_launcher_error() -> None:
    async with open_launcher() as launcher:
        psutil.Process(launcher.pid).kill()
        with pytest.raises(LauncherError):
            await launcher.run(TRUE, ["true"])
        with pytest.raises(LauncherError):
            await launcher.run(TRUE, ["true"])


async def test_measure_collects_every_run_and_the_floor() -> None:
    settings = Settings(commands=("true",), runs=3, warmup=1, jobs=2)
    session = await measure(settings, [resolve("true", shell=False)], _report())
    (result,) = session.results
    assert len(result.runs) == 3
    assert session.floor is not None
    assert 0 < session.floor < 15 * 2**20
    assert result.max_rss >= session.floor * 0.9


async def test_measure_stops_at_a_failing_run() -> None:
    command = resolve("false", shell=False)
    with pytest.raises(RunFailedError) as info:
        await measure(Settings(commands=("false",), runs=2), [command], _report())
    assert info.value.returncode == 1


async def test_measure_records_failing_runs_with_ignore_failure() -> None:
    settings = Settings(commands=("false",), runs=2, warmup=0, ignore_failure=True)
    session = await measure(settings, [resolve("false", shell=False)], _report())
    assert session.results[0].exit_codes == (1, 1)
    assert session.results[0].failed_runs == 2


async def test_measure_with_jobs_stops_every_run_when_one_fails() -> None:
    settings = Settings(commands=("x",), runs=4, warmup=0, jobs=2)
    command = resolve("sh -c 'sleep 0.1; exit 2'", shell=False)
    started = anyio.current_time()
    with pytest.raises(RunFailedError):
        await measure(settings, [command], _report())
    assert anyio.current_time() - started < 1.0

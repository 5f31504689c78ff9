"""``aioproc bench``: the measuring session, on anyio.

One session, start to end::

    resolve commands (shlex / sh -c, PATH)      ── CommandNotFoundError → exit 2
            │
    open_launcher()  ─ a small forked-from process (see _bench_launcher)
            │
    floor: `true` x3 from the launcher, min peak RSS
    --shell: `sh -c ''` x(3 warm-up + 30), mean subtracted from every run
            │
    for each command:   warm-up runs ─▶ timed runs     (J in flight: --jobs)
                        each: [--prepare via sh -c] ─▶ run ─▶ RunFigures
                        non-zero exit ─▶ stop (exit 1, stderr shown) unless -i
            │
    BenchSession ─▶ console summary, --export-json / --export-markdown / --plot

Everything is measured by the launcher (wall time around fork/exit, rusage from
``wait4``); this module only schedules runs and collects figures. J slots pull
runs from a shared counter, so with ``--jobs J`` exactly J runs are in flight
until the last ones drain. A failing run cancels its siblings; the launcher kills
them when the session closes.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio

from ._bench_client import Launcher, LauncherError, RunReport, open_launcher
from ._bench_console import ConsoleReport
from ._bench_export import ExtraMissingError, write_json, write_markdown, write_plot
from ._bench_stats import (
    BenchSession,
    CommandResult,
    RunFigures,
    Settings,
    ShellOverhead,
    subtract_shell,
    summarize,
)
from ._errors import CalledProcessError, CommandNotFoundError

__all__ = [
    "Command",
    "Exports",
    "PrepareFailedError",
    "RunFailedError",
    "main",
    "measure",
    "resolve",
]

SHELL = "/bin/sh"
#: Runs of ``true`` for the floor, and of ``sh -c ''`` for the shell start-up.
FLOOR_RUNS = 3
SHELL_WARMUP = 3
SHELL_RUNS = 30


@dataclass(frozen=True, slots=True)
class Command:
    """A command as given (``text``) and as it will be executed."""

    text: str
    executable: str
    argv: tuple[str, ...]


def resolve(text: str, *, shell: bool) -> Command:
    """Turn a CMD argument into a :class:`Command`.

    Without *shell*, *text* is split with :func:`shlex.split` and its program looked
    up on ``PATH``; with it, *text* is handed to ``/bin/sh -c`` as it is.

    :raises ValueError: when *text* is empty or has unbalanced quotes.
    :raises CommandNotFoundError: when the program is not found or not executable.
    """
    if not text.strip():
        raise ValueError("empty command")
    if shell:
        return Command(text, SHELL, ("sh", "-c", text))
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from exc
    executable = shutil.which(argv[0])
    if executable is None:
        raise CommandNotFoundError(f"command not found: {argv[0]!r}")
    return Command(text, executable, tuple(argv))


class RunFailedError(CalledProcessError):
    """A benchmarked command exited non-zero (without ``-i``)."""


class PrepareFailedError(CalledProcessError):
    """The ``--prepare`` command exited non-zero (always fatal)."""


def _figures(report: RunReport, shell: ShellOverhead | None) -> RunFigures:
    figures = RunFigures(
        wall_time=report.wall_time,
        user_time=report.rusage.user_time,
        system_time=report.rusage.system_time,
        max_rss=report.rusage.max_rss,
        exit_code=report.returncode,
    )
    return figures if shell is None else subtract_shell(figures, shell)


class _Session:
    """The state of one measuring session around one launcher."""

    def __init__(self, launcher: Launcher, settings: Settings, report: ConsoleReport) -> None:
        self.launcher = launcher
        self.settings = settings
        self.report = report
        self.shell: ShellOverhead | None = None
        self.prepare = (
            None
            if settings.prepare is None
            else Command(settings.prepare, SHELL, ("sh", "-c", settings.prepare))
        )

    async def floor(self) -> int | None:
        true = shutil.which("true")
        if true is None:  # pragma: no cover - every POSIX system has one
            return None
        rss = [(await self.launcher.run(true, ["true"])).rusage.max_rss for _ in range(FLOOR_RUNS)]
        return min(rss)

    async def measure_shell(self) -> ShellOverhead:
        argv = ("sh", "-c", "")
        for _ in range(SHELL_WARMUP):
            await self.launcher.run(SHELL, argv)
        reports = [await self.launcher.run(SHELL, argv) for _ in range(SHELL_RUNS)]
        return ShellOverhead(
            wall_time=summarize([r.wall_time for r in reports]),
            user_time=sum(r.rusage.user_time for r in reports) / SHELL_RUNS,
            system_time=sum(r.rusage.system_time for r in reports) / SHELL_RUNS,
            runs=SHELL_RUNS,
        )

    async def _one(self, command: Command) -> RunFigures:
        if self.prepare is not None:
            prep = await self.launcher.run(self.prepare.executable, self.prepare.argv)
            if prep.returncode != 0:
                raise PrepareFailedError(prep.returncode, self.prepare.text, stderr=prep.stderr)
        report = await self.launcher.run(command.executable, command.argv)
        if report.returncode != 0 and not self.settings.ignore_failure:
            raise RunFailedError(report.returncode, command.text, stderr=report.stderr)
        return _figures(report, self.shell)

    async def runs(self, command: Command, count: int) -> list[RunFigures]:
        """*count* runs of *command*, ``jobs`` at a time, in completion order.

        :raises RunFailedError: when a run exits non-zero (without ``-i``).
        :raises PrepareFailedError: when the ``--prepare`` command fails.
        """
        figures: list[RunFigures] = []
        failure: BaseException | None = None
        started = 0

        async def slot() -> None:
            nonlocal started, failure
            while started < count:
                started += 1
                try:
                    run = await self._one(command)
                except (CalledProcessError, LauncherError) as exc:
                    if failure is None:
                        failure = exc
                    tg.cancel_scope.cancel()
                    return
                figures.append(run)
                self.report.advance(run.wall_time)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.settings.jobs, count)):
                tg.start_soon(slot)
        if failure is not None:
            raise failure
        return figures

    async def command(self, command: Command) -> CommandResult:
        self.report.phase("warm-up", self.settings.warmup)
        await self.runs(command, self.settings.warmup)
        self.report.phase("measuring", self.settings.runs)
        started = anyio.current_time()
        figures = await self.runs(command, self.settings.runs)
        elapsed = anyio.current_time() - started
        return CommandResult(command.text, command.argv, tuple(figures), elapsed)


async def measure(
    settings: Settings, commands: Sequence[Command], report: ConsoleReport
) -> BenchSession:
    """Run a whole session and return its figures, printing as it goes.

    :raises RunFailedError: when a command exits non-zero (without ``-i``).
    :raises PrepareFailedError: when the ``--prepare`` command exits non-zero.
    :raises LauncherError: when the launcher process dies or cannot start.
    """
    async with open_launcher() as launcher:
        session = _Session(launcher, settings, report)
        try:
            floor = await session.floor()
            report.floor(floor)
            if settings.shell:
                session.shell = await session.measure_shell()
                report.shell(session.shell)
            results: list[CommandResult] = []
            for index, command in enumerate(commands):
                report.begin(index, command.text)
                result = await session.command(command)
                report.result(result, jobs=settings.jobs)
                results.append(result)
        finally:
            report.stop_progress()
    bench = BenchSession(settings, floor, session.shell, tuple(results))
    report.summary(bench)
    return bench


@dataclass(frozen=True, slots=True)
class Exports:
    """Where to write the session's figures (each optional)."""

    json: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None


def main(
    settings: Settings,
    commands: Sequence[Command],
    exports: Exports,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Measure, print and export; the process exit code (0, or 1 on a failure)."""
    out = out or sys.stdout
    err = err or sys.stderr
    report = ConsoleReport(out, err)
    try:
        session = anyio.run(measure, settings, commands, report)
    except RunFailedError as exc:
        print(f"aioproc bench: error: {exc}", file=err)
        print("Use -i/--ignore-failure to keep going after a failing run.", file=err)
        return 1
    except (PrepareFailedError, LauncherError) as exc:
        what = "--prepare " if isinstance(exc, PrepareFailedError) else ""
        print(f"aioproc bench: error: {what}{exc}", file=err)
        return 1
    try:
        if exports.json is not None:
            write_json(exports.json, session)
        if exports.markdown is not None:
            write_markdown(exports.markdown, session)
        if exports.plot is not None:
            write_plot(exports.plot, session)
    except (OSError, ExtraMissingError) as exc:
        print(f"aioproc bench: error: {exc}", file=err)
        return 1
    return 0

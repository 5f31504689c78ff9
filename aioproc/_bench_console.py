"""What ``aioproc bench`` prints: per-command figures, the summary, and progress.

Results go to stdout as plain text, in hyperfine's layout, printed as each
command finishes. Progress goes to stderr: a rich progress bar when stderr is a
terminal and the ``cli`` extra is installed; otherwise one plain line per phase
(with a one-line install hint when only rich is missing on a terminal).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, TextIO

from ._bench_stats import (
    BenchSession,
    CommandResult,
    Relative,
    ShellOverhead,
    relative_speeds,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "CLI_HINT",
    "ConsoleReport",
    "format_bytes",
    "format_time",
    "format_times",
    "time_unit",
]

CLI_HINT = "hint: install the cli extra for a progress bar: pip install 'aioproc[cli]'"

_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6))


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit (name, size in seconds) that shows *seconds* best."""
    for name, size in _UNITS:
        if seconds >= size:
            return name, size
    return _UNITS[-1]


def format_time(seconds: float, unit: tuple[str, float] | None = None) -> str:
    """``51.2 ms``: *seconds* in *unit* (chosen from the value when omitted)."""
    name, size = unit or time_unit(seconds)
    return f"{seconds / size:.1f} {name}" if size < 1 else f"{seconds / size:.3f} {name}"


def format_times(*values: float) -> list[str]:
    """Several durations in the unit of the first, for columns that line up."""
    unit = time_unit(values[0])
    return [format_time(v, unit) for v in values]


def format_bytes(count: int | None) -> str:
    """``8.1 MiB``; ``n/a`` for ``None``."""
    if count is None:
        return "n/a"
    value = float(count)
    for name in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or name == "GiB":
            return f"{value:.0f} {name}" if name == "B" else f"{value:.1f} {name}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_ratio(relative: Relative) -> str:
    """``3.95 ± 0.05``; ``∞`` when the reference took no measurable time."""
    if relative.ratio is None or math.isinf(relative.ratio):
        return "∞"
    if relative.stddev is None:
        return f"{relative.ratio:.2f}"
    return f"{relative.ratio:.2f} ± {relative.stddev:.2f}"


class _ProgressLike(Protocol):
    def phase(self, label: str, total: int) -> None: ...
    def advance(self, wall_time: float) -> None: ...
    def stop(self) -> None: ...


class _PlainProgress:
    """Not a terminal (or no rich): one line per phase on stderr."""

    def __init__(self, err: TextIO) -> None:
        self._err = err

    def phase(self, label: str, total: int) -> None:
        runs = "run" if total == 1 else "runs"
        print(f"  {label}: {total} {runs}", file=self._err, flush=True)

    def advance(self, wall_time: float) -> None:
        pass

    def stop(self) -> None:
        pass


class _RichProgress:
    """A transient rich progress bar on stderr, one phase at a time."""

    def __init__(self, err: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[current]}"),
            TimeRemainingColumn(),
        )
        self._console = Console(file=err)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._sum = 0.0
        self._done = 0

    def phase(self, label: str, total: int) -> None:
        from rich.progress import Progress

        self.stop()
        self._progress = Progress(*self._columns, console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, current="")
        self._sum = 0.0
        self._done = 0

    def advance(self, wall_time: float) -> None:
        if self._progress is None or self._task is None:
            return
        self._sum += wall_time
        self._done += 1
        current = f"current estimate: {format_time(self._sum / self._done)}"
        self._progress.update(self._task, advance=1, current=current)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _make_progress(err: TextIO) -> _ProgressLike:
    isatty = getattr(err, "isatty", None)
    if isatty is None or not isatty():
        return _PlainProgress(err)
    try:
        return _RichProgress(err)
    except ImportError:
        print(CLI_HINT, file=err, flush=True)
        return _PlainProgress(err)


class ConsoleReport:
    """Prints a session as it happens: figures to *out*, progress to *err*."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._progress = _make_progress(err)
        self._floor: int | None = None

    def _print(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)

    def floor(self, floor: int | None) -> None:
        """The peak RSS of ``true`` started from the launcher."""
        self._floor = floor
        if floor is None:
            self._print("Floor: unknown (no `true` on PATH)")
        else:
            self._print(
                f"Floor: {format_bytes(floor)} peak RSS for `true` forked from the launcher "
                "(no run can report less)"
            )

    def shell(self, overhead: ShellOverhead) -> None:
        """The measured shell start-up that is subtracted from every run."""
        wall = overhead.wall_time
        spread = f" ± {format_time(wall.stddev)}" if wall.stddev is not None else ""
        self._print(
            f"Shell start-up: {format_time(wall.mean)}{spread} "
            f"(mean of {overhead.runs} runs of `sh -c ''`), subtracted from every run"
        )

    def begin(self, index: int, command: str) -> None:
        """Command number *index* (from 0) is about to be measured."""
        self._print()
        self._print(f"Benchmark {index + 1}: {command}")

    def phase(self, label: str, total: int) -> None:
        """A phase of *total* runs starts: ``warm-up`` or ``measuring``."""
        if total:
            self._progress.phase(label, total)

    def advance(self, wall_time: float) -> None:
        """One run of the current phase has ended."""
        self._progress.advance(wall_time)

    def stop_progress(self) -> None:
        self._progress.stop()

    def result(self, result: CommandResult, *, jobs: int) -> None:
        """The figures of one command, hyperfine style."""
        self._progress.stop()
        wall = result.wall_time
        mean, stddev = format_times(wall.mean, wall.stddev if wall.stddev is not None else 0.0)
        spread = stddev if wall.stddev is not None else "n/a"
        user, system = format_times(result.user_time, result.system_time)
        low, median, high = format_times(wall.min, wall.median, wall.max)
        runs = len(result.runs)
        time = f"{mean:>10} ± {spread:>10}    [User: {user}, System: {system}]"
        self._print(f"  Time (mean ± σ):     {time}")  # noqa: RUF001 - hyperfine's notation
        self._print(
            f"  Range (min … median … max):  {low} … {median} … {high}    "
            f"{runs} run{'s' if runs != 1 else ''}"
        )
        self._print(
            f"  Peak RSS:            {format_bytes(result.max_rss):>10} (max of the runs)"
            f"    [floor: {format_bytes(self._floor)}]"
        )
        if jobs > 1 and result.throughput is not None:
            self._print(f"  Throughput:          {result.throughput:.1f} runs/s, {jobs} at a time")
        if result.failed_runs:
            codes = ", ".join(str(c) for c in result.exit_codes if c != 0)
            self._print(
                f"  Warning: {result.failed_runs} of {runs} runs exited non-zero "
                f"(ignored with -i): {codes}"
            )

    def summary(self, session: BenchSession) -> None:
        """With several commands: how many times faster the fastest is than each."""
        results = session.results
        if len(results) < 2:
            return
        fastest, relatives = relative_speeds(results)
        self._print()
        self._print("Summary")
        self._print(f"  {results[fastest].command!r} ran")
        others = sorted(
            (i for i in range(len(results)) if i != fastest),
            key=lambda i: results[i].wall_time.mean,
        )
        for i in others:
            self._print(
                f"    {format_ratio(relatives[i])} times faster than {results[i].command!r}"
            )

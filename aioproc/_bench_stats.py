"""The figures of a bench session and the statistics over them (pure, no I/O).

A session measures, once, the *floor* (peak RSS of ``true`` forked from the
launcher) and, with ``--shell``, the shell's own start-up; then each command's
timed runs. :class:`RunFigures` is one run, :class:`CommandResult` one command's
runs with their summary, :class:`BenchSession` the whole thing, which the console
report and the exports read.

Relative speed follows hyperfine: the fastest command (lowest mean) is the
reference and every other command's ratio is ``mean_other / mean_fastest``. Its
uncertainty comes from first-order error propagation for a quotient::

    r = a / b        sd_r = r * sqrt((sd_a / a)**2 + (sd_b / b)**2)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "BenchSession",
    "CommandResult",
    "Relative",
    "RunFigures",
    "Settings",
    "ShellOverhead",
    "Summary",
    "relative_speeds",
    "subtract_shell",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class Settings:
    """The options a session ran with (as given on the command line)."""

    commands: tuple[str, ...]
    runs: int = 10
    warmup: int = 1
    jobs: int = 1
    shell: bool = False
    prepare: str | None = None
    ignore_failure: bool = False


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean, sample standard deviation (``None`` for one value), median and range."""

    mean: float
    stddev: float | None
    median: float
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    """The :class:`Summary` of *values*.

    :raises ValueError: when *values* is empty.
    """
    if not values:
        raise ValueError("no values to summarize")
    return Summary(
        mean=statistics.fmean(values),
        stddev=statistics.stdev(values) if len(values) > 1 else None,
        median=statistics.median(values),
        min=min(values),
        max=max(values),
    )


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One timed run: seconds of wall, user and system time, peak RSS in bytes."""

    wall_time: float
    user_time: float
    system_time: float
    max_rss: int
    exit_code: int


@dataclass(frozen=True, slots=True)
class ShellOverhead:
    """The measured start-up of ``sh -c ''``, subtracted from every run with ``--shell``."""

    wall_time: Summary
    user_time: float
    system_time: float
    runs: int


def subtract_shell(run: RunFigures, shell: ShellOverhead) -> RunFigures:
    """*run* less the shell's mean start-up (wall, user, system), clamped at 0."""
    return RunFigures(
        wall_time=max(0.0, run.wall_time - shell.wall_time.mean),
        user_time=max(0.0, run.user_time - shell.user_time),
        system_time=max(0.0, run.system_time - shell.system_time),
        max_rss=run.max_rss,
        exit_code=run.exit_code,
    )


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One command's timed runs (in completion order) and their summary.

    ``elapsed`` is the wall time of the whole timed phase (with ``--jobs`` it is
    less than the sum of the runs); ``throughput`` is runs per second over it.
    """

    command: str
    argv: tuple[str, ...]
    runs: tuple[RunFigures, ...]
    elapsed: float
    wall_time: Summary = field(init=False)
    user_time: float = field(init=False)
    system_time: float = field(init=False)
    max_rss: int = field(init=False)

    def __post_init__(self) -> None:
        summary = summarize([r.wall_time for r in self.runs])
        object.__setattr__(self, "wall_time", summary)
        object.__setattr__(self, "user_time", statistics.fmean(r.user_time for r in self.runs))
        object.__setattr__(self, "system_time", statistics.fmean(r.system_time for r in self.runs))
        object.__setattr__(self, "max_rss", max(r.max_rss for r in self.runs))

    @property
    def exit_codes(self) -> tuple[int, ...]:
        return tuple(r.exit_code for r in self.runs)

    @property
    def failed_runs(self) -> int:
        return sum(1 for r in self.runs if r.exit_code != 0)

    @property
    def throughput(self) -> float | None:
        return len(self.runs) / self.elapsed if self.elapsed > 0 else None


@dataclass(frozen=True, slots=True)
class Relative:
    """How many times slower than the fastest command a command is (1.0 for it).

    ``ratio`` is ``None`` when the fastest mean is 0 (possible after the shell's
    start-up was subtracted); ``stddev`` is ``None`` when it cannot be computed.
    """

    ratio: float | None
    stddev: float | None


def relative_speeds(results: Sequence[CommandResult]) -> tuple[int, list[Relative]]:
    """The index of the fastest result and each result's :class:`Relative`.

    :raises ValueError: when *results* is empty.
    """
    if not results:
        raise ValueError("no results to compare")
    fastest = min(range(len(results)), key=lambda i: results[i].wall_time.mean)
    ref = results[fastest].wall_time
    relatives: list[Relative] = []
    for index, result in enumerate(results):
        mean = result.wall_time
        if index == fastest:
            relatives.append(Relative(1.0, None))
            continue
        if ref.mean <= 0:
            relatives.append(Relative(1.0 if mean.mean <= 0 else None, None))
            continue
        ratio = mean.mean / ref.mean
        if mean.mean <= 0:  # pragma: no cover - only the fastest can be 0
            relatives.append(Relative(ratio, None))
            continue
        rel_a = (mean.stddev or 0.0) / mean.mean
        rel_b = (ref.stddev or 0.0) / ref.mean
        relatives.append(Relative(ratio, ratio * math.hypot(rel_a, rel_b)))
    return fastest, relatives


@dataclass(frozen=True, slots=True)
class BenchSession:
    """Everything one ``aioproc bench`` invocation measured.

    ``floor`` is the peak RSS in bytes of ``true`` forked from the launcher
    (``None`` when ``true`` could not be found); ``shell`` the measured shell
    start-up with ``--shell``.
    """

    settings: Settings
    floor: int | None
    shell: ShellOverhead | None
    results: tuple[CommandResult, ...]

"""Exports of a bench session: JSON (``docs/bench-json-schema.md``), a markdown
table, and a box plot PNG (matplotlib, the ``plot`` extra, Agg backend).

All three read a finished :class:`~aioproc._bench_stats.BenchSession`; none of
them measures anything. JSON carries times in seconds and memory in bytes; the
markdown table and the plot pick a readable unit.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

from ._bench_console import format_ratio
from ._bench_stats import BenchSession, Summary, relative_speeds

__all__ = [
    "PLOT_HINT",
    "SCHEMA_VERSION",
    "ExtraMissingError",
    "have_matplotlib",
    "markdown_table",
    "session_to_json",
    "write_json",
    "write_markdown",
    "write_plot",
]

#: Bumped when a field changes meaning or goes away (adding fields does not).
SCHEMA_VERSION = 1
PLOT_HINT = "--plot needs matplotlib: pip install 'aioproc[plot]'"


class ExtraMissingError(ImportError):
    """An optional dependency (an extra) that this feature needs is not installed."""


def have_matplotlib() -> bool:
    """Whether the ``plot`` extra can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # matplotlib in sys.modules as None: import blocked
        return False


def _summary(summary: Summary) -> dict[str, float | None]:
    return {
        "mean": summary.mean,
        "stddev": summary.stddev,
        "median": summary.median,
        "min": summary.min,
        "max": summary.max,
    }


def _version() -> str:
    from . import __version__

    return __version__


def session_to_json(session: BenchSession) -> dict[str, Any]:
    """The session as the JSON document described in ``docs/bench-json-schema.md``."""
    settings = session.settings
    fastest, relatives = relative_speeds(session.results)
    shell = None
    if session.shell is not None:
        shell = {
            "command": "sh -c ''",
            "runs": session.shell.runs,
            **_summary(session.shell.wall_time),
            "user": session.shell.user_time,
            "system": session.shell.system_time,
        }
    results = []
    for result, relative in zip(session.results, relatives, strict=True):
        results.append(
            {
                "command": result.command,
                "argv": list(result.argv),
                **_summary(result.wall_time),
                "user": result.user_time,
                "system": result.system_time,
                "max_rss": result.max_rss,
                "elapsed": result.elapsed,
                "throughput": result.throughput,
                "relative": relative.ratio,
                "relative_stddev": relative.stddev,
                "exit_codes": list(result.exit_codes),
                "times": [r.wall_time for r in result.runs],
                "runs": [
                    {
                        "wall_time": r.wall_time,
                        "user_time": r.user_time,
                        "system_time": r.system_time,
                        "max_rss": r.max_rss,
                        "exit_code": r.exit_code,
                    }
                    for r in result.runs
                ],
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "aioproc bench", "version": _version()},
        "python": platform.python_version(),
        "platform": sys.platform,
        "settings": {
            "runs": settings.runs,
            "warmup": settings.warmup,
            "jobs": settings.jobs,
            "shell": settings.shell,
            "prepare": settings.prepare,
            "ignore_failure": settings.ignore_failure,
        },
        "floor": None if session.floor is None else {"command": "true", "max_rss": session.floor},
        "shell_overhead": shell,
        "fastest": fastest,
        "results": results,
    }


def write_json(path: Path, session: BenchSession) -> None:
    """Write :func:`session_to_json` to *path* (UTF-8, indented).

    :raises OSError: when *path* cannot be written.
    """
    text = json.dumps(session_to_json(session), indent=2, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(session: BenchSession) -> str:
    """A markdown table of the session, one row per command, and a note on the floor."""
    fastest, relatives = relative_speeds(session.results)
    unit, size = ("ms", 1e-3)
    if min(r.wall_time.mean for r in session.results) >= 1.0:
        unit, size = ("s", 1.0)
    mib = 1024 * 1024
    lines = [
        f"| Command | Mean [{unit}] | Min [{unit}] | Median [{unit}] | Max [{unit}] "
        f"| User [{unit}] | System [{unit}] | Peak RSS [MiB] | Relative |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, relative in zip(session.results, relatives, strict=True):
        wall = result.wall_time
        mean = f"{wall.mean / size:.1f}"
        if wall.stddev is not None:
            mean += f" ± {wall.stddev / size:.1f}"
        cells = [
            f"`{_cell(result.command)}`",
            mean,
            f"{wall.min / size:.1f}",
            f"{wall.median / size:.1f}",
            f"{wall.max / size:.1f}",
            f"{result.user_time / size:.1f}",
            f"{result.system_time / size:.1f}",
            f"{result.max_rss / mib:.1f}",
            format_ratio(relative),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [""]
    if session.floor is not None:
        notes.append(
            f"Floor: `true` forked from the launcher peaks at {session.floor / mib:.1f} MiB; "
            "no run can report less."
        )
    if session.shell is not None:
        notes.append(
            f"Shell start-up ({session.shell.wall_time.mean * 1e3:.2f} ms, "
            f"`sh -c ''`) subtracted from every run."
        )
    s = session.settings
    notes.append(
        f"{s.runs} runs per command after {s.warmup} warm-up, {s.jobs} at a time; "
        f"fastest: `{_cell(session.results[fastest].command)}`."
    )
    return "\n".join(lines + notes) + "\n"


def write_markdown(path: Path, session: BenchSession) -> None:
    """Write :func:`markdown_table` to *path*.

    :raises OSError: when *path* cannot be written.
    """
    path.write_text(markdown_table(session), encoding="utf-8")


def write_plot(path: Path, session: BenchSession) -> None:
    """A box plot of every command's wall times, as a PNG at *path*.

    Uses matplotlib's object API (no pyplot, so no global backend state); the
    figure renders with Agg.

    :raises ExtraMissingError: when matplotlib is not installed.
    :raises OSError: when *path* cannot be written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ExtraMissingError(PLOT_HINT) from exc
    results = session.results
    scale, unit = (1e3, "ms")
    if min(r.wall_time.mean for r in results) >= 1.0:
        scale, unit = (1.0, "s")
    labels = [r.command if len(r.command) <= 40 else r.command[:37] + "..." for r in results]
    figure = Figure(figsize=(max(4.0, 1.6 * len(results) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    samples = [[r.wall_time * scale for r in res.runs] for res in results]
    axes.boxplot(samples, showfliers=False)
    for position, values in enumerate(samples, start=1):  # every run, as a dot
        axes.plot([position] * len(values), values, ".", color="tab:blue", alpha=0.5)
    axes.set_xticks(range(1, len(results) + 1), labels, rotation=15 if len(results) > 3 else 0)
    axes.set_ylabel(f"wall time per run [{unit}]")
    axes.set_title(f"aioproc bench: {session.settings.runs} runs per command")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png", dpi=100)

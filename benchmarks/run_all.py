"""`make bench`: run every ``benchmarks/bench_*.py`` and gather their figures.

Each benchmark script runs with this same interpreter, from the repository root,
and writes its rows to ``benchmarks/results/<script name>.json``: a list of
``{"benchmark", "name", "backend", "value", "unit", "ratio_to_floor"}``. This
driver then writes

- ``benchmarks/results/latest.md``: one section per script, one table per
  ``benchmark`` in it (every peer and floor side by side, with the ratios);
- ``benchmarks/results/<script name>.png``: a bar chart per script (matplotlib,
  the ``plot`` extra; skipped with a hint when it is missing).

A script that is missing, fails, times out or writes no (or malformed) rows is
reported in ``latest.md`` and on the console; the others still run. The exit
status is 1 when a script that exists failed, else 0.

    python benchmarks/run_all.py [--dir DIR] [--timeout S] [NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: The scripts the project's issues ask for; one that does not exist is reported.
EXPECTED = ("bench_subprocess", "bench_worker", "bench_pool")
ROW_KEYS = ("benchmark", "name", "backend", "value", "unit", "ratio_to_floor")
PLOT_HINT = "charts skipped: matplotlib is missing (pip install 'aioproc[plot]')"


@dataclass
class Outcome:
    """What one benchmark script did."""

    name: str
    status: str  # "ok", "failed", "missing"
    seconds: float = 0.0
    detail: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    chart: Path | None = None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _valid_rows(data: object) -> list[dict[str, Any]]:
    """The rows of a results file; raises ValueError naming what is wrong."""
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty JSON list of rows")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"row {index} is not an object")
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {index} lacks {', '.join(missing)}")
        if not isinstance(row["value"], int | float):
            raise ValueError(f"row {index}: value {row['value']!r} is not a number")
    return data


def run_one(script: Path, results: Path, timeout: float) -> Outcome:
    """Run *script* (its stdout straight to ours) and read ``results/<stem>.json``."""
    name = script.stem
    out_file = results / f"{name}.json"
    started_wall = time.time()
    started = time.perf_counter()
    print(f"== {name}", flush=True)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=script.parent.parent,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own group, so a timeout kills all of it
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    seconds = time.perf_counter() - started
    if returncode is None:
        return Outcome(name, "failed", seconds, f"timed out after {timeout:g} s\n{_tail(errors)}")
    if returncode != 0:
        return Outcome(name, "failed", seconds, f"exited with code {returncode}\n{_tail(errors)}")
    if not out_file.exists() or out_file.stat().st_mtime < started_wall - 1:
        return Outcome(name, "failed", seconds, f"exited 0 but did not write {out_file.name}")
    try:
        rows = _valid_rows(json.loads(out_file.read_text()))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        return Outcome(name, "failed", seconds, f"{out_file.name}: {exc}")
    return Outcome(name, "ok", seconds, rows=rows)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ratio(value: object) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.2f}x"
    return "-"


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["benchmark"]), []).append(row)
    return groups


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def markdown(outcomes: Sequence[Outcome], notes: Sequence[str]) -> str:
    """The text of ``latest.md``."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# aioproc benchmarks: latest run",
        "",
        f"{now} · Python {platform.python_version()} · {platform.system()} "
        f"{platform.release()} · {cpus} CPUs. What each figure means and the goals: "
        "[benchmarks/README.md](../README.md).",
        "",
        "| Script | Status | Time |",
        "|:---|:---|---:|",
    ]
    for outcome in outcomes:
        took = f"{outcome.seconds:.1f} s" if outcome.status != "missing" else "-"
        lines.append(f"| {outcome.name} | {outcome.status} | {took} |")
    lines.extend(f"\n{note}" for note in notes)
    for outcome in outcomes:
        lines += ["", f"## {outcome.name}", ""]
        if outcome.status != "ok":
            lines.append(f"**{outcome.status.upper()}**: " + outcome.detail.splitlines()[0])
            rest = outcome.detail.splitlines()[1:]
            if rest:
                lines += ["", "```", *rest, "```"]
            continue
        if outcome.chart is not None:
            lines += [f"![{outcome.name}]({outcome.chart.name})", ""]
        for benchmark, rows in _groups(outcome.rows).items():
            lines += [
                f"### {benchmark}",
                "",
                "| Name | Backend | Value | Unit | Ratio to floor |",
                "|:---|:---|---:|:---|---:|",
            ]
            for row in rows:
                cells = [
                    _cell(row["name"]),
                    _cell(row["backend"] or "-"),
                    _number(float(row["value"])),
                    _cell(row["unit"]),
                    _ratio(row["ratio_to_floor"]),
                ]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def chart(outcome: Outcome, path: Path) -> Path:
    """A PNG of *outcome*'s rows: one panel per (benchmark, unit), one bar per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in outcome.rows:
        panels.setdefault((str(row["benchmark"]), str(row["unit"])), []).append(row)
    heights = [max(1.2, 0.35 * len(rows) + 0.9) for rows in panels.values()]
    figure = Figure(figsize=(9, sum(heights)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(panels), 1, height_ratios=heights)
    for index, ((benchmark, unit), rows) in enumerate(panels.items()):
        axes = figure.add_subplot(grid[index])
        labels = [f"{r['name']} [{r['backend']}]" if r["backend"] else str(r["name"]) for r in rows]
        values = [float(r["value"]) for r in rows]
        colors = ["tab:gray" if r["ratio_to_floor"] == 1 else "tab:blue" for r in rows]
        bars = axes.barh(range(len(rows)), values, color=colors)
        axes.set_yticks(range(len(rows)), labels, fontsize=8)
        axes.invert_yaxis()
        axes.set_title(benchmark, fontsize=10, loc="left")
        axes.set_xlabel(unit, fontsize=8)
        axes.bar_label(bars, [_ratio(r["ratio_to_floor"]) for r in rows], fontsize=7, padding=2)
        axes.margins(x=0.15)
    figure.suptitle(f"{outcome.name} (grey: the floor; labels: ratio to the floor)", fontsize=10)
    figure.savefig(path, format="png", dpi=100)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=HERE, help="where the bench_*.py live")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per script")
    parser.add_argument("names", nargs="*", help="only these scripts (bench_pool or pool)")
    args = parser.parse_args(argv)
    bench_dir: Path = args.dir.resolve()
    results = bench_dir / "results"
    results.mkdir(exist_ok=True)
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.names}
    scripts = sorted(p for p in bench_dir.glob("bench_*.py") if not wanted or p.stem in wanted)
    present = {p.stem for p in scripts}
    outcomes = [run_one(script, results, args.timeout) for script in scripts]
    outcomes += [
        Outcome(name, "missing", detail=f"benchmarks/{name}.py does not exist")
        for name in EXPECTED
        if name not in present and (not wanted or name in wanted)
    ]
    notes: list[str] = []
    try:
        import matplotlib  # noqa: F401 - only to know whether charts can be drawn
    except ImportError:
        notes.append(PLOT_HINT)
        print(PLOT_HINT, file=sys.stderr)
    else:
        for outcome in outcomes:
            if outcome.status == "ok":
                outcome.chart = chart(outcome, results / f"{outcome.name}.png")
    report = results / "latest.md"
    report.write_text(markdown(outcomes, notes), encoding="utf-8")
    print(f"\nwrote {report}")
    for outcome in outcomes:
        if outcome.status != "ok":
            print(f"{outcome.name}: {outcome.status}: {outcome.detail}", file=sys.stderr)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())

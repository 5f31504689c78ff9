"""The ``aioproc`` command line: ``aioproc bench`` (also ``python -m aioproc bench``).

This module only parses and checks arguments; measuring lives in
:mod:`aioproc._bench`. Anything wrong with the arguments -- ``-n 0``, no command,
a program that is not on ``PATH``, an export file in a missing directory, ``--plot``
without matplotlib -- is a usage error: argparse prints it and exits with status
2 before anything runs. A command that fails while being measured exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._bench import Command, Exports, resolve
from ._bench import main as bench_main
from ._bench_export import PLOT_HINT, have_matplotlib
from ._bench_stats import Settings
from ._errors import CommandNotFoundError

__all__ = ["build_parser", "main"]

_BENCH_DESCRIPTION = """\
Run each command RUNS times (after warm-up runs, JOBS at a time) and report wall
time (mean ± stdev, min … median … max), user and system CPU, and the peak RSS of
the child from its own rusage. With several commands, say how many times faster
the fastest is. Runs are forked from a small launcher process, so a child's peak
RSS is its own; the floor (peak RSS of `true` from the launcher) is printed
beside the figures.
"""


def _count(minimum: int) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"
    return parse  # type: ignore[return-value]


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and its ``bench`` sub-parser."""
    parser = argparse.ArgumentParser(
        prog="aioproc", description="aioproc: child processes on anyio."
    )
    commands = parser.add_subparsers(dest="subcommand", metavar="{bench}", required=True)
    bench = commands.add_parser(
        "bench",
        help="benchmark commands, hyperfine style, with per-run CPU and peak memory",
        description=_BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "-n", "--runs", type=_count(1), default=10, metavar="RUNS", help="timed runs (10)"
    )
    bench.add_argument(
        "-w", "--warmup", type=_count(0), default=1, metavar="N", help="uncounted runs first (1)"
    )
    bench.add_argument(
        "-j", "--jobs", type=_count(1), default=1, metavar="J", help="runs in flight at once (1)"
    )
    bench.add_argument(
        "--shell",
        action="store_true",
        help="run each CMD with /bin/sh -c and subtract the shell's measured start-up",
    )
    bench.add_argument(
        "--prepare", metavar="CMD", help="run CMD with /bin/sh -c before each run (not timed)"
    )
    bench.add_argument(
        "-i",
        "--ignore-failure",
        action="store_true",
        help="keep going when a command exits non-zero",
    )
    bench.add_argument("--export-json", type=Path, metavar="F", help="every run's figures")
    bench.add_argument("--export-markdown", type=Path, metavar="F", help="a summary table")
    bench.add_argument("--plot", type=Path, metavar="F.png", help="a box plot of wall times")
    bench.add_argument("commands", nargs="+", metavar="CMD", help="a command to benchmark")
    return parser, bench


def _check_output(bench: argparse.ArgumentParser, option: str, path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        bench.error(f"{option}: directory {str(path.parent)!r} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioproc`` script; returns the exit status.

    :raises SystemExit: with status 2 on a usage error (argparse).
    """
    parser, bench = build_parser()
    args = parser.parse_args(argv)
    commands: list[Command] = []
    for text in args.commands:
        try:
            commands.append(resolve(text, shell=args.shell))
        except (CommandNotFoundError, ValueError) as exc:
            bench.error(str(exc))
    _check_output(bench, "--export-json", args.export_json)
    _check_output(bench, "--export-markdown", args.export_markdown)
    _check_output(bench, "--plot", args.plot)
    if args.plot is not None and not have_matplotlib():
        bench.error(PLOT_HINT)
    settings = Settings(
        commands=tuple(args.commands),
        runs=args.runs,
        warmup=args.warmup,
        jobs=args.jobs,
        shell=args.shell,
        prepare=args.prepare,
        ignore_failure=args.ignore_failure,
    )
    exports = Exports(json=args.export_json, markdown=args.export_markdown, plot=args.plot)
    try:
        return bench_main(settings, commands, exports)
    except KeyboardInterrupt:
        print("aioproc bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

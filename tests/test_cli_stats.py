"""The bench runner's pure parts: statistics, relative speed, formatting, exports."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from aioproc._bench_console import ConsoleReport, format_bytes, format_time
from aioproc._bench_export import markdown_table, session_to_json, write_json
from aioproc._bench_stats import (
    BenchSession,
    CommandResult,
    RunFigures,
    Settings,
    ShellOverhead,
    relative_speeds,
    subtract_shell,
    summarize,
)


def _result(command: str, *walls: float, rss: int = 1_000_000) -> CommandResult:
    runs = tuple(RunFigures(w, w / 10, w / 20, rss, 0) for w in walls)
    return CommandResult(command, tuple(command.split()), runs, elapsed=sum(walls))


def _session(*results: CommandResult, shell: ShellOverhead | None = None) -> BenchSession:
    settings = Settings(commands=tuple(r.command for r in results), runs=len(results[0].runs))
    return BenchSession(settings, floor=7 * 2**20, shell=shell, results=results)


def test_summary_has_mean_sample_stddev_median_and_range() -> None:
    summary = summarize([1.0, 2.0, 3.0, 10.0])
    assert summary.mean == 4.0
    assert summary.stddev == pytest.approx(4.0825, rel=1e-4)
    assert summary.median == 2.5
    assert (summary.min, summary.max) == (1.0, 10.0)


def test_summary_of_one_value_has_no_stddev() -> None:
    assert summarize([0.5]).stddev is None


def test_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        summarize([])


def test_relative_speed_is_ratio_of_means_with_propagated_error() -> None:
    fast = _result("a", 0.9, 1.1)  # mean 1, sd 0.1414
    slow = _result("b", 3.8, 4.2)  # mean 4, sd 0.2828
    fastest, (rel_slow, rel_fast) = relative_speeds([slow, fast])
    assert fastest == 1
    assert (rel_fast.ratio, rel_fast.stddev) == (1.0, None)
    assert rel_slow.ratio == pytest.approx(4.0)
    expected = 4.0 * math.hypot(0.1414214 / 1.0, 0.2828427 / 4.0)
    assert rel_slow.stddev == pytest.approx(expected, rel=1e-5)


def test_relative_speed_against_a_zero_mean_is_unknown() -> None:
    zero = _result("a", 0.0, 0.0)
    other = _result("b", 0.1, 0.1)
    fastest, relatives = relative_speeds([zero, other])
    assert fastest == 0
    assert relatives[1].ratio is None


def test_shell_subtraction_clamps_at_zero() -> None:
    shell = ShellOverhead(summarize([0.002, 0.002]), user_time=0.001, system_time=0.001, runs=2)
    run = RunFigures(0.0015, 0.0005, 0.004, 123, 0)
    corrected = subtract_shell(run, shell)
    assert corrected.wall_time == 0.0
    assert corrected.user_time == 0.0
    assert corrected.system_time == pytest.approx(0.003)
    assert corrected.max_rss == 123


def test_command_result_peak_rss_is_the_max_over_runs() -> None:
    runs = (RunFigures(1.0, 0.1, 0.1, 5, 0), RunFigures(1.0, 0.1, 0.1, 9, 1))
    result = CommandResult("x", ("x",), runs, elapsed=1.0)
    assert result.max_rss == 9
    assert result.exit_codes == (0, 1)
    assert result.failed_runs == 1
    assert result.throughput == 2.0


def test_time_and_size_formatting_picks_a_readable_unit() -> None:
    assert format_time(0.0512) == "51.2 ms"
    assert format_time(2.5) == "2.500 s"
    assert format_time(0.00004) == "40.0 µs"
    assert format_bytes(8 * 2**20 + 2**19) == "8.5 MiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(None) == "n/a"


def test_json_document_follows_the_schema(tmp_path: Path) -> None:
    shell = ShellOverhead(summarize([0.001, 0.002]), user_time=0.0, system_time=0.001, runs=2)
    session = _session(_result("a", 0.1, 0.3), _result("b", 0.05, 0.05), shell=shell)
    path = tmp_path / "out.json"
    write_json(path, session)
    data = json.loads(path.read_text())
    assert data == session_to_json(session)
    assert data["schema_version"] == 1
    assert data["floor"] == {"command": "true", "max_rss": 7 * 2**20}
    assert data["shell_overhead"]["mean"] == pytest.approx(0.0015)
    assert data["fastest"] == 1
    first = data["results"][0]
    assert first["command"] == "a"
    assert first["mean"] == pytest.approx(0.2)
    assert first["relative"] == pytest.approx(4.0)
    assert first["times"] == [0.1, 0.3]
    assert first["runs"][0] == {
        "wall_time": 0.1,
        "user_time": pytest.approx(0.01),
        "system_time": pytest.approx(0.005),
        "max_rss": 1_000_000,
        "exit_code": 0,
    }


def test_markdown_table_escapes_pipes_and_switches_to_seconds() -> None:
    session = _session(_result("yes | head", 1.5, 2.5), _result("b", 3.0, 3.0))
    table = markdown_table(session)
    lines = table.splitlines()
    assert "Mean [s]" in lines[0]
    assert lines[2].startswith("| `yes \\| head` | 2.0 ± 0.7 | 1.5 | 2.0 | 2.5 |")
    assert lines[3].endswith("| 1.50 ± 0.53 |")  # 1.5 * (0.707 / 2.0)


def test_console_summary_orders_the_slower_commands_by_mean() -> None:
    out = io.StringIO()
    report = ConsoleReport(out, io.StringIO())
    session = _session(_result("c", 0.3, 0.3), _result("a", 0.1, 0.1), _result("b", 0.2, 0.2))
    report.summary(session)
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "Summary",
        "  'a' ran",
        "    2.00 ± 0.00 times faster than 'b'",
        "    3.00 ± 0.00 times faster than 'c'",
    ]

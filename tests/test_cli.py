"""``aioproc bench`` end to end: the CLI run as a real program on real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aioproc._cli import main

from .cli_helpers import ROOT, bench, bench_json, on_terminal, python_code

MB = 1_000_000


def test_two_commands_compare_in_order_with_the_ratio_of_their_means(tmp_path: Path) -> None:
    data = bench_json(tmp_path, "-n", "5", "sleep 0.05", "sleep 0.2")
    fast, slow = data["results"]
    assert [fast["command"], slow["command"]] == ["sleep 0.05", "sleep 0.2"]
    assert data["fastest"] == 0
    assert len(fast["runs"]) == len(slow["runs"]) == 5
    assert fast["min"] <= fast["median"] <= fast["max"]
    assert 0.05 <= fast["mean"] < slow["mean"]
    assert slow["relative"] == pytest.approx(4.0, rel=0.25)
    assert fast["relative"] == 1.0
    assert slow["relative_stddev"] is not None
    assert slow["relative_stddev"] >= 0


def test_summary_says_how_many_times_faster_the_fastest_is() -> None:
    proc = bench("-n", "2", "--warmup", "0", "sleep 0.02", "sleep 0.06")
    assert proc.returncode == 0, proc.stderr
    assert "'sleep 0.02' ran" in proc.stdout
    assert "times faster than 'sleep 0.06'" in proc.stdout
    assert "Time (mean ± σ)" in proc.stdout  # noqa: RUF001 - hyperfine's notation
    assert "Range (min … median … max)" in proc.stdout


def test_peak_rss_is_the_childs_own_from_its_rusage(tmp_path: Path) -> None:
    command = f'{sys.executable} -c "b = bytearray(100_000_000)"'
    data = bench_json(tmp_path, "-n", "1", "--warmup", "0", command)
    (result,) = data["results"]
    assert result["max_rss"] >= 90 * MB
    assert result["runs"][0]["max_rss"] == result["max_rss"]
    assert result["system"] > 0


def test_floor_stays_small_after_the_runner_held_300_mb(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    code = f"from tests.cli_helpers import floor_after_peak; floor_after_peak({str(out)!r})"
    proc = subprocess.run(
        python_code(code), capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    control = json.loads(proc.stdout.splitlines()[0])
    assert control["runner_peak"] >= 300 * MB  # the runner really held it...
    assert control["vfork_true"] >= 250 * MB  # ...and a vforked `true` inherits it
    data = json.loads(out.read_text())
    assert data["floor"]["max_rss"] < 15 * MB
    assert data["results"][0]["max_rss"] < 15 * MB


def test_floor_is_printed_beside_the_figures() -> None:
    proc = bench("-n", "1", "--warmup", "0", "true")
    assert proc.returncode == 0, proc.stderr
    assert "Floor: " in proc.stdout
    assert "[floor: " in proc.stdout


def test_markdown_export_is_a_table_with_one_row_per_command(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = bench("-n", "2", "--warmup", "0", "--export-markdown", out, "true", "sleep 0.01")
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| Command | Mean [ms] |")
    assert "Peak RSS [MiB]" in lines[0]
    assert lines[0].endswith("| Relative |")
    assert lines[1].startswith("|:---|")
    assert lines[2].startswith("| `true` | ")
    assert lines[3].startswith("| `sleep 0.01` | ")
    assert lines[3].rstrip(" |").split(" | ")[-1] != "1.00"  # the slower one is relative
    assert any(line.startswith("Floor: ") for line in lines)


def test_failing_command_stops_the_run_with_exit_1_and_its_stderr() -> None:
    proc = bench("-n", "3", "sh -c 'echo boom >&2; exit 3'")
    assert proc.returncode == 1
    assert "exited with code 3" in proc.stderr
    assert "boom" in proc.stderr
    assert "--ignore-failure" in proc.stderr
    assert "Time (mean" not in proc.stdout


def test_ignore_failure_keeps_going_and_records_exit_codes(tmp_path: Path) -> None:
    data = bench_json(tmp_path, "-i", "-n", "2", "--warmup", "0", "sh -c 'exit 3'")
    (result,) = data["results"]
    assert result["exit_codes"] == [3, 3]
    assert data["settings"]["ignore_failure"] is True


def test_command_killed_by_a_signal_is_a_failure_naming_the_signal() -> None:
    proc = bench("-n", "1", "--warmup", "0", "sh -c 'kill -9 $$'")
    assert proc.returncode == 1
    assert "SIGKILL" in proc.stderr


def test_zero_runs_is_a_usage_error_exit_2() -> None:
    proc = bench("-n", "0", "true")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "at least 1" in proc.stderr


def test_unknown_command_is_a_usage_error_naming_it() -> None:
    proc = bench("no-such-program-aioproc --flag")
    assert proc.returncode == 2
    assert "no-such-program-aioproc" in proc.stderr


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "-n", "3"])
    assert info.value.code == 2
    assert "CMD" in capsys.readouterr().err


def test_unbalanced_quotes_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "echo 'oops"])
    assert info.value.code == 2
    assert "cannot split" in capsys.readouterr().err


def test_export_into_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--export-json", str(tmp_path / "nope" / "x.json"), "true"])
    assert info.value.code == 2


def test_aioproc_without_a_subcommand_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aioproc"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "bench" in proc.stderr


def test_console_script_runs_bench() -> None:
    script = Path(sys.executable).with_name("aioproc")
    proc = subprocess.run(
        [str(script), "bench", "-n", "1", "--warmup", "0", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Benchmark 1: true" in proc.stdout


def test_shell_start_up_is_subtracted(tmp_path: Path) -> None:
    # `:` is a shell builtin: through `sh -c` it costs the shell's start-up and
    # nothing else, so once that is subtracted almost nothing is left.
    data = bench_json(tmp_path, "--shell", "-n", "10", "--warmup", "0", ":")
    overhead = data["shell_overhead"]
    assert overhead["runs"] >= 10
    assert overhead["mean"] > 0
    (result,) = data["results"]
    assert result["argv"] == ["sh", "-c", ":"]
    fastest = min(r["wall_time"] for r in result["runs"])
    assert fastest >= 0.0
    # The fastest run, not the median: a loaded machine spreads single runs by
    # about a shell start-up, but not all ten of them.
    assert fastest < 0.5 * overhead["mean"]
    assert result["median"] < overhead["mean"]  # unsubtracted, it would be about one start-up


def test_shell_sleep_reports_what_the_direct_sleep_does(tmp_path: Path) -> None:
    # Through `sh -c` the shell's start-up is added and then subtracted: what is
    # left matches `sleep` started directly, well within that start-up.
    shell = bench_json(tmp_path, "--shell", "-n", "10", "sleep 0.05")
    direct = bench_json(tmp_path, "-n", "10", "sleep 0.05")
    overhead = shell["shell_overhead"]["mean"]
    assert 0.05 <= shell["results"][0]["median"] < 0.06
    # Minimums, not medians: on a loaded machine a median of 10 moves by more than
    # the shell's start-up; the fastest run of each does not. Without the
    # subtraction the difference would be a whole start-up (`overhead`).
    difference = shell["results"][0]["min"] - direct["results"][0]["min"]
    assert abs(difference) < 0.5 * overhead + 0.0005


def test_jobs_keeps_several_runs_in_flight(tmp_path: Path) -> None:
    data = bench_json(tmp_path, "--jobs", "2", "-n", "4", "--warmup", "0", "sleep 0.2")
    (result,) = data["results"]
    assert data["settings"]["jobs"] == 2
    assert len(result["runs"]) == 4
    assert all(r["wall_time"] >= 0.2 for r in result["runs"])
    assert result["elapsed"] < 0.65  # one at a time would take 0.8 s
    assert result["throughput"] > 6.0


def test_prepare_runs_before_each_run_and_warmup_runs_are_not_counted(tmp_path: Path) -> None:
    log = tmp_path / "log"
    data = bench_json(
        tmp_path,
        "--prepare",
        f"echo prepare >> {log}",
        "--shell",
        "-n",
        "2",
        "--warmup",
        "3",
        f"echo run >> {log}",
    )
    assert log.read_text().split() == ["prepare", "run"] * 5
    assert len(data["results"][0]["runs"]) == 2


def test_prepare_is_not_timed(tmp_path: Path) -> None:
    data = bench_json(tmp_path, "--prepare", "sleep 0.1", "-n", "2", "--warmup", "0", "true")
    assert data["results"][0]["max"] < 0.05


def test_failing_prepare_stops_the_run_even_with_ignore_failure() -> None:
    proc = bench("-i", "--prepare", "echo nope >&2; exit 4", "-n", "2", "true")
    assert proc.returncode == 1
    assert "--prepare" in proc.stderr
    assert "nope" in proc.stderr


def test_background_grandchildren_do_not_outlive_their_run() -> None:
    proc = bench("--shell", "-n", "1", "--warmup", "0", "sleep 31.4159 & exit 0")
    assert proc.returncode == 0, proc.stderr
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[-1:] == ["31.4159"]
    ]
    assert leftovers == []


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "box.png"
    proc = bench("-n", "3", "--warmup", "0", "--plot", out, "true", "sleep 0.01")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_one_line_hint(tmp_path: Path) -> None:
    code = (
        "from tests.cli_helpers import main_without; "
        f"main_without('matplotlib', 'bench', '--plot', {str(tmp_path / 'x.png')!r}, 'true')"
    )
    proc = subprocess.run(
        python_code(code), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "pip install 'aioproc[plot]'" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    proc = bench("-n", "2", "--warmup", "1", "true")
    assert proc.returncode == 0, proc.stderr
    assert "warm-up: 1 run" in proc.stderr
    assert "measuring: 2 runs" in proc.stderr
    assert "\x1b[" not in proc.stderr + proc.stdout


def test_progress_bar_on_a_terminal() -> None:
    terminal, stdout = on_terminal(
        [sys.executable, "-m", "aioproc", "bench", "-n", "2", "--warmup", "0", "sleep 0.05"]
    )
    assert "measuring" in terminal
    assert "━" in terminal  # rich's bar
    assert "current estimate" in terminal
    assert "Benchmark 1: sleep 0.05" in stdout


def test_terminal_without_rich_hints_once_and_falls_back_to_plain_lines() -> None:
    code = "from tests.cli_helpers import main_without; main_without('rich', 'bench', 'true')"
    terminal, stdout = on_terminal(python_code(code))
    assert terminal.count("pip install 'aioproc[cli]'") == 1
    assert "measuring: 10 runs" in terminal
    assert "━" not in terminal
    assert "Benchmark 1: true" in stdout

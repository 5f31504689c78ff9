"""``make bench``'s driver, ``benchmarks/run_all.py``, over fake benchmark scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cli_helpers import ROOT

RUN_ALL = ROOT / "benchmarks" / "run_all.py"


def _fake(bench_dir: Path, name: str, behaviour: str) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.cli_helpers import fake_bench\n"
        f"fake_bench(__file__, {behaviour!r})\n"
    )
    (bench_dir / f"{name}.py").write_text(code)


def _run_all(bench_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_ALL), "--dir", str(bench_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    path = tmp_path / "benchmarks"
    path.mkdir()
    return path


def test_rows_become_one_table_per_benchmark_with_ratios(bench_dir: Path) -> None:
    _fake(bench_dir, "bench_good", "ok")
    proc = _run_all(bench_dir, "good")
    assert proc.returncode == 0, proc.stderr
    latest = (bench_dir / "results" / "latest.md").read_text()
    assert "## bench_good" in latest
    assert "### latency" in latest
    assert "### throughput" in latest
    assert "| run(true) | trio | 0.65 | ms | 1.30x |" in latest
    assert "| a \\| b | uvloop | 12,346 | tasks/s | - |" in latest
    assert "| a table the script prints |" in proc.stdout


def test_each_benchmark_gets_a_png_chart(bench_dir: Path) -> None:
    _fake(bench_dir, "bench_good", "ok")
    proc = _run_all(bench_dir, "good")
    assert proc.returncode == 0, proc.stderr
    chart = bench_dir / "results" / "bench_good.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![bench_good](bench_good.png)" in (bench_dir / "results" / "latest.md").read_text()


def test_failing_scripts_are_reported_and_the_others_still_run(bench_dir: Path) -> None:
    _fake(bench_dir, "bench_a_crash", "crash")
    _fake(bench_dir, "bench_b_silent", "silent")
    _fake(bench_dir, "bench_c_garbage", "garbage")
    _fake(bench_dir, "bench_d_good", "ok")
    proc = _run_all(bench_dir)
    assert proc.returncode == 1
    latest = (bench_dir / "results" / "latest.md").read_text()
    assert "| bench_a_crash | failed |" in latest
    assert "exited with code 3" in latest
    assert "kaboom: the benchmark broke" in latest
    assert "did not write bench_b_silent.json" in latest
    assert "bench_c_garbage.json: expected a non-empty JSON list" in latest
    assert "| bench_d_good | ok |" in latest
    assert "kaboom" in proc.stderr


def test_expected_scripts_that_do_not_exist_are_reported_missing(bench_dir: Path) -> None:
    _fake(bench_dir, "bench_good", "ok")
    proc = _run_all(bench_dir)
    assert proc.returncode == 0, proc.stderr
    latest = (bench_dir / "results" / "latest.md").read_text()
    for name in ("bench_subprocess", "bench_worker", "bench_pool"):
        assert f"| {name} | missing |" in latest
    assert "missing" in proc.stderr


def test_a_script_past_its_timeout_is_killed_and_reported(bench_dir: Path) -> None:
    (bench_dir / "bench_slow.py").write_text("import time\ntime.sleep(30)\n")
    proc = _run_all(bench_dir, "--timeout", "0.5", "slow")
    assert proc.returncode == 1
    assert "timed out after 0.5 s" in (bench_dir / "results" / "latest.md").read_text()

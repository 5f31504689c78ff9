"""Every example runs on its own (as a user would copy and run it) and says what
it shows. They start real processes, so they run once, not per backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_child_processes_example_streams_runs_and_lists() -> None:
    out = run_example("child_processes.py")
    assert "[stdout] tick 4" in out
    assert "'a b c'" in out
    assert "CalledProcessError" in out
    assert "10 + 20 = 30" in out
    assert "worker exited" in out


def test_pool_example_scales_up_down_and_survives_a_crash() -> None:
    out = run_example("pool.py")
    assert "workers total=4" in out
    assert "after idling           workers total=1" in out
    assert "WorkerCrashedError" in out
    assert "the pool carries on" in out


def test_scheduler_example_fires_one_shot_and_periodic_runs() -> None:
    out = run_example("scheduler.py")
    assert out.count("periodic run on worker") == 5
    assert "add(10, 20) = 30" in out
    assert "runs=5 failures=0" in out


def test_trio_example_runs_the_pool_under_trio() -> None:
    out = run_example("on_trio.py")
    assert "add(10, 20) = 30" in out
    assert "8 tasks spread over workers" in out


@pytest.mark.timeout(120)
def test_tour_runs_every_example() -> None:
    out = run_example("tour.py")
    assert "[4/4]" in out
    assert "tour done" in out

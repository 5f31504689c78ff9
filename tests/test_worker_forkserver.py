"""The forkserver start method, scripts run as __main__, and no orphans."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

from aioproc import Worker
from tests import workerfns as wf

SCRIPTS = pathlib.Path(__file__).parent / "scripts"


async def test_forkserver_worker_is_a_child_of_its_zygote() -> None:
    async with Worker(start_method="forkserver") as worker:
        zygote = worker._zygote
        assert zygote is not None
        assert await worker.call(wf.getppid) == zygote.pid
        assert zygote.pid != os.getpid()


async def test_forkserver_preload_is_imported_in_the_zygote() -> None:
    async with Worker(start_method="forkserver", preload=["tests.preload_marker"]) as worker:
        assert await worker.call(wf.preloaded)


async def test_the_zygote_exits_with_its_worker() -> None:
    async with Worker(start_method="forkserver") as worker:
        assert worker._zygote is not None
        zygote_pid = worker._zygote.pid
        assert zygote_pid is not None
        assert psutil.pid_exists(zygote_pid)
    assert not psutil.pid_exists(zygote_pid)


async def test_forkserver_warns_when_preload_started_a_thread() -> None:
    with pytest.warns(RuntimeWarning, match="threads"):
        async with Worker(start_method="forkserver", preload=["tests.workerfns_threads"]) as w:
            assert await w.call(wf.add, 1, 1) == 2


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_function_defined_in_a_main_script_runs_in_the_worker(start_method: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "main_script.py"), start_method],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["49", "__mp_main__"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_no_worker_outlives_a_parent_killed_with_sigkill() -> None:
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "orphan_parent.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 3.0
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(p) for p in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()

"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio, and
every test must leave no child process and no open fd behind."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


def c_run_core_built() -> bool:
    from aioproc import _run

    return _run._CCore is not None


@pytest.fixture(params=["c-core", "python-core"])
def run_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test of run() on each of its cores: the C one (_runcore.c) and the
    Python one that serves the other cases and installs without a compiler."""
    from aioproc import _run

    core: str = request.param
    if core == "c-core" and not c_run_core_built():
        pytest.skip("the C run core is not built here (no C compiler at install)")
    monkeypatch.setattr(_run, "USE_C_CORE", core == "c-core")
    return core


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd of the listdir itself, already closed
            continue
    return fds


@pytest.fixture(scope="session", autouse=True)
def _uvloop_opened_once() -> None:
    """uvloop opens a process-wide pipe with its first loop and keeps it for good;
    open it before any test so that `no_leaks` does not blame the first uvloop test."""
    import asyncio

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.sleep(0))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no child process left, open fds back where they started."""
    me = psutil.Process()
    before = _open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        children = [c for c in me.children(recursive=True) if c.is_running()]
        leaked = {fd: t for fd, t in _open_fds().items() if fd not in before}
        if not children and not leaked:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for child in children:  # do not let one leak cascade into the next test
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    described = [f"{c.pid} {c.name()} ({c.status()})" for c in children if c.is_running()]
    pytest.fail(f"left behind: children={described} fds={leaked}")


def python(code: str) -> list[str]:
    """argv that runs *code* in a fresh interpreter (the tests' child programs)."""
    return [sys.executable, "-c", code]

"""How worker processes and the zygote start: the lean bootstrap skips site.py
(``-S``) when it can and hands the caller's setup over instead; a starting
zygote already takes fork requests."""

from __future__ import annotations

import contextlib
import os
import signal
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioproc
from aioproc import _launcher, _worker_main
from aioproc._errors import WorkerStartError
from aioproc._launcher import Zygote, ZygoteState, caller_sys_path
from tests import startupfns

START_METHODS = ["forkserver", "spawn"]


async def _state(start_method: str) -> dict[str, Any]:
    async with aioproc.Pool(min_workers=1, max_workers=1, start_method=start_method) as pool:
        return await pool.run(startupfns.interpreter_state)


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_workers_see_the_callers_sys_path(start_method: str) -> None:
    state = await _state(start_method)
    assert state["sys_path"] == caller_sys_path()


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_workers_see_the_callers_prefix(start_method: str) -> None:
    state = await _state(start_method)
    assert (state["prefix"], state["exec_prefix"]) == (sys.prefix, sys.exec_prefix)


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_workers_have_the_builtins_site_adds(start_method: str) -> None:
    state = await _state(start_method)
    assert state["builtins"] == ["copyright", "credits", "exit", "help", "license", "quit"]


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_workers_keep_the_callers_distutils_shim(start_method: str) -> None:
    state = await _state(start_method)
    # pytest's assertion rewriter is the test run's own: children never get it.
    mine = sorted(type(f).__module__ for f in sys.meta_path if "_pytest" not in type(f).__module__)
    assert state["finders"] == mine


async def test_forkserver_workers_run_with_the_collector_enabled() -> None:
    state = await _state("forkserver")
    assert state["gc_enabled"] is True


async def test_the_exit_builtin_raises_system_exit_in_a_worker() -> None:
    async with aioproc.Pool(min_workers=1, max_workers=1) as pool:
        assert await pool.run(startupfns.exit_through_builtin, 3) == 3


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_workers_ask_for_sigkill_when_their_parent_dies(start_method: str) -> None:
    async with aioproc.Pool(min_workers=1, max_workers=1, start_method=start_method) as pool:
        assert await pool.run(startupfns.parent_death_signal) == signal.SIGKILL


def test_prctl_is_called_without_the_ctypes_package() -> None:
    prctl = _worker_main._load_prctl()
    assert type(prctl).__module__ == "aioproc._worker_main"


def test_plain_setup_starts_lean_modules_without_site() -> None:
    argv = _launcher._boot_argv("aioproc._worker_main")
    assert argv[0] == "-S"
    assert repr(sys.prefix) in argv[-1]


@pytest.fixture
def pth_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory of our own, scanned afresh."""
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path)])
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)
    _launcher._pth_files_run_code.cache_clear()
    yield tmp_path
    _launcher._pth_files_run_code.cache_clear()


def test_a_pth_file_that_runs_code_keeps_site(pth_dir: Path) -> None:
    (pth_dir / "hook.pth").write_text("/some/dir\nimport os; os.environ\n")
    argv = _launcher._boot_argv("aioproc._worker_main")
    assert argv[0] == "-c"
    assert "restore_site" not in argv[-1]


def test_a_pth_file_of_paths_only_starts_without_site(pth_dir: Path) -> None:
    (pth_dir / "paths.pth").write_text("/some/dir\n# a comment\n")
    assert _launcher._boot_argv("aioproc._worker_main")[0] == "-S"


def test_a_sitecustomize_in_the_caller_keeps_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sitecustomize", sys)
    argv = _launcher._boot_argv("aioproc._zygote")
    assert argv[0] == "-c"


def test_the_zygote_boots_with_the_collector_off() -> None:
    argv = _launcher._boot_argv("aioproc._zygote")
    assert "gc.disable()" in argv[-1]


#: Imported by the socket/signal/threading wrappers (enums) or by importlib: each
#: would add to every pool's cold start.
_HEAVY_MODULES = {"enum", "socket", "signal", "threading", "importlib", "contextlib", "types"}


def test_the_zygote_starts_without_the_heavy_wrapper_modules() -> None:
    argv = _launcher._boot_argv("aioproc._zygote")
    probe = argv[-1].replace("m.main()", f"print(sorted(set(sys.modules) & {_HEAVY_MODULES!r}))")
    assert probe != argv[-1]
    out = subprocess.run(
        [sys.executable, *argv[:-1], probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


async def test_a_handshake_bigger_than_the_pipe_reaches_a_forked_worker() -> None:
    size = 3 * 2**20  # over the 1 MiB pipe buffer: the writer task sends the rest
    async with aioproc.Pool(
        min_workers=1, max_workers=1, initializer=startupfns.keep_size, initargs=(b"x" * size,)
    ) as pool:
        assert await pool.run(startupfns.kept_sizes) == [size]


# -- the zygote takes fork requests while it starts ---------------------------------


async def test_a_worker_asked_of_a_starting_zygote_is_forked_once_it_is_ready() -> None:
    zygote = Zygote()
    async with anyio.create_task_group() as tg:
        tg.start_soon(zygote.serve)
        assert zygote.state is not ZygoteState.RUNNING
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            watch = await zygote.launch(in_r, out_w)
        finally:
            os.close(in_r)
            os.close(out_w)
        assert zygote.state is ZygoteState.RUNNING
        os.close(in_w)  # EOF before the handshake: the worker exits 0
        try:
            assert await watch.wait() == 0
        finally:
            watch.close()
            os.close(out_r)
        await zygote.aclose()


async def test_a_zygote_that_fails_to_start_fails_the_queued_launch_with_its_cause() -> None:
    zygote = Zygote(preload=["no_such_module_xyz"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve_quietly, zygote)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            with pytest.raises(WorkerStartError, match="no_such_module_xyz") as caught:
                await zygote.launch(in_r, out_w)
        finally:
            for fd in (in_r, in_w, out_r, out_w):
                os.close(fd)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert zygote.state is ZygoteState.CLOSED


async def test_a_zygote_closed_before_its_handshake_ends() -> None:
    zygote = Zygote()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve_quietly, zygote)
        await anyio.sleep(0)
        await zygote.aclose()
    assert zygote.state is ZygoteState.CLOSED


async def _serve_quietly(zygote: Zygote) -> None:
    with contextlib.suppress(WorkerStartError):
        await zygote.serve()

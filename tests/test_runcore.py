"""run()'s C core (_runcore.c): where it is used, the stdio words it takes, and
the cases it hands to the Python core. The behaviour of run() itself is tested
on both cores in test_subprocess_run.py."""

from __future__ import annotations

import gc
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

import psutil
import pytest

import aioproc
from aioproc import _run
from tests.conftest import c_run_core_built

needs_c_core = pytest.mark.skipif(
    not c_run_core_built(), reason="the C run core is not built here (no C compiler)"
)


def test_the_c_core_is_built_where_there_is_a_compiler_and_glibc() -> None:
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    version = tuple(int(part) for part in glibc.split()[-1].split(".")[:2]) if glibc else ()
    wanted = (
        shutil.which(compiler) is not None
        and not os.environ.get("AIOPROC_NO_C")
        and sys.platform == "linux"
        and version >= (2, 34)
    )
    assert c_run_core_built() == wanted


@pytest.fixture
def cores_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records each C core run() makes."""
    made: list[object] = []
    real = _run._CCore
    assert real is not None

    def record(*args: Any) -> object:
        core = real(*args)
        made.append(core)
        return core

    monkeypatch.setattr(_run, "_CCore", record)
    return made


@needs_c_core
@pytest.mark.parametrize(
    ("options", "c_core"),
    [
        ({}, True),
        ({"input": b"x"}, True),
        ({"stdout": "devnull", "stderr": "stdout"}, True),
        ({"env": {"PATH": os.environ.get("PATH", ""), "A": "1"}}, True),
        ({"cwd": "/"}, False),
        ({"env": {"PATH": "/usr/bin:/bin"}}, os.environ.get("PATH") == "/usr/bin:/bin"),
        ({"stdout": sys.stderr}, False),
        ({"stderr": 2}, False),
    ],
    ids=["plain", "input", "devnull-merged", "env-same-path", "cwd", "other-path", "file", "fd"],
)
async def test_run_takes_the_c_core_for_the_common_cases_only(
    cores_made: list[object], options: dict[str, Any], c_core: bool
) -> None:
    result = await aioproc.run(["cat"], input=options.pop("input", b""), **options)
    assert result.returncode == 0
    assert len(cores_made) == (1 if c_core else 0)


@needs_c_core
async def test_the_c_core_merges_stderr_into_the_stdout_pipe(cores_made: list[object]) -> None:
    result = await aioproc.run(["sh", "-c", "echo a; echo b >&2; echo c"], stderr="stdout")
    assert result.stdout == b"a\nb\nc\n"
    assert result.stderr is None
    assert len(cores_made) == 1


@needs_c_core
async def test_the_c_core_gives_devnull_and_inherited_streams(
    cores_made: list[object], capfd: pytest.CaptureFixture[str]
) -> None:
    result = await aioproc.run(
        ["sh", "-c", "echo to-devnull; echo to-our-stderr >&2; cat"],
        stdout="devnull",
        stderr="inherit",
    )
    assert result.stdout is None
    assert result.stderr is None
    assert "to-our-stderr" in capfd.readouterr().err
    assert len(cores_made) == 1


@needs_c_core
async def test_the_c_core_accepts_path_like_and_bytes_arguments(
    cores_made: list[object], tmp_path: Any
) -> None:
    (tmp_path / "file").write_text("inside\n")
    result = await aioproc.run(["cat", tmp_path / "file"])
    assert result.stdout == b"inside\n"
    result = await aioproc.run([b"echo", b"bytes"])  # type: ignore[list-item]
    assert result.stdout == b"bytes\n"
    assert len(cores_made) == 2


@needs_c_core
def test_a_core_dropped_before_its_child_was_reaped_kills_and_reaps_it() -> None:
    """A net under the caller's own reaping: no zombie, no fd left."""
    assert _run._CCore is not None
    core = _run._CCore(["sleep", "30"], None, True, 1, 2, 2, None, -1)
    pid = core.pid
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    del core
    gc.collect()
    assert not psutil.pid_exists(pid)


def test_with_our_stdio_fds_closed_run_falls_back_and_still_works() -> None:
    """A new pipe may then get fd 0, 1 or 2: the C core refuses (EBADF) and the
    Python start, which orders its dup2s carefully, takes over."""
    script = (
        "import asyncio, os, aioproc\n"
        "async def main():\n"
        "    os.close(0)  # now: the loop's own fds are open already\n"
        "    return await aioproc.run(['sh', '-c', 'echo out; echo err >&2'])\n"
        "result = asyncio.run(main())\n"
        "os.write(1, result.stdout + result.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.stderr == b""
    assert done.stdout == b"out\nerr\n"

"""glibc's posix_spawn with the closefrom action (aioproc._posix_spawn), driven
directly: its caches of file actions and argument vectors fill up, overflow and
stay correct."""

from __future__ import annotations

import os
import sys

import pytest

from aioproc import _posix_spawn

pytestmark = pytest.mark.skipif(
    _posix_spawn._load() is None, reason="this C library has no closefrom spawn action"
)


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_more_distinct_commands_than_the_cache_holds_all_run() -> None:
    read_end, write_end = os.pipe()
    try:
        for i in range(_posix_spawn._CACHED_ARGVS + 8):
            pid = _posix_spawn.spawn(["echo", str(i)], [None, write_end, None], None, True)
            assert pid is not None
            assert _wait(pid) == 0
            assert os.read(read_end, 100) == f"{i}\n".encode()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_more_distinct_fd_sets_than_the_cache_holds_all_reach_the_child() -> None:
    pipes = [os.pipe() for _ in range(_posix_spawn._CACHED_ACTIONS + 8)]
    try:
        for i, (_, write_end) in enumerate(pipes):
            pid = _posix_spawn.spawn(["echo", str(i)], [None, write_end, None], None, True)
            assert pid is not None
            assert _wait(pid) == 0
        for i, (read_end, _) in enumerate(pipes):
            assert os.read(read_end, 100) == f"{i}\n".encode()
    finally:
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def test_the_child_leads_a_new_process_group_only_when_asked() -> None:
    read_end, write_end = os.pipe()
    script = 'import os; print(os.getpgid(0) == os.getpid(), end="")'
    try:
        for own_group, expected in ((True, b"True"), (False, b"False")):
            pid = _posix_spawn.spawn(
                [sys.executable, "-c", script], [None, write_end, None], None, own_group
            )
            assert pid is not None
            assert _wait(pid) == 0
            assert os.read(read_end, 100) == expected
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_failed_start_is_an_oserror_naming_the_program() -> None:
    with pytest.raises(FileNotFoundError) as caught:
        _posix_spawn.spawn(["aioproc-no-such-program"], [None, None, None], None, True)
    assert caught.value.filename == "aioproc-no-such-program"

from __future__ import annotations

import concurrent.futures
import subprocess

import aioproc


def test_every_error_derives_from_aioproc_error() -> None:
    names = [n for n in aioproc.__all__ if n.endswith(("Error", "Exceeded", "Full", "Closed"))]
    names.append("EndOfChannel")
    for name in names:
        assert issubclass(getattr(aioproc, name), aioproc.AioprocError), name


def test_errors_subclass_the_builtins_they_mean() -> None:
    assert issubclass(aioproc.CommandNotFoundError, FileNotFoundError)
    assert issubclass(aioproc.CalledProcessError, subprocess.CalledProcessError)
    assert issubclass(aioproc.ProcessTimeoutError, TimeoutError)
    assert issubclass(aioproc.TaskTimeoutError, TimeoutError)
    assert issubclass(aioproc.TaskCancelledError, concurrent.futures.CancelledError)


def test_called_process_error_names_command_code_and_stderr_tail() -> None:
    stderr = "".join(f"line {i}\n" for i in range(100)).encode()
    err = aioproc.CalledProcessError(3, ["prog", "arg"], b"", stderr)
    text = str(err)
    assert "prog" in text
    assert "3" in text
    assert "line 99" in text
    assert "line 50" not in text  # only the last ~20 lines


def test_called_process_error_by_signal_names_it() -> None:
    err = aioproc.CalledProcessError(-9, ["prog"])
    assert err.signal == 9
    assert "SIGKILL" in str(err)


def test_worker_crashed_error_carries_exit_code_and_signal() -> None:
    err = aioproc.WorkerCrashedError(task_id=7, exitcode=-9)
    assert (err.task_id, err.exitcode, err.signal) == (7, -9, 9)
    assert "7" in str(err)
    assert "SIGKILL" in str(err)
    plain = aioproc.WorkerCrashedError(exitcode=3)
    assert (plain.task_id, plain.exitcode, plain.signal) == (None, 3, None)
    assert "code 3" in str(plain)

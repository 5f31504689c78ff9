"""The public surface is exactly the spec's (SPEC "Public names")."""

from __future__ import annotations

import importlib
import inspect

import aioproc

SPEC_NAMES = {
    "run", "run_shell", "spawn", "Process", "OutputStream", "CompletedProcess", "Rusage",
    "Worker", "Pool", "Task", "PoolStats", "PoolEvent", "Scheduler", "Job",
    "ProcessManager", "ProcessInfo", "ProcessStats",
    "AioprocError", "CommandNotFoundError", "CalledProcessError", "ProcessTimeoutError",
    "OutputLimitExceeded", "ProtocolError", "EndOfChannel", "TaskError", "WorkerCrashedError",
    "WorkerStartError", "TaskTimeoutError", "TaskCancelledError", "PoolBrokenError", "QueueFull",
    "PoolClosed",
}  # fmt: skip


def test_all_is_exactly_the_spec_names() -> None:
    assert set(aioproc.__all__) == SPEC_NAMES
    assert len(aioproc.__all__) == len(SPEC_NAMES)


def test_every_public_name_is_importable() -> None:
    for name in aioproc.__all__:
        assert getattr(aioproc, name) is not None


def test_protocol_and_testing_are_modules_outside_all() -> None:
    for module in ("aioproc.protocol", "aioproc.testing"):
        importlib.import_module(module)
        assert module.rsplit(".", 1)[1] not in aioproc.__all__
    from aioproc.protocol import Decoder, encode
    from aioproc.testing import ManualClock

    assert callable(encode)
    assert callable(Decoder)
    assert callable(ManualClock)


def test_options_are_keyword_only() -> None:
    """fn and its positional arguments come first; every option is keyword-only."""
    checks = {
        aioproc.run: {"input", "cwd", "env", "timeout", "check", "max_output", "kill_grace"},
        aioproc.spawn: {"stdin", "stdout", "stderr", "cwd", "env", "kill_grace", "max_output"},
        aioproc.Worker: {"preload", "initializer", "main", "start_method", "max_frame"},
        aioproc.Pool: {"min_workers", "max_workers", "idle_timeout", "task_timeout"},
        aioproc.Pool.run: {"timeout", "retries"},
        aioproc.Pool.submit: {"timeout", "retries"},
        aioproc.Worker.call: {"timeout"},
        aioproc.Scheduler.every: {"max_runs", "start_delay", "overlap"},
    }
    for fn, options in checks.items():
        params = inspect.signature(fn).parameters
        for option in options:
            assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, (fn, option)


def test_spec_defaults() -> None:
    run = inspect.signature(aioproc.run).parameters
    assert run["max_output"].default == 64 * 2**20
    assert run["kill_grace"].default == 5.0
    assert run["check"].default is True
    pool = inspect.signature(aioproc.Pool).parameters
    assert pool["start_method"].default == "forkserver"
    assert pool["idle_timeout"].default == 300.0
    assert pool["shutdown_timeout"].default == 30.0
    assert pool["start_timeout"].default == 10.0
    assert inspect.signature(aioproc.Worker).parameters["start_method"].default == "spawn"
    assert inspect.signature(aioproc.Scheduler.every).parameters["overlap"].default == "skip"

"""The public Worker handle (SPEC §2): calls, errors, timeouts, crashes, lifecycle."""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any

import anyio
import pytest

from aioproc import (
    ProtocolError,
    TaskError,
    TaskTimeoutError,
    Worker,
    WorkerCrashedError,
    WorkerStartError,
)
from aioproc._errors import RemoteTraceback
from tests import workerfns as wf


@pytest.fixture(params=["spawn", "forkserver"])
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_call_returns_the_result(start_method: str) -> None:
    async with Worker(start_method=start_method) as worker:
        assert await worker.call(wf.add, 2, 3) == 5


async def test_async_function_runs_on_the_callers_backend(
    start_method: str, anyio_backend: Any
) -> None:
    expected = "trio" if anyio_backend[0] == "trio" else "asyncio"
    if anyio_backend[1].get("use_uvloop"):
        expected = "uvloop"
    async with Worker(start_method=start_method) as worker:
        assert await worker.call(wf.async_backend) == expected
        assert await worker.call(wf.async_add, 1, 2) == 3


async def test_tuples_come_back_as_tuples_and_int_enum_as_int() -> None:
    async with Worker() as worker:
        assert await worker.call(wf.echo, (1, [2, (3,)])) == (1, [2, (3,)])
        assert await worker.call(wf.type_name, wf.Color.RED) == "int"


async def test_keyword_arguments_go_through_partial() -> None:
    async with Worker() as worker:
        assert await worker.call(functools.partial(wf.join, "a", "b", sep="+")) == "a+b"
        assert await worker.call(wf.bound_add, 1) == 101


async def test_string_reference_names_the_function() -> None:
    async with Worker() as worker:
        assert await worker.call("tests.workerfns:add", 4, 4) == 8


async def test_lambda_is_rejected_before_sending_and_the_worker_carries_on() -> None:
    async with Worker() as worker:
        with pytest.raises(TypeError, match="lambda"):
            await worker.call(lambda: 1)
        assert await worker.call(wf.add, 1, 1) == 2


async def test_unsendable_argument_names_type_and_path() -> None:
    async with Worker() as worker:
        with pytest.raises(TypeError, match=r"args\[1\]\['when'\]"):
            await worker.call(wf.echo, 1, {"when": object()})
        assert await worker.call(wf.add, 1, 1) == 2


async def test_exception_comes_back_as_its_type_with_the_remote_traceback() -> None:
    async with Worker() as worker:
        with pytest.raises(ValueError, match="boom") as info:
            await worker.call(wf.fail, "boom")
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "in fail" in str(cause)


async def test_importable_exception_is_rebuilt_else_task_error() -> None:
    async with Worker() as worker:
        with pytest.raises(wf.Custom) as info:
            await worker.call(wf.fail_custom, 5)
        assert info.value.code == 5
        with pytest.raises(TaskError, match="NeedsKeyword"):
            await worker.call(wf.fail_keyword)


async def test_keyboard_interrupt_comes_back_as_task_error_and_worker_lives() -> None:
    async with Worker() as worker:
        with pytest.raises(TaskError, match="KeyboardInterrupt"):
            await worker.call(wf.fail_keyboard_interrupt)
        assert await worker.call(wf.add, 1, 1) == 2


async def _assert_ended_with(worker: Worker, exitcode: int) -> None:
    """The worker exits with *exitcode*; a later call gets WorkerCrashedError."""
    with anyio.fail_after(5):
        while not worker.state.terminal:
            await anyio.sleep(0.01)
    with pytest.raises(WorkerCrashedError) as info:
        await worker.call(wf.noop)
    assert info.value.exitcode == exitcode


async def test_system_exit_is_task_error_and_ends_the_worker() -> None:
    async with Worker() as worker:
        with pytest.raises(TaskError, match="SystemExit"):
            await worker.call(wf.fail_system_exit, 4)
        await _assert_ended_with(worker, 4)


# The worker serves a function it has met before on a shorter path (see
# Server._serve_lone_calls): each outcome below is checked on a first and a
# repeated call, which takes that path.


async def test_a_result_past_64_bits_fails_that_call_only_every_time() -> None:
    async with Worker() as worker:
        for _ in range(2):
            with pytest.raises(TypeError, match="64 bits"):
                await worker.call(wf.add, 2**63, 2**63)
        assert await worker.call(wf.add, 2**62, 2**62) == 2**63


async def test_an_exception_of_a_repeated_call_leaves_the_worker_serving() -> None:
    async with Worker() as worker:
        for _ in range(2):
            with pytest.raises(ValueError, match="again"):
                await worker.call(wf.fail, "again")
        assert await worker.call(wf.add, 1, 2) == 3


async def test_system_exit_of_a_function_called_before_ends_the_worker() -> None:
    async with Worker() as worker:
        assert await worker.call(wf.exit_when, None) is None
        with pytest.raises(TaskError, match="SystemExit"):
            await worker.call(wf.exit_when, 5)
        await _assert_ended_with(worker, 5)


async def test_an_awaitable_returned_by_a_sync_function_is_awaited() -> None:
    async with Worker() as worker:
        assert await worker.call(wf.maybe_awaitable, False) == "now"
        assert await worker.call(wf.maybe_awaitable, True) == "later"
        assert await worker.call(wf.maybe_awaitable, False) == "now"


async def test_repeated_calls_with_results_of_every_kind_come_back_intact() -> None:
    async with Worker() as worker:
        values: list[object] = [
            None,
            True,
            7,
            -(2**63),
            2**64 - 1,
            1.5,
            "s",
            b"b",
            [1],
            {"k": (2,)},
        ]
        for _ in range(2):
            for value in values:
                assert await worker.call(wf.echo, value) == value


async def test_unserializable_result_fails_that_call_only() -> None:
    async with Worker() as worker:
        with pytest.raises(TypeError, match="set"):
            await worker.call(wf.return_unsendable)
        assert await worker.call(wf.add, 1, 1) == 2


async def test_message_over_max_frame_fails_that_call_only() -> None:
    async with Worker(max_frame=1000) as worker:
        with pytest.raises(ProtocolError, match="max_frame"):
            await worker.call(wf.echo, b"x" * 2000)
        with pytest.raises(ProtocolError, match="max_frame"):
            await worker.call(functools.partial(bytes, 2000))
        assert await worker.call(wf.echo_bytes_len, b"x" * 500) == 500


async def test_timeout_cancels_an_async_function_and_the_worker_lives() -> None:
    async with Worker() as worker:
        with pytest.raises(TaskTimeoutError):
            await worker.call(wf.async_sleep, 30, timeout=0.2)
        assert await worker.call(wf.add, 1, 1) == 2
        assert worker.state is Worker.State.RUNNING


async def test_timeout_of_a_sync_function_stops_the_worker_for_good() -> None:
    async with Worker() as worker:
        with anyio.fail_after(10), pytest.raises(TaskTimeoutError):
            await worker.call(wf.sleep, 30, timeout=0.2)
        assert worker.state is Worker.State.CRASHED
        with pytest.raises(WorkerCrashedError):
            await worker.call(wf.noop)


async def test_cancelling_the_caller_cancels_an_async_call_in_the_worker(tmp_path: Any) -> None:
    marker = tmp_path / "mark"
    async with Worker() as worker:
        await worker.call(wf.async_add, 1, 1)  # async mode up (anyio imported) first
        with anyio.move_on_after(0.15):
            await worker.call(wf.async_sleep_then_mark, 30, str(marker))
        assert await worker.call(wf.add, 1, 1) == 2
        assert marker.read_text() == "cancelled-cleanly"


async def test_crash_raises_worker_crashed_for_this_and_later_calls(start_method: str) -> None:
    async with Worker(start_method=start_method) as worker:
        with pytest.raises(WorkerCrashedError) as info:
            await worker.call(wf.crash, 3)
        assert (info.value.task_id, info.value.exitcode, info.value.signal) == (None, 3, None)
        with pytest.raises(WorkerCrashedError):
            await worker.call(wf.noop)
        assert worker.state is Worker.State.CRASHED


async def test_killed_worker_reports_the_signal(start_method: str) -> None:
    async with Worker(start_method=start_method) as worker:
        with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
            await worker.call(wf.kill_self, signal.SIGKILL)
        assert (info.value.exitcode, info.value.signal) == (-9, 9)


async def test_calls_from_many_tasks_are_served_one_at_a_time_in_order() -> None:
    results: list[int] = []
    async with Worker() as worker:

        async def one(i: int) -> None:
            results.append(await worker.call(wf.add, i, 0))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
                await anyio.lowlevel.checkpoint()
    assert sorted(results) == list(range(20))


async def test_preload_import_error_fails_the_start_with_its_cause(start_method: str) -> None:
    with pytest.raises(WorkerStartError) as info:
        async with Worker(preload=["no_such_module_xyz"], start_method=start_method):
            pass
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


async def test_initializer_error_fails_the_start_with_its_cause() -> None:
    with pytest.raises(WorkerStartError) as info:
        async with Worker(initializer=wf.init_fails):
            pass
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_initializer_runs_with_its_args_before_calls() -> None:
    async with Worker(initializer=wf.init_marker, initargs=(1, "two")) as worker:
        assert await worker.call(wf.initialized) == [1, "two"]


async def test_env_replaces_the_environment_and_cwd_applies(tmp_path: Any) -> None:
    env = {"ONLY_THIS": "yes", "PATH": os.environ.get("PATH", "")}
    async with Worker(env=env, cwd=tmp_path) as worker:
        assert await worker.call(wf.getenv, "ONLY_THIS") == "yes"
        assert await worker.call(wf.getenv, "HOME") is None
        assert await worker.call(wf.getcwd) == str(tmp_path)


async def test_worker_gets_the_callers_sys_path() -> None:
    async with Worker() as worker:
        remote = await worker.call(wf.sys_path)
    assert [p for p in sys.path if os.path.isabs(p)] == [p for p in remote if p in sys.path]


async def test_worker_ignores_sigint(start_method: str) -> None:
    async with Worker(start_method=start_method) as worker:
        assert await worker.call(wf.sigint_handler) == str(signal.SIG_IGN)
        os.kill(worker.pid, signal.SIGINT)
        await anyio.sleep(0.05)
        assert await worker.call(wf.add, 1, 1) == 2


async def test_printing_a_lot_never_corrupts_the_protocol(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with Worker() as worker:
        for _ in range(3):
            assert await worker.call(wf.print_lots, 2000) == 2000
            assert await worker.call(wf.add, 1, 1) == 2
    assert "line 1999" in capfd.readouterr().out


async def test_garbage_on_the_workers_input_pipe_ends_it_cleanly() -> None:
    async with Worker() as worker:
        assert worker._proc is not None
        worker._proc._write(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # a frame of invalid msgpack
        with pytest.raises(WorkerCrashedError) as info:
            await worker.call(wf.noop)
        assert info.value.exitcode == 3  # the worker's "protocol error" exit code


async def test_garbage_from_the_worker_is_a_protocol_error_not_a_hang() -> None:
    async with Worker() as worker:
        with anyio.fail_after(10), pytest.raises(ProtocolError):
            await worker.call(wf.write_garbage_to_parent)
        assert worker.state.terminal


async def test_pid_state_stats_and_repr() -> None:
    worker = Worker()
    assert worker.state is Worker.State.CREATED
    async with worker:
        assert worker.state is Worker.State.RUNNING
        assert await worker.call(wf.getpid) == worker.pid
        stats = worker.stats()
        assert stats.pid == worker.pid
        assert stats.rss > 0
        assert "running" in repr(worker)
    assert worker.state is Worker.State.STOPPED


async def test_stop_ends_the_worker_and_later_calls_fail() -> None:
    async with Worker() as worker:
        await worker.stop(grace=1.0)
        assert worker.state is Worker.State.STOPPED
        with pytest.raises(RuntimeError, match="stopped"):
            await worker.call(wf.noop)
        await worker.aclose()  # idempotent


async def test_call_on_a_main_worker_is_refused() -> None:
    async with Worker(main=wf.echo_main) as worker:
        with pytest.raises(RuntimeError, match="send"):
            await worker.call(wf.noop)


async def test_oversize_frame_header_on_the_input_pipe_ends_the_worker() -> None:
    async with Worker(max_frame=1000) as worker:
        assert worker._proc is not None
        worker._proc._write(b"\x7f\xff\xff\xff")  # announces 2 GiB, over max_frame
        with pytest.raises(WorkerCrashedError) as info:
            await worker.call(wf.noop)
        assert info.value.exitcode == 3


async def test_big_bytes_round_trip_intact() -> None:
    payload = os.urandom(3 * 2**20)
    async with Worker() as worker:
        assert await worker.call(wf.echo, payload) == payload


async def test_big_message_over_max_frame_fails_that_call_only() -> None:
    async with Worker(max_frame=100_000) as worker:
        with pytest.raises(ProtocolError, match="max_frame"):
            await worker.call(wf.echo, b"x" * 200_000)
        with pytest.raises(ProtocolError, match="max_frame"):
            await worker.call(functools.partial(bytes, 200_000))
        assert await worker.call(wf.echo_bytes_len, b"x" * 90_000) == 90_000

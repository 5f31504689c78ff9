"""Worker.stream(): generators in the worker, credit window, early close."""

from __future__ import annotations

import pathlib

import anyio
import pytest

from aioproc import Worker
from tests import workerfns as wf


async def test_stream_yields_every_item_of_a_sync_generator() -> None:
    async with Worker() as worker, worker.stream(wf.count, 50) as items:
        assert [i async for i in items] == list(range(50))


async def test_stream_yields_every_item_of_an_async_generator() -> None:
    async with Worker() as worker, worker.stream(wf.async_count, 50) as items:
        assert [i async for i in items] == list(range(50))


async def _collect(worker: Worker, seen: list[int]) -> None:
    async with worker.stream(wf.fail_after_items, 3) as items:
        async for i in items:
            seen.append(i)  # noqa: PERF401 - items seen before the error must be kept


async def test_generator_error_is_raised_after_its_items() -> None:
    seen: list[int] = []
    async with Worker() as worker:
        with pytest.raises(ValueError, match="failed after 3"):
            await _collect(worker, seen)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("genfn", [wf.count_forever, wf.async_count_forever])
async def test_worker_runs_at_most_a_window_ahead(tmp_path: pathlib.Path, genfn: object) -> None:
    progress = tmp_path / "progress"
    async with Worker() as worker, worker.stream(genfn, str(progress)) as items:  # type: ignore[arg-type]
        assert await items.__anext__() == 0
        await anyio.sleep(0.15)
        assert int(progress.read_text()) <= 17


@pytest.mark.parametrize("genfn", [wf.count_forever, wf.async_count_forever])
async def test_leaving_early_closes_the_generator_in_the_worker(
    tmp_path: pathlib.Path, genfn: object
) -> None:
    progress = tmp_path / "progress"
    async with Worker() as worker:
        async with worker.stream(genfn, str(progress)) as items:  # type: ignore[arg-type]
            async for i in items:
                if i == 3:
                    break
        assert (tmp_path / "progress.closed").exists()
        assert await worker.call(wf.add, 1, 1) == 2


async def test_stream_then_calls_are_served_in_order() -> None:
    async with Worker() as worker:
        async with worker.stream(wf.count, 3) as items:
            assert [i async for i in items] == [0, 1, 2]
        assert await worker.call(wf.add, 2, 2) == 4


async def test_a_call_read_in_the_same_batch_as_a_cancel_of_a_sync_stream_is_not_lost(
    tmp_path: pathlib.Path,
) -> None:
    """The Pool writes the frames it makes while handling a read batch in one
    writev: the worker can then read a stream's CANCEL and the next CALL at
    once, and must run that call too."""
    async with Worker() as worker:
        proc = worker._proc
        assert proc is not None
        progress = tmp_path / "progress"
        stream = proc.submit(wf.count_forever, (str(progress),), stream=True, window=1)
        assert await stream.next_item() == 0  # the generator now waits for credit
        held: list[bytes | memoryview] = []
        proc._held = held  # as the Pool does while it handles a batch
        try:
            proc.cancel(stream)
            call = proc.submit(wf.add, (1, 2))
        finally:
            proc._held = None
        proc._write_held(held)
        with anyio.fail_after(5):
            assert await call.wait() == 3
            await stream.wait_done()
        assert stream.cancelled

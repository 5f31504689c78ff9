"""Worker(main=...): a main(channel) in the child instead of the call loop."""

from __future__ import annotations

import functools

import pytest

from aioproc import EndOfChannel, Worker
from tests import workerfns as wf


@pytest.mark.parametrize("main", [wf.echo_main, wf.async_echo_main, "tests.workerfns:echo_main"])
async def test_main_echoes_messages(main: object) -> None:
    async with Worker(main=main) as worker:  # type: ignore[arg-type]
        await worker.send({"n": 1})
        assert await worker.receive() == ["echo", {"n": 1}]
        await worker.send((1, 2))
        assert await worker.receive() == ["echo", (1, 2)]


async def test_receive_raises_end_of_channel_once_main_returned() -> None:
    async with Worker(main=wf.echo_main) as worker:
        await worker.send("quit")
        with pytest.raises(EndOfChannel):
            await worker.receive()
        with pytest.raises(EndOfChannel):
            await worker.send("more")


async def test_messages_sent_before_main_returned_are_still_received() -> None:
    async with Worker(main=functools.partial(wf.greet_main, greeting="hi")) as worker:
        assert await worker.receive() == "hi"
        with pytest.raises(EndOfChannel):
            await worker.receive()


async def test_receive_raises_mains_exception() -> None:
    async with Worker(main=wf.failing_main) as worker:
        assert await worker.receive() == "before"
        with pytest.raises(wf.Custom, match="main failed"):
            await worker.receive()


async def test_unsendable_message_is_rejected_before_sending() -> None:
    async with Worker(main=wf.echo_main) as worker:
        with pytest.raises(TypeError, match="message"):
            await worker.send({1, 2})
        await worker.send("ok")
        assert await worker.receive() == ["echo", "ok"]


async def test_send_without_main_is_refused() -> None:
    async with Worker() as worker:
        with pytest.raises(RuntimeError, match="main"):
            await worker.send("x")
        with pytest.raises(RuntimeError, match="main"):
            await worker.receive()


async def test_leaving_stops_a_main_that_waits_for_messages() -> None:
    async with Worker(main=wf.async_echo_main) as worker:
        await worker.send("x")
        assert await worker.receive() == ["echo", "x"]
    assert worker.state is Worker.State.STOPPED

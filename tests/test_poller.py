"""Poller: one task waits for any of several fds (run's pump, merged output)."""

from __future__ import annotations

import os

import anyio
import pytest

from aioproc._poller import Poller


async def test_wait_returns_the_fds_that_became_readable() -> None:
    first, second = os.pipe(), os.pipe()
    poller = Poller()
    try:
        poller.register(first[0])
        poller.register(second[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_later, second[1])
            with anyio.fail_after(5):
                assert await poller.wait() == [second[0]]
    finally:
        poller.close()
        for fd in (*first, *second):
            os.close(fd)


async def test_wait_returns_at_once_when_an_fd_is_already_ready() -> None:
    read_end, write_end = os.pipe()
    poller = Poller()
    try:
        os.write(write_end, b"x")
        poller.register(read_end)
        with anyio.fail_after(5):
            assert await poller.wait() == [read_end]
    finally:
        poller.close()
        os.close(read_end)
        os.close(write_end)


async def test_closing_the_poller_wakes_a_waiting_task_with_closed_resource_error() -> None:
    read_end, write_end = os.pipe()
    poller = Poller()
    poller.register(read_end)
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await poller.wait()
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                poller.close()
        assert len(outcome) == 1
    finally:
        poller.close()
        os.close(read_end)
        os.close(write_end)


async def test_a_cancelled_wait_leaves_the_poller_usable() -> None:
    read_end, write_end = os.pipe()
    poller = Poller()
    try:
        poller.register(read_end)
        with anyio.move_on_after(0.05) as scope:
            await poller.wait()
        assert scope.cancelled_caught
        os.write(write_end, b"x")
        with anyio.fail_after(5):
            assert await poller.wait() == [read_end]
    finally:
        poller.close()
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("use_epoll", [True, False], ids=["epoll", "select"])
async def test_both_implementations_report_a_writable_fd(use_epoll: bool) -> None:
    read_end, write_end = os.pipe()
    poller = Poller(use_epoll=use_epoll)
    try:
        poller.register(write_end, write=True)
        with anyio.fail_after(5):
            assert await poller.wait() == [write_end]
    finally:
        poller.close()
        os.close(read_end)
        os.close(write_end)


async def _write_later(fd: int) -> None:
    await anyio.sleep(0.01)
    os.write(fd, b"x")

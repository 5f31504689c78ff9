"""Poller: one task waits for any of several fds (run's pump, merged output)."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Iterator

import anyio
import pytest

from aioproc._poller import Poller


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@pytest.fixture(params=[True, False], ids=["epoll", "select"])
def poller(request: pytest.FixtureRequest) -> Iterator[Poller]:
    poller = Poller(use_epoll=request.param)
    yield poller
    poller.close()


async def test_wait_returns_the_fds_that_became_readable(
    pipe: tuple[int, int], poller: Poller
) -> None:
    other_read, other_write = os.pipe()
    try:
        poller.register(other_read)
        poller.register(pipe[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_later, pipe[1])
            with anyio.fail_after(5):
                assert await poller.wait() == [pipe[0]]
    finally:
        poller.unregister(other_read)
        os.close(other_read)
        os.close(other_write)


async def test_wait_returns_at_once_when_an_fd_is_already_ready(
    pipe: tuple[int, int], poller: Poller
) -> None:
    os.write(pipe[1], b"x")
    poller.register(pipe[0])
    with anyio.fail_after(5):
        assert await poller.wait() == [pipe[0]]


async def test_closing_the_poller_wakes_a_waiting_task_with_closed_resource_error(
    pipe: tuple[int, int],
) -> None:
    poller = Poller()  # epoll: the select fallback sleeps instead of waiting on an fd
    poller.register(pipe[0])
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await poller.wait()
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            poller.close()
    assert len(outcome) == 1


async def test_a_cancelled_wait_leaves_the_poller_usable(
    pipe: tuple[int, int], poller: Poller
) -> None:
    poller.register(pipe[0])
    with anyio.move_on_after(0.05) as scope:
        await poller.wait()
    assert scope.cancelled_caught
    os.write(pipe[1], b"x")
    with anyio.fail_after(5):
        assert await poller.wait() == [pipe[0]]


async def test_a_writable_fd_is_reported(pipe: tuple[int, int], poller: Poller) -> None:
    poller.register(pipe[1], write=True)
    with anyio.fail_after(5):
        assert await poller.wait() == [pipe[1]]


async def _write_later(fd: int) -> None:
    await anyio.sleep(0.01)
    os.write(fd, b"x")


async def test_many_pollers_wait_at_once_and_each_wakes_for_its_own_fd() -> None:
    pipes = [os.pipe() for _ in range(8)]
    pollers = [Poller() for _ in pipes]
    woken: list[int] = []

    async def waiter(index: int) -> None:
        pollers[index].register(pipes[index][0])
        assert await pollers[index].wait() == [pipes[index][0]]
        woken.append(index)

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for index in range(len(pipes)):
                    tg.start_soon(waiter, index)
                await anyio.wait_all_tasks_blocked()
                for count, index in enumerate((5, 2, 7, 0, 1, 3, 6, 4), 1):
                    os.write(pipes[index][1], b"x")
                    while len(woken) < count:
                        await anyio.sleep(0.001)
                    await anyio.sleep(0.01)
                    assert len(woken) == count  # only that one woke
                    assert woken[-1] == index
    finally:
        for poller in pollers:
            poller.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)
    assert sorted(woken) == list(range(8))


async def test_a_cancelled_wait_whose_fd_fires_later_wakes_nobody_by_mistake(
    pipe: tuple[int, int],
) -> None:
    poller = Poller()
    other = Poller()
    other_read, other_write = os.pipe()
    try:
        poller.register(pipe[0])
        with anyio.move_on_after(0.02):
            await poller.wait()
        os.write(pipe[1], b"x")  # fires the stale arming: must not disturb the next wait
        other.register(other_read)
        with anyio.move_on_after(0.05) as scope:
            await other.wait()
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            assert await poller.wait() == [pipe[0]]
    finally:
        poller.close()
        other.close()
        os.close(other_read)
        os.close(other_write)


async def _one_wait() -> None:
    """One poller waits once, for a pipe written to already."""
    read_end, write_end = os.pipe()
    poller = Poller()
    try:
        poller.register(read_end)
        os.write(write_end, b"x")
        assert await poller.wait(check_first=False) == [read_end]
    finally:
        poller.close()
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_each_loop_gets_its_own_hub_which_closes_with_the_loop(use_uvloop: bool) -> None:
    """On asyncio the pollers' fds sit in one epoll fd per loop (the hub): a new
    loop in the same thread gets a new one, and shutting a loop down closes its."""

    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        anyio.run(_one_wait, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
        assert set(os.listdir("/proc/self/fd")) == before


def test_the_hub_of_a_loop_closed_without_shutting_down_goes_with_the_loop() -> None:
    """``loop.run_until_complete(); loop.close()`` never shuts down the async
    generators: the hub then closes once the loop is dropped and collected."""

    before = set(os.listdir("/proc/self/fd"))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_one_wait())
    loop.close()
    del loop
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_loop_that_ran_pollers_is_not_kept_alive_by_its_hub(use_uvloop: bool) -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def wait_once() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await _one_wait()

    anyio.run(wait_once, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    gc.collect()
    assert loops[0]() is None

"""The runner's side of the bench launcher: :func:`open_launcher` and :class:`Launcher`.

The launcher process (``_bench_launcher.py``, see its docstring for why it exists)
is started once per bench session with ``posix_spawn``; its stdin carries run
requests and its stdout carries reports. Here one reader task, owned by the task
group that :func:`open_launcher` opens, decodes the reports and hands each to the
task that asked for that run::

    task ─ Launcher.run(argv) ─ lock ─▶ FdSendStream ──▶ launcher fd 0
      ▲                                                      │ fork/exec/wait4
      └─ Event + RunReport ◀─ reader task ◀─ FdReceiveStream ◀┘ fd 1

Any number of tasks may call :meth:`Launcher.run` at once; that is how
``--jobs`` keeps several runs in flight. Leaving :func:`open_launcher` closes the
request pipe; the launcher then kills whatever is still running, reaps it and
exits, and we reap the launcher (with SIGKILL if it does not go within seconds),
shielded from cancellation.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc

from . import _bench_launcher as wire
from ._errors import AioprocError
from ._fdio import FdReceiveStream, FdSendStream
from ._monitor import Rusage
from ._reap import ChildWatch, exit_status

__all__ = ["Launcher", "LauncherError", "LauncherScope", "RunReport", "open_launcher"]

#: How long the launcher gets to clean up and exit once its request pipe closes.
_EXIT_GRACE = 5.0


class LauncherError(AioprocError):
    """The bench launcher process died or could not be started."""


@dataclass(frozen=True, slots=True)
class RunReport:
    """What the launcher measured for one run.

    ``wall_time`` is seconds from ``fork`` to the exit notification; ``returncode``
    is the exit code or ``-signum``; ``rusage`` comes from ``wait4`` (the child and
    the descendants it waited for); ``stderr`` holds the last 4 KiB the run wrote
    to stderr, ``stderr_size`` the total.
    """

    wall_time: float
    returncode: int
    rusage: Rusage
    stderr: bytes
    stderr_size: int


class _Waiter:
    __slots__ = ("done", "report")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.report: RunReport | None = None


class Launcher:
    """Handle on a running launcher process; made by :func:`open_launcher`."""

    def __init__(self, pid: int, requests: FdSendStream, reports: FdReceiveStream) -> None:
        self.pid = pid
        self._watch = ChildWatch(pid)
        self._requests = requests
        self._reports = reports
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._send_lock = anyio.Lock()
        self._dead = False

    @classmethod
    def _spawn(cls) -> Launcher:
        script = Path(wire.__file__)
        request_r, request_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-B", str(script)],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, request_r, 0),
                    (os.POSIX_SPAWN_DUP2, report_w, 1),
                ],
            )
        except OSError as exc:
            for fd in (request_r, request_w, report_r, report_w):
                os.close(fd)
            raise LauncherError(f"cannot start the bench launcher: {exc}") from exc
        os.close(request_r)
        os.close(report_w)
        return cls(pid, FdSendStream(request_w), FdReceiveStream(report_r))

    async def run(self, executable: str, argv: Sequence[str]) -> RunReport:
        """Fork and exec *executable* with *argv* from the launcher; its figures
        once it has exited.

        *executable* is a path (resolve names with :func:`shutil.which` first). A
        run that cannot exec reports code 127 with the reason on its stderr.

        :raises LauncherError: when the launcher died before reporting.
        """
        if self._dead:
            raise LauncherError("the bench launcher has exited")
        run_id = next(self._ids)
        waiter = self._waiters[run_id] = _Waiter()
        try:
            frame = wire.encode_request(
                run_id, os.fsencode(executable), [os.fsencode(arg) for arg in argv]
            )
            async with self._send_lock:
                try:
                    await self._requests.send(frame)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    raise LauncherError("the bench launcher has exited") from exc
            await waiter.done.wait()
        finally:
            del self._waiters[run_id]
        if waiter.report is None:
            raise LauncherError("the bench launcher exited during a run")
        return waiter.report

    async def _read_reports(self) -> None:
        """The reader task: route each report to its waiter, until end of file."""
        buffer = b""
        try:
            while True:
                try:
                    buffer += await self._reports.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                while len(buffer) >= wire.LENGTH.size:
                    (length,) = wire.LENGTH.unpack_from(buffer)
                    end = wire.LENGTH.size + length
                    if len(buffer) < end:
                        break
                    self._deliver(buffer[wire.LENGTH.size : end])
                    buffer = buffer[end:]
        finally:
            self._dead = True
            for waiter in self._waiters.values():
                waiter.done.set()

    def _deliver(self, payload: bytes) -> None:
        run_id, wall_ns, status, user, system, max_rss, size, tail = wire.decode_report(payload)
        waiter = self._waiters.get(run_id)
        if waiter is None:  # its caller was cancelled; the figures go nowhere
            return
        waiter.report = RunReport(
            wall_time=wall_ns / 1e9,
            returncode=exit_status(status),
            rusage=Rusage(user_time=user, system_time=system, max_rss=max_rss),
            stderr=tail,
            stderr_size=size,
        )
        waiter.done.set()

    async def _stop(self) -> None:
        """Close the request pipe, let the launcher clean up and exit, reap it.

        Idempotent; kills the launcher if it has not gone within a few seconds.
        """
        await self._requests.aclose()
        with anyio.move_on_after(_EXIT_GRACE):
            await self._watch.wait()
        if self._watch.returncode is None:  # pragma: no cover - a wedged launcher
            self._watch.send_signal(signal.SIGKILL)
            await self._watch.wait()

    def __repr__(self) -> str:
        state = "exited" if self._dead else "running"
        return f"<Launcher pid={self.pid} {state} in_flight={len(self._waiters)}>"


def open_launcher() -> LauncherScope:
    """Start a bench launcher for the duration of an ``async with`` block.

    ``async with open_launcher() as launcher:`` -- see :class:`LauncherScope`.
    """
    return LauncherScope()


class LauncherScope:
    """The async context manager behind :func:`open_launcher`.

    The block's own exception leaves unchanged (not wrapped in an exception
    group): the launcher is stopped first, so the reader task has ended by the
    time its task group closes.
    """

    def __init__(self) -> None:
        self._launcher: Launcher | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Launcher:
        """Spawn the launcher and start the reader task.

        :raises LauncherError: when the launcher process cannot be started.
        """
        launcher = self._launcher = Launcher._spawn()
        self._tg = anyio.create_task_group()
        try:
            await self._tg.__aenter__()
        except BaseException:  # pragma: no cover - only a cancellation right here
            with anyio.CancelScope(shield=True):
                await launcher._stop()
                await launcher._reports.aclose()
            raise
        self._tg.start_soon(launcher._read_reports)
        return launcher

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        launcher, tg = self._launcher, self._tg
        assert launcher is not None
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                # The launcher exits and closes its end: the reader sees EOF and returns.
                await launcher._stop()
            await tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await launcher._reports.aclose()

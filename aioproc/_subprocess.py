"""Process, spawn() and CompletedProcess: a running child and its result.

``spawn(args, ...)`` returns an async context manager; the child starts (in the
event-loop thread, via :func:`aioproc._spawn.launch`) in ``__aenter__`` and is
stopped and reaped in ``__aexit__``. ``run``/``run_shell`` live in ``_run``.

Life of a :class:`Process`::

    running ──(leader exits)──> exited: a zombie, pid and pgid pinned
       │                           │  wait(): reap -> returncode, rusage
       │ stop(): SIGTERM group,    │  aclose(): stop what is left of the group
       │   grace, SIGKILL          │    (SIGTERM, drain the pipes to EOF within
       ▼                           ▼     the grace, SIGKILL), reap, close fds
    exited ────────────────────> reaped ──aclose()──> closed

Every stop, and the reap that follows it, runs in a shielded cancel scope: a
cancelled caller still leaves no child, zombie or fd behind, and the
cancellation is re-raised afterwards. Group signals are sent while the leader
is unreaped wherever the layer itself decides to send them (see ``_spawn`` for
why that matters).
"""

from __future__ import annotations

import functools
import os
import signal as _signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint

from ._errors import CalledProcessError, signal_name
from ._fdio import FdSendStream
from ._monitor import ProcessStats, Rusage, StatsSampler
from ._spawn import GroupWatch, Launched, StderrSpec, StdioSpec, launch
from ._streams import MergedLines, OutputStream, drain_all

__all__ = ["CompletedProcess", "Process", "spawn", "start_process"]

T = TypeVar("T", bytes, str)

#: After SIGKILL, how long we still wait for stray holders of a pipe to let go
#: (a member that left the group with setsid() can hold it for ever).
AFTER_KILL_DRAIN = 1.0


@dataclass(frozen=True, slots=True)
class CompletedProcess(Generic[T]):
    """The result of :func:`aioproc.run`: what ran, how it ended, what it wrote.

    ``stdout``/``stderr`` are ``bytes`` (``str`` with ``text=True``), or ``None``
    when that stream was not captured. ``returncode`` is ``-signum`` when a
    signal ended the process; ``signal`` is then the positive number.
    ``duration`` is wall seconds from start to reap; ``rusage`` is what
    ``wait4`` reported for the child.
    """

    args: object
    pid: int
    returncode: int
    stdout: T | None
    stderr: T | None
    duration: float
    signal: int | None
    rusage: Rusage | None

    @property
    def ok(self) -> bool:
        """Whether the process exited with code 0."""
        return self.returncode == 0

    def check_returncode(self) -> None:
        """:raises CalledProcessError: when the return code is not 0."""
        if self.returncode != 0:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


class Process(anyio.abc.AsyncResource):
    """A running child started by :func:`spawn` (or ``ProcessManager.start``).

    ``stdin`` is an anyio ``ByteSendStream`` (or ``None``), ``stdout``/``stderr``
    are :class:`OutputStream` (or ``None``) -- ``None`` for streams that are not
    pipes. ``returncode`` and ``rusage`` are ``None`` until the child is reaped.
    Signals go to the child's whole process group (to the child alone with
    ``stdin="inherit"``, which keeps it in the caller's group).
    """

    def __init__(
        self,
        launched: Launched,
        args: object,
        *,
        kill_grace: float = 5.0,
        max_output: int | None = None,
    ) -> None:
        self.pid = launched.pid
        self.args = args
        self.id: int | None = None  # set by a ProcessManager
        self.started_at = time.time()
        self.ended_at: float | None = None
        self._popen = launched.popen
        self._watch = GroupWatch(launched.pid, own_group=launched.own_group)
        self._kill_grace = kill_grace
        self.stdin: FdSendStream | None = (
            FdSendStream(launched.stdin) if launched.stdin >= 0 else None
        )
        self.stdout: OutputStream | None = (
            OutputStream(launched.stdout, "stdout", max_output=max_output, cmd=args)
            if launched.stdout >= 0
            else None
        )
        self.stderr: OutputStream | None = (
            OutputStream(launched.stderr, "stderr", max_output=max_output, cmd=args)
            if launched.stderr >= 0
            else None
        )
        self._wait_lock = anyio.Lock()
        self._sampler: StatsSampler | None = None
        self._closed = False
        self._exit_callbacks: list[Callable[[Process], object]] = []

    # -- state ----------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit code (``-signum`` if killed), ``None`` until reaped."""
        return self._watch.returncode

    @property
    def signal(self) -> int | None:
        """The signal that ended the process, else ``None``."""
        code = self._watch.returncode
        return -code if code is not None and code < 0 else None

    @property
    def rusage(self) -> Rusage | None:
        """CPU times and peak RSS from ``wait4``; ``None`` until reaped."""
        return self._watch.rusage

    def stats(self) -> ProcessStats:
        """Live figures of the child (psutil); ``"dead"`` once it has exited."""
        if self._watch.returncode is not None or self._watch.exited():
            return ProcessStats.dead(self.pid)
        if self._sampler is None:
            self._sampler = StatsSampler(self.pid)
        return self._sampler.sample()

    def output(self) -> MergedLines:
        """An async iterator of ``("stdout" | "stderr", line)`` in arrival order.

        Lines follow the rules of :meth:`OutputStream.lines`; it ends when every
        piped output stream is at EOF.
        """
        return MergedLines([s for s in (self.stdout, self.stderr) if s is not None])

    # -- waiting and signalling -------------------------------------------------------

    async def wait(self) -> int:
        """Wait for the child to exit, reap it, and return its return code."""
        if self._watch.returncode is None:
            await self._wait_exited()
            self._reap()
        else:
            await checkpoint()
        code = self._watch.returncode
        assert code is not None
        return code

    async def _wait_exited(self) -> None:
        async with self._wait_lock:  # the pidfd takes one waiter at a time
            await self._watch.wait_exited()

    def _reap(self) -> None:
        if self._watch.returncode is not None:
            return
        code = self._watch.reap()
        if code is None:  # pragma: no cover - only called once exited
            return
        if self._popen is not None:
            self._popen.returncode = code  # so Popen never waitpid()s a reused pid
        self.ended_at = time.time()
        for callback in self._exit_callbacks:
            callback(self)

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the child's process group (a no-op once nobody is left)."""
        self._watch.signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the process group."""
        self._watch.signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the process group."""
        self._watch.signal(_signal.SIGKILL)

    async def stop(self, grace: float | None = None) -> int:
        """Stop the child: SIGTERM to its group, wait up to *grace* seconds
        (default: ``kill_grace``) for it to exit, then SIGKILL; whatever is left of
        the group is killed too, then the child is reaped. Runs shielded from
        cancellation. Returns the return code."""
        grace = self._kill_grace if grace is None else grace
        with anyio.CancelScope(shield=True):
            await self._stop_leader(grace)
            self._watch.signal(_signal.SIGKILL)  # the rest of the group
            self._reap()
        code = self._watch.returncode
        assert code is not None
        return code

    async def _stop_leader(self, grace: float) -> bool:
        """SIGTERM, grace, SIGKILL until the leader exited (not reaped); whether
        it was still running."""
        if self._watch.exited():
            return False
        self._watch.signal(_signal.SIGTERM)
        with anyio.move_on_after(grace):
            await self._wait_exited()
        if not self._watch.exited():
            self._watch.signal(_signal.SIGKILL)
            await self._wait_exited()
        return True

    # -- closing --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the child and its group, drain and close the pipes, reap. Shielded
        from cancellation; idempotent.

        A child still running is stopped like :meth:`stop`. One that exited on its
        own may have left group members behind: they get SIGTERM, the pipes are
        read to EOF (the data is discarded) for up to ``kill_grace`` seconds, then
        SIGKILL; members that hold no pipe are killed once the pipes are done.
        """
        if self._closed:
            return
        self._closed = True
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        with anyio.CancelScope(shield=True):
            try:
                if self.stdin is not None:
                    self.stdin.close_now()
                grace = self._kill_grace
                if await self._stop_leader(grace):
                    grace = min(grace, AFTER_KILL_DRAIN)  # the group had its SIGTERM
                elif any(s.fd >= 0 and not s.at_eof for s in streams):
                    self._watch.signal(_signal.SIGTERM)
                with anyio.move_on_after(grace) as scope:
                    await drain_all(streams)
                if scope.cancelled_caught:
                    self._watch.signal(_signal.SIGKILL)
                    with anyio.move_on_after(AFTER_KILL_DRAIN):
                        await drain_all(streams)
                self._watch.signal(_signal.SIGKILL)  # members that hold no pipe
                await self._wait_exited()
                self._reap()
            finally:
                for stream in streams:
                    stream.close_now()
                self._watch.close()

    # -- misc -----------------------------------------------------------------------

    def __repr__(self) -> str:
        code = self._watch.returncode
        if code is None:
            state = "running"
        elif code < 0:
            state = f"killed by {signal_name(-code)}"
        else:
            state = f"exited with code {code}"
        if self._closed:
            state += ", closed"
        ident = "" if self.id is None else f" id={self.id}"
        return f"<Process{ident} pid={self.pid} {state} args={self.args!r}>"


def start_process(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin: StdioSpec = "pipe",
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = 5.0,
    max_output: int | None = None,
) -> Process:
    """Start a child now and return its :class:`Process` (the caller closes it).

    :raises CommandNotFoundError: when the executable does not exist.
    :raises FileNotFoundError: when *cwd* does not exist.
    :raises PermissionError: when the file is not executable.
    """
    if isinstance(args, str | bytes):
        raise TypeError("args must be a sequence of arguments; use run_shell() for a command line")
    launched = launch(args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env)
    return Process(launched, list(args), kill_grace=kill_grace, max_output=max_output)


class _Spawn:
    """What :func:`spawn` returns: starts the child on enter, closes it on exit."""

    __slots__ = ("_process", "_start")

    def __init__(self, start: Callable[[], Process]) -> None:
        self._start = start
        self._process: Process | None = None

    async def __aenter__(self) -> Process:
        if self._process is not None:
            raise RuntimeError("this spawn() context was already entered")
        self._process = self._start()
        await checkpoint()
        return self._process

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            await self._process.aclose()


def spawn(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin: StdioSpec = "pipe",
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = 5.0,
    max_output: int | None = None,
) -> _Spawn:
    """Start *args* as a child process for the body of an ``async with``.

    ``async with aioproc.spawn([...]) as proc:`` starts the child on entry
    (not awaited: ``spawn()`` returns the context manager) and on exit stops what
    is left of its process group, drains the pipes and reaps it (see
    :meth:`Process.aclose`). stdio options: ``"pipe"``, ``"devnull"``,
    ``"inherit"``, an open file or an fd; ``stderr="stdout"`` merges.
    ``max_output`` bounds what may be read from each stream.

    :raises CommandNotFoundError: on entry, when the executable does not exist.
    :raises FileNotFoundError: on entry, when *cwd* does not exist.
    :raises PermissionError: on entry, when the file is not executable.
    """
    return _Spawn(
        functools.partial(
            start_process,
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            kill_grace=kill_grace,
            max_output=max_output,
        )
    )

"""run() and run_shell(): start a program, feed it, collect its output, reap it.

One task does all of it. The child's pipes and its pidfd sit in one
:class:`~aioproc._poller.Poller`, and the parent holds its own copy of the
child's write ends of the output pipes until the leader exits, so those pipes
cannot hit EOF early. A short-lived program therefore costs one wake-up, at its
exit, instead of one per closed pipe plus one for the exit -- and no task
group::

    input ──write──> stdin pipe ─┐
    stdout pipe ──read──> sink ──┼── Poller ──> _Pump.until_exit()   (one task)
    stderr pipe ──read──> sink ──┤
    pidfd (leader exited) ───────┘
                                     │ leader exited (a zombie: pgid pinned)
                                     ▼
    _Pump.after_exit(): close our write ends; pipes at EOF? else SIGTERM the
        group, drain to EOF within kill_grace, else SIGKILL; SIGKILL sweep of
        members that hold no pipe; reap (wait4 -> returncode, rusage)

A timeout, ``max_output`` or cancellation goes through :meth:`_Pump.stop`
instead (SIGTERM the group, keep draining for up to ``kill_grace``, SIGKILL,
sweep, reap), shielded from cancellation; then the error (or the cancellation)
is raised with the output collected so far.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, overload

import anyio
from anyio.lowlevel import checkpoint

from ._errors import CalledProcessError, OutputLimitExceeded, ProcessTimeoutError
from ._fdio import grow_pipe_after
from ._monitor import Rusage
from ._poller import Poller
from ._spawn import GroupWatch, Launched, StderrSpec, StdioSpec, launch
from ._subprocess import AFTER_KILL_DRAIN, CompletedProcess

__all__ = ["run", "run_impl", "run_shell"]

_READ_SIZE = 1 << 20
#: Reads from one pipe per wake-up before the others get a turn.
_READS_PER_TURN = 16
#: Wake-ups served without waiting before a forced checkpoint.
_TURNS_PER_CHECKPOINT = 8


class _LimitHit(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Sink:
    __slots__ = ("chunks", "eof", "grown", "name", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.grown = False  # the pipe was grown (see grow_pipe_after)

    def data(self) -> bytes:
        return b"".join(self.chunks)


class _Pump:
    """Moves bytes between ``run``'s child and memory, from one task."""

    def __init__(
        self, launched: Launched, watch: GroupWatch, data: bytes | None, limit: int | None
    ) -> None:
        self.launched = launched
        self.watch = watch
        self.limit = limit
        self.enforce_limit = True
        self.poller = Poller()
        self.sinks: dict[int, _Sink] = {}
        self.by_name: dict[str, _Sink] = {}
        for fd, name in ((launched.stdout, "stdout"), (launched.stderr, "stderr")):
            if fd >= 0:
                os.set_blocking(fd, False)
                self.poller.register(fd)
                self.sinks[fd] = self.by_name[name] = _Sink(name)
        self.stdin = launched.stdin
        self.input = memoryview(data or b"")
        if self.stdin >= 0:
            if self.input:
                os.set_blocking(self.stdin, False)
                self.poller.register(self.stdin, write=True)
            else:
                self._close_stdin()
        self.pidfd = watch.pidfd
        if self.pidfd >= 0:
            self.poller.register(self.pidfd)
        self.exited = False
        # Fds with nothing more to report (EOF, the exit seen): unregistered before
        # the poller is next asked, which usually never happens -- run() is done.
        self._done_fds: list[int] = []

    # -- moving data ------------------------------------------------------------------

    def _service(self, fds: list[int]) -> None:
        for fd in fds:
            if fd == self.pidfd:
                self.exited = True
                self._done_fds.append(fd)
                self.pidfd = -1
            elif fd == self.stdin:
                self._feed()
            else:
                sink = self.sinks.get(fd)
                if sink is not None and not sink.eof:
                    self._take(fd, sink)

    def _take(self, fd: int, sink: _Sink) -> None:
        for _ in range(_READS_PER_TURN):
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                sink.eof = True
                self._done_fds.append(fd)
                return
            if not sink.grown:
                sink.grown = grow_pipe_after(fd, len(data))
            limit = self.limit
            if limit is not None and sink.size + len(data) > limit:
                keep = limit - sink.size
                if keep > 0:
                    sink.chunks.append(data[:keep])
                    sink.size = limit
                if self.enforce_limit:
                    raise _LimitHit(sink.name)
                continue  # stopping anyway: discard the rest
            sink.chunks.append(data)
            sink.size += len(data)

    def _feed(self) -> None:
        try:
            written = os.write(self.stdin, self.input)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            written = len(self.input)  # the child stopped reading: fine, as in subprocess
        self.input = self.input[written:]
        if not self.input:
            self._close_stdin()

    def _close_stdin(self) -> None:
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            self.poller.unregister(fd)
            os.close(fd)

    def _outputs_done(self) -> bool:
        return all(sink.eof for sink in self.sinks.values())

    async def _turn(self, *, until_exit: bool, poll_first: bool = True) -> None:
        """Serve fds until the leader exited (*until_exit*) or the outputs hit EOF.
        Without *poll_first* the first step waits instead of polling (right after
        the start nothing is ready yet, and a ready fd ends the wait at once)."""
        turns = 0
        poll = poll_first
        while not (self.exited if until_exit else self._outputs_done()):
            if until_exit and self.pidfd < 0 and self.watch.exited():
                self.exited = True  # no pidfd (macOS): polled
                break
            if self._done_fds:
                for fd in self._done_fds:
                    self.poller.unregister(fd)
                self._done_fds.clear()
            fds = self.poller.ready() if poll else []
            poll = True
            if fds:
                self._service(fds)
                turns += 1
                if turns >= _TURNS_PER_CHECKPOINT:
                    turns = 0
                    await checkpoint()
                continue
            turns = 0
            if until_exit and self.pidfd < 0:  # pragma: no cover - no pidfd
                with anyio.move_on_after(0.005):
                    await self.poller.wait(check_first=False)
            elif self.poller:
                self._service(await self.poller.wait(check_first=False))
            else:  # pragma: no cover - nothing to watch but the missing pidfd
                await anyio.sleep(0.005)

    async def until_exit(self) -> None:
        """Feed stdin and collect output until the leader has exited (call once,
        right after the start)."""
        await self._turn(until_exit=True, poll_first=False)

    def _release_write_ends(self) -> None:
        for fd in self.launched.held:
            os.close(fd)
        self.launched.held.clear()

    async def after_exit(self, grace: float) -> None:
        """The leader exited by itself: stop what is left of its group, read the
        pipes to EOF, reap."""
        self._release_write_ends()
        for fd, sink in self.sinks.items():  # usually just EOF: no need to poll first
            if not sink.eof:
                self._take(fd, sink)
        if not self._outputs_done():
            # A member of the group still holds a pipe: SIGTERM, grace, SIGKILL.
            self.watch.signal(signal.SIGTERM)
            with anyio.move_on_after(grace) as scope:
                await self._turn(until_exit=False)
            if scope.cancelled_caught:
                self.watch.signal(signal.SIGKILL)
                with anyio.move_on_after(AFTER_KILL_DRAIN):
                    await self._turn(until_exit=False)
        self.watch.signal(signal.SIGKILL)  # members that hold no pipe; still pinned
        self._reap()

    async def stop(self, grace: float) -> None:
        """Stop the child and its group (SIGTERM, grace, SIGKILL), keep reading
        meanwhile, then reap. Call shielded."""
        self.enforce_limit = False
        self._close_stdin()
        if not self.exited and not self.watch.exited():
            self.watch.signal(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self._turn(until_exit=True)
            if not self.exited and not self.watch.exited():
                self.watch.signal(signal.SIGKILL)
                await self._turn(until_exit=True)
        self._release_write_ends()
        self.watch.signal(signal.SIGKILL)
        with anyio.move_on_after(AFTER_KILL_DRAIN):
            await self._turn(until_exit=False)
        self._reap()

    def _reap(self) -> None:
        code = self.watch.reap()
        if code is not None and self.launched.popen is not None:
            self.launched.popen.returncode = code

    def close(self) -> None:
        """Close every fd this run still holds."""
        self._close_stdin()
        self._release_write_ends()
        self.poller.close()
        for fd in self.sinks:
            os.close(fd)
        self.sinks.clear()
        self.watch.close()


def _decode(data: bytes | None, text: bool, encoding: str, errors: str) -> Any:
    if data is None or not text:
        return data
    return data.decode(encoding, errors)


def _decode_partial(data: bytes | None, text: bool, encoding: str, errors: str) -> Any:
    """For an error's partial output: never let a cut character mask the error."""
    try:
        return _decode(data, text, encoding, errors)
    except UnicodeDecodeError:
        return _decode(data, text, encoding, "replace")


async def run_impl(
    cmd: object,
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | str | None,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    timeout: float | None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool,
    text: bool,
    encoding: str,
    errors: str,
    max_output: int | None,
    stdout: StdioSpec,
    stderr: StderrSpec,
    kill_grace: float,
    on_start: Callable[[int, Callable[[int], object]], object] | None = None,
    on_exit: Callable[[int, Rusage | None, bytes | None, bytes | None], object] | None = None,
) -> CompletedProcess[Any]:
    """``run`` with the command as reported (*cmd*) apart from the argv, and two
    hooks for ProcessManager: *on_start* gets the pid and a function that
    signals the child's group; *on_exit* gets the return code, rusage and the raw
    output once the child is reaped (whether ``run`` then returns or raises)."""
    data = input.encode(encoding) if isinstance(input, str) else input
    if data is not None and not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"input must be bytes or str, not {type(data).__name__}")
    started = time.perf_counter()
    launched = launch(
        argv,
        stdin="pipe" if data is not None else "devnull",
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        hold_output=True,
    )
    watch = GroupWatch(launched.pid, own_group=launched.own_group)
    pump = _Pump(launched, watch, bytes(data) if data is not None else None, max_output)

    def partial(name: str) -> Any:
        sink = pump.by_name.get(name)
        return _decode_partial(sink.data() if sink else None, text, encoding, errors)

    try:
        if on_start is not None:
            on_start(launched.pid, watch.signal)
        try:
            if timeout is None:
                await pump.until_exit()
                await pump.after_exit(kill_grace)
                timed_out = False
            else:
                with anyio.move_on_after(timeout) as scope:
                    await pump.until_exit()
                    await pump.after_exit(kill_grace)
                timed_out = scope.cancelled_caught
        except _LimitHit as hit:
            with anyio.CancelScope(shield=True):
                await pump.stop(kill_grace)
            assert max_output is not None
            raise OutputLimitExceeded(
                cmd, hit.name, max_output, stdout=partial("stdout"), stderr=partial("stderr")
            ) from None
        if timed_out and watch.returncode is None:
            with anyio.CancelScope(shield=True):
                await pump.stop(kill_grace)
            assert timeout is not None
            raise ProcessTimeoutError(
                cmd, timeout, stdout=partial("stdout"), stderr=partial("stderr")
            )
    except BaseException:
        if watch.returncode is None:
            with anyio.CancelScope(shield=True):
                await pump.stop(kill_grace)
        raise
    finally:
        pump.close()
        if on_exit is not None and watch.returncode is not None:
            out, err = pump.by_name.get("stdout"), pump.by_name.get("stderr")
            on_exit(
                watch.returncode,
                watch.rusage,
                out.data() if out else None,
                err.data() if err else None,
            )
    returncode = watch.returncode
    assert returncode is not None
    out = pump.by_name.get("stdout")
    err = pump.by_name.get("stderr")
    result: CompletedProcess[Any] = CompletedProcess(
        args=cmd,
        pid=launched.pid,
        returncode=returncode,
        stdout=_decode(out.data() if out else None, text, encoding, errors),
        stderr=_decode(err.data() if err else None, text, encoding, errors),
        duration=time.perf_counter() - started,
        signal=-returncode if returncode < 0 else None,
        rusage=watch.rusage,
    )
    if check and returncode != 0:
        raise CalledProcessError(returncode, cmd, result.stdout, result.stderr)
    return result


@overload
async def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: Literal[False] = False,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[bytes]: ...
@overload
async def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: Literal[True],
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[str]: ...
@overload
async def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: bool,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[Any]: ...
async def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: bool = False,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[Any]:
    """Run *args* (no shell) to completion and return its :class:`CompletedProcess`.

    The child gets ``input`` on stdin (``str`` is encoded with *encoding*), else
    ``/dev/null``. stdout and stderr are read concurrently with feeding stdin, so
    no amount of output can deadlock. When the program exits, what is left of its
    process group is stopped and the pipes are read to EOF. With ``text=True``
    the output is decoded with *encoding*/*errors*. ``env`` replaces the
    environment. Cancelling the caller stops the child (SIGTERM, ``kill_grace``,
    SIGKILL, whole group), reaps it and re-raises.

    :raises CommandNotFoundError: when the executable does not exist.
    :raises FileNotFoundError: when *cwd* does not exist.
    :raises PermissionError: when the file is not executable.
    :raises ProcessTimeoutError: when *timeout* seconds passed first; the group
        was stopped; the error carries the output read so far.
    :raises OutputLimitExceeded: when stdout or stderr passed *max_output*
        bytes; the child was stopped; the error carries at most *max_output*
        bytes of each stream.
    :raises CalledProcessError: when *check* is true and the exit code is not 0.
    """
    if isinstance(args, str | bytes):
        raise TypeError("args must be a sequence of arguments; use run_shell() for a command line")
    return await run_impl(
        list(args),
        args,
        input=input,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=check,
        text=text,
        encoding=encoding,
        errors=errors,
        max_output=max_output,
        stdout=stdout,
        stderr=stderr,
        kill_grace=kill_grace,
    )


@overload
async def run_shell(
    command: str,
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: Literal[False] = False,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[bytes]: ...
@overload
async def run_shell(
    command: str,
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: Literal[True],
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[str]: ...
@overload
async def run_shell(
    command: str,
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: bool,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[Any]: ...
async def run_shell(
    command: str,
    *,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
    check: bool = True,
    text: bool = False,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_output: int | None = 64 * 2**20,
    stdout: StdioSpec = "pipe",
    stderr: StderrSpec = "pipe",
    kill_grace: float = 5.0,
) -> CompletedProcess[Any]:
    """Run *command* through ``/bin/sh -c`` (the caller owns the quoting); as
    :func:`run` otherwise. ``CompletedProcess.args`` is the command string.

    :raises ProcessTimeoutError: as :func:`run`.
    :raises OutputLimitExceeded: as :func:`run`.
    :raises CalledProcessError: as :func:`run`.
    """
    if not isinstance(command, str):
        raise TypeError(f"command must be a str, not {type(command).__name__}")
    return await run_impl(
        command,
        ["/bin/sh", "-c", command],
        input=input,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=check,
        text=text,
        encoding=encoding,
        errors=errors,
        max_output=max_output,
        stdout=stdout,
        stderr=stderr,
        kill_grace=kill_grace,
    )

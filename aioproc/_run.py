"""run() and run_shell(): start a program, feed it, collect its output, reap it.

One task does all of it, through a *core*: the object that owns the child's
pipes, its pidfd and one epoll set over them. The parent holds its own copy of
the child's write ends of the output pipes until the leader exits, so those
pipes cannot hit EOF early. A short-lived program therefore costs one wake-up,
at its exit, instead of one per closed pipe plus one for the exit -- and no
task group::

    input ──write──> stdin pipe ─┐
    stdout pipe ──read──> chunks ┼── epoll set ──> core.serve()   (one task)
    stderr pipe ──read──> chunks ┤
    pidfd (leader exited) ───────┘
                                     │ leader exited (a zombie: pgid pinned)
                                     ▼
    core.finish(): close our write ends; read what is left; at EOF SIGKILL
        the group (members that hold no pipe) and reap (wait4 -> returncode,
        rusage). Not at EOF (a member holds a pipe): SIGTERM the group, drain
        within kill_grace, else SIGKILL; then reap.

A timeout, ``max_output`` or cancellation goes through :func:`_stop` instead
(SIGTERM the group, keep draining for up to ``kill_grace``, SIGKILL, reap),
shielded from cancellation; then the error (or the cancellation) is raised with
the output collected so far.

There are two cores with the same methods. The C one (``_runcore.c``) serves
the common case -- no ``cwd``, the stdio words ``"pipe"``, ``"devnull"``,
``"inherit"`` (and ``"stdout"`` for stderr), our own ``PATH`` -- with its
system calls made from C: a short run's cost to the parent is mostly Python
calls, and each one adds to the latency, because the child runs on the CPU
that started it. :class:`_PyCore` serves everything else (open files, fds,
``cwd``, another ``PATH``, no C compiler at install) on :func:`launch`.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import anyio
from anyio.lowlevel import checkpoint

from ._errors import CalledProcessError, OutputLimitExceeded, ProcessTimeoutError
from ._fdio import grow_pipe_after
from ._monitor import Rusage
from ._poller import FdWait, Poller
from ._posix_spawn import env_entries
from ._spawn import GroupWatch, Launched, StderrSpec, StdioSpec, command_not_found, launch
from ._subprocess import AFTER_KILL_DRAIN, CompletedProcess

if TYPE_CHECKING:
    from ._runcore import Core as CCore


def _load_c_core() -> type[CCore] | None:
    """The C core's class (``_runcore.c``), or None where it was not built."""
    try:
        from ._runcore import Core
    except ImportError:  # built without a C compiler (or not on Linux/glibc)
        return None
    return Core


__all__ = ["run", "run_impl", "run_shell"]

#: Use the C core where it applies (tests switch it off to run the Python one).
USE_C_CORE = True

_READ_SIZE = 1 << 20
#: Reads from one pipe per wake-up before the others get a turn.
_READS_PER_TURN = 16
#: Wake-ups served without waiting before a forced checkpoint.
_TURNS_PER_CHECKPOINT = 8

# What serve() and finish() report (the same bits as _runcore's).
EXITED = 1  # the leader has exited (it is not reaped)
OUTPUTS_DONE = 2  # every output pipe is at EOF
LIMIT = 4  # an output passed max_output (limit_hit says which)
IDLE = 8  # nothing was ready

_OUTPUT_NAMES = ("stdout", "stderr")
# The stdio words the C core takes, and its codes for them.
_C_MODES: dict[object, int] = {"inherit": 0, "devnull": 1, "pipe": 2}
_C_STDERR_MODES: dict[object, int] = {**_C_MODES, "stdout": 3}


_CCore = _load_c_core()


class _LimitHit(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Sink:
    __slots__ = ("chunks", "eof", "grown", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.grown = False  # the pipe was grown (see grow_pipe_after)

    def data(self) -> bytes:
        return b"".join(self.chunks)


class _PyCore:
    """The core in Python, on :func:`launch`'s child: every stdio option, ``cwd``,
    any environment; also where the C core was not built."""

    def __init__(
        self, launched: Launched, watch: GroupWatch, data: bytes | None, limit: int | None
    ) -> None:
        self.launched = launched
        self.watch = watch
        self.limit = limit
        self.enforce_limit = True
        self.limit_hit = -1
        self.poller = Poller()
        self.sinks: list[_Sink | None] = [None, None]
        self._by_fd: dict[int, int] = {}
        for index, fd in enumerate((launched.stdout, launched.stderr)):
            if fd >= 0:
                os.set_blocking(fd, False)
                self.poller.register(fd)
                self.sinks[index] = _Sink()
                self._by_fd[fd] = index
        self.stdin = launched.stdin
        self.input = memoryview(data or b"")
        if self.stdin >= 0:
            if self.input:
                os.set_blocking(self.stdin, False)
                self.poller.register(self.stdin, write=True)
            else:
                self.close_stdin()
        self.pidfd = watch.pidfd
        if self.pidfd >= 0:
            self.poller.register(self.pidfd)
        self.exited = False
        # Fds with nothing more to report (EOF, the exit seen): unregistered before
        # the poller is next asked, which usually never happens -- run() is done.
        self._done_fds: list[int] = []

    @property
    def pid(self) -> int:
        return self.launched.pid

    @property
    def returncode(self) -> int | None:
        return self.watch.returncode

    @property
    def rusage(self) -> tuple[float, float, int] | None:
        ru = self.watch.rusage
        return None if ru is None else (ru.user_time, ru.system_time, ru.max_rss)

    async def wait(self) -> None:
        """Wait until serve() has something to do."""
        if self.pidfd < 0 and not self.exited:  # pragma: no cover - no pidfd: poll the exit
            with anyio.move_on_after(0.005):
                await self.poller.wait(check_first=False)
        elif self.poller:
            await self.poller.wait(check_first=False)
        else:  # pragma: no cover - nothing to watch but the missing pidfd
            await anyio.sleep(0.005)

    def _state(self) -> int:
        done = all(sink is None or sink.eof for sink in self.sinks)
        return (EXITED if self.exited else 0) | (OUTPUTS_DONE if done else 0)

    def serve(self) -> int:
        if self._done_fds:
            for fd in self._done_fds:
                self.poller.unregister(fd)
            self._done_fds.clear()
        if self.pidfd < 0 and not self.exited and self.watch.exited():
            self.exited = True  # pragma: no cover - no pidfd (macOS): polled
        fds = self.poller.ready()
        for fd in fds:
            if fd == self.pidfd:
                self.exited = True
                self._done_fds.append(fd)
                self.pidfd = -1
            elif fd == self.stdin:
                self._feed()
            elif (index := self._by_fd.get(fd)) is not None and self._take(index):
                return LIMIT | self._state()
        return (0 if fds else IDLE) | self._state()

    def _take(self, index: int) -> bool:
        """Read output *index* until empty; True when that passed the limit."""
        sink = self.sinks[index]
        fd = (self.launched.stdout, self.launched.stderr)[index]
        if sink is None or sink.eof:
            return False
        for _ in range(_READS_PER_TURN):
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return False
            if not data:
                sink.eof = True
                self._done_fds.append(fd)
                return False
            if not sink.grown:
                sink.grown = grow_pipe_after(fd, len(data))
            limit = self.limit
            if limit is not None and sink.size + len(data) > limit:
                room = limit - sink.size
                if room > 0:
                    sink.chunks.append(data[:room])
                    sink.size = limit
                if self.enforce_limit:
                    self.limit_hit = index
                    return True
                continue  # stopping anyway: discard the rest
            sink.chunks.append(data)
            sink.size += len(data)
        return False

    def _feed(self) -> None:
        try:
            written = os.write(self.stdin, self.input)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            written = len(self.input)  # the child stopped reading: fine, as in subprocess
        self.input = self.input[written:]
        if not self.input:
            self.close_stdin()

    def close_stdin(self) -> None:
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            self.poller.unregister(fd)
            os.close(fd)

    def release(self) -> None:
        for fd in self.launched.held:
            os.close(fd)
        self.launched.held.clear()

    def finish(self) -> int:
        self.release()
        for index in (0, 1):  # usually just EOF: no need to poll first
            if self._take(index):
                return LIMIT | self._state()
        state = self._state()
        if state & OUTPUTS_DONE:
            self.watch.signal(signal.SIGKILL)  # members that hold no pipe; still pinned
            self.reap()
        return state

    def signal(self, sig: int) -> bool:
        return self.watch.signal(sig)

    def reap(self) -> bool:
        code = self.watch.reap()
        if code is not None and self.launched.popen is not None:
            self.launched.popen.returncode = code
        return code is not None

    def leader_exited(self) -> bool:
        return self.exited or self.watch.exited()

    def output(self, index: int) -> bytes | None:
        sink = self.sinks[index]
        return None if sink is None else sink.data()

    def close(self) -> None:
        self.close_stdin()
        self.release()
        self.poller.close()
        for fd in self._by_fd:
            os.close(fd)
        self._by_fd.clear()
        self.watch.close()


if TYPE_CHECKING:
    #: A core: the C one or the Python one (the same methods).
    _Core: TypeAlias = CCore | _PyCore


def _start(
    argv: Sequence[str | os.PathLike[str]],
    data: bytes | None,
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    stdout: StdioSpec,
    stderr: StderrSpec,
    limit: int | None,
) -> tuple[_Core, Callable[[], Awaitable[None]]]:
    """Start the child; its core and the function that waits for the core to
    have something to serve."""
    if (
        _CCore is not None
        and USE_C_CORE
        and cwd is None
        and isinstance(stdout, str)
        and isinstance(stderr, str)
        and stdout in _C_MODES
        and stderr in _C_STDERR_MODES
        # posix_spawnp searches *our* PATH; Popen searches the child's env's PATH.
        and (env is None or env.get("PATH") == os.environ.get("PATH"))
    ):
        try:
            c_core = _CCore(
                argv,
                None if env is None else env_entries(env),
                True,
                2 if data is not None else 1,
                _C_MODES[stdout],
                _C_STDERR_MODES[stderr],
                data,
                -1 if limit is None else limit,
            )
        except FileNotFoundError:
            raise command_not_found(os.fspath(argv[0]) if argv else "") from None
        except OSError as exc:
            if exc.errno != errno.EBADF:  # EBADF: one of our fds 0..2 is closed
                raise
        else:
            return c_core, FdWait(c_core.fileno()).wait
    launched = launch(
        argv,
        stdin="pipe" if data is not None else "devnull",
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        hold_output=True,
    )
    py_core = _PyCore(launched, GroupWatch(launched.pid, own_group=launched.own_group), data, limit)
    return py_core, py_core.wait


async def _serve(core: _Core, wait: Callable[[], Awaitable[None]], goal: int) -> None:
    """Serve the core until *goal* (EXITED or OUTPUTS_DONE) is reached.

    :raises _LimitHit: when an output passed ``max_output``.
    """
    turns = 0
    while True:
        state = core.serve()
        if state & LIMIT:
            raise _LimitHit(_OUTPUT_NAMES[core.limit_hit])
        if state & goal:
            return
        if state & IDLE:
            turns = 0
            await wait()
        else:
            turns += 1
            if turns >= _TURNS_PER_CHECKPOINT:
                turns = 0
                await checkpoint()


async def _to_the_end(core: _Core, wait: Callable[[], Awaitable[None]], grace: float) -> None:
    """Feed stdin and collect output until the leader exits, then stop what is
    left of its group, read the pipes to EOF and reap (call once, right after
    the start)."""
    await wait()  # right after the start nothing is ready yet: no poll first
    await _serve(core, wait, EXITED)
    state = core.finish()
    if state & LIMIT:
        raise _LimitHit(_OUTPUT_NAMES[core.limit_hit])
    if not state & OUTPUTS_DONE:
        # A member of the group still holds a pipe: SIGTERM, grace, SIGKILL.
        core.signal(signal.SIGTERM)
        with anyio.move_on_after(grace) as scope:
            await _serve(core, wait, OUTPUTS_DONE)
        if scope.cancelled_caught:
            core.signal(signal.SIGKILL)
            with anyio.move_on_after(AFTER_KILL_DRAIN):
                await _serve(core, wait, OUTPUTS_DONE)
        core.signal(signal.SIGKILL)  # members that hold no pipe; still pinned
        core.reap()


async def _stop(core: _Core, wait: Callable[[], Awaitable[None]], grace: float) -> None:
    """Stop the child and its group (SIGTERM, grace, SIGKILL), keep reading
    meanwhile, then reap. Call shielded."""
    core.enforce_limit = False
    core.close_stdin()
    if not core.leader_exited():
        core.signal(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await _serve(core, wait, EXITED)
        if not core.leader_exited():
            core.signal(signal.SIGKILL)
            await _serve(core, wait, EXITED)
    core.release()
    core.signal(signal.SIGKILL)
    with anyio.move_on_after(AFTER_KILL_DRAIN):
        await _serve(core, wait, OUTPUTS_DONE)
    core.reap()


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
    if data is not None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"input must be bytes or str, not {type(data).__name__}")
        data = bytes(data)
    started = time.perf_counter()
    core, wait = _start(
        argv, data, cwd=cwd, env=env, stdout=stdout, stderr=stderr, limit=max_output
    )

    def partial(index: int) -> Any:
        return _decode_partial(core.output(index), text, encoding, errors)

    try:
        if on_start is not None:
            on_start(core.pid, core.signal)
        try:
            if timeout is None:
                await _to_the_end(core, wait, kill_grace)
                timed_out = False
            else:
                with anyio.move_on_after(timeout) as scope:
                    await _to_the_end(core, wait, kill_grace)
                timed_out = scope.cancelled_caught
        except _LimitHit as hit:
            with anyio.CancelScope(shield=True):
                await _stop(core, wait, kill_grace)
            assert max_output is not None
            raise OutputLimitExceeded(
                cmd, hit.name, max_output, stdout=partial(0), stderr=partial(1)
            ) from None
        if timed_out and core.returncode is None:
            with anyio.CancelScope(shield=True):
                await _stop(core, wait, kill_grace)
            assert timeout is not None
            raise ProcessTimeoutError(cmd, timeout, stdout=partial(0), stderr=partial(1))
    except BaseException:
        if core.returncode is None:
            with anyio.CancelScope(shield=True):
                await _stop(core, wait, kill_grace)
        raise
    finally:
        core.close()
        returncode = core.returncode
        ru = core.rusage
        rusage = None if ru is None else Rusage(*ru)
        if on_exit is not None and returncode is not None:
            on_exit(returncode, rusage, core.output(0), core.output(1))
    assert returncode is not None
    out = core.output(0)
    err = core.output(1)
    result: CompletedProcess[Any] = CompletedProcess(
        args=cmd,
        pid=core.pid,
        returncode=returncode,
        stdout=_decode(out, text, encoding, errors),
        stderr=_decode(err, text, encoding, errors),
        duration=time.perf_counter() - started,
        signal=-returncode if returncode < 0 else None,
        rusage=rusage,
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

"""Starting a child process, and signalling its process group safely.

This module is the only place that creates child processes for the subprocess
layer. It never goes through an event loop's subprocess transport (their child
watchers reap our children and throw the ``wait4`` rusage away, and uvloop forks
the whole parent instead of using vfork)::

    launch(argv, stdin=..., stdout=..., stderr=..., cwd=, env=)
      │  pipes: pipe2(O_CLOEXEC) (readers grow them to 1 MiB once seen full)
      │  fast path  posix_spawn[p](setpgroup=0, setsigdef=SIGPIPE/SIGXFSZ, dup2,
      │             then glibc's closefrom(3) action (_posix_spawn.py), or
      │             without one: os.posix_spawn[p] + a close per inheritable fd)
      │  otherwise  subprocess.Popen(process_group=0, close_fds=True)   (vfork)
      ▼
    Launched(pid, popen, parent ends of the pipes, child write ends if held)
      │
      ▼
    GroupWatch(pid, own_group)       pidfd readable  -> the leader exited (zombie)
                                     reap()          -> wait4: returncode + rusage
                                     signal(sig)     -> killpg, or the child alone

Both start paths raise the same errors: a missing executable is a
:class:`~aioproc.CommandNotFoundError` (also :class:`FileNotFoundError`), a bad
``cwd`` a plain :class:`FileNotFoundError`, a non-executable file a plain
:class:`PermissionError`. The fast path is taken only where it is exactly
equivalent to ``Popen``: no ``cwd``, the program found on the same ``PATH`` that
``Popen`` would search, and every stdio source fd above 2. It is measurably
faster (about 50 µs a start here). A child runs on the CPU that started it,
so every microsecond the parent spends around a start adds to the latency of
a short child (``run(["true"])``): hence glibc's ``closefrom`` action instead
of listing ``/proc/self/fd`` (about 30 µs), and pipes that start at the
default size and grow only once a reader sees one full (about 15 µs).

Process groups, and why signalling them is safe
-----------------------------------------------
Each child leads its own process group (pgid == pid), except with
``stdin="inherit"``: a child reading the caller's terminal from another group
would stop on SIGTTIN, so it stays in the caller's group and signals go to it
alone, through its pidfd (never to a recycled pid).

``killpg(pgid)`` needs care because Linux recycles numbers (``pid_max`` can be
as low as 32768). A pid number cannot be handed out again while any process
still uses it as its pid *or* its pgid. So:

* while the leader is unreaped (running, or a zombie) the number is pinned and
  ``killpg`` can only reach our group. The subprocess layer therefore does all
  of its own group clean-up -- SIGTERM, grace, SIGKILL, the final sweep of what
  is left -- after the leader exited but *before* it reaps it (:meth:`exited`
  and :meth:`wait_exited` do not reap);
* after the reap, a group that still has members is pinned by those members.
  Right after reaping we probe the group (``killpg(pgid, 0)``); once the group
  is found empty (ESRCH) it is marked gone and never signalled again. The one
  window left is a group that still had members at the reap, all of which die
  later, after which the pid counter wraps all the way round to that number and
  a new process makes itself a group leader with it, before the user signals a
  reaped process. We accept that window; subprocess has the same one for a pid.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

import anyio

from ._errors import CommandNotFoundError
from ._posix_spawn import spawn as glibc_spawn
from ._reap import ChildWatch

__all__ = [
    "GroupWatch",
    "Launched",
    "StderrSpec",
    "StdioSpec",
    "command_not_found",
    "launch",
]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: What a stdio option may be: ``"pipe"``, ``"devnull"``, ``"inherit"``, an
#: open file (anything with ``fileno()``) or a file descriptor.
StdioSpec: TypeAlias = Literal["pipe", "devnull", "inherit"] | int | _HasFileno
#: ``stderr`` may also be ``"stdout"``: merged into the stdout pipe or file.
StderrSpec: TypeAlias = StdioSpec | Literal["stdout"]

_SIGNALS_TO_RESET = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)
_HAVE_POSIX_SPAWN = hasattr(os, "posix_spawn") and os.path.isdir("/proc/self/fd")


@dataclass(slots=True)
class Launched:
    """A freshly started child: its pid and the parent's ends of its pipes.

    Each fd is -1 when that stream is not a pipe. ``held`` lists the child's
    write ends of the output pipes when the caller asked to hold them (see
    :func:`launch`); the caller must close them.
    """

    pid: int
    popen: subprocess.Popen[bytes] | None
    own_group: bool
    stdin: int = -1
    stdout: int = -1
    stderr: int = -1
    held: list[int] = field(default_factory=list)


_STDIO_WORDS = frozenset({"pipe", "devnull", "inherit"})
_STDERR_WORDS = _STDIO_WORDS | {"stdout"}


def _check_stdio(name: str, spec: object) -> None:
    expected = "'pipe', 'devnull', 'inherit', a file or an fd"
    if isinstance(spec, str):
        if spec not in (_STDERR_WORDS if name == "stderr" else _STDIO_WORDS):
            raise ValueError(f"{name}={spec!r}: expected {expected}")
    elif isinstance(spec, bool) or not (isinstance(spec, int) or hasattr(spec, "fileno")):
        raise TypeError(f"{name}={spec!r}: expected {expected}")


def launch(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: StdioSpec,
    stdout: StdioSpec,
    stderr: StderrSpec,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    hold_output: bool = False,
) -> Launched:
    """Start *argv* now (synchronously: it takes well under a millisecond).

    With *hold_output* the parent keeps its own copy of the child's write ends of
    the output pipes, so the pipes cannot reach EOF while the child runs: a
    reader that also watches the child's pidfd then wakes once, at exit, instead
    of once per closed pipe and once more for the exit. The caller closes them
    (``Launched.held``) once the leader has exited.

    :raises CommandNotFoundError: when the executable does not exist.
    :raises FileNotFoundError: when *cwd* does not exist.
    :raises PermissionError: when the file is not executable.
    :raises ValueError: when *argv* is empty or a stdio option is unknown.
    :raises OSError: when the system refuses (too many processes, fds, ...).
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("args must name a program")
    for name, spec in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        _check_stdio(name, spec)
    own_group = stdin != "inherit"
    parent_fds: list[int] = []  # closed on failure
    child_fds: list[int] = []  # closed once the child has them
    launched = Launched(pid=-1, popen=None, own_group=own_group)
    try:
        # Child-side source fd for 0, 1, 2 (None: inherit ours).
        sources: list[int | None] = [None, None, None]
        if stdin == "pipe":
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            child_fds.append(read_end)
            parent_fds.append(write_end)
            sources[0], launched.stdin = read_end, write_end
        else:
            sources[0] = _fixed_source(stdin, os.O_RDONLY, child_fds)
        if stdout == "pipe":
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            parent_fds.append(read_end)
            (launched.held if hold_output else child_fds).append(write_end)
            sources[1], launched.stdout = write_end, read_end
        else:
            sources[1] = _fixed_source(stdout, os.O_WRONLY, child_fds)
        if stderr == "stdout":
            # Merged: the child's fd 2 is a copy of its fd 1 (our stdout if inherited).
            sources[2] = sources[1] if sources[1] is not None else 1
        elif stderr == "pipe":
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            parent_fds.append(read_end)
            (launched.held if hold_output else child_fds).append(write_end)
            sources[2], launched.stderr = write_end, read_end
        else:
            sources[2] = _fixed_source(stderr, os.O_WRONLY, child_fds)
        launched.pid, launched.popen = _start(args, sources, cwd, env, own_group)
    except BaseException:
        for fd in parent_fds + launched.held:
            os.close(fd)
        launched.held.clear()
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    return launched


def _fixed_source(spec: StdioSpec, devnull_mode: int, opened: list[int]) -> int | None:
    """The fd the child gets for a non-pipe option (None: inherit ours)."""
    if spec == "inherit":
        return None
    if spec == "devnull":
        fd = os.open(os.devnull, devnull_mode | os.O_CLOEXEC)
        opened.append(fd)
        return fd
    if isinstance(spec, int):
        return spec
    assert not isinstance(spec, str)
    return spec.fileno()


def _start(
    args: list[str],
    sources: list[int | None],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    own_group: bool,
) -> tuple[int, subprocess.Popen[bytes] | None]:
    program = args[0]
    try:
        if _fast_path_ok(program, sources, cwd, env):
            try:
                return _posix_spawn(args, sources, env, own_group), None
            except OSError as exc:
                if exc.errno != errno.EBADF:  # EBADF: an fd we meant to close vanished
                    raise
        popen = subprocess.Popen(
            args,
            stdin=sources[0],
            stdout=sources[1],
            stderr=sources[2],
            cwd=cwd,
            env=env,
            close_fds=True,
            process_group=0 if own_group else None,
        )
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename is not None and str(exc.filename) == os.fspath(cwd):
            raise  # a bad cwd stays a plain FileNotFoundError
        raise command_not_found(program) from None
    return popen.pid, popen


def command_not_found(program: str | bytes) -> CommandNotFoundError:
    """The error for a program that does not exist (``FileNotFoundError`` too)."""
    return CommandNotFoundError(
        errno.ENOENT, f"command not found ({os.strerror(errno.ENOENT)})", program
    )


def _fast_path_ok(
    program: str,
    sources: list[int | None],
    cwd: object,
    env: Mapping[str, str] | None,
) -> bool:
    if not _HAVE_POSIX_SPAWN or cwd is not None:
        return False
    # dup2 onto 0..2 from 0..2 needs Popen's careful ordering.
    for src in sources:
        if src is not None and src <= 2:
            return False
    if "/" in program:
        return True
    # posix_spawnp searches *our* PATH; Popen searches the child's env's PATH.
    path = os.environ.get("PATH")
    return path is not None and (env is None or env.get("PATH") == path)


def _inheritable_fds() -> list[int]:
    """Our fds above 2 that a plain exec would pass on (Popen closes them)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the directory's own fd, closed by now
                continue
    return found


def _posix_spawn(
    args: list[str], sources: list[int | None], env: Mapping[str, str] | None, own_group: bool
) -> int:
    pid = glibc_spawn(args, sources, env, own_group)  # the child closes fds >= 3
    if pid is not None:
        return pid
    # No closefrom action in this C library: close each inheritable fd we find.
    actions: list[tuple[int, int, int] | tuple[int, int]] = [
        (os.POSIX_SPAWN_DUP2, src, target) for target, src in enumerate(sources) if src is not None
    ]
    actions.extend((os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds())
    # os.environ's own bytes dict is converted much faster than the mapping.
    environment: Mapping[str, str] | Mapping[bytes, bytes] = (
        getattr(os.environ, "_data", os.environ) if env is None else env
    )
    spawn = os.posix_spawn if "/" in args[0] else os.posix_spawnp
    if own_group:
        return spawn(
            args[0],
            args,
            environment,
            file_actions=actions,
            setpgroup=0,
            setsigdef=_SIGNALS_TO_RESET,
        )
    return spawn(args[0], args, environment, file_actions=actions, setsigdef=_SIGNALS_TO_RESET)


class GroupWatch(ChildWatch):
    """A :class:`ChildWatch` that can also wait for the exit *without* reaping,
    and signal the child's whole process group (see the module docstring)."""

    __slots__ = ("_group_gone", "_waiting", "pgid")

    def __init__(self, pid: int, *, own_group: bool) -> None:
        super().__init__(pid)
        self.pgid: int | None = pid if own_group else None
        self._group_gone = False
        self._waiting = False

    def close(self) -> None:
        """Release the pidfd; a task waiting in :meth:`wait_exited` is woken."""
        if self._waiting:
            super().close()
            return
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)  # nobody waits on it: no need to tell the event loop

    @property
    def pidfd(self) -> int:
        """The pidfd (readable once the child exited), or -1 without one."""
        return self._pidfd

    def exited(self) -> bool:
        """Whether the child has exited; it is *not* reaped (a zombie pins its pid)."""
        if self.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    async def wait_exited(self) -> None:
        """Wait until the child has exited, without reaping it.

        Only one task may wait at a time (the pidfd takes one waiter).
        """
        delay = 0.0005
        while not self.exited():
            self._waiting = True
            try:
                if self._pidfd >= 0:
                    await anyio.wait_readable(self._pidfd)
                else:  # pragma: no cover - no pidfd (macOS, old kernels)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            finally:
                self._waiting = False

    def reap(self) -> int | None:
        """Collect the exit status if the child has exited; the return code."""
        was_reaped = self.returncode is not None
        code = self.poll()
        if code is not None and not was_reaped and self.pgid is not None:
            self._probe_group()
        return code

    def _probe_group(self) -> None:
        try:
            os.killpg(self.pgid or 0, 0)
        except ProcessLookupError:
            self._group_gone = True
        except PermissionError:  # pragma: no cover - a member changed uid
            pass

    def signal(self, sig: int) -> bool:
        """Send *sig* to the child's process group (or to the child alone when it
        shares ours). False when there was nobody left to signal."""
        if self.pgid is None:
            return self.send_signal(sig)
        if self._group_gone:
            return False
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            self._group_gone = True
            return False
        except PermissionError:  # pragma: no cover - a setuid member
            return self.send_signal(sig)
        return True

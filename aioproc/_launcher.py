"""Starting worker processes: the "spawn" launcher and the zygote handle.

Both give the same thing to :class:`~aioproc._workerproc.WorkerProcess`: a
started process whose two protocol pipes are connected, and an *exit watch*
(``pid``, ``await wait() -> returncode | None``, ``send_signal(sig)``)::

    SpawnLauncher.launch(in_r, out_w)
        posix_spawn(python [-S] -c BOOTSTRAP 3 4 PARENT_PID)   (from the
        event-loop thread: PR_SET_PDEATHSIG follows the thread that forked)
        -> ChildWatch (pidfd + wait4: our own child)

    Zygote.launch(in_r, out_w)       (also while the zygote still starts: queued)
        SPAWN + fds ──► zygote forks ──► SPAWNED + pidfd
        -> ZygoteChildWatch (pidfd to signal; the return code relayed by the zygote)

Start-up time is the pool's cold start, so the bootstrap is lean: it loads
``aioproc._worker_main`` or ``aioproc._zygote`` without the package
``__init__``, and skips site.py (``-S``) whenever the caller's setup allows,
handing over what site.py would have set up (``sys.path``, ``sys.prefix``,
the ``exit``/``help`` builtins, setuptools' distutils shim) instead. The
zygote imports with the collector off and uses the C modules ``_socket`` and
``_signal`` (not the enum-converting wrappers); a pool queues its first fork
requests behind the zygote's handshake, and each worker's handshake is written
into its pipe before the fork request, so a forked worker finds it waiting.

Processes are started with ``os.posix_spawn`` rather than ``subprocess`` or the
event loop's subprocess support: those either reap the child behind our back
(losing ``wait4``'s rusage), or, on trio, fork from a worker thread whose exit
would fire the child's ``PR_SET_PDEATHSIG``. SIGINT is blocked across the exec;
the child ignores it, then unblocks it.

A :class:`Zygote` belongs to one owner (a ``Worker`` or a ``Pool``), runs its
control-socket reader as a task (``await tg.start(zygote.serve)``, or
``tg.start_soon`` to ask for workers before it is ready) and exits
with its owner (``aclose()``): its workers then die too (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc

from ._channel import recv_record, send_record
from ._errors import ProtocolError, WorkerStartError
from ._reap import ChildWatch
from ._values import decode_exception, main_source
from .protocol import PROTOCOL_VERSION, Kind

__all__ = [
    "ExitWatch",
    "Launcher",
    "SpawnLauncher",
    "Zygote",
    "ZygoteChildWatch",
    "caller_sys_path",
    "spawn_python",
]

#: The child sees its two protocol pipes (or the zygote its socket) at these fds.
CHILD_IN_FD = 3
CHILD_OUT_FD = 4
_HIGH_FD = 10


class ExitWatch(Protocol):
    """How a started worker is watched and signalled."""

    pid: int

    async def wait(self) -> int | None:
        """The return code once the process has exited (``None`` if unknowable)."""
        ...

    def send_signal(self, sig: int) -> bool:
        """Send *sig*; False when the process is already gone."""
        ...

    def close(self) -> None:
        """Release what the watch holds (never touches the process)."""
        ...


class Launcher(Protocol):
    """Starts a worker process given the child ends of its two pipes."""

    async def launch(self, in_fd: int, out_fd: int) -> ExitWatch:
        """Start a worker reading *in_fd* and writing *out_fd* (the caller closes them).

        :raises WorkerStartError: when no process could be started.
        """
        ...


def caller_sys_path() -> list[str]:
    """``sys.path`` made absolute (a worker may run in another directory)."""
    cwd = os.getcwd()
    return [os.path.join(cwd, p) if not os.path.isabs(p) else p for p in sys.path]


#: How a worker or the zygote starts: load the module without running the
#: package's __init__ (which imports anyio, psutil and every layer), then drop
#: the stub so that user code importing aioproc later gets the real package.
#: A lean process starts faster, forks faster and shares more with its children.
#: (``type(sys)`` is ``types.ModuleType``, without importing :mod:`types`.)
#: ``{site}`` hands over what site.py would have set up (see :func:`_site_handover`).
_BOOT = (
    "import sys;{site}p=type(sys)('aioproc');p.__path__=[{pkg!r}];"
    "sys.modules['aioproc']=p;import {module} as m;{after}"
    "del sys.modules['aioproc'];m.main()"
)
_LEAN_MODULES = ("aioproc._worker_main", "aioproc._zygote")
#: The bootstrap is one argv string: Linux caps one at 128 KiB (MAX_ARG_STRLEN).
_MAX_BOOT = 64 * 1024
#: A .pth file whose only code is setuptools' distutils shim, which the lean
#: child installs itself (``_distutils_hack.add_shim()``).
_DISTUTILS_PTH = "distutils-precedence.pth"


@functools.cache
def _pth_files_run_code() -> bool:
    """True when a .pth file in a site directory runs code (an ``import`` line)
    other than setuptools' distutils shim: only site.py itself can replay that."""
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if not name.endswith(".pth") or name == _DISTUTILS_PTH:
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                return True  # site.py would read it somehow: let it
            if any(line.startswith(("import ", "import\t")) for line in lines):
                return True
    return False


def _site_handover() -> tuple[list[str], bool] | None:
    """What a child started with ``-S`` needs to look like the caller after site.py.

    site.py costs a child a few milliseconds (and its .pth files more), but all
    it leaves behind in a plain setup is ``sys.path`` (site-packages and .pth
    paths), ``sys.prefix`` in a virtualenv, the ``exit``/``help``/... builtins
    and perhaps setuptools' distutils shim: the child is given those directly.
    Returns ``(extra -S flags, distutils shim)``, or ``None`` when the caller's
    setup holds more than that (a sitecustomize, an import hook, a .pth file that
    runs code): then the child runs site.py as usual.
    """
    if sys.flags.no_site:
        return [], False  # the caller has no site either (its -S is passed on)
    if "sitecustomize" in sys.modules or "usercustomize" in sys.modules:
        return None
    if _pth_files_run_code():
        return None
    # Import hooks come from .pth code or a sitecustomize (both ruled out above)
    # or from the caller's own program (pytest's, say), which no child inherits.
    shim = any(type(finder).__module__ == "_distutils_hack" for finder in sys.meta_path)
    return ["-S"], shim


def _boot_argv(module: str) -> list[str]:
    """``-c BOOTSTRAP`` (and ``-S`` when site.py can be skipped) for a lean module."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    handover = _site_handover()
    flags: list[str] = []
    site = after = ""
    if handover is not None:
        flags, shim = handover
        path = [p for p in caller_sys_path() if isinstance(p, str)]
        site = f"sys.path[:]={path!r};"
        if flags:
            site += f"sys.prefix={sys.prefix!r};sys.exec_prefix={sys.exec_prefix!r};"
            after = f"import aioproc._worker_main as w;w.restore_site({shim!r});"
    if module == "aioproc._zygote":
        # No collections while the zygote imports: it enables the collector
        # itself, after its handshake (gc.freeze()).
        site = "import gc;gc.disable();" + site
    boot = _BOOT.format(site=site, pkg=package_dir, module=module, after=after)
    if len(boot) > _MAX_BOOT:
        flags = []
        boot = _BOOT.format(site="", pkg=package_dir, module=module, after="")
    return [*flags, "-c", boot]


def spawn_python(
    module: str,
    args: Sequence[str],
    fds: Sequence[int],
    env: Mapping[str, str] | None,
) -> int:
    """``posix_spawn`` ``python -m module *args`` with *fds* as fds 3, 4, ...; the pid.

    ``aioproc._worker_main`` and ``aioproc._zygote`` are started through a light
    bootstrap (``-c``) that skips the package ``__init__`` and, where it can,
    site.py (``-S``, the caller's ``sys.path`` handed over instead).

    :raises OSError: when the interpreter cannot be started.
    """
    # Move our ends above the target numbers first, so no dup2 overwrites a source.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, CHILD_IN_FD + i) for i, fd in enumerate(high)]
        start = _boot_argv(module) if module in _LEAN_MODULES else ["-m", module]
        argv = [
            sys.executable,
            *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            *start,
            *args,
        ]
        return os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ if env is None else env),
            file_actions=actions,
            setsigmask={signal.SIGINT},
        )
    finally:
        for fd in high:
            os.close(fd)


class SpawnLauncher:
    """ "spawn": a fresh interpreter per worker."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = env

    async def launch(self, in_fd: int, out_fd: int) -> ExitWatch:
        try:
            pid = spawn_python(
                "aioproc._worker_main",
                [str(CHILD_IN_FD), str(CHILD_OUT_FD), str(os.getpid())],
                [in_fd, out_fd],
                self.env,
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start {sys.executable}: {exc}") from exc
        return ChildWatch(pid)

    def __repr__(self) -> str:
        return "<SpawnLauncher>"


class ZygoteChildWatch:
    """A worker forked by the zygote: signalled through its pidfd, its return
    code relayed by the zygote."""

    __slots__ = ("_done", "_pidfd", "_returncode", "pid")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._done = anyio.Event()
        self._returncode: int | None = None

    def _exited(self, returncode: int | None) -> None:
        if not self._done.is_set():
            self._returncode = returncode
            self._done.set()

    async def wait(self) -> int | None:
        await self._done.wait()
        if self._returncode is None and self._pidfd >= 0:
            # The zygote died without relaying: the pidfd still says when it is gone.
            await anyio.wait_readable(self._pidfd)
        return self._returncode

    def send_signal(self, sig: int) -> bool:
        if self._done.is_set():
            return False
        try:
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:  # pragma: no cover - no pidfd
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)


class ZygoteState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


class Zygote:
    """Handle of one zygote process: start workers from it, relay their exits.

    ``await tg.start(zygote.serve)`` starts the process, waits for its
    handshake (``start_timeout``) and then reads its control socket until it
    exits; ``await zygote.launch(in_fd, out_fd)`` forks a worker;
    ``await zygote.aclose()`` ends it (and so its workers).
    """

    def __init__(
        self,
        *,
        preload: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.preload = tuple(preload)
        self.env = env
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.start_timeout = start_timeout
        self.state = ZygoteState.CREATED
        self.pid: int | None = None
        self.threads = 1
        self._sock: socket.socket | None = None
        self._watch: ChildWatch | None = None
        self._children: dict[int, ZygoteChildWatch] = {}
        self._requests: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._next_request = 1
        self._closed = anyio.Event()
        #: Set once the process runs and its socket takes requests (or it failed).
        self._spawned = anyio.Event()
        #: Why the zygote failed to start, for the workers asked of it meanwhile.
        self._failure: WorkerStartError | None = None

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[Zygote] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the zygote, report ready, relay its messages until it exits.

        :raises WorkerStartError: when the zygote cannot start (its cause attached).
        """
        if self.state is not ZygoteState.CREATED:
            # aclose() came first (a pool closed before its zygote's task ran).
            raise WorkerStartError(f"the zygote is {self.state.value}")
        self.state = ZygoteState.STARTING
        try:
            await self._start()
        except BaseException as exc:
            if isinstance(exc, WorkerStartError):
                self._failure = exc
            await self._shutdown()
            raise
        self.state = ZygoteState.RUNNING
        task_status.started(self)
        try:
            await self._read_loop()
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = spawn_python(
                "aioproc._zygote", [str(CHILD_IN_FD), str(os.getpid())], [theirs.fileno()], self.env
            )
        except OSError as exc:
            ours.close()
            raise WorkerStartError(f"cannot start the zygote: {exc}") from exc
        finally:
            theirs.close()
        self.pid = pid
        self._watch = ChildWatch(pid)
        self._sock = ours
        ours.setblocking(False)
        config = {
            "sys_path": caller_sys_path(),
            "cwd": self.cwd,
            "preload": list(self.preload),
        }
        send_record(ours, [Kind.HELLO, PROTOCOL_VERSION, config])
        # Requests may be queued behind the handshake from now on (see launch()).
        self._spawned.set()
        hello: Any = None
        with anyio.move_on_after(self.start_timeout):
            record = await self._recv()
            hello = record[0] if record is not None else None
        if hello is None:
            if self._watch.poll() is not None:
                raise WorkerStartError(
                    f"the zygote exited with code {self._watch.returncode} before its handshake"
                )
            raise WorkerStartError(f"the zygote sent no handshake within {self.start_timeout:g} s")
        if not (isinstance(hello, list) and len(hello) >= 4 and hello[0] == Kind.HELLO):
            raise WorkerStartError("the zygote's first message is not a handshake") from (
                ProtocolError(f"unexpected first message {hello!r}")
            )
        if hello[1] != PROTOCOL_VERSION:
            raise WorkerStartError("the zygote speaks another protocol version") from ProtocolError(
                f"protocol version mismatch: zygote speaks {hello[1]}, "
                f"this aioproc speaks {PROTOCOL_VERSION}"
            )
        if hello[3] is not None:
            cause = decode_exception(hello[3])
            raise WorkerStartError(f"the zygote failed to start: {cause}") from cause
        info = hello[4] if len(hello) > 4 and isinstance(hello[4], dict) else {}
        self.threads = int(info.get("threads", 1))
        if self.threads > 1:
            warnings.warn(
                f"the aioproc zygote has {self.threads} threads after importing preload="
                f"{list(self.preload)!r}; forking a multi-threaded process can deadlock its "
                "workers (a preloaded library started a thread)",
                RuntimeWarning,
                stacklevel=2,
            )

    async def _recv(self) -> tuple[Any, list[int]] | None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                return recv_record(sock)
            except BlockingIOError:
                await anyio.wait_readable(sock)
            except ConnectionResetError:
                # The zygote closed with requests of ours unread (it failed to
                # start). Linux reports that once, ahead of the records it had
                # sent: read on for its failure reply, then end of stream.
                continue

    async def _read_loop(self) -> None:
        while True:
            try:
                record = await self._recv()
            except (OSError, ProtocolError, anyio.ClosedResourceError):
                return
            if record is None:
                return
            message, fds = record
            kind = message[0]
            if kind == Kind.SPAWNED:
                waiter = self._requests.pop(message[1], None)
                if waiter is None:
                    for fd in fds:
                        os.close(fd)
                    continue
                waiter[1].extend([message[2], fds[0] if fds else -1])
                waiter[0].set()
            elif kind == Kind.EXITED:
                child = self._children.pop(message[1], None)
                if child is not None:
                    child._exited(int(message[2]))

    async def launch(self, in_fd: int, out_fd: int) -> ExitWatch:
        """Fork a worker from the zygote with these pipe ends.

        May be called before the zygote is ready, once its ``serve`` task is
        started (``start_soon`` is enough): the request is queued on the control
        socket behind the handshake, and the zygote forks as soon as it is ready,
        with no round trip back to the caller in between.

        :raises WorkerStartError: when the zygote is closed, or failed to start
            (then with that failure's message and cause).
        """
        if self.state in (ZygoteState.CREATED, ZygoteState.STARTING):
            await self._spawned.wait()
        sock = self._sock
        if self.state not in (ZygoteState.STARTING, ZygoteState.RUNNING) or sock is None:
            raise self._not_running()
        request = self._next_request
        self._next_request += 1
        event = anyio.Event()
        reply: list[Any] = []
        self._requests[request] = (event, reply)
        try:
            send_record(sock, [Kind.SPAWN, request], [in_fd, out_fd])
        except OSError as exc:
            self._requests.pop(request, None)
            raise WorkerStartError(f"the zygote is gone: {exc}") from exc
        await event.wait()
        if not reply:
            if self._failure is not None:
                raise self._not_running()
            raise WorkerStartError("the zygote exited before it could fork the worker")
        pid, pidfd = int(reply[0]), int(reply[1])
        watch = ZygoteChildWatch(pid, pidfd)
        self._children[pid] = watch
        return watch

    def _not_running(self) -> WorkerStartError:
        failure = self._failure
        if failure is None:
            return WorkerStartError(f"the zygote is {self.state.value}")
        error = WorkerStartError(str(failure))
        error.__cause__ = failure.__cause__
        return error

    async def aclose(self) -> None:
        """End the zygote (idempotent); its workers die with it."""
        if self.state is ZygoteState.CREATED:  # never served: it never will be
            self.state = ZygoteState.CLOSED
            self._spawned.set()
            self._closed.set()
            return
        sock = self._sock
        if sock is not None and self.state in (ZygoteState.STARTING, ZygoteState.RUNNING):
            self.state = ZygoteState.CLOSED
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)
        if self.pid is not None:
            with anyio.CancelScope(shield=True):
                await self._closed.wait()

    async def _shutdown(self) -> None:
        """Close the socket, reap the zygote, fail whatever still waits on it."""
        self.state = ZygoteState.CLOSED
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                anyio.notify_closing(sock)
            sock.close()
        for event, _reply in self._requests.values():
            event.set()
        self._requests.clear()
        self._spawned.set()
        watch = self._watch
        if watch is not None:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5.0):
                    await watch.wait()
                if watch.returncode is None:
                    watch.send_signal(signal.SIGKILL)
                    await watch.wait()
            watch.close()
        # Workers whose exit was never relayed: their pidfd says when they are gone.
        for child in self._children.values():
            child._exited(None)
        self._children.clear()
        self._closed.set()

    def __repr__(self) -> str:
        return f"<Zygote pid={self.pid} state={self.state.value} workers={len(self._children)}>"


def default_main_source() -> list[str] | None:
    """The caller's main script, as the handshake carries it."""
    source = main_source()
    return list(source) if source is not None else None

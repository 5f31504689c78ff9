"""The forkserver ("zygote"): imports ``preload`` once, then forks workers from itself.

``python -m aioproc._zygote CTL_FD PARENT_PID``. The caller's own process is
never forked (it usually has threads, CPython gh-90622); this small
single-threaded process is. Its parent-side handle is
:class:`aioproc._launcher.Zygote`::

    caller (Zygote handle)                       zygote (this module)
    ──────────────────────                       ────────────────────
    HELLO [0, version, config] ──ctl socket──►   chdir, sys.path, import preload,
                                                  count /proc/self/task, gc.freeze(),
                                                  gc.enable() (off since the bootstrap)
                               ◄──────────────   HELLO [0, version, pid, failure, info]
    SPAWN [20, req] + 2 pipe fds (SCM_RIGHTS) ►   fork(): child runs the worker loop
                               ◄──────────────   SPAWNED [21, req, pid] + pidfd
                                                  SIGCHLD → waitpid(-1, WNOHANG)
                               ◄──────────────   EXITED [22, pid, returncode]
    close socket / STOP ─────────────────────►   exit (workers die: PDEATHSIG)

The control socket is an AF_UNIX SOCK_SEQPACKET pair: one record is one frame
(with its fds). The zygote sends each child's pidfd right after the fork, before
it can possibly reap the child, so the caller can wait for and signal a worker
that is not its own child without any pid-reuse race. The zygote reaps its
children and relays their return codes; workers forked from it ask for SIGKILL
when the zygote dies, and the zygote asks for SIGKILL when the caller's thread
dies, so nothing outlives the caller.

Start-up time is the pool's cold start: the zygote uses the C modules
``_socket`` and ``_signal`` directly, because the ``socket`` and ``signal``
wrappers turn their constants into enums (``enum``, ``functools`` and the
conversions cost a bare ~7 ms interpreter another ~4 ms).
"""

from __future__ import annotations

import _socket
import gc
import os
import select
import sys

from ._channel import recv_record, send_record
from ._values import encode_exception
from ._worker_main import apply_process_config, prepare_process, run_forked, set_pdeathsig
from .protocol import PROTOCOL_VERSION, Kind

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # the same functions and constants (typeshed has no _signal)
else:
    import _signal

__all__ = ["main"]


def _wants_preload(config: object) -> bool:
    """True when the handshake *config* asks for modules to be preloaded."""
    return isinstance(config, dict) and bool(config.get("preload"))


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no procfs
        return 1


class _Zygote:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handshake(self) -> bool:
        record = recv_record(self.sock)
        if record is None:
            return False
        hello, fds = record
        for fd in fds:
            os.close(fd)
        if not (isinstance(hello, list) and len(hello) >= 3 and hello[0] == Kind.HELLO):
            return False
        if hello[1] != PROTOCOL_VERSION:
            from ._errors import ProtocolError

            error = ProtocolError(
                f"protocol version mismatch: the caller speaks {hello[1]}, "
                f"the zygote speaks {PROTOCOL_VERSION}"
            )
            send_record(
                self.sock, [Kind.HELLO, PROTOCOL_VERSION, self.pid, encode_exception(error)]
            )
            return False
        try:
            apply_process_config(hello[2] if isinstance(hello[2], dict) else {})
        except BaseException as exc:
            send_record(self.sock, [Kind.HELLO, PROTOCOL_VERSION, self.pid, encode_exception(exc)])
            return False
        info = {"threads": _thread_count()}
        # Objects that exist now are shared with every worker; keep the
        # collector from touching (and so copying) their pages after fork.
        # The launcher started us with the collector off (imports run faster);
        # only preloaded libraries leave garbage worth a full collection.
        if _wants_preload(hello[2]):
            gc.collect()
        gc.freeze()
        gc.enable()
        send_record(self.sock, [Kind.HELLO, PROTOCOL_VERSION, self.pid, None, info])
        return True

    def serve(self) -> int:
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(_signal.SIGCHLD, _on_sigchld)
        poller = select.poll()
        ctl = self.sock.fileno()
        poller.register(ctl, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _events in poller.poll():
                if fd == self.wake_r:
                    _drain(self.wake_r)
                    self.reap()
                    continue
                record = recv_record(self.sock)
                if record is None:
                    return 0
                message, fds = record
                kind = message[0] if isinstance(message, list) and message else None
                if kind == Kind.SPAWN and len(fds) == 2:
                    self.spawn(message[1], fds[0], fds[1])
                else:
                    for received in fds:
                        os.close(received)
                    if kind == Kind.STOP:
                        return 0

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            send_record(self.sock, [Kind.EXITED, pid, os.waitstatus_to_exitcode(status)])

    def spawn(self, request: int, in_fd: int, out_fd: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                _signal.set_wakeup_fd(-1)
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                self.sock.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                set_pdeathsig(self.pid)
                run_forked(in_fd, out_fd)
            finally:
                os._exit(1)
        os.close(in_fd)
        os.close(out_fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # pragma: no cover - no pidfd: the caller falls back to the pid
            pidfd = -1
        try:
            send_record(self.sock, [Kind.SPAWNED, request, pid], [pidfd] if pidfd >= 0 else [])
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def _on_sigchld(signum: int, frame: object) -> None:
    """The wakeup fd does the work; the handler only has to exist."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main() -> None:
    """``python -m aioproc._zygote CTL_FD PARENT_PID``."""
    ctl_fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    prepare_process(parent_pid)
    os.set_inheritable(ctl_fd, False)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, ctl_fd)
    zygote = _Zygote(sock)
    try:
        code = zygote.serve() if zygote.handshake() else 1
    except (BrokenPipeError, ConnectionResetError):
        code = 1  # the caller went away (closed while we started): nothing to say
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

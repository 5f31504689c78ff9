"""The bench launcher: a tiny process that forks, execs and reaps benchmark runs.

Why it exists: on Linux a child started with ``vfork`` (what ``subprocess.Popen``
and ``posix_spawn`` use) records its *parent's* high-water RSS in its own
``ru_maxrss`` when it calls ``exec``, so a 1 MB ``true`` spawned by a runner that
once held 300 MB reports 300 MB. A child made with a real ``fork()`` starts from
the forker's *current* RSS instead. So ``aioproc bench`` starts one small process
per session -- this file, run as a script with ``python -I -S`` so that it imports
nothing but builtin modules and stays at about 7 MB -- and every benchmark run is
forked from it. The peak RSS of ``true`` started this way is the *floor* that
``aioproc bench`` prints beside its figures.

Data flow::

    runner (anyio)                        launcher (this file, blocking poll loop)
    ───────────────                       ─────────────────────────────────────────
    Launcher.run(argv) ── request ──▶ fd 0 ──▶ fork ─▶ child: setpgid, stdio, execv
                                               │         (stdout, stdin: /dev/null;
                                               │          stderr: an anonymous file)
                                     pidfd readable (child exited)
                                               │  killpg (leftover grandchildren),
                                               │  wait4 → status + rusage
    reader task ◀─── report ──────── fd 1 ◀────┘  + the last 4 KiB of stderr

Several requests may be in flight (``--jobs``): the launcher forks each as it
arrives and reports each as it ends, in completion order. Wall time is taken
here, around ``fork`` and the exit notification, so the pipe round trip to the
runner is never part of a measurement. End of file on fd 0 means "stop": every
run still in flight is killed (its whole process group) and reaped, then the
launcher exits. It ignores SIGINT: a Ctrl-C is the runner's to handle.

Frames in both directions are a 4-byte big-endian length and a payload::

    request  = run_id u32 | executable path, then argv, NUL-separated
    report   = run_id u32 | wall_ns u64 | wait status i32 | user f64 | system f64
               | max_rss u64 (bytes) | stderr size u64 | the last 4 KiB of stderr

This module is imported by the runner for the constants and :func:`encode_request`
/ :func:`decode_report`; keep its imports to builtin modules.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import time

__all__ = [
    "REPORT_HEAD",
    "STDERR_TAIL",
    "decode_report",
    "encode_request",
    "main",
]

LENGTH = struct.Struct(">I")
REQUEST_HEAD = struct.Struct(">I")
REPORT_HEAD = struct.Struct(">IQiddQQ")
#: How much of a run's stderr travels back (shown when a command fails).
STDERR_TAIL = 4096
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_REQUESTS = 0
_REPORTS = 1


def encode_request(run_id: int, executable: bytes, argv: list[bytes]) -> bytes:
    """One request frame: exec *executable* with *argv* (all encoded) as run *run_id*.

    The runner resolves the executable on ``PATH`` once per command: a ``PATH``
    walk in the forked child (``execvp``) would be timed in every run.
    """
    payload = REQUEST_HEAD.pack(run_id) + b"\0".join([executable, *argv])
    return LENGTH.pack(len(payload)) + payload


def decode_report(
    payload: bytes,
) -> tuple[int, int, int, float, float, int, int, bytes]:
    """``(run_id, wall_ns, status, user, system, max_rss, stderr_size, stderr_tail)``."""
    head = REPORT_HEAD.unpack_from(payload)
    return (*head, payload[REPORT_HEAD.size :])


class _Run:
    """One child in flight: its pid, pidfd, start time and stderr file."""

    __slots__ = ("err_fd", "pid", "pidfd", "run_id", "started")

    def __init__(self, run_id: int, pid: int, pidfd: int, started: int, err_fd: int) -> None:
        self.run_id = run_id
        self.pid = pid
        self.pidfd = pidfd
        self.started = started
        self.err_fd = err_fd


def _anonymous_file(run_id: int) -> int:
    """A file nobody else can open, to hold one run's stderr (CLOEXEC)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create("aioproc-bench-stderr")
        return fd
    path = f"/tmp/.aioproc-bench-{os.getpid()}-{run_id}"  # pragma: no cover - no memfd
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    return fd


def _exec_child(executable: bytes, argv: list[bytes], devnull: int, err_fd: int) -> None:
    """In the forked child: own process group, default signals, stdio, exec."""
    try:
        os.setpgid(0, 0)
        # Python ignores SIGPIPE and SIGXFSZ (and we ignore SIGINT); an ignored
        # disposition would survive exec, so give the program the defaults back.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err_fd, 2)
        os.execv(executable, argv)
    except BaseException as exc:  # report anything, then leave
        try:
            name = os.fsdecode(executable)
            os.write(2, f"aioproc bench: cannot run {name!r}: {exc}\n".encode())
        finally:
            os._exit(127)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of process group *pgid*, if anything."""
    try:  # noqa: SIM105 - importing contextlib would cost the launcher RSS
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _LauncherLoop:
    """The launcher's state: runs in flight, keyed by pidfd (or by pid, no pidfd)."""

    def __init__(self) -> None:
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(_REQUESTS, select.POLLIN)
        self.running: dict[int, _Run] = {}
        self.buffer = b""
        self.use_pidfd = hasattr(os, "pidfd_open")

    def start(self, run_id: int, executable: bytes, argv: list[bytes]) -> None:
        err_fd = _anonymous_file(run_id)
        started = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            _exec_child(executable, argv, self.devnull, err_fd)
        try:  # noqa: SIM105 - also here, so that killpg never races the child's own call
            os.setpgid(pid, pid)
        except OSError:
            pass
        pidfd = -1
        if self.use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # pragma: no cover - ENOSYS on old kernels
                self.use_pidfd = False
        run = _Run(run_id, pid, pidfd, started, err_fd)
        if pidfd >= 0:
            self.poller.register(pidfd, select.POLLIN)
            self.running[pidfd] = run
        else:  # pragma: no cover - no pidfd: polled with wait4(WNOHANG)
            self.running[-pid] = run

    def finish(self, key: int, ended: int) -> None:
        """The child behind *key* has exited: clean up its group, reap, report."""
        run = self.running.pop(key)
        # The leader is a zombie and still holds its group id: what is left in
        # the group (background grandchildren) goes with it.
        _kill_group(run.pid)
        _, status, ru = os.wait4(run.pid, 0)
        if run.pidfd >= 0:
            self.poller.unregister(run.pidfd)
            os.close(run.pidfd)
        size = os.fstat(run.err_fd).st_size
        tail = os.pread(run.err_fd, STDERR_TAIL, max(0, size - STDERR_TAIL)) if size else b""
        os.close(run.err_fd)
        payload = REPORT_HEAD.pack(
            run.run_id,
            ended - run.started,
            status,
            ru.ru_utime,
            ru.ru_stime,
            ru.ru_maxrss * _MAXRSS_UNIT,
            size,
        )
        payload += tail
        _write_all(_REPORTS, LENGTH.pack(len(payload)) + payload)

    def take_requests(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.buffer)
            end = LENGTH.size + length
            if len(self.buffer) < end:
                return
            payload = self.buffer[LENGTH.size : end]
            self.buffer = self.buffer[end:]
            (run_id,) = REQUEST_HEAD.unpack_from(payload)
            executable, *argv = payload[REQUEST_HEAD.size :].split(b"\0")
            self.start(run_id, executable, argv)

    def shut_down(self) -> None:
        """Kill and reap every run still in flight (the runner went away)."""
        for run in self.running.values():
            _kill_group(run.pid)
            os.wait4(run.pid, 0)
            if run.pidfd >= 0:
                os.close(run.pidfd)
            os.close(run.err_fd)
        self.running.clear()

    def serve(self) -> None:
        while True:
            timeout = None if self.use_pidfd or not self.running else 1
            events = self.poller.poll(timeout)
            ended = time.perf_counter_ns()
            for fd, _ in events:
                if fd in self.running:
                    self.finish(fd, ended)
            for fd, _ in events:
                if fd == _REQUESTS:
                    data = os.read(_REQUESTS, 65536)
                    if not data:
                        return
                    self.take_requests(data)
            if not self.use_pidfd:  # pragma: no cover - no pidfd
                for key, run in list(self.running.items()):
                    if key < 0 and os.waitid(
                        os.P_PID, run.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
                    ):
                        self.finish(key, time.perf_counter_ns())


def main() -> None:
    """Serve requests on fd 0 and report on fd 1 until fd 0 reaches end of file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = _LauncherLoop()
    try:
        loop.serve()
    except BrokenPipeError:  # the runner is gone: nobody to report to
        pass
    finally:
        loop.shut_down()


if __name__ == "__main__":
    main()

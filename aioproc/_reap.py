"""Reaping our own children, with their rusage, on any anyio backend.

The event loops' child watchers call ``waitpid`` and throw the rusage away, so
aioproc never lets them see its children. Instead it opens a pidfd for each child
(``os.pidfd_open``), waits for it to become readable (the kernel marks it so when
the process exits) and then collects the status with ``os.wait4``, which returns
the child's CPU times and peak RSS as well. A pidfd also names the process
race-free: ``signal.pidfd_send_signal`` cannot hit a recycled pid.

Where pidfds are missing (macOS, very old kernels) we fall back to polling
``wait4(WNOHANG)`` with a short back-off.
"""

from __future__ import annotations

import contextlib
import os
import signal

import anyio

from ._monitor import Rusage

__all__ = ["HAVE_PIDFD", "ChildWatch", "exit_status"]

HAVE_PIDFD = hasattr(os, "pidfd_open")


def exit_status(status: int) -> int:
    """Return code as :mod:`subprocess` reports it: exit code, or ``-signum``."""
    return os.waitstatus_to_exitcode(status)


class ChildWatch:
    """Watches one child of *this* process and reaps it exactly once.

    ``await wait()`` returns the return code once the child has exited; the rusage
    is then in :attr:`rusage`. ``send_signal`` is a no-op once the child is reaped,
    so a recycled pid is never signalled.
    """

    __slots__ = ("_pidfd", "pid", "returncode", "rusage")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.rusage: Rusage | None = None
        self._pidfd = -1
        if HAVE_PIDFD:
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError:  # pragma: no cover - ENOSYS on old kernels
                self._pidfd = -1

    def poll(self) -> int | None:
        """Reap the child if it has exited; its return code, else ``None``."""
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Somebody else reaped it; we cannot know its status.
            self._finish(255, None)
            return self.returncode
        if pid == 0:
            return None
        self._finish(exit_status(status), Rusage.from_struct(ru))
        return self.returncode

    async def wait(self) -> int:
        """Wait for the child to exit and reap it; its return code."""
        while self.returncode is None:
            if self._pidfd >= 0:
                await anyio.wait_readable(self._pidfd)
                if self.poll() is None:  # pragma: no cover - spurious wake-up
                    continue
            else:  # pragma: no cover - no pidfd
                for delay in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
                    if self.poll() is not None:
                        break
                    await anyio.sleep(delay)
                else:
                    while self.poll() is None:  # noqa: ASYNC110 - nothing to wait on but time
                        await anyio.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> bool:
        """Send *sig* to the child alone; False if it has already been reaped."""
        if self.returncode is not None:
            return False
        try:
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:  # pragma: no cover
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _finish(self, returncode: int, rusage: Rusage | None) -> None:
        self.returncode = returncode
        self.rusage = rusage
        self.close()

    def close(self) -> None:
        """Release the pidfd (the child is not touched)."""
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            # Wake a task that may be waiting on the pidfd (another waiter); outside
            # an event loop nobody can be waiting.
            with contextlib.suppress(Exception):
                anyio.notify_closing(fd)
            os.close(fd)

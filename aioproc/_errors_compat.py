"""The two errors of :mod:`aioproc._errors` that subclass a class of a heavy module.

:class:`CalledProcessError` derives from :class:`subprocess.CalledProcessError`
and :class:`TaskCancelledError` from :class:`concurrent.futures.CancelledError`.
Importing :mod:`concurrent.futures` (which imports :mod:`logging`, :mod:`threading`
and :mod:`traceback`) and :mod:`subprocess` costs a few milliseconds, which every
worker and the zygote would pay at start for nothing: they never raise these two.
So they live here, and :mod:`aioproc._errors` loads this module on first access
(``aioproc._errors.TaskCancelledError``, ``from ._errors import ...``)::

    aioproc._errors ──(module __getattr__, first access)──► aioproc._errors_compat
        AioprocError, signal_name, ...                          CalledProcessError
                                                                TaskCancelledError

Both classes say they belong to :mod:`aioproc._errors` (``__module__``), where
pickle and :func:`aioproc._values.decode_exception` find them again.
"""

from __future__ import annotations

import concurrent.futures
import subprocess

from ._errors import AioprocError, _format_args, signal_name, stderr_tail

__all__ = ["CalledProcessError", "TaskCancelledError"]


class CalledProcessError(AioprocError, subprocess.CalledProcessError):
    """A command run with ``check=True`` exited with a non-zero code.

    Attributes as :class:`subprocess.CalledProcessError` (``returncode``, ``cmd``,
    ``output``/``stdout``, ``stderr``), plus ``signal`` (the signal that ended the
    process, else ``None``).
    """

    __module__ = "aioproc._errors"

    def __init__(
        self,
        returncode: int,
        cmd: object,
        output: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)  # type: ignore[arg-type]
        self.signal: int | None = -returncode if returncode < 0 else None

    def __str__(self) -> str:
        if self.returncode < 0:
            what = f"was killed by {signal_name(-self.returncode)} (exit code {self.returncode})"
        else:
            what = f"exited with code {self.returncode}"
        message = f"command {_format_args(self.cmd)} {what}"
        tail = stderr_tail(self.stderr)
        if tail:
            message += "; stderr ends with:\n" + tail
        return message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.returncode, self.cmd, self.output, self.stderr))


class TaskCancelledError(AioprocError, concurrent.futures.CancelledError):
    """The task was cancelled (``task.cancel()``, or the pool closed with
    ``cancel_pending=True``) before it produced a result."""

    __module__ = "aioproc._errors"

"""The exception tree of aioproc.

Everything aioproc raises on purpose derives from :class:`AioprocError`. Where the
meaning matches a builtin, the error subclasses that builtin too, so code written
against :mod:`subprocess` or :mod:`concurrent.futures` keeps working::

    AioprocError
    ├── CommandNotFoundError      (also FileNotFoundError)   executable not found
    ├── CalledProcessError        (also subprocess.CalledProcessError)  non-zero exit
    ├── ProcessTimeoutError       (also TimeoutError)         run(..., timeout=) expired
    ├── OutputLimitExceeded                                   a stream passed max_output
    ├── ProtocolError                                         bad frame on a worker pipe
    ├── EndOfChannel                                          worker main() returned
    ├── TaskError                                             remote exception, no local twin
    ├── WorkerCrashedError                                    worker died during a call
    ├── WorkerStartError                                      worker could not start
    ├── TaskTimeoutError          (also TimeoutError)         a task ran past its timeout
    ├── TaskCancelledError        (also concurrent.futures.CancelledError)
    ├── PoolBrokenError                                       workers fail to start, repeatedly
    ├── QueueFull                                             submit() on a full queue
    └── PoolClosed                                            use of a closed pool

A bad ``cwd`` stays a plain :class:`FileNotFoundError` and a non-executable file a
plain :class:`PermissionError`: only a missing executable is a
:class:`CommandNotFoundError`. Exceptions raised by a function in a worker come back
as their own type where possible; the remote traceback text rides as ``__cause__``
(a :class:`RemoteTraceback`).

Workers and the zygote import this module at start, so it stays light: the two
classes whose bases live in heavy modules (:mod:`subprocess`,
:mod:`concurrent.futures`) are defined in :mod:`aioproc._errors_compat` and
loaded on first access through the module ``__getattr__`` below.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

#: Not ``typing.TYPE_CHECKING``: importing typing would cost workers a few ms at start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._errors_compat import CalledProcessError as CalledProcessError
    from ._errors_compat import TaskCancelledError as TaskCancelledError

__all__ = [
    "AioprocError",
    "CalledProcessError",
    "CommandNotFoundError",
    "EndOfChannel",
    "OutputLimitExceeded",
    "PoolBrokenError",
    "PoolClosed",
    "ProcessTimeoutError",
    "ProtocolError",
    "QueueFull",
    "RemoteTraceback",
    "TaskCancelledError",
    "TaskError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStartError",
]

#: Defined in :mod:`aioproc._errors_compat`, loaded when first asked for.
_LAZY = frozenset({"CalledProcessError", "TaskCancelledError"})

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            from . import _errors_compat

            value = getattr(_errors_compat, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: How much of a failed command's stderr its error message quotes.
_STDERR_TAIL_LINES = 20
_STDERR_TAIL_BYTES = 4096


def _format_args(args: object) -> str:
    if isinstance(args, str | bytes | os.PathLike):
        return repr(os.fsdecode(args))
    if isinstance(args, Sequence):
        return repr([os.fsdecode(a) if isinstance(a, bytes | os.PathLike) else a for a in args])
    return repr(args)


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number with no name."""
    # Imported here: the signal module's enums cost a starting zygote ~1 ms.
    import signal as _signal

    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stderr_tail(stderr: bytes | str | None) -> str:
    """The last ~20 lines / 4 KiB of *stderr*, decoded leniently."""
    if not stderr:
        return ""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    text = text[-_STDERR_TAIL_BYTES:]
    lines = text.rstrip("\n").splitlines()[-_STDERR_TAIL_LINES:]
    return "\n".join(lines)


class AioprocError(Exception):
    """Root of every error aioproc raises on purpose."""


class CommandNotFoundError(AioprocError, FileNotFoundError):
    """The executable named by ``args[0]`` does not exist (or is not on ``PATH``)."""


class _PartialOutputError(AioprocError):
    """Base for errors that carry what the process wrote before it was stopped."""

    def __init__(
        self,
        message: str,
        *,
        cmd: object = None,
        stdout: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        super().__init__(message)
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr

    @property
    def output(self) -> bytes | str | None:
        """Alias of :attr:`stdout`, as in :mod:`subprocess`."""
        return self.stdout


class ProcessTimeoutError(_PartialOutputError, TimeoutError):
    """``run(..., timeout=)`` expired; the process group was stopped.

    ``stdout``/``stderr`` hold what was read before the timeout; ``timeout`` the
    limit in seconds.
    """

    def __init__(
        self,
        cmd: object,
        timeout: float,
        *,
        stdout: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        super().__init__(
            f"command {_format_args(cmd)} timed out after {timeout:g} s",
            cmd=cmd,
            stdout=stdout,
            stderr=stderr,
        )
        self.timeout = timeout


class OutputLimitExceeded(_PartialOutputError):
    """A stream of a process produced more than ``max_output`` bytes.

    ``stream`` is ``"stdout"`` or ``"stderr"``, ``limit`` the limit in bytes;
    ``stdout``/``stderr`` hold the output kept so far (at most ``limit`` bytes each).
    """

    def __init__(
        self,
        cmd: object,
        stream: str,
        limit: int,
        *,
        stdout: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        super().__init__(
            f"command {_format_args(cmd)} wrote more than {limit} bytes to {stream}",
            cmd=cmd,
            stdout=stdout,
            stderr=stderr,
        )
        self.stream = stream
        self.limit = limit


class ProtocolError(AioprocError):
    """A frame on a worker pipe was malformed, too large, or of the wrong version."""


class EndOfChannel(AioprocError):
    """The worker's ``main`` returned: no more messages will come."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskError(AioprocError):
    """An exception raised in a worker that cannot be rebuilt as its own type here.

    ``type_name`` is the remote exception's qualified type name, ``message`` its
    ``str()``; the remote traceback is the ``__cause__``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message))


class WorkerCrashedError(AioprocError):
    """The worker process died while it held a task (or before it could take one).

    ``task_id`` names the task (``None`` for a standalone :class:`~aioproc.Worker`),
    ``exitcode`` is the exit code or ``-signum``, ``signal`` the positive signal
    number when a signal ended the worker, else ``None``.
    """

    def __init__(
        self,
        task_id: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
        detail: str = "",
    ) -> None:
        if signal is None and exitcode is not None and exitcode < 0:
            signal = -exitcode
        if exitcode is None and signal is not None:
            exitcode = -signal
        who = "worker" if task_id is None else f"worker running task {task_id}"
        if signal is not None:
            how = f"was killed by {signal_name(signal)}"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "died"
        message = f"{who} {how}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
        self.task_id = task_id
        self.exitcode = exitcode
        self.signal = signal
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.exitcode, self.signal, self.detail))


class WorkerStartError(AioprocError):
    """A worker could not start: import of ``preload`` failed, the initializer
    raised, the interpreter would not run, or no handshake came in time.
    The underlying error, when there is one, is the ``__cause__``."""


class TaskTimeoutError(AioprocError, TimeoutError):
    """A task ran longer than its ``timeout``; its worker was stopped (sync) or the
    call cancelled in the worker (async)."""

    def __init__(self, message: str = "task timed out", *, task_id: int | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class PoolBrokenError(AioprocError):
    """Workers failed to start several times in a row; the pool takes no more
    tasks. ``__cause__`` is the last :class:`WorkerStartError`."""


class QueueFull(AioprocError):
    """``submit()`` found the pool's queue at ``max_queue``."""


class PoolClosed(AioprocError):
    """The pool is closing or closed; it takes no more tasks."""

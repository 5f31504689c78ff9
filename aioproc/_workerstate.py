"""Descriptors of a worker: its lifecycle state, how it ended, what it starts with.

Plain data, shared by :mod:`aioproc._workerproc` (one process), the ``Worker``
handle and the Pool.
"""

from __future__ import annotations

import enum
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ._errors import ProtocolError, WorkerCrashedError
from ._launcher import caller_sys_path, default_main_source
from ._values import check_sendable, function_ref
from .protocol import DEFAULT_MAX_FRAME

__all__ = ["ExitInfo", "WorkerOptions", "WorkerState", "asyncio_loop", "backend_config"]


class WorkerState(enum.Enum):
    """Lifecycle of a worker process (and of the :class:`~aioproc.Worker` handle)."""

    CREATED = "created"  #: not started yet
    STARTING = "starting"  #: process launched, waiting for its handshake
    RUNNING = "running"  #: handshake done; takes calls
    STOPPING = "stopping"  #: being stopped; takes no more calls
    STOPPED = "stopped"  #: exited after stop()/aclose()
    CRASHED = "crashed"  #: exited on its own, or was killed (sync call cancelled, timeout)
    FAILED = "failed"  #: never became ready

    @property
    def terminal(self) -> bool:
        return self in (WorkerState.STOPPED, WorkerState.CRASHED, WorkerState.FAILED)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a worker ended, learnt exactly once.

    ``returncode`` is the exit code or ``-signum`` (``None`` when nobody could
    tell, e.g. the zygote died first); ``signal`` the positive signal number;
    ``by_us`` is true when that signal was one we sent (stop, kill);
    ``protocol_error`` is set when we killed it for a bad frame.
    """

    returncode: int | None
    signal: int | None
    by_us: bool
    protocol_error: ProtocolError | None = None

    def crash_error(self, task_id: int | None = None) -> WorkerCrashedError:
        """A :class:`WorkerCrashedError` describing this exit."""
        detail = ""
        if self.by_us:
            detail = "stopped by aioproc"
        elif self.signal == signal.SIGKILL:
            detail = "out of memory suspected"
        return WorkerCrashedError(task_id, self.returncode, self.signal, detail)


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker is started with (shared by every worker of a Pool)."""

    preload: tuple[str, ...] = ()
    initializer: object = None
    initargs: tuple[Any, ...] = ()
    main: object = None
    cwd: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    start_timeout: float = 60.0

    def handshake_config(self) -> dict[str, Any]:
        """The config sent in the parent's HELLO (call from inside the event loop).

        :raises TypeError: when the initializer, initargs or main cannot be sent.
        """
        config: dict[str, Any] = {
            "sys_path": caller_sys_path(),
            "main_source": default_main_source(),
            "cwd": self.cwd,
            "preload": list(self.preload),
            "max_frame": self.max_frame,
            **backend_config(),
        }
        if self.initializer is not None:
            config["initializer"] = list(function_ref(self.initializer))
            initargs = list(self.initargs)
            check_sendable(initargs, "initargs")
            config["initargs"] = initargs
        if self.main is not None:
            config["entry"] = list(function_ref(self.main))
        return config


def backend_config() -> dict[str, Any]:
    """Tell the worker which backend to run async code on: the caller's."""
    loop = asyncio_loop()
    if loop is None:
        return {"backend": "trio"}
    options: dict[str, Any] = {}
    if type(loop).__module__.startswith("uvloop"):
        options["use_uvloop"] = True
    return {"backend": "asyncio", "backend_options": options}


def asyncio_loop() -> Any:
    """The running asyncio (or uvloop) loop, or None on another backend (trio)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def trio_running() -> bool:
    """Whether the caller runs in a trio task (trio is only looked at if imported)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True

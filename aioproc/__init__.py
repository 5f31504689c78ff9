"""aioproc: an asyncio-native (anyio) framework for child processes.

Subprocesses (``run``, ``run_shell``, ``spawn``), forked Python workers driven by
a msgpack pipe protocol (``Worker``), an autoscaling crash-proof ``Pool``, a
``Scheduler``, a ``ProcessManager`` registry, and psutil figures.
"""

from __future__ import annotations

from ._errors import AioprocError as AioprocError
from ._errors import CalledProcessError as CalledProcessError
from ._errors import CommandNotFoundError as CommandNotFoundError
from ._errors import EndOfChannel as EndOfChannel
from ._errors import OutputLimitExceeded as OutputLimitExceeded
from ._errors import PoolBrokenError as PoolBrokenError
from ._errors import PoolClosed as PoolClosed
from ._errors import ProcessTimeoutError as ProcessTimeoutError
from ._errors import ProtocolError as ProtocolError
from ._errors import QueueFull as QueueFull
from ._errors import TaskCancelledError as TaskCancelledError
from ._errors import TaskError as TaskError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerCrashedError as WorkerCrashedError
from ._errors import WorkerStartError as WorkerStartError
from ._events import PoolEvent as PoolEvent
from ._job import Job as Job
from ._manager import ProcessInfo as ProcessInfo
from ._manager import ProcessManager as ProcessManager
from ._monitor import ProcessStats as ProcessStats
from ._monitor import Rusage as Rusage
from ._pool import Pool as Pool
from ._poolstats import PoolStats as PoolStats
from ._run import run as run
from ._run import run_shell as run_shell
from ._scheduler import Scheduler as Scheduler
from ._streams import OutputStream as OutputStream
from ._subprocess import CompletedProcess as CompletedProcess
from ._subprocess import Process as Process
from ._subprocess import spawn as spawn
from ._task import Task as Task
from ._worker import Worker as Worker

__version__ = "0.1.0"

__all__ = (
    "AioprocError",
    "CalledProcessError",
    "CommandNotFoundError",
    "CompletedProcess",
    "EndOfChannel",
    "Job",
    "OutputLimitExceeded",
    "OutputStream",
    "Pool",
    "PoolBrokenError",
    "PoolClosed",
    "PoolEvent",
    "PoolStats",
    "Process",
    "ProcessInfo",
    "ProcessManager",
    "ProcessStats",
    "ProcessTimeoutError",
    "ProtocolError",
    "QueueFull",
    "Rusage",
    "Scheduler",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskTimeoutError",
    "Worker",
    "WorkerCrashedError",
    "WorkerStartError",
    "run",
    "run_shell",
    "spawn",
)

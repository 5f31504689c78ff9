"""Per-process figures: :class:`Rusage` (from ``wait4``) and :class:`ProcessStats`
(live, from psutil).

This module sits at the bottom of the layer stack beside ``_errors``: it knows
nothing of subprocesses, workers or pools, only of pids.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import psutil

__all__ = ["ProcessStats", "Rusage", "StatsSampler"]

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True, slots=True)
class Rusage:
    """Resources one reaped child used, as the kernel reported them to ``wait4``.

    ``user_time`` and ``system_time`` are CPU seconds; ``max_rss`` is the peak
    resident set size in bytes.
    """

    user_time: float
    system_time: float
    max_rss: int

    @classmethod
    def from_struct(cls, ru: resource.struct_rusage) -> Rusage:
        return cls(
            user_time=ru.ru_utime,
            system_time=ru.ru_stime,
            max_rss=ru.ru_maxrss * _MAXRSS_UNIT,
        )


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """A snapshot of one live process, read with psutil.

    ``cpu_percent`` is measured since the previous snapshot of the same handle
    (0.0 on the first); ``rss``/``uss`` are bytes; ``children`` holds the pids of
    the process's descendants. A process that has exited reports ``status``
    ``"dead"`` and zeros.
    """

    pid: int
    status: str
    cpu_percent: float
    rss: int
    uss: int
    num_fds: int
    num_threads: int
    children: tuple[int, ...]

    @classmethod
    def dead(cls, pid: int) -> ProcessStats:
        return cls(pid, "dead", 0.0, 0, 0, 0, 0, ())


class StatsSampler:
    """Takes :class:`ProcessStats` snapshots of one pid.

    It keeps its :class:`psutil.Process` between calls so that ``cpu_percent``
    covers the time since the previous snapshot, as ``top`` shows it.
    """

    __slots__ = ("_proc", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc: psutil.Process | None = None

    def sample(self, *, uss: bool = True) -> ProcessStats:
        """A snapshot now. ``uss=False`` skips the (slower) smaps read."""
        try:
            if self._proc is None:
                self._proc = psutil.Process(self.pid)
            proc = self._proc
            with proc.oneshot():
                status = proc.status()
                if status == psutil.STATUS_ZOMBIE:
                    return ProcessStats.dead(self.pid)
                cpu = proc.cpu_percent(interval=None)
                if uss:
                    full = proc.memory_full_info()
                    rss, uss_bytes = full.rss, full.uss
                else:
                    rss, uss_bytes = proc.memory_info().rss, 0
                num_fds = proc.num_fds()
                num_threads = proc.num_threads()
            children = tuple(c.pid for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return ProcessStats.dead(self.pid)
        except psutil.AccessDenied:
            return ProcessStats(self.pid, "unknown", 0.0, 0, 0, 0, 0, ())
        return ProcessStats(
            pid=self.pid,
            status=str(status),
            cpu_percent=cpu,
            rss=rss,
            uss=uss_bytes,
            num_fds=num_fds,
            num_threads=num_threads,
            children=children,
        )

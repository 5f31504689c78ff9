"""Child programs for the subprocess-layer tests (run with ``conftest.python``),
and small helpers to check on processes the tests started."""

from __future__ import annotations

import anyio
import psutil

#: Burns 0.3 s of CPU in user space (counted by the kernel, not the wall clock).
BURN_CPU = """
import os
while os.times().user < 0.3:
    sum(range(1000))
"""

#: Touches 100 MB of memory, so the peak RSS is at least that.
ALLOCATE_100MB = """
data = b"x" * (100 * 2**20)
print(len(data))
"""

#: Writes "out1" to stdout, waits for a line on stdin, writes "err1" to stderr,
#: waits again, writes "out2" to stdout: arrival order is forced by the reader.
PING_PONG = """
import sys
print("out1", flush=True)
sys.stdin.readline()
print("err1", file=sys.stderr, flush=True)
sys.stdin.readline()
print("out2", flush=True)
"""

#: Prints its process group id, then its pid.
PRINT_PGID = """
import os
print(os.getpgid(0), os.getpid())
"""

#: Lists the fds it has open (ignoring the one listdir uses).
LIST_FDS = """
import os
print(" ".join(sorted(n for n in os.listdir("/proc/self/fd"))))
"""


async def wait_dead(pid: int, timeout: float = 2.0) -> bool:
    """Whether *pid* is dead within *timeout* (a SIGKILL takes a moment to land)."""
    with anyio.move_on_after(timeout):
        while not is_dead(pid):
            await anyio.sleep(0.005)
    return is_dead(pid)


def is_dead(pid: int) -> bool:
    """True when *pid* is gone or a zombie (an orphan the init may never reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

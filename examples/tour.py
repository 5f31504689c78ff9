"""The ``make demo`` tour: runs each example in turn, streaming its output live
through ``aioproc.spawn`` (the tour is itself an aioproc program).

Run it: ``make demo`` (or ``python examples/tour.py``)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

import aioproc

HERE = Path(__file__).resolve().parent
STOPS = [
    ("child_processes.py", "spawn with live streaming, exec, execFile, a forked worker"),
    ("pool.py", "a pool scaling up and down, and surviving a crash"),
    ("scheduler.py", "one-shot and periodic jobs on a pool"),
    ("on_trio.py", "the same pool under trio"),
]


async def main() -> int:
    started = time.monotonic()
    for number, (script, what) in enumerate(STOPS, 1):
        print(f"\n\033[1m[{number}/{len(STOPS)}] examples/{script}: {what}\033[0m", flush=True)
        async with aioproc.spawn(
            [sys.executable, "-u", str(HERE / script)], stdin="devnull", stderr="stdout", cwd=HERE
        ) as proc:
            assert proc.stdout is not None
            async for line in proc.stdout.lines():
                print(f"  {line}", flush=True)
            code = await proc.wait()
        if code != 0:
            print(f"examples/{script} failed with exit code {code}", file=sys.stderr)
            return 1
    print(f"\ntour done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))

"""Child processes, the Node way: spawn with live streaming, exec (a shell),
execFile (no shell), a forked Python worker talking over messages, and the table
of everything that ran (ProcessManager).

Run it: ``python examples/child_processes.py``
"""

from __future__ import annotations

import sys

import anyio

import aioproc

# A child that prints a line every 100 ms: we see each line as it arrives.
TICKER = """
import sys, time
for i in range(5):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
print("done", file=sys.stderr, flush=True)
"""


async def main() -> None:
    async with aioproc.ProcessManager() as pm:
        # spawn: stream stdout and stderr, merged in arrival order, while it runs.
        print("== spawn: streaming lines as they arrive")
        proc = await pm.start([sys.executable, "-u", "-c", TICKER])
        start = anyio.current_time()
        async for stream, line in proc.output():
            print(f"  +{anyio.current_time() - start:4.2f}s [{stream}] {line}")
        print(f"  exit code {await proc.wait()}")

        # exec: through /bin/sh, the caller owns the quoting.
        print("== run_shell (exec): a pipeline through /bin/sh")
        shell = await pm.run_shell("printf 'b\\na\\nc\\n' | sort | tr '\\n' ' '")
        print(f"  {shell.stdout.decode().strip()!r} in {shell.duration * 1000:.1f} ms")

        # execFile: no shell; arguments are passed as they are.
        print("== run (execFile): no shell, rusage of the child")
        done = await pm.run([sys.executable, "-c", "print(sum(range(10**6)))"], text=True)
        assert done.rusage is not None
        print(
            f"  stdout {done.stdout.strip()}, user {done.rusage.user_time * 1000:.0f} ms, "
            f"peak RSS {done.rusage.max_rss / 2**20:.1f} MiB"
        )

        # A failing command raises CalledProcessError naming the command and its stderr.
        try:
            await pm.run_shell("echo 'no such file' >&2; exit 3")
        except aioproc.CalledProcessError as exc:
            print(f"  CalledProcessError: {exc}")

        # fork + IPC: a Python worker whose main() adds the numbers it receives.
        print("== worker: fork + messages")
        worker = await pm.start_worker(main="_adder:main")
        await worker.send([10, 20])
        print(f"  10 + 20 = {await worker.receive()}")
        await worker.aclose()

        print("== what ran (ProcessManager)")
        for info in pm.list():
            args = info.args if isinstance(info.args, str) else " ".join(map(str, info.args))
            args = " ".join(args.split())  # one line, whatever the command held
            print(
                f"  #{info.id:<2} {info.kind:<6} {info.status:<8} rc={info.returncode!s:<4} "
                f"{(info.duration or 0) * 1000:7.1f} ms  {args[:50]}"
            )


if __name__ == "__main__":
    anyio.run(main)

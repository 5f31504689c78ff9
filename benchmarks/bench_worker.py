"""Benchmark of aioproc workers against floors and peers (issue 3), in one run.

    python benchmarks/bench_worker.py [--quick]

Measured side by side, as ratios to floors measured in the same run:

* sequential round trip of a no-op (one call in flight), p50/p99, with parent and
  worker pinned to the same CPU and to different CPUs (``os.sched_setaffinity``).
  Floor: a raw asyncio ``Protocol`` ping-pong of the same frame with a forked
  child, measured in rounds alternating with aioproc on each backend; a
  backend's ratio is the median of its ratios to the floor of the same round.
  Peers: ``anyio.to_process.run_sync``, ``ProcessPoolExecutor``.
* worker start to ready handshake. Floor: ``os.fork`` to a ready byte. aioproc
  from a running zygote (forkserver) and with "spawn"; a ProcessPoolExecutor
  worker's first result.
* 1 MiB bytes echo with 8 in flight, MB/s of payload. Floor: asyncio with 1 MiB
  pipes (``F_SETPIPE_SZ``) and a forked echo child. Peer: ProcessPoolExecutor.
* idle worker USS (psutil ``memory_full_info().uss``). Floor: a forked worker
  that imported msgpack.

Prints a markdown table and writes rows to ``benchmarks/results/bench_worker.json``
(``{"benchmark", "name", "backend", "value", "unit", "ratio_to_floor"}``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import pathlib
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_process
import msgpack
import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioproc import Worker  # noqa: E402
from aioproc._launcher import Zygote  # noqa: E402
from aioproc._workerproc import WorkerOptions, WorkerProcess  # noqa: E402
from benchmarks import _worker_targets as fns  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_worker.json"
MIB = 1 << 20
BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

rows: list[dict[str, Any]] = []
#: Latency is measured in this many rounds of (floor, each backend).
LATENCY_ROUNDS = 5


def record(
    benchmark: str,
    name: str,
    backend: str,
    value: float,
    unit: str,
    floor: float | None,
    ratio: float | None = None,
) -> None:
    if ratio is None and floor not in (None, 0):
        ratio = value / floor
    ratio = None if ratio is None else round(ratio, 2)
    rows.append(
        {
            "benchmark": benchmark,
            "name": name,
            "backend": backend,
            "value": round(value, 3),
            "unit": unit,
            "ratio_to_floor": ratio,
        }
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def cpus() -> tuple[int, int]:
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def place(parent_cpu: int, child_pid: int, child_cpu: int) -> None:
    os.sched_setaffinity(0, {parent_cpu})
    os.sched_setaffinity(child_pid, {child_cpu})


# -- floors ---------------------------------------------------------------------------


def _echo_child(r: int, w: int, chunk: int) -> None:
    try:
        while True:
            data = os.read(r, chunk)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]
    finally:
        os._exit(0)


class _Pong(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None
        self.received = 0
        self.target = 0
        self.mark = 0
        self.done: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.waiter is not None and not self.waiter.done() and self.received >= self.mark:
            self.waiter.set_result(data)
        if self.done is not None and self.received >= self.target and not self.done.done():
            self.done.set_result(None)


async def _floor_pair(pipe_size: int | None = None) -> tuple[int, Any, _Pong, Any]:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    if pipe_size:
        for fd in (w1, w2):
            import fcntl

            fcntl.fcntl(fd, 1031, pipe_size)  # F_SETPIPE_SZ
    pid = os.fork()
    if pid == 0:
        os.close(w1)
        os.close(r2)
        _echo_child(r1, w2, pipe_size or 65536)
    os.close(r1)
    os.close(w2)
    loop = asyncio.get_running_loop()
    rtransport, proto = await loop.connect_read_pipe(_Pong, os.fdopen(r2, "rb", buffering=0))
    wtransport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(w1, "wb", buffering=0)
    )
    return pid, wtransport, proto, rtransport


async def _floor_close(pid: int, wtransport: Any, rtransport: Any) -> None:
    wtransport.close()
    rtransport.close()
    await asyncio.sleep(0.01)
    os.waitpid(pid, 0)


def floor_latency(n: int, placement: str) -> list[float]:
    async def main() -> list[float]:
        pid, wt, proto, rt = await _floor_pair()
        a, b = cpus()
        place(a, pid, a if placement == "same" else b)
        body = msgpack.packb([1, 1, "mod:noop", [], {}, 0])
        frame = struct.pack(">I", len(body)) + body
        loop = asyncio.get_running_loop()
        samples = []
        for i in range(n + n // 10):
            proto.waiter = loop.create_future()
            t0 = time.perf_counter()
            wt.write(frame)
            await proto.waiter
            if i >= n // 10:
                samples.append(time.perf_counter() - t0)
        await _floor_close(pid, wt, rt)
        return samples

    return asyncio.run(main())


def floor_echo(size: int, count: int, in_flight: int) -> float:
    async def main() -> float:
        pid, wt, proto, rt = await _floor_pair(MIB)
        payload = b"x" * size
        proto.target = size * count
        proto.done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        # Keep `in_flight` messages outstanding: write one more as each comes back.
        sent = 0
        while sent < count:
            while sent < count and sent * size - proto.received < in_flight * size:
                wt.write(payload)
                sent += 1
            proto.mark = (sent - in_flight + 1) * size
            proto.waiter = loop.create_future()
            if proto.received < proto.mark:
                await proto.waiter
        await proto.done
        elapsed = time.perf_counter() - t0
        await _floor_close(pid, wt, rt)
        return size * count / elapsed / 1e6

    return asyncio.run(main())


def floor_start(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"!")
            os._exit(0)
        os.read(r, 1)
        samples.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return samples


def floor_uss() -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    time.sleep(0.2)
    uss = psutil.Process(pid).memory_full_info().uss
    os.close(w)
    os.waitpid(pid, 0)
    os.close(r)
    return int(uss)


# -- aioproc --------------------------------------------------------------------------


def run_backend(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    name, options = BACKENDS[backend]
    return anyio.run(fn, *args, backend=name, backend_options=options)


async def aioproc_latency(n: int, placement: str) -> list[float]:
    async with Worker() as worker:
        a, b = cpus()
        place(a, worker.pid, a if placement == "same" else b)
        samples = []
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            await worker.call(fns.noop)
            if i >= n // 10:
                samples.append(time.perf_counter() - t0)
        return samples


async def aioproc_echo(size: int, count: int, in_flight: int) -> float:
    payload = b"x" * size
    async with Worker() as worker:
        await worker.call(fns.echo, payload)
        remaining = count

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await worker.call(fns.echo, payload)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(lane)
        return size * count / (time.perf_counter() - t0) / 1e6


async def aioproc_zygote_start(n: int) -> list[float]:
    samples = []
    zygote = Zygote()
    async with anyio.create_task_group() as tg:
        await tg.start(zygote.serve)
        for _ in range(n):
            proc = WorkerProcess(WorkerOptions(), zygote)
            t0 = time.perf_counter()
            await tg.start(proc.serve)
            samples.append(time.perf_counter() - t0)
            await proc.stop()
        await zygote.aclose()
    return samples


async def aioproc_spawn_start(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with Worker() as worker:
            samples.append(time.perf_counter() - t0)
            del worker
    return samples


async def aioproc_uss(start_method: str, preload: tuple[str, ...] = ()) -> int:
    async with Worker(start_method=start_method, preload=preload) as worker:
        await worker.call(fns.noop)
        await anyio.sleep(0.2)
        return worker.stats().uss


# -- peers ----------------------------------------------------------------------------


async def to_process_latency(n: int, placement: str) -> list[float]:
    await anyio.to_process.run_sync(fns.noop)
    children = psutil.Process().children()
    a, b = cpus()
    for child in children:
        place(a, child.pid, a if placement == "same" else b)
    samples = []
    for i in range(n + n // 10):
        t0 = time.perf_counter()
        await anyio.to_process.run_sync(fns.noop)
        if i >= n // 10:
            samples.append(time.perf_counter() - t0)
    return samples


async def to_process_uss() -> int:
    await anyio.to_process.run_sync(fns.noop)
    await anyio.sleep(0.2)
    return max(int(c.memory_full_info().uss) for c in psutil.Process().children())


def ppe_latency(n: int, placement: str) -> list[float]:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            await loop.run_in_executor(pool, fns.noop)
            a, b = cpus()
            for pid in list(pool._processes):
                place(a, pid, a if placement == "same" else b)
            samples = []
            for i in range(n + n // 10):
                t0 = time.perf_counter()
                await loop.run_in_executor(pool, fns.noop)
                if i >= n // 10:
                    samples.append(time.perf_counter() - t0)
            return samples

    return asyncio.run(main())


def ppe_echo(size: int, count: int, in_flight: int) -> float:
    payload = b"x" * size
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(fns.echo, payload).result()
        t0 = time.perf_counter()
        pending: set[concurrent.futures.Future[bytes]] = set()
        sent = 0
        while sent < count or pending:
            while sent < count and len(pending) < in_flight:
                pending.add(pool.submit(fns.echo, payload))
                sent += 1
            _done, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
        return size * count / (time.perf_counter() - t0) / 1e6


def ppe_start(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            pool.submit(fns.noop).result()
            samples.append(time.perf_counter() - t0)
    return samples


def ppe_uss() -> int:
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(fns.noop).result()
        time.sleep(0.2)
        return max(int(psutil.Process(pid).memory_full_info().uss) for pid in pool._processes)


# -- the run --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    args = parser.parse_args()
    quick = args.quick
    n_lat = 1000 if quick else 10000
    n_start = 5 if quick else 30
    echo_count = 16 if quick else 128
    allowed = os.sched_getaffinity(0)
    gc.disable()

    table: list[tuple[str, str, str, str, str]] = []

    def restore() -> None:
        os.sched_setaffinity(0, allowed)

    for placement in ("same", "cross"):
        # Rounds of floor, then each backend: the machine's speed drifts (on one
        # shared CPU a round trip costs 8 µs in one minute and 11 in the next),
        # so each backend is compared with the floor of its own round and the
        # median of those ratios is reported.
        floor_samples: list[float] = []
        samples: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        ratios: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        for _ in range(LATENCY_ROUNDS):
            base = floor_latency(n_lat // LATENCY_ROUNDS, placement)
            restore()
            floor_samples += base
            for backend in BACKENDS:
                got = run_backend(backend, aioproc_latency, n_lat // LATENCY_ROUNDS, placement)
                restore()
                samples[backend] += got
                ratios[backend].append(percentiles(got)[0] / percentiles(base)[0])
        floor_p50, floor_p99 = percentiles(floor_samples)
        bench = f"round trip p50 ({placement} CPU)"
        record(
            bench,
            "floor: asyncio Protocol ping-pong",
            "asyncio",
            floor_p50 * 1e6,
            "us",
            floor_p50 * 1e6,
        )
        table.append(
            (
                bench,
                "floor: asyncio Protocol ping-pong",
                "asyncio",
                f"{floor_p50 * 1e6:.1f} µs (p99 {floor_p99 * 1e6:.1f})",
                "1.00",
            )
        )
        for backend in BACKENDS:
            p50, p99 = percentiles(samples[backend])
            ratio = statistics.median(ratios[backend])
            record(bench, "aioproc Worker.call", backend, p50 * 1e6, "us", None, ratio)
            record(
                bench.replace("p50", "p99"),
                "aioproc Worker.call",
                backend,
                p99 * 1e6,
                "us",
                floor_p99 * 1e6,
            )
            table.append(
                (
                    bench,
                    "aioproc Worker.call",
                    backend,
                    f"{p50 * 1e6:.1f} µs (p99 {p99 * 1e6:.1f})",
                    f"{ratio:.2f}",
                )
            )
        p50, p99 = percentiles(run_backend("asyncio", to_process_latency, n_lat // 5, placement))
        restore()
        record(bench, "anyio.to_process.run_sync", "asyncio", p50 * 1e6, "us", floor_p50 * 1e6)
        table.append(
            (
                bench,
                "anyio.to_process.run_sync",
                "asyncio",
                f"{p50 * 1e6:.1f} µs (p99 {p99 * 1e6:.1f})",
                f"{p50 / floor_p50:.2f}",
            )
        )
        p50, p99 = percentiles(ppe_latency(n_lat // 5, placement))
        restore()
        record(bench, "ProcessPoolExecutor", "asyncio", p50 * 1e6, "us", floor_p50 * 1e6)
        table.append(
            (
                bench,
                "ProcessPoolExecutor",
                "asyncio",
                f"{p50 * 1e6:.1f} µs (p99 {p99 * 1e6:.1f})",
                f"{p50 / floor_p50:.2f}",
            )
        )

    bench = "worker start to ready, p50"
    floor = statistics.median(floor_start(n_start))
    record(bench, "floor: os.fork to a ready byte", "-", floor * 1e3, "ms", floor * 1e3)
    table.append((bench, "floor: os.fork to a ready byte", "-", f"{floor * 1e3:.2f} ms", "1.00"))
    for backend in BACKENDS:
        value = statistics.median(run_backend(backend, aioproc_zygote_start, n_start))
        record(
            bench, "aioproc forkserver (running zygote)", backend, value * 1e3, "ms", floor * 1e3
        )
        table.append(
            (
                bench,
                "aioproc forkserver (running zygote)",
                backend,
                f"{value * 1e3:.2f} ms",
                f"{value / floor:.2f}",
            )
        )
    value = statistics.median(run_backend("asyncio", aioproc_spawn_start, max(3, n_start // 3)))
    record(bench, "aioproc spawn", "asyncio", value * 1e3, "ms", floor * 1e3)
    table.append(
        (bench, "aioproc spawn", "asyncio", f"{value * 1e3:.2f} ms", f"{value / floor:.2f}")
    )
    value = statistics.median(ppe_start(max(3, n_start // 3)))
    record(bench, "ProcessPoolExecutor first result", "-", value * 1e3, "ms", floor * 1e3)
    table.append(
        (
            bench,
            "ProcessPoolExecutor first result",
            "-",
            f"{value * 1e3:.2f} ms",
            f"{value / floor:.2f}",
        )
    )

    bench = "1 MiB bytes echo, 8 in flight"
    floor = max(floor_echo(MIB, echo_count, 8) for _ in range(2))
    record(bench, "floor: asyncio, 1 MiB pipes", "asyncio", floor, "MB/s", floor)
    table.append((bench, "floor: asyncio, 1 MiB pipes", "asyncio", f"{floor:.0f} MB/s", "1.00"))
    for backend in BACKENDS:
        value = max(run_backend(backend, aioproc_echo, MIB, echo_count, 8) for _ in range(2))
        record(bench, "aioproc Worker.call", backend, value, "MB/s", floor)
        table.append(
            (bench, "aioproc Worker.call", backend, f"{value:.0f} MB/s", f"{value / floor:.2f}")
        )
    value = ppe_echo(MIB, echo_count, 8)
    record(bench, "ProcessPoolExecutor", "-", value, "MB/s", floor)
    table.append((bench, "ProcessPoolExecutor", "-", f"{value:.0f} MB/s", f"{value / floor:.2f}"))

    bench = "idle worker USS"
    floor_b = floor_uss()
    record(bench, "floor: forked msgpack worker", "-", floor_b / MIB, "MiB", floor_b / MIB)
    table.append((bench, "floor: forked msgpack worker", "-", f"{floor_b / MIB:.2f} MiB", "1.00"))
    for method, preload in (
        ("forkserver", ()),
        ("forkserver, preload=fns", ("benchmarks._worker_targets",)),
        ("spawn", ()),
    ):
        value_b = run_backend("asyncio", aioproc_uss, method.split(",")[0], preload)
        record(bench, f"aioproc Worker ({method})", "asyncio", value_b / MIB, "MiB", floor_b / MIB)
        table.append(
            (
                bench,
                f"aioproc Worker ({method})",
                "asyncio",
                f"{value_b / MIB:.2f} MiB",
                f"{value_b / floor_b:.2f}",
            )
        )
    value_b = ppe_uss()
    record(bench, "ProcessPoolExecutor", "-", value_b / MIB, "MiB", floor_b / MIB)
    table.append(
        (bench, "ProcessPoolExecutor", "-", f"{value_b / MIB:.2f} MiB", f"{value_b / floor_b:.2f}")
    )
    value_b = run_backend("asyncio", to_process_uss)
    record(bench, "anyio.to_process", "asyncio", value_b / MIB, "MiB", floor_b / MIB)
    table.append(
        (
            bench,
            "anyio.to_process",
            "asyncio",
            f"{value_b / MIB:.2f} MiB",
            f"{value_b / floor_b:.2f}",
        )
    )

    print("| benchmark | subject | backend | value | ratio to floor |")
    print("| --- | --- | --- | --- | --- |")
    for row in table:
        print("| " + " | ".join(row) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    with contextlib.suppress(Exception):
        restore()


if __name__ == "__main__":
    main()

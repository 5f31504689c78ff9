"""Benchmark of the subprocess layer, side by side with its peers and a floor.

    python benchmarks/bench_subprocess.py [--quick]

Three figures, each on asyncio, asyncio+uvloop and trio, with the floor measured
in the same run (see benchmarks/README.md for the goals):

1. per-call latency of ``run(["true"])`` (p50). Floor: ``os.posix_spawn`` +
   ``waitpid``, interleaved call by call with every subject so that drift on a
   shared machine hits both alike; each subject's ratio is to the floor calls
   made beside it (the floor row shows the median of them all).
   Peers: asyncio ``create_subprocess_exec`` + ``communicate``,
   ``anyio.run_process``.
2. streaming ``head -c`` (1 GiB; 256 MiB with --quick) through
   ``async for chunk in proc.stdout``. Floor: a blocking ``readinto`` loop on a
   1 MiB pipe into one reused buffer. Peers: asyncio ``StreamReader.read``,
   ``anyio.open_process`` ``receive``.
3. ``seq 2000000`` (200000 with --quick) through ``lines()``. Floor: a blocking
   read, decode and split loop that visits every line in plain Python. Peers:
   asyncio ``readline()``, anyio ``BufferedByteReceiveStream.receive_until``.
   Reference: the pure-Python ceiling of one ``str`` per ``async for`` step, an
   async generator over lines already in memory (no pipe, no decoding), which
   aioproc's C line iterator passes.

The two throughputs alternate floor and subject runs, three pairs per subject:
a subject's row shows its median run and, as its ratio, the median of its
ratios to the floor run just before each of its runs (the floor row shows the
median of all floor runs). A single floor for the whole script made the ratios
depend on when the other work on the machine came and went.

Prints a markdown table and writes ``benchmarks/results/bench_subprocess.json``
(rows of ``benchmark, name, backend, value, unit, ratio_to_floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aioproc

BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
]
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
TRUE = shutil.which("true") or "/bin/true"
MIB = 2**20

Row = dict[str, Any]


def row(benchmark: str, name: str, backend: str, value: float, unit: str) -> Row:
    return {
        "benchmark": benchmark,
        "name": name,
        "backend": backend,
        "value": value,
        "unit": unit,
        "ratio_to_floor": None,
    }


# -- 1. latency of run(["true"]) ----------------------------------------------------


def floor_true() -> float:
    started = time.perf_counter()
    pid = os.posix_spawn(TRUE, ["true"], os.environ)
    os.waitpid(pid, 0)
    return time.perf_counter() - started


async def aioproc_true() -> None:
    await aioproc.run(["true"])


async def asyncio_true() -> None:
    proc = await asyncio.create_subprocess_exec(
        "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate()


async def anyio_true() -> None:
    await anyio.run_process(["true"])


async def latency(
    call: Callable[[], Awaitable[None]], count: int, floors: list[float]
) -> tuple[float, float]:
    """The subject's p50 and its ratio to the p50 of the floor calls made
    between its own calls. (Each subject gets its own floor: a peer that forks
    the whole parent, as uvloop's subprocess transport does, slows the floor
    calls next to it by about 10%, and a pooled floor would flatter the rest.)"""
    for _ in range(max(10, count // 20)):  # warm-up
        await call()
    samples = []
    beside = []
    for _ in range(count):
        beside.append(floor_true())
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    floors.extend(beside)
    p50 = statistics.median(samples)
    return p50, p50 / statistics.median(beside)


# -- 2. streaming through stdout --------------------------------------------------


def floor_stream(size: int) -> float:
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, F_SETPIPE_SZ, MIB)
    proc = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=write_end)
    os.close(write_end)
    buffer = bytearray(MIB)
    total = 0
    started = time.perf_counter()
    with open(read_end, "rb", buffering=0) as pipe:
        while n := pipe.readinto(buffer):
            total += n
    elapsed = time.perf_counter() - started
    proc.wait()
    assert total == size
    return size / elapsed / 1e6


async def aioproc_stream(size: int) -> float:
    total = 0
    started = time.perf_counter()
    async with aioproc.spawn(["head", "-c", str(size), "/dev/zero"]) as proc:
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            total += len(chunk)
    elapsed = time.perf_counter() - started
    assert total == size
    return size / elapsed / 1e6


async def asyncio_stream(size: int) -> float:
    total = 0
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "head", "-c", str(size), "/dev/zero", stdout=asyncio.subprocess.PIPE, limit=MIB
    )
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(MIB):
        total += len(chunk)
    await proc.wait()
    elapsed = time.perf_counter() - started
    assert total == size
    return size / elapsed / 1e6


async def anyio_stream(size: int) -> float:
    total = 0
    started = time.perf_counter()
    async with await anyio.open_process(["head", "-c", str(size), "/dev/zero"]) as proc:
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            total += len(chunk)
    elapsed = time.perf_counter() - started
    assert total == size
    return size / elapsed / 1e6


# -- 3. lines ------------------------------------------------------------------------


def floor_lines(count: int) -> float:
    proc = subprocess.Popen(["seq", str(count)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines = 0
    carry = ""
    started = time.perf_counter()
    while chunk := os.read(fd, MIB):
        parts = (carry + chunk.decode()).split("\n")
        carry = parts.pop()
        for _line in parts:  # visit every line, as a consumer would
            lines += 1
    if carry:
        lines += 1
    elapsed = time.perf_counter() - started
    proc.wait()
    proc.stdout.close()
    assert lines == count
    return lines / elapsed


async def aioproc_lines(count: int) -> float:
    lines = 0
    started = time.perf_counter()
    async with aioproc.spawn(["seq", str(count)]) as proc:
        assert proc.stdout is not None
        async for _line in proc.stdout.lines():
            lines += 1
    elapsed = time.perf_counter() - started
    assert lines == count
    return lines / elapsed


async def _yield_each(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def async_for_ceiling(count: int) -> float:
    """The ceiling of any API that yields one ``str`` per ``async for`` step: an
    async generator over lines already read, decoded and split (untimed), so
    only the per-line iteration is measured."""
    output = subprocess.run(["seq", str(count)], capture_output=True, check=True).stdout
    lines = output.decode().split("\n")[:-1]
    seen = 0
    started = time.perf_counter()
    async for _line in _yield_each(lines):
        seen += 1
    elapsed = time.perf_counter() - started
    assert seen == count
    return seen / elapsed


async def asyncio_lines(count: int) -> float:
    lines = 0
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("seq", str(count), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        line.decode()
        lines += 1
    await proc.wait()
    elapsed = time.perf_counter() - started
    assert lines == count
    return lines / elapsed


async def anyio_lines(count: int) -> float:
    lines = 0
    started = time.perf_counter()
    async with await anyio.open_process(["seq", str(count)]) as proc:
        assert proc.stdout is not None
        buffered = BufferedByteReceiveStream(proc.stdout)
        while True:
            try:
                (await buffered.receive_until(b"\n", 64 * 1024)).decode()
            except anyio.IncompleteRead:
                break
            lines += 1
    elapsed = time.perf_counter() - started
    assert lines == count
    return lines / elapsed


# -- driver --------------------------------------------------------------------------

#: Throughput runs: this many (floor, subject) pairs per subject.
PAIRS = 3


async def paired(
    floor: Callable[[int], float],
    subject: Callable[[int], Awaitable[float]],
    size: int,
    floors: list[float],
) -> tuple[float, float]:
    """Alternate floor and subject runs; the subject's median value and the median
    of its ratios to the floor run just before it (the machine is shared: its
    speed drifts over a run of the script, so only neighbours compare fairly)."""
    values: list[float] = []
    ratios: list[float] = []
    for _ in range(PAIRS):
        base = floor(size)
        floors.append(base)
        value = await subject(size)
        values.append(value)
        ratios.append(value / base)
    return statistics.median(values), statistics.median(ratios)


async def measure_backend(
    backend: str,
    quick: bool,
    floors: list[float],
    stream_floors: list[float],
    line_floors: list[float],
) -> list[Row]:
    rows: list[Row] = []
    calls = 200 if quick else 1000
    stream_size = (256 if quick else 1024) * MIB
    line_count = 200_000 if quick else 2_000_000
    on_asyncio = backend != "trio"

    latency_subjects: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("aioproc run", aioproc_true),
        ("anyio run_process", anyio_true),
    ]
    if on_asyncio:
        latency_subjects.append(("asyncio create_subprocess_exec", asyncio_true))
    for name, call in latency_subjects:
        value, ratio = await latency(call, calls, floors)
        entry = row('run(["true"]) latency p50', name, backend, value * 1e3, "ms")
        entry["ratio_to_floor"] = ratio
        rows.append(entry)

    stream_subjects: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
        ("aioproc async for chunk", aioproc_stream),
        ("anyio open_process", anyio_stream),
    ]
    if on_asyncio:
        stream_subjects.append(("asyncio StreamReader.read", asyncio_stream))
    for name, stream in stream_subjects:
        value, ratio = await paired(floor_stream, stream, stream_size, stream_floors)
        entry = row(f"stream {stream_size // MIB} MiB stdout", name, backend, value, "MB/s")
        entry["ratio_to_floor"] = ratio
        rows.append(entry)

    line_subjects: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
        ("aioproc lines()", aioproc_lines),
        ("anyio receive_until", anyio_lines),
        ("pure-Python ceiling: async generator over pre-split lines", async_for_ceiling),
    ]
    if on_asyncio:
        line_subjects.append(("asyncio readline", asyncio_lines))
    for name, lines in line_subjects:
        value, ratio = await paired(floor_lines, lines, line_count, line_floors)
        entry = row(f"seq {line_count} lines", name, backend, value, "lines/s")
        entry["ratio_to_floor"] = ratio
        rows.append(entry)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer calls")
    options = parser.parse_args()
    quick: bool = options.quick

    floors: list[float] = []
    stream_floors: list[float] = []
    line_floors: list[float] = []
    rows: list[Row] = []
    for backend, library, backend_options in BACKENDS:
        print(f"measuring on {backend} ...", file=sys.stderr, flush=True)
        rows += anyio.run(
            measure_backend,
            backend,
            quick,
            floors,
            stream_floors,
            line_floors,
            backend=library,
            backend_options=backend_options,
        )

    stream_size = (256 if quick else 1024) * MIB
    line_count = 200_000 if quick else 2_000_000
    floor_rows = [
        row('run(["true"]) latency p50', "floor posix_spawn+waitpid", "", 0.0, "ms"),
        row(f"stream {stream_size // MIB} MiB stdout", "floor blocking readinto", "", 0.0, "MB/s"),
        row(f"seq {line_count} lines", "floor blocking read+split", "", 0.0, "lines/s"),
    ]
    floor_rows[0]["value"] = statistics.median(floors) * 1e3
    # Throughputs: subjects and the floor show their median run; the ratios were
    # taken pair by pair (see paired()). (Not the best run: one floor run with the
    # writer on the other CPU is three times faster than the rest.)
    floor_rows[1]["value"] = statistics.median(stream_floors)
    floor_rows[2]["value"] = statistics.median(line_floors)
    floor_of = {r["benchmark"]: r["value"] for r in floor_rows}
    all_rows = floor_rows + rows
    for r in all_rows:
        if r["ratio_to_floor"] is None:
            r["ratio_to_floor"] = r["value"] / floor_of[r["benchmark"]]
        r["ratio_to_floor"] = round(r["ratio_to_floor"], 3)
        r["value"] = round(r["value"], 4 if r["unit"] == "ms" else 1)
    all_rows.sort(key=lambda r: (list(floor_of).index(r["benchmark"]), r["backend"] != ""))

    print("| benchmark | name | backend | value | unit | ratio to floor |")
    print("|:--|:--|:--|--:|:--|--:|")
    for r in all_rows:
        value = f"{r['value']:,.3f}" if r["unit"] == "ms" else f"{r['value']:,.0f}"
        print(
            f"| {r['benchmark']} | {r['name']} | {r['backend']} | {value} | {r['unit']} "
            f"| {r['ratio_to_floor']:.2f} |"
        )
    out = Path(__file__).resolve().parent / "results" / "bench_subprocess.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(all_rows, indent=2) + "\n")
    print(f"\nrows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

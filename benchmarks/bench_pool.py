"""Benchmark of the pool, side by side with its peers (SPEC §3, issue 4).

    python benchmarks/bench_pool.py [--quick]

Every subject gets two workers, started and warmed before it is measured, on
asyncio and on asyncio+uvloop. Peers: ``ProcessPoolExecutor`` via
``run_in_executor``, ``anyio.to_process.run_sync`` (CapacityLimiter 2),
``aiomultiprocess.Pool``, loky's reusable executor, pebble's ``ProcessPool``,
and ``multiprocessing.Pool.apply_async`` as a synchronous reference (no loop).

1. throughput of 20,000 no-op tasks (5,000 with --quick), 256 callers in
   flight, tasks/s and the parent's CPU microseconds per task;
2. 1 MiB ``bytes`` payloads echoed, 8 in flight, MB/s (payload bytes per second,
   one way);
3. cold start: entering the pool (two workers) to the first result, ms (median
   of 5 fresh starts);
4. ``pool.map`` over 1,000,000 small items (100,000 with --quick), run in a fresh
   process: its peak RSS and the RSS before the map, and items/s.

There is no floor for a pool: ``ratio_to_floor`` is the ratio to the best peer
on the same loop (the benchmark name says "vs best peer"); the best peer's row is
1.00. For the map, the ratio is the peak RSS over the RSS before the map.
Prints a markdown table; writes ``benchmarks/results/bench_pool.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _pool_targets as targets  # noqa: E402

import aioproc  # noqa: E402

MIB = 2**20
WORKERS = 2
CALLERS = 256
ECHO_IN_FLIGHT = 8
LOOPS = [("asyncio", {}), ("uvloop", {"use_uvloop": True})]

Row = dict[str, Any]
#: A subject: an async context manager factory giving ``run(fn_kind, arg)``.
Runner = Callable[[str, Any], Awaitable[Any]]


def row(benchmark: str, name: str, backend: str, value: float, unit: str) -> Row:
    return {
        "benchmark": benchmark,
        "name": name,
        "backend": backend,
        "value": value,
        "unit": unit,
        "ratio_to_floor": None,
    }


# -- subjects: each yields an awaitable "run(kind, arg)" over a warmed 2-worker pool ---


class Subject:
    name = ""

    async def __aenter__(self) -> Runner:
        raise NotImplementedError

    async def __aexit__(self, *exc: object) -> None:
        return None


class AioprocSubject(Subject):
    name = "aioproc"

    async def __aenter__(self) -> Runner:
        self.pool = aioproc.Pool(min_workers=WORKERS, max_workers=WORKERS)
        await self.pool.__aenter__()
        pool = self.pool

        async def run(kind: str, arg: Any) -> Any:
            if kind == "noop":
                return await pool.run(targets.noop)
            return await pool.run(targets.echo, arg)

        return run

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.__aexit__(None, None, None)


class ExecutorSubject(Subject):
    """Any concurrent.futures executor driven through run_in_executor."""

    def make(self) -> concurrent.futures.Executor:
        raise NotImplementedError

    async def __aenter__(self) -> Runner:
        self.executor = self.make()
        executor = self.executor
        loop = asyncio.get_running_loop()

        async def run(kind: str, arg: Any) -> Any:
            if kind == "noop":
                return await loop.run_in_executor(executor, targets.noop)
            return await loop.run_in_executor(executor, targets.echo, arg)

        return run

    async def __aexit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True)


class PPESubject(ExecutorSubject):
    name = "ProcessPoolExecutor"

    def make(self) -> concurrent.futures.Executor:
        return concurrent.futures.ProcessPoolExecutor(WORKERS)


class LokySubject(ExecutorSubject):
    name = "loky"

    def make(self) -> concurrent.futures.Executor:
        import loky

        return loky.get_reusable_executor(max_workers=WORKERS, reuse=False, kill_workers=True)  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]


class PebbleSubject(Subject):
    name = "pebble"

    async def __aenter__(self) -> Runner:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=WORKERS)
        pool = self.pool

        async def run(kind: str, arg: Any) -> Any:
            if kind == "noop":
                future = pool.schedule(targets.noop)
            else:
                future = pool.schedule(targets.echo, args=(arg,))
            return await asyncio.wrap_future(future)

        return run

    async def __aexit__(self, *exc: object) -> None:
        self.pool.close()
        self.pool.join()


class AnyioSubject(Subject):
    name = "anyio.to_process"

    async def __aenter__(self) -> Runner:
        limiter = anyio.CapacityLimiter(WORKERS)

        async def run(kind: str, arg: Any) -> Any:
            if kind == "noop":
                return await anyio.to_process.run_sync(targets.noop, limiter=limiter)
            return await anyio.to_process.run_sync(targets.echo, arg, limiter=limiter)

        return run


class AiompSubject(Subject):
    name = "aiomultiprocess"

    async def __aenter__(self) -> Runner:
        import aiomultiprocess

        self.pool = aiomultiprocess.Pool(processes=WORKERS)
        await self.pool.__aenter__()
        pool = self.pool

        async def run(kind: str, arg: Any) -> Any:
            if kind == "noop":
                return await pool.apply(targets.anoop)
            return await pool.apply(targets.aecho, (arg,))

        return run

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.__aexit__(None, None, None)


SUBJECTS: list[type[Subject]] = [
    AioprocSubject,
    PPESubject,
    AnyioSubject,
    AiompSubject,
    LokySubject,
    PebbleSubject,
]


# -- the measurements -----------------------------------------------------------------


async def warm(run: Runner) -> None:
    """Every worker up, every import done."""
    async with anyio.create_task_group() as tg:
        for _ in range(4 * WORKERS):
            tg.start_soon(run, "noop", None)


async def measure_throughput(run: Runner, tasks: int) -> tuple[float, float]:
    """(tasks/s, parent CPU µs per task) for *tasks* no-ops, CALLERS in flight."""
    per_caller = tasks // CALLERS
    done = per_caller * CALLERS

    async def caller() -> None:
        for _ in range(per_caller):
            await run("noop", None)

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CALLERS):
            tg.start_soon(caller)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return done / wall, cpu / done * 1e6


async def measure_echo(run: Runner, messages: int) -> float:
    """MB/s of 1 MiB payloads echoed, ECHO_IN_FLIGHT at a time."""
    payload = os.urandom(MIB)
    per_lane = messages // ECHO_IN_FLIGHT

    async def lane() -> None:
        for _ in range(per_lane):
            back = await run("echo", payload)
            assert len(back) == MIB

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(ECHO_IN_FLIGHT):
            tg.start_soon(lane)
    wall = time.perf_counter() - t0
    return per_lane * ECHO_IN_FLIGHT * MIB / wall / 1e6


async def measure_subject(
    cls: type[Subject], tasks: int, messages: int
) -> tuple[float, float, float]:
    subject = cls()
    run = await subject.__aenter__()
    try:
        await warm(run)
        rate, cpu = await measure_throughput(run, tasks)
        mbps = await measure_echo(run, messages)
    finally:
        await subject.__aexit__(None, None, None)
    return rate, cpu, mbps


async def cold_start_once(cls: type[Subject]) -> float:
    t0 = time.perf_counter()
    subject = cls()
    run = await subject.__aenter__()
    try:
        await run("noop", None)
        return time.perf_counter() - t0
    finally:
        await subject.__aexit__(None, None, None)


def run_loop(loop_name: str, options: dict[str, Any], fn: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(fn, backend="asyncio", backend_options=options)


def sync_reference(tasks: int, messages: int) -> tuple[float, float, float]:
    """multiprocessing.Pool.apply_async: everything submitted, then collected."""
    with multiprocessing.Pool(WORKERS) as pool:
        for r in [pool.apply_async(targets.noop) for _ in range(4 * WORKERS)]:
            r.get()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for r in [pool.apply_async(targets.noop) for _ in range(tasks)]:
            r.get()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        payload = os.urandom(MIB)
        t1 = time.perf_counter()
        pending = []
        for _ in range(messages):
            pending.append(pool.apply_async(targets.echo, (payload,)))
            if len(pending) >= ECHO_IN_FLIGHT:
                pending.pop(0).get()
        for r in pending:
            r.get()
        echo_wall = time.perf_counter() - t1
    return tasks / wall, cpu / tasks * 1e6, messages * MIB / echo_wall / 1e6


# -- map over many items, in a fresh process ------------------------------------------


def map_child(items: int) -> None:
    """Run in a child: print JSON {rss_before, rss_peak, rate}."""
    import psutil

    async def main() -> dict[str, float]:
        async with aioproc.Pool(min_workers=WORKERS, max_workers=WORKERS) as pool:
            await pool.run(targets.inc, 1)
            rss_before = psutil.Process().memory_info().rss
            peak = rss_before
            count = 0
            t0 = time.perf_counter()
            async with pool.map(targets.inc, range(items)) as results:
                async for _ in results:
                    count += 1
                    if count % 20_000 == 0:
                        peak = max(peak, psutil.Process().memory_info().rss)
            wall = time.perf_counter() - t0
            peak = max(peak, psutil.Process().memory_info().rss)
        # (Not ru_maxrss: Linux folds the spawning benchmark's own peak into it.)
        return {"rss_before": rss_before, "rss_peak": peak, "rate": count / wall}

    print(json.dumps(anyio.run(main)))


def measure_map(items: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--map-child", str(items)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- driver ---------------------------------------------------------------------------


def ratios_vs_best(rows: list[Row], *, higher_is_better: bool) -> None:
    """Fill ratio_to_floor with the ratio to the best peer (not aioproc, not sync)."""
    by_backend: dict[str, list[Row]] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], []).append(r)
    for group in by_backend.values():
        peers = [r for r in group if r["name"] not in ("aioproc", "multiprocessing.Pool")]
        if not peers:
            continue
        best = (max if higher_is_better else min)(peers, key=lambda r: r["value"])
        for r in group:
            r["ratio_to_floor"] = round(r["value"] / best["value"], 3) if best["value"] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--map-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.map_child:
        map_child(args.map_child)
        return
    tasks = 5_000 if args.quick else 20_000
    messages = 64 if args.quick else 256
    map_items = 100_000 if args.quick else 1_000_000
    starts = 3 if args.quick else 5

    throughput: list[Row] = []
    cpu_rows: list[Row] = []
    echo: list[Row] = []
    cold: list[Row] = []
    for loop_name, options in LOOPS:
        for cls in SUBJECTS:
            print(f"[{loop_name}] {cls.name} ...", file=sys.stderr, flush=True)

            async def one(cls: type[Subject] = cls) -> tuple[float, float, float]:
                return await measure_subject(cls, tasks, messages)

            rate, cpu, mbps = run_loop(loop_name, options, one)
            throughput.append(
                row(
                    "no-op throughput, 256 callers (vs best peer)",
                    cls.name,
                    loop_name,
                    round(rate),
                    "tasks/s",
                )
            )
            cpu_rows.append(
                row(
                    "parent CPU per no-op task (vs best peer)",
                    cls.name,
                    loop_name,
                    round(cpu, 1),
                    "µs",
                )
            )
            echo.append(
                row(
                    "1 MiB echo, 8 in flight (vs best peer)",
                    cls.name,
                    loop_name,
                    round(mbps),
                    "MB/s",
                )
            )
            samples = []
            for _ in range(starts):

                async def start(cls: type[Subject] = cls) -> float:
                    return await cold_start_once(cls)

                samples.append(run_loop(loop_name, options, start))
            cold.append(
                row(
                    "cold start to first result (vs best peer)",
                    cls.name,
                    loop_name,
                    round(statistics.median(samples) * 1e3, 1),
                    "ms",
                )
            )
    print("[sync] multiprocessing.Pool ...", file=sys.stderr, flush=True)
    rate, cpu, mbps = sync_reference(tasks, messages)
    throughput.append(
        row(
            "no-op throughput, 256 callers (vs best peer)",
            "multiprocessing.Pool",
            "",
            round(rate),
            "tasks/s",
        )
    )
    cpu_rows.append(
        row(
            "parent CPU per no-op task (vs best peer)",
            "multiprocessing.Pool",
            "",
            round(cpu, 1),
            "µs",
        )
    )
    echo.append(
        row(
            "1 MiB echo, 8 in flight (vs best peer)",
            "multiprocessing.Pool",
            "",
            round(mbps),
            "MB/s",
        )
    )

    ratios_vs_best(throughput, higher_is_better=True)
    ratios_vs_best(cpu_rows, higher_is_better=False)
    ratios_vs_best(echo, higher_is_better=True)
    ratios_vs_best(cold, higher_is_better=False)

    print(f"[asyncio] map over {map_items:,} items ...", file=sys.stderr, flush=True)
    figures = measure_map(map_items)
    before, peak = figures["rss_before"] / MIB, figures["rss_peak"] / MIB
    map_rows = [
        row(
            f"map over {map_items:,} items: RSS (ratio: peak / before the map)",
            "aioproc",
            "asyncio",
            round(peak, 1),
            "MB peak",
        ),
        row(
            f"map over {map_items:,} items: RSS (ratio: peak / before the map)",
            "aioproc (before the map)",
            "asyncio",
            round(before, 1),
            "MB",
        ),
        row(
            f"map over {map_items:,} items: throughput",
            "aioproc",
            "asyncio",
            round(figures["rate"]),
            "items/s",
        ),
    ]
    map_rows[0]["ratio_to_floor"] = round(peak / before, 3)
    map_rows[1]["ratio_to_floor"] = 1.0
    map_rows[2]["ratio_to_floor"] = None

    rows = throughput + cpu_rows + echo + cold + map_rows
    print("| benchmark | name | backend | value | unit | ratio |")
    print("|:---|:---|:---|---:|:---|---:|")
    for r in rows:
        ratio = "" if r["ratio_to_floor"] is None else f"{r['ratio_to_floor']:.2f}"
        cells = [r["benchmark"], r["name"], r["backend"], f"{r['value']:,}", r["unit"], ratio]
        print("| " + " | ".join(cells) + " |")
    out = HERE / "results" / "bench_pool.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

"""Helpers for the ``aioproc bench`` tests: run the CLI as a real program, on a
pipe or on a pseudo-terminal, and child-side entry points the tests start with
``python -c``."""

from __future__ import annotations

import json
import os
import pty
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str | os.PathLike[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m aioproc bench ARGS`` with stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "aioproc", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def bench_json(tmp_path: Path, *args: str | os.PathLike[str]) -> dict[str, Any]:
    """Run ``aioproc bench --export-json`` and return the parsed document."""
    out = tmp_path / "bench.json"
    proc = bench("--export-json", out, *args)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def python_code(code: str) -> list[str]:
    """argv of a Python child that can import ``tests.cli_helpers``."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"]


def on_terminal(argv: list[str], timeout: float = 60) -> tuple[str, str]:
    """Run *argv* with stderr on a pseudo-terminal; (what the terminal got, stdout)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the slave side closed it
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        stdout, _ = proc.communicate(timeout=timeout)
    return b"".join(chunks).decode(errors="replace"), stdout.decode()


# --- entry points of child processes (started with python_code) ---------------


def main_without(module: str, *argv: str) -> None:
    """Run ``aioproc`` with *module* made unimportable (a missing extra)."""
    sys.modules[module] = None  # type: ignore[assignment]
    from aioproc._cli import main

    raise SystemExit(main(list(argv)))


def floor_after_peak(json_path: str, megabytes: int = 300) -> None:
    """Hold and free *megabytes* in this process, then bench ``true`` into *json_path*.

    Also prints, as a control, what ``true`` reports when started the usual way
    (``posix_spawn``, a vfork): the runner's own high-water mark.
    """
    block = b"\x01" * (megabytes * 1_000_000)  # touched, so resident
    del block
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pid = os.posix_spawnp("true", ["true"], os.environ)
    _, _, usage = os.wait4(pid, 0)
    print(json.dumps({"runner_peak": peak, "vfork_true": usage.ru_maxrss * 1024}))
    from aioproc._cli import main

    code = main(["bench", "-n", "1", "--warmup", "0", "--export-json", json_path, "true"])
    raise SystemExit(code)


# --- fake benchmark scripts for benchmarks/run_all.py ------------------------


def fake_bench(script: str, behaviour: str) -> None:
    """Act like a ``benchmarks/bench_*.py`` script located at *script*.

    *behaviour*: ``"ok"`` writes two benchmarks' rows, ``"crash"`` dies with a
    message on stderr, ``"silent"`` exits 0 without writing rows, ``"garbage"``
    writes rows that are not a list.
    """
    path = Path(script)
    out = path.parent / "results" / f"{path.stem}.json"
    if behaviour == "crash":
        print("kaboom: the benchmark broke", file=sys.stderr)
        raise SystemExit(3)
    if behaviour == "garbage":
        out.write_text('{"not": "a list"}')
    if behaviour != "ok":
        return
    print("| a table the script prints |")
    rows = [
        {"benchmark": "latency", "name": "floor", "backend": "", "value": 0.5,
         "unit": "ms", "ratio_to_floor": 1.0},
        {"benchmark": "latency", "name": "run(true)", "backend": "asyncio", "value": 0.6,
         "unit": "ms", "ratio_to_floor": 1.2},
        {"benchmark": "latency", "name": "run(true)", "backend": "trio", "value": 0.65,
         "unit": "ms", "ratio_to_floor": 1.3},
        {"benchmark": "throughput", "name": "a | b", "backend": "uvloop", "value": 12345.6,
         "unit": "tasks/s", "ratio_to_floor": None},
    ]  # fmt: skip
    out.write_text(json.dumps(rows))

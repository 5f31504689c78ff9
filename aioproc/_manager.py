"""ProcessManager: a registry of every child started through it.

Each ``run``/``run_shell``/``start``/``start_worker`` creates a
record before anything starts, so a child that cannot start is still listed
(status ``"failed"``, ``error`` says why). The record follows the child through
hooks, never by polling::

    pm.run(...) ──run_impl(on_start, on_exit)──> record: pid, "running" ... "exited"
    pm.start(...) ──Process + exit callback──> record; taps on stdout/stderr feed
                                               the 64 KiB tails as the user reads
    pm.get(id) / list() / running()  ──> ProcessInfo snapshots (frozen)
    stop_all(grace) / leaving ``async with``: stop what runs, close what it owns

Lifecycle: ``new`` -> ``open`` (inside ``async with``) -> ``closed``. Starting
anything outside ``open`` raises ``RuntimeError`` naming the state.
"""

from __future__ import annotations

import builtins
import enum
import os
import signal as _signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._monitor import Rusage
from ._run import run_impl
from ._spawn import StderrSpec, StdioSpec
from ._subprocess import CompletedProcess, Process, start_process

if TYPE_CHECKING:
    from ._worker import Worker
    from ._workerproc import WorkerProcess

__all__ = ["ProcessInfo", "ProcessManager"]

#: How much of each output stream a record keeps (the last bytes).
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of one registered process.

    ``kind`` is ``"run"``, ``"shell"``, ``"spawn"`` or ``"worker"``; ``status`` is
    ``"running"``, ``"exited"`` (whatever its code: see ``returncode`` and
    ``signal``) or ``"failed"`` (it could not start; ``error`` says why).
    ``started_at``/``ended_at`` are epoch seconds; ``duration`` is seconds (so
    far, while running). ``stdout_tail``/``stderr_tail`` are the last 64 KiB the
    process wrote (for ``start()``: of what was read from it).
    """

    id: int
    kind: str
    args: object
    pid: int | None
    status: str
    returncode: int | None
    signal: int | None
    started_at: float
    ended_at: float | None
    duration: float | None
    stdout_tail: bytes
    stderr_tail: bytes
    error: str | None
    rusage: Rusage | None = None


class _Tail:
    """The last :data:`TAIL_BYTES` of a stream."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        data = self.data
        if len(chunk) >= TAIL_BYTES:
            data[:] = chunk[-TAIL_BYTES:]
            return
        data += chunk
        if len(data) > TAIL_BYTES:
            del data[: len(data) - TAIL_BYTES]


class _Record:
    """The manager's live, mutable view of one process."""

    __slots__ = (
        "args",
        "done",
        "ended_at",
        "error",
        "id",
        "kind",
        "pid",
        "returncode",
        "rusage",
        "started_at",
        "status",
        "stderr",
        "stdout",
        "stopper",
    )

    def __init__(self, ident: int, kind: str, args: object) -> None:
        self.id = ident
        self.kind = kind
        self.args = args
        self.pid: int | None = None
        self.status = "running"
        self.returncode: int | None = None
        self.rusage: Rusage | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.error: str | None = None
        self.stdout = _Tail()
        self.stderr = _Tail()
        self.done = anyio.Event()
        #: Stops the process within a grace (None: its own default).
        self.stopper: Callable[[float | None], Coroutine[Any, Any, object]] | None = None

    def failed(self, exc: BaseException) -> None:
        self.status = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        self.ended_at = time.time()
        self.done.set()

    def exited(self, returncode: int, rusage: Rusage | None) -> None:
        if self.status != "running":
            return
        self.status = "exited"
        self.returncode = returncode
        self.rusage = rusage
        self.ended_at = time.time()
        self.done.set()

    def snapshot(self) -> ProcessInfo:
        code = self.returncode
        end = self.ended_at
        return ProcessInfo(
            id=self.id,
            kind=self.kind,
            args=self.args,
            pid=self.pid,
            status=self.status,
            returncode=code,
            signal=-code if code is not None and code < 0 else None,
            started_at=self.started_at,
            ended_at=end,
            duration=(end if end is not None else time.time()) - self.started_at,
            stdout_tail=bytes(self.stdout.data),
            stderr_tail=bytes(self.stderr.data),
            error=self.error,
            rusage=self.rusage,
        )


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ProcessManager:
    """An async context manager that starts, tracks and finally stops children.

    ``await pm.run(...)``/``await pm.run_shell(...)`` behave as
    :func:`aioproc.run`/:func:`aioproc.run_shell` and are registered;
    ``await pm.start(args, ...)`` starts a :class:`Process` (as
    :func:`aioproc.spawn` would) owned by the manager until it closes, with
    ``.id`` set to its record's id. Leaving ``async with`` stops everything
    still running and closes what the manager owns.
    """

    def __init__(self) -> None:
        self._records: dict[int, _Record] = {}
        #: What the manager closes when it closes, by record id (kept even when
        #: the record itself is forgotten).
        self._owned: dict[int, Callable[[], Awaitable[object]]] = {}
        self._next_id = 1
        self._state = _State.NEW
        #: Hosts the workers started with start_worker (entered in __aenter__).
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> ProcessManager:
        if self._state is not _State.NEW:
            raise RuntimeError(f"ProcessManager is {self._state.value}; it can be entered once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            tg, self._tg = self._tg, None
            if tg is not None:
                # Every hosted worker was closed by aclose(); their tasks end now.
                # The body's own exception propagates as it is.
                await tg.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Stop everything still running, release what the manager owns.
        Shielded from cancellation; idempotent."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._state = _State.CLOSING
        with anyio.CancelScope(shield=True):
            try:
                await self.stop_all()
            finally:
                while self._owned:
                    _, closer = self._owned.popitem()
                    await closer()
                self._state = _State.CLOSED

    def _new_record(self, kind: str, args: object) -> _Record:
        if self._state is not _State.OPEN:
            raise RuntimeError(f"ProcessManager is {self._state.value}: use it inside async with")
        record = _Record(self._next_id, kind, args)
        self._next_id += 1
        self._records[record.id] = record
        return record

    # -- starting things ----------------------------------------------------------------

    async def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
        check: bool = True,
        text: bool = False,
        encoding: str = "utf-8",
        errors: str = "strict",
        max_output: int | None = 64 * 2**20,
        stdout: StdioSpec = "pipe",
        stderr: StderrSpec = "pipe",
        kill_grace: float = 5.0,
    ) -> CompletedProcess[Any]:
        """:func:`aioproc.run`, registered as kind ``"run"``.

        :raises RuntimeError: when the manager is not open.
        :raises CommandNotFoundError: as :func:`aioproc.run` (also the other
            errors of :func:`aioproc.run`).
        """
        if isinstance(args, str | bytes):
            raise TypeError("args must be a sequence of arguments; use run_shell()")
        argv = list(args)
        record = self._new_record("run", argv)
        return await self._run(
            record,
            argv,
            argv,
            {
                "input": input,
                "cwd": cwd,
                "env": env,
                "timeout": timeout,
                "check": check,
                "text": text,
                "encoding": encoding,
                "errors": errors,
                "max_output": max_output,
                "stdout": stdout,
                "stderr": stderr,
                "kill_grace": kill_grace,
            },
        )

    async def run_shell(
        self,
        command: str,
        *,
        input: bytes | str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the spec'd run() signature
        check: bool = True,
        text: bool = False,
        encoding: str = "utf-8",
        errors: str = "strict",
        max_output: int | None = 64 * 2**20,
        stdout: StdioSpec = "pipe",
        stderr: StderrSpec = "pipe",
        kill_grace: float = 5.0,
    ) -> CompletedProcess[Any]:
        """:func:`aioproc.run_shell`, registered as kind ``"shell"``.

        :raises RuntimeError: when the manager is not open.
        :raises CalledProcessError: as :func:`aioproc.run_shell` (also its
            other errors).
        """
        if not isinstance(command, str):
            raise TypeError(f"command must be a str, not {type(command).__name__}")
        record = self._new_record("shell", command)
        return await self._run(
            record,
            command,
            ["/bin/sh", "-c", command],
            {
                "input": input,
                "cwd": cwd,
                "env": env,
                "timeout": timeout,
                "check": check,
                "text": text,
                "encoding": encoding,
                "errors": errors,
                "max_output": max_output,
                "stdout": stdout,
                "stderr": stderr,
                "kill_grace": kill_grace,
            },
        )

    async def _run(
        self,
        record: _Record,
        cmd: object,
        argv: list[str | os.PathLike[str]],
        options: dict[str, Any],
    ) -> CompletedProcess[Any]:
        kill_grace: float = options["kill_grace"]
        signal_group: list[Callable[[int], object]] = []

        def on_start(pid: int, send: Callable[[int], object]) -> None:
            record.pid = pid
            signal_group.append(send)

        def on_exit(code: int, rusage: Rusage | None, out: bytes | None, err: bytes | None) -> None:
            if out:
                record.stdout.feed(out[-TAIL_BYTES:])
            if err:
                record.stderr.feed(err[-TAIL_BYTES:])
            record.exited(code, rusage)

        async def stopper(grace: float | None) -> None:
            if not signal_group:
                return
            signal_group[0](_signal.SIGTERM)
            with anyio.move_on_after(kill_grace if grace is None else grace):
                await record.done.wait()
            if not record.done.is_set():
                signal_group[0](_signal.SIGKILL)
                await record.done.wait()

        record.stopper = stopper
        try:
            return await run_impl(cmd, argv, on_start=on_start, on_exit=on_exit, **options)
        except BaseException as exc:
            if record.pid is None:
                record.failed(exc)
            raise
        finally:
            record.stopper = None
            if record.status == "running":  # pragma: no cover - run_impl always reaps
                record.failed(RuntimeError("lost track of the process"))

    async def start(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        stdin: StdioSpec = "pipe",
        stdout: StdioSpec = "pipe",
        stderr: StderrSpec = "pipe",
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
        max_output: int | None = None,
    ) -> Process:
        """Start *args* as :func:`aioproc.spawn` would and return the running
        :class:`Process`, owned by the manager (closed when it closes; you may
        close it earlier). Registered as kind ``"spawn"``; ``process.id`` is the
        record's id. The record's output tails see what is read from the streams.

        :raises RuntimeError: when the manager is not open.
        :raises CommandNotFoundError: when the executable does not exist.
        :raises FileNotFoundError: when *cwd* does not exist.
        :raises PermissionError: when the file is not executable.
        """
        record = self._new_record("spawn", list(args))
        try:
            process = start_process(
                args,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                env=env,
                kill_grace=kill_grace,
                max_output=max_output,
            )
        except BaseException as exc:
            record.failed(exc)
            raise
        process.id = record.id
        record.pid = process.pid
        if process.stdout is not None:
            process.stdout._tap = record.stdout.feed
        if process.stderr is not None:
            process.stderr._tap = record.stderr.feed

        def on_exit(proc: Process) -> None:
            assert proc.returncode is not None
            record.exited(proc.returncode, proc.rusage)

        process._exit_callbacks.append(on_exit)
        record.stopper = process.stop
        self._owned[record.id] = process.aclose
        await anyio.lowlevel.checkpoint()
        return process

    async def start_worker(
        self,
        *,
        preload: Sequence[str] = (),
        initializer: Callable[..., object] | str | None = None,
        initargs: Sequence[Any] = (),
        main: Callable[..., object] | str | None = None,
        start_method: str = "spawn",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_frame: int = 64 * 2**20,
    ) -> Worker:
        """Start a :class:`~aioproc.Worker` (same options) owned by the manager
        until it closes (you may close it earlier with ``await worker.aclose()``).
        Registered as kind ``"worker"``; ``worker.id`` is the record's id, and the
        record follows the worker to its exit code or signal.

        The worker lives in a task of the manager's own task group, so it may be
        started from any task and is closed in the right order when the manager
        closes.

        :raises RuntimeError: when the manager is not open.
        :raises WorkerStartError: when the worker cannot start (the record stays,
            with status ``"failed"``).
        """
        from ._worker import Worker  # the worker layer sits above this module's imports

        describe = [f"start_method={start_method}"]
        if main is not None:
            describe.append(f"main={main if isinstance(main, str) else _qualname(main)}")
        if preload:
            describe.append(f"preload={','.join(preload)}")
        record = self._new_record("worker", describe)
        worker = Worker(
            preload=preload,
            initializer=initializer,
            initargs=initargs,
            main=main,
            start_method=start_method,
            env=env,
            cwd=cwd,
            max_frame=max_frame,
        )
        assert self._tg is not None
        try:
            await self._tg.start(self._host_worker, worker, record)
        except BaseException as exc:
            record.failed(exc)
            raise
        self._owned[record.id] = worker.aclose
        return worker

    @staticmethod
    async def _host_worker(
        worker: Worker,
        record: _Record,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run *worker* inside the manager's task group until it exits."""
        async with worker:
            proc = worker._proc
            assert proc is not None
            worker.id = record.id
            record.pid = worker.pid

            def on_exit(proc: WorkerProcess) -> None:
                # Runs where the exit is learnt, before anyone waiting on it
                # resumes: after ``await worker.aclose()`` the record is final.
                info = proc.exit_info
                assert info is not None
                if info.returncode is None:  # nobody could tell (its zygote died first)
                    record.failed(RuntimeError("the worker's exit status was lost"))
                else:
                    record.exited(info.returncode, None)

            proc.on_exit = on_exit
            if proc.exit_info is not None:
                on_exit(proc)

            async def stopper(grace: float | None) -> None:
                await worker.stop(5.0 if grace is None else grace)

            record.stopper = stopper
            task_status.started()
            await proc.wait_exit()
        record.stopper = None

    # -- the registry ---------------------------------------------------------------

    def get(self, ident: int) -> ProcessInfo:
        """The record with id *ident*.

        :raises KeyError: when there is no such record (or it was forgotten).
        """
        return self._records[ident].snapshot()

    def list(self) -> list[ProcessInfo]:
        """Every record, in id order."""
        return [record.snapshot() for record in self._records.values()]

    def running(self) -> builtins.list[ProcessInfo]:
        """The records whose process is still running."""
        return [r.snapshot() for r in self._records.values() if r.status == "running"]

    def forget_finished(self) -> int:
        """Drop the records of processes that exited or failed; how many."""
        finished = [i for i, r in self._records.items() if r.status != "running"]
        for ident in finished:
            del self._records[ident]  # a started Process stays owned (self._owned)
        return len(finished)

    async def stop_all(self, grace: float | None = None) -> None:
        """Stop every running process (SIGTERM to its group, *grace* seconds --
        default: each one's ``kill_grace`` -- then SIGKILL), concurrently; returns
        once all have exited."""
        async with anyio.create_task_group() as tg:
            for record in list(self._records.values()):
                if record.status == "running" and record.stopper is not None:
                    tg.start_soon(record.stopper, grace)

    def __repr__(self) -> str:
        running = sum(r.status == "running" for r in self._records.values())
        return (
            f"<ProcessManager {self._state.value} records={len(self._records)} running={running}>"
        )


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}:{getattr(obj, '__qualname__', repr(obj))}"

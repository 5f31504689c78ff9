"""The loop that runs inside a worker process.

Entry points: ``python -m aioproc._worker_main IN_FD OUT_FD PARENT_PID`` (the
"spawn" start method) and :func:`run_forked` (a child of the zygote, see
:mod:`aioproc._zygote`). Both end up in :func:`serve`::

    parent ─HELLO(config)─► setup: chdir, sys.path, preload, initializer
    parent ◄─HELLO(pid)──── (or HELLO carrying the failure, then exit 1)
    parent ─CALL/CANCEL/CREDIT/STOP─► Server.run()  (aioproc._worker_server:
                                          │           blocking loop, sync calls)
                                          │ first async function / async main
                                          ▼
                                   aioproc._worker_async (anyio.run on the
                                   caller's backend; serves every later call)

This module is the process around the loop: the handshake, the set-up, the
entry points and ``main=``; the loop is :class:`aioproc._worker_server.Server`.

The process ignores SIGINT (Ctrl-C belongs to the caller), asks the kernel for
SIGKILL when its parent thread dies (``PR_SET_PDEATHSIG``) and exits at pipe EOF,
so it never outlives the caller.
"""

from __future__ import annotations

import os
import sys

from ._channel import Channel, PipeConn
from ._errors import ProtocolError
from ._values import encode_exception
from ._worker_server import Server, is_async_callable
from .protocol import DEFAULT_MAX_FRAME, PROTOCOL_VERSION, Kind

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # the same functions and constants (typeshed has no _signal)
    from typing import Any
else:
    # Not signal: its enum conversions slow a starting zygote (see _zygote).
    import _signal

__all__ = [
    "apply_process_config",
    "main",
    "main_ended",
    "prepare_process",
    "restore_site",
    "run_forked",
    "serve",
]

_PR_SET_PDEATHSIG = 1

#: Exit code of a worker that met a protocol error (bad frame from the parent).
EXIT_PROTOCOL_ERROR = 3
#: Exit code of a worker whose setup (preload, initializer, main script) failed.
EXIT_SETUP_FAILED = 1


_prctl: Any = None


def _load_prctl() -> Any:
    """libc's ``prctl``, called through :mod:`_ctypes` alone.

    Importing the :mod:`ctypes` package costs a starting worker or zygote about
    2.5 ms (of ~7 for the bare interpreter); the few lines below cost 0.1 ms.
    They use :mod:`_ctypes`' own classes, as ``ctypes.CDLL`` does; should a
    Python version change those, the ctypes package is used instead.
    """
    try:
        import _ctypes

        class _CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]  # ctypes.c_int
            _type_ = "i"

        class _CFunction(_ctypes.CFuncPtr):  # what ctypes.CDLL(..., use_errno=True) makes
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _CInt

        # dlopen(None): the program itself, as ctypes.CDLL(None) (typeshed wants a name).
        return _CFunction(_ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl"))  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - another _ctypes
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl


def set_pdeathsig(expected_parent: int, sig: int = _signal.SIGKILL) -> None:
    """Ask for *sig* when the parent (thread) dies; exit now if it already has."""
    global _prctl
    if sys.platform.startswith("linux"):
        if _prctl is None:  # looked up once: the zygote's children inherit it
            _prctl = _load_prctl()
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    # The parent may have died before prctl took effect: then we were reparented.
    if os.getppid() != expected_parent:
        os._exit(1)


def prepare_process(parent_pid: int) -> None:
    """Ignore SIGINT, die with the parent: the first thing a worker or zygote does."""
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # The spawner blocked SIGINT across exec so that no Ctrl-C could land before
    # the line above; a pending one is discarded by SIG_IGN.
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})
    set_pdeathsig(parent_pid)


def restore_site(distutils_shim: bool) -> None:
    """What site.py leaves behind, for a process started with ``-S`` by the launcher.

    The launcher already set ``sys.path`` and ``sys.prefix``; this adds the
    ``exit``/``quit``/``help``/``copyright``/``credits``/``license`` builtins and,
    when the caller had it, setuptools' distutils shim.
    """
    import site

    site.setquit()
    site.setcopyright()
    site.sethelper()
    if distutils_shim:
        # Gone since the caller started (setuptools uninstalled): no shim then.
        try:  # noqa: SIM105 - contextlib would cost a starting zygote ~0.4 ms
            __import__("_distutils_hack").add_shim()
        except Exception:
            pass


def apply_process_config(config: dict[str, Any]) -> None:
    """``cwd``, ``sys_path`` and ``preload`` of a handshake (worker or zygote)."""
    cwd = config.get("cwd")
    if cwd:
        os.chdir(cwd)
    sys_path = config.get("sys_path")
    if sys_path:
        sys.path[:] = [p for p in sys_path if isinstance(p, str)]
    # __import__, not importlib.import_module: importlib costs a process ~0.4 ms.
    for name in config.get("preload") or ():
        __import__(name)


def _setup(conn: PipeConn, server: Server, config: dict[str, Any]) -> None:
    """Apply the handshake config: everything that may fail at start."""
    apply_process_config(config)
    initializer = config.get("initializer")
    if initializer:
        ref, args, kwargs = initializer
        fn = server.resolve(ref)
        result = fn(*args, *(config.get("initargs") or ()), **kwargs)
        if hasattr(result, "__await__"):
            from ._worker_async import run_awaitable

            run_awaitable(config, result)


def serve(in_fd: int, out_fd: int) -> int:
    """Handshake, setup, then serve calls (or run ``main``); the exit code."""
    os.set_blocking(in_fd, True)
    os.set_blocking(out_fd, True)
    conn = PipeConn(in_fd, out_fd, DEFAULT_MAX_FRAME)
    try:
        first = conn.read_batch(block=True)
    except ProtocolError as exc:
        print(f"aioproc worker: {exc}", file=sys.stderr)
        return EXIT_PROTOCOL_ERROR
    if not first:
        return 0  # the parent went away before the handshake
    hello = first[0]
    pid = os.getpid()
    if not (isinstance(hello, list) and len(hello) >= 3 and hello[0] == Kind.HELLO):
        print("aioproc worker: the first frame is not a handshake", file=sys.stderr)
        return EXIT_PROTOCOL_ERROR
    if hello[1] != PROTOCOL_VERSION:
        error = ProtocolError(
            f"protocol version mismatch: the caller speaks {hello[1]}, "
            f"this worker speaks {PROTOCOL_VERSION}"
        )
        conn.send([Kind.HELLO, PROTOCOL_VERSION, pid, encode_exception(error)])
        return EXIT_PROTOCOL_ERROR
    config: dict[str, Any] = hello[2] if isinstance(hello[2], dict) else {}
    conn.max_frame = conn.decoder.max_frame = int(config.get("max_frame") or DEFAULT_MAX_FRAME)
    server = Server(conn, config)
    try:
        _setup(conn, server, config)
    except BaseException as exc:
        conn.send([Kind.HELLO, PROTOCOL_VERSION, pid, encode_exception(exc)])
        return EXIT_SETUP_FAILED
    conn.send([Kind.HELLO, PROTOCOL_VERSION, pid, None])
    # Anything that arrived with the handshake is served next.
    server.queue.extend(m for m in first[1:] if m[0] == Kind.CALL)
    for message in first[1:]:
        if message[0] != Kind.CALL:
            server.handle_control(message)
    try:
        entry = config.get("entry")
        if entry:
            return _run_main(server, entry)
        return server.run()
    except ProtocolError as exc:
        print(f"aioproc worker {pid}: {exc}; exiting", file=sys.stderr)
        return EXIT_PROTOCOL_ERROR
    except BrokenPipeError:
        return 0  # the parent went away


def _run_main(server: Server, entry: list[Any]) -> int:
    """Run ``main(channel, ...)`` as call 0: RESULT 0 when it returns, ERROR 0 if it raises."""
    ref, args, kwargs = entry
    try:
        fn = server.resolve(ref)
    except BaseException as exc:
        server.send_error(0, exc)
        return 1
    if is_async_callable(fn):
        from ._worker_async import run_async_main

        return run_async_main(server, fn, args, kwargs)
    channel = Channel(server.conn)
    try:
        fn(channel, *args, **kwargs)
    except BaseException as exc:
        return main_ended(server, exc)
    return main_ended(server, None)


def main_ended(server: Server, exc: BaseException | None) -> int:
    """Report how ``main`` (sync or async) ended, as call 0; the exit code.

    Returned: RESULT 0. Raised ``SystemExit``: the worker exits with its code.
    Raised anything else: ERROR 0 and exit code 1.
    """
    if exc is None:
        server.conn.send([Kind.RESULT, 0, None])
        return 0
    if isinstance(exc, SystemExit):
        server.system_exit(0, exc)
        return server.exit_code or 0
    server.send_error(0, exc)
    return 1


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def run_forked(in_fd: int, out_fd: int) -> None:
    """Body of a worker forked by the zygote: serve, flush, ``_exit`` (never returns)."""
    code = 1
    try:
        code = serve(in_fd, out_fd)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        _flush_stdio()
        os._exit(code)


def main() -> None:
    """``python -m aioproc._worker_main IN_FD OUT_FD PARENT_PID``."""
    in_fd, out_fd, parent_pid = (int(a) for a in sys.argv[1:4])
    prepare_process(parent_pid)
    for fd in (in_fd, out_fd):
        os.set_inheritable(fd, False)  # programs the worker starts must not hold them
    code = serve(in_fd, out_fd)
    _flush_stdio()
    sys.exit(code)


if __name__ == "__main__":
    main()

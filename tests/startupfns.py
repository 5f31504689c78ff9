"""Worker targets for tests/test_worker_startup.py: what a worker's interpreter looks like."""

from __future__ import annotations

import builtins
import gc
import sys


def interpreter_state() -> dict[str, object]:
    """The parts of the interpreter that site.py would set up, and the collector."""
    return {
        "sys_path": list(sys.path),
        "prefix": sys.prefix,
        "exec_prefix": sys.exec_prefix,
        "builtins": sorted(
            name
            for name in ("exit", "quit", "help", "copyright", "credits", "license")
            if hasattr(builtins, name)
        ),
        "gc_enabled": gc.isenabled(),
        "finders": sorted(type(f).__module__ for f in sys.meta_path),
    }


def exit_through_builtin(code: int) -> object:
    """Call the ``exit`` builtin that site.py provides; the code it raised."""
    try:
        exit(code)
    except SystemExit as exc:
        return exc.code
    return None


def parent_death_signal() -> int:
    """The signal this process asked for when its parent dies (PR_GET_PDEATHSIG)."""
    import ctypes

    value = ctypes.c_int()
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)
    return value.value


_KEPT: list[int] = []


def keep_size(blob: bytes) -> None:
    """Initializer: remember how many bytes the handshake carried."""
    _KEPT.append(len(blob))


def kept_sizes() -> list[int]:
    """What :func:`keep_size` remembered in this worker."""
    return list(_KEPT)

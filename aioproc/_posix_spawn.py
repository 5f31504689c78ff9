"""``posix_spawn`` through glibc, with the child closing every fd above 2 itself.

``os.posix_spawn`` (Python 3.11) has no ``close_fds``: to start a child that
gets none of our inheritable fds we had to list ``/proc/self/fd`` and add one
close action per inheritable fd. That scan costs about 30 µs of a ``run()``'s
critical path (measured: 0.76 against 0.73 ms for ``true``), a fifth of the
distance to the bare ``posix_spawn`` + ``waitpid`` floor. glibc 2.34 added
``posix_spawn_file_actions_addclosefrom_np``: the child calls ``close_range``
between the ``dup2`` actions and ``exec``, exactly what ``Popen(close_fds=True)``
does after its fork. This module calls glibc's spawn functions through
:mod:`ctypes` so that action can be used::

    sources (fd per 0, 1, 2) ─ dup2 ─┐
                                     ├─ closefrom(3) ─ exec (PATH search with "p")
    attr: SETSIGDEF (SIGPIPE, SIGXFSZ) [+ SETPGROUP 0]

``spawn()`` returns ``None`` when this glibc (or libc) lacks the function; the
caller then uses ``os.posix_spawn`` with the scan. With ``env=None`` the child
gets the C ``environ`` -- what ``Popen`` passes too, and what ``os.environ``
mirrors through ``putenv`` -- so nothing is converted.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

__all__ = ["env_entries", "spawn"]

# <spawn.h> flag values (glibc, every architecture).
_SETPGROUP = 0x02
_SETSIGDEF = 0x04
# Bigger than glibc's posix_spawnattr_t (336 bytes), posix_spawn_file_actions_t
# (80) and sigset_t (128) on every architecture: the functions only ever write
# inside their own struct.
_STRUCT_BYTES = 1024
#: File-action sets kept for reuse (see _Glibc._actions_for).
_CACHED_ACTIONS = 64
#: Argument vectors kept for reuse, at most this many.
_CACHED_ARGVS = 64


class _Glibc:
    """The spawn functions of the C library, with the two attribute sets we use
    built once (they are only read by ``posix_spawn``, from any thread)."""

    def __init__(self, ctypes: Any, libc: Any) -> None:
        self._ctypes = ctypes
        self._libc = libc
        voidp, intc = ctypes.c_void_p, ctypes.c_int
        for name in (
            "posix_spawn_file_actions_init",
            "posix_spawn_file_actions_destroy",
            "posix_spawnattr_init",
            "sigemptyset",
        ):
            getattr(libc, name).argtypes = [voidp]
        for name in (
            "posix_spawnattr_setflags",
            "sigaddset",
            "posix_spawn_file_actions_addclosefrom_np",
        ):
            getattr(libc, name).argtypes = [voidp, intc]
        libc.posix_spawn_file_actions_adddup2.argtypes = [voidp, intc, intc]
        libc.posix_spawnattr_setsigdefault.argtypes = [voidp, voidp]
        libc.posix_spawnattr_setpgroup.argtypes = [voidp, intc]
        spawn_args = [ctypes.POINTER(intc), ctypes.c_char_p, voidp, voidp, voidp, voidp]
        libc.posix_spawn.argtypes = spawn_args
        libc.posix_spawnp.argtypes = spawn_args
        self._init_actions = libc.posix_spawn_file_actions_init
        self._dup2 = libc.posix_spawn_file_actions_adddup2
        self._closefrom = libc.posix_spawn_file_actions_addclosefrom_np
        self._destroy = libc.posix_spawn_file_actions_destroy
        self._environ = ctypes.c_void_p.in_dll(libc, "environ")
        self._attrs = {own_group: self._make_attr(own_group) for own_group in (False, True)}
        self._actions: dict[tuple[int | None, ...], Any] = {}
        # Converted argument vectors (read-only C arrays) of recent commands: a
        # service tends to run the same few over and over, and converting one
        # right after a child ran (cold caches) costs about 7 µs of a start.
        self._argvs: dict[tuple[str, ...], Any] = {}

    def _make_attr(self, own_group: bool) -> Any:
        libc = self._libc
        attr = self._ctypes.create_string_buffer(_STRUCT_BYTES)
        sigset = self._ctypes.create_string_buffer(_STRUCT_BYTES)
        _check(libc.posix_spawnattr_init(attr))
        libc.sigemptyset(sigset)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            libc.sigaddset(sigset, int(sig))
        _check(libc.posix_spawnattr_setsigdefault(attr, sigset))
        flags = _SETSIGDEF
        if own_group:
            _check(libc.posix_spawnattr_setpgroup(attr, 0))
            flags |= _SETPGROUP
        _check(libc.posix_spawnattr_setflags(attr, flags))
        return attr

    def _build_actions(self, sources: tuple[int | None, ...]) -> Any:
        actions = self._ctypes.create_string_buffer(_STRUCT_BYTES)
        _check(self._init_actions(actions))
        try:
            for target, source in enumerate(sources):
                if source is not None:
                    _check(self._dup2(actions, source, target))
            _check(self._closefrom(actions, 3))
        except BaseException:
            self._destroy(actions)
            raise
        return actions

    def _actions_for(self, sources: tuple[int | None, ...]) -> tuple[Any, bool]:
        """The file actions for *sources*, and whether the caller must destroy them.

        Built actions are kept (up to :data:`_CACHED_ACTIONS` sets, never freed):
        a process starting children over and over gets the same few fd numbers
        for its pipes, and building a set costs five C calls (each ``dup2``
        action checks the fd limit with a system call), about 8 µs of a start.
        ``posix_spawn`` only reads them, so threads may share one.
        """
        actions = self._actions.get(sources)
        if actions is not None:
            return actions, False
        actions = self._build_actions(sources)
        if len(self._actions) >= _CACHED_ACTIONS:
            return actions, True
        kept = self._actions.setdefault(sources, actions)
        if kept is not actions:  # another thread built the same set meanwhile
            self._destroy(actions)
        return kept, False

    def spawn(
        self,
        args: list[str],
        sources: list[int | None],
        env: Mapping[str, str] | None,
        own_group: bool,
    ) -> int:
        ctypes = self._ctypes
        key = tuple(args)
        argv = self._argvs.get(key)
        if argv is None:
            argv = _c_strings(ctypes, [_encode(a) for a in args])
            if len(self._argvs) >= _CACHED_ARGVS:
                self._argvs.clear()  # start over with the commands run from now on
            self._argvs[key] = argv
        envp: Any = self._environ.value if env is None else _c_strings(ctypes, env_entries(env))
        actions, temporary = self._actions_for(tuple(sources))
        pid = ctypes.c_int()
        function = self._libc.posix_spawn if "/" in args[0] else self._libc.posix_spawnp
        try:
            error = function(
                ctypes.byref(pid), argv[0], actions, self._attrs[own_group], argv, envp
            )
        finally:
            if temporary:
                self._destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), args[0])
        return int(pid.value)


def _check(error: int) -> None:
    if error:
        raise OSError(error, os.strerror(error))


def _encode(value: str) -> bytes:
    data = os.fsencode(value)
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


def env_entries(env: Mapping[str, str]) -> list[bytes]:
    """``NAME=value`` entries of *env* for a C ``envp``.

    :raises ValueError: on a NUL byte, or a name that is empty or holds ``=``.
    """
    entries = []
    for key, value in env.items():
        name = _encode(key)
        if not name or b"=" in name:
            raise ValueError(f"illegal environment variable name: {key!r}")
        entries.append(name + b"=" + _encode(value))
    return entries


def _c_strings(ctypes: Any, items: list[bytes]) -> Any:
    """A NULL-terminated ``char *[]`` over *items* (which must outlive it)."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


_glibc: _Glibc | None = None
_loaded = False


def _load() -> _Glibc | None:
    global _glibc, _loaded
    _loaded = True
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "posix_spawn_file_actions_addclosefrom_np"):
            return None  # musl, glibc < 2.34, other systems
        _glibc = _Glibc(ctypes, libc)
    except (ImportError, OSError, AttributeError, ValueError):
        _glibc = None
    return _glibc


def spawn(
    args: list[str],
    sources: list[int | None],
    env: Mapping[str, str] | None,
    own_group: bool,
) -> int | None:
    """Start *args* with fds 0..2 from *sources* (``None``: keep ours) and no other
    fd; in a new process group when *own_group*; SIGPIPE and SIGXFSZ reset to
    their default. The PATH is searched when ``args[0]`` has no ``/``.

    Returns the pid, or ``None`` when the C library cannot close fds in the child
    (the caller then needs another way).

    :raises OSError: what ``posix_spawn`` reports (``ENOENT``, ``EACCES``, ...),
        with ``args[0]`` as the file name.
    :raises ValueError: when an argument or the environment holds a NUL byte,
        or an environment name is empty or holds ``=``.
    """
    glibc = _glibc if _loaded else _load()
    if glibc is None:
        return None
    return glibc.spawn(args, sources, env, own_group)

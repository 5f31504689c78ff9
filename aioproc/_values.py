"""What may cross the pipe: sendable values, function references, exceptions.

Imported by both sides (the parent and the worker), so it stays light: no anyio,
no event loop, ``traceback`` only when an exception is actually encoded.

Sendable values
    None, bool, int (64-bit), float, str, bytes, list, dict (keys str, int or
    bytes) and tuple. Subclasses travel as their base type (an IntEnum arrives as
    an int). :func:`pack_checked` is on the hot path of every call, so it first
    asks a cheap question — are all the types exact and known? — using
    ``set(map(type, ...))`` (C speed), packs, and only when either step fails
    walks the value in Python to name the offending type and its path
    (``args[1]['when']``).

Function references
    ``"package.module:qualname"``. :func:`function_ref` turns a module-level
    function (or class, classmethod, builtin) into one, flattens
    ``functools.partial`` into (ref, bound args, bound keywords), and rejects
    lambdas, closures, local functions and bound methods of instances with a
    :class:`TypeError` naming them. A function of the main script is
    ``"__main__:name"``; the worker runs the script as ``__mp_main__``
    (see :mod:`aioproc._worker_main`).

Exceptions
    :func:`encode_exception` (worker) turns an exception into
    ``[module, qualname, args | None, message, traceback]``;
    :func:`decode_exception` (parent) rebuilds the same type when it is a
    builtin or importable ``Exception`` subclass constructible from its args,
    else a :class:`~aioproc.TaskError`, with the remote traceback text as
    ``__cause__`` (a :class:`~aioproc._errors.RemoteTraceback`).
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable

from ._errors import ProtocolError, RemoteTraceback, TaskError
from .protocol import encode_body

#: Not typing.TYPE_CHECKING: a worker need not import typing to start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from functools import partial
    from typing import Any
else:
    # functools.partial itself (the C type), without importing functools.
    from _functools import partial

__all__ = [
    "PLAIN_REFS",
    "ExceptionInfo",
    "check_sendable",
    "decode_exception",
    "encode_exception",
    "explain_unsendable",
    "function_ref",
    "pack_checked",
    "resolve_ref",
]

#: ``[module, qualname, args | None, message, traceback]`` as sent in ``ERROR``.
if TYPE_CHECKING:
    from typing import TypeAlias

    ExceptionInfo: TypeAlias = list[Any]
else:
    ExceptionInfo = list

_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_KEY_TYPES = frozenset({str, int, bytes})
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


# -- sendable values ----------------------------------------------------------------


def _quick_ok(obj: object) -> bool:
    """True when *obj* surely packs: exact known types all the way down.

    False means "look closer" (a subclass, a tuple key, something unsendable);
    ints are not range-checked here (packing catches those).
    """
    t = type(obj)
    if t in _SCALARS:
        return True
    if t is list or t is tuple:
        if set(map(type, obj)) <= _SCALARS:  # type: ignore[call-overload]
            return True
        return all(map(_quick_ok, obj))  # type: ignore[call-overload]
    if t is dict:
        if not set(map(type, obj)) <= _KEY_TYPES:  # type: ignore[call-overload]
            return False
        values = obj.values()  # type: ignore[attr-defined]
        if set(map(type, values)) <= _SCALARS:
            return True
        return all(map(_quick_ok, values))
    return False


def _describe(obj: object) -> str:
    t = type(obj)
    module = t.__module__
    name = t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"
    return name


def _find_problem(obj: object, path: str) -> str | None:
    """Walk *obj*; a message naming the first unsendable part and its path."""
    if obj is None or isinstance(obj, bool | float | bytes):
        return None
    if isinstance(obj, int):
        if _INT_MIN <= obj <= _INT_MAX:
            return None
        return f"int at {path} does not fit in 64 bits (msgpack carries -2**63 .. 2**64-1)"
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return f"str at {path} cannot be encoded as UTF-8 (lone surrogate)"
        return None
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            problem = _find_problem(item, f"{path}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int | bytes):
                return (
                    f"dict key of type {_describe(key)} in {path} is not sendable "
                    "(keys must be str, int or bytes)"
                )
            problem = _find_problem(key, f"{path} key {key!r}")
            if problem is not None:
                return problem
            problem = _find_problem(value, f"{path}[{key!r}]")
            if problem is not None:
                return problem
        return None
    return (
        f"value of type {_describe(obj)} at {path} is not sendable to a worker "
        "(send None, bool, int, float, str, bytes, list, tuple or dict)"
    )


def explain_unsendable(obj: object, path: str, error: BaseException | None = None) -> TypeError:
    """A TypeError naming the first unsendable part of *obj* (after packing failed)."""
    try:
        problem = _find_problem(obj, path)
    except RecursionError:
        problem = f"{path} is nested too deeply (or contains itself)"
    if problem is None:
        if error is not None and "recursion" in str(error).lower():
            problem = f"{path} is nested too deeply to encode"
        else:
            problem = f"{path} cannot be encoded: {error}"
    return TypeError(problem)


def check_sendable(obj: object, path: str) -> None:
    """Raise if *obj* cannot be sent; cheap when it can.

    :raises TypeError: naming the unsendable type and its *path*.
    """
    try:
        if _quick_ok(obj):
            return
        problem = _find_problem(obj, path)
    except RecursionError:
        problem = f"{path} is nested too deeply (or contains itself)"
    if problem is not None:
        raise TypeError(problem)


def pack_checked(message: object, value: object, path: str) -> bytes:
    """msgpack body of *message*, after checking the user part *value* in it.

    :raises TypeError: naming the type and the *path* of the first unsendable
        part of *value*, before anything is sent.
    """
    check_sendable(value, path)
    try:
        return encode_body(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise explain_unsendable(value, path, exc) from None


# -- function references ------------------------------------------------------------

#: function_ref()'s cache: plain callables (no partials, no strings) found
#: referenceable, with their reference. A hit needs no check (``submit``'s fast path).
PLAIN_REFS: dict[object, str] = {}
_REF_CACHE_MAX = 4096


def _check_ref_string(ref: str) -> str:
    module, sep, qualname = ref.partition(":")
    if not sep or not module or not qualname or " " in ref:
        raise ValueError(f"function reference {ref!r} is not of the form 'package.module:qualname'")
    return ref


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _name_of(fn: object) -> str:
    """``"module:qualname"`` of a referenceable callable.

    :raises TypeError: when *fn* cannot be found again by that name.
    """
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    self_obj = getattr(fn, "__self__", None)
    qualname = getattr(fn, "__qualname__", None)
    module_name = getattr(fn, "__module__", None)
    if self_obj is not None and not isinstance(self_obj, type(sys)):
        if isinstance(self_obj, type):  # a classmethod: Class.method
            module_name = self_obj.__module__
            qualname = f"{self_obj.__qualname__}.{getattr(fn, '__name__', '?')}"
        else:
            raise TypeError(
                f"bound method {qualname if qualname else repr(fn)} of a "
                f"{_describe(self_obj)} object cannot be sent to a worker: pass a "
                "module-level function (use functools.partial for arguments)"
            )
    if not isinstance(qualname, str) or not isinstance(module_name, str):
        raise TypeError(
            f"callable object of type {_describe(fn)} cannot be sent to a worker: pass a "
            "module-level function or a 'package.module:qualname' string"
        )
    if "<lambda>" in qualname:
        raise TypeError(
            f"lambda {module_name}.{qualname} cannot be sent to a worker: "
            "define a module-level function instead"
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"local function or closure {module_name}.{qualname} cannot be sent to a worker: "
            "define it at module level"
        )
    module = sys.modules.get(module_name)
    found: object = None
    if module is not None:
        try:
            found = _lookup(module, qualname)
        except AttributeError:
            found = None
    if found is not fn and not (found is not None and found == fn):
        raise TypeError(
            f"{module_name}.{qualname} cannot be sent to a worker: that name does not "
            "lead back to this function in its module"
        )
    if module_name == "__main__" and main_source() is None:
        raise TypeError(
            f"{qualname} is defined in an interactive __main__ that a worker cannot import; "
            "move it to a module"
        )
    return f"{module_name}:{qualname}"


def function_ref(fn: object) -> tuple[str, list[Any], dict[str, Any]]:
    """(reference, bound positional args, bound keyword args) for *fn*.

    :raises TypeError: for lambdas, closures, local functions, bound methods of
        instances, callables that cannot be found by name, and partials whose
        bound arguments are not sendable.
    :raises ValueError: for a string that is not ``"package.module:qualname"``.
    """
    if isinstance(fn, str):
        return _check_ref_string(fn), [], {}
    if isinstance(fn, partial):
        ref, args, kwargs = function_ref(fn.func)
        args = [*args, *fn.args]
        kwargs = {**kwargs, **fn.keywords}
        check_sendable(args, "fn.args")
        check_sendable(kwargs, "fn.keywords")
        return ref, args, kwargs
    try:
        return PLAIN_REFS[fn], [], {}
    except KeyError:
        pass
    except TypeError:  # unhashable callable
        return _name_of(fn), [], {}
    ref = _name_of(fn)
    if len(PLAIN_REFS) >= _REF_CACHE_MAX:
        PLAIN_REFS.clear()
    PLAIN_REFS[fn] = ref
    return ref, [], {}


def main_source() -> tuple[str, str] | None:
    """How a worker finds this process's main script: ``("path", file)`` or
    ``("module", name)`` for ``python -m``; ``None`` when interactive."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name not in ("__main__", "__mp_main__"):
        if name.endswith(".__main__"):
            name = name[: -len(".__main__")]
        return ("module", name)
    path = getattr(main, "__file__", None)
    if isinstance(path, str):
        import os

        return ("path", os.path.abspath(path))
    return None


def resolve_ref(ref: str) -> Any:
    """The object a ``"module:qualname"`` reference names (worker side).

    ``__main__`` is looked up in ``sys.modules`` (the worker maps it to the
    caller's main script, run as ``__mp_main__``).

    :raises ImportError: when the module cannot be imported.
    :raises AttributeError: when the module has no such name.
    """
    module_name, _, qualname = ref.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        module = _import_module(module_name)
    return _lookup(module, qualname)


def _import_module(name: str) -> Any:
    """``importlib.import_module(name)`` for an absolute name, without importing
    :mod:`importlib` (which a starting zygote would pay for).

    :raises ImportError: when the module cannot be imported.
    """
    __import__(name)
    return sys.modules[name]


# -- exceptions ------------------------------------------------------------------


def encode_exception(exc: BaseException) -> ExceptionInfo:
    """``[module, qualname, args | None, message, traceback]`` of *exc*."""
    import traceback

    t = type(exc)
    module = t.__module__
    if module == "__mp_main__":
        module = "__main__"
    args: list[Any] | None = list(exc.args)
    try:
        check_sendable(args, "args")
        encode_body(args)
    except Exception:
        args = None
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {t.__qualname__}>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = f"{t.__qualname__}: {message}\n"
    return [module, t.__qualname__, args, message, tb]


def _exception_class(module_name: str, qualname: str) -> type[Exception] | None:
    if module_name == "builtins":
        cls = getattr(builtins, qualname, None)
    else:
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = _import_module(module_name)
            except Exception:
                return None
        try:
            cls = _lookup(module, qualname)
        except AttributeError:
            return None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


def decode_exception(info: object) -> BaseException:
    """Rebuild the exception an ``ERROR`` message describes.

    Returns the same type when it is a builtin or importable :class:`Exception`
    subclass constructible from its args, else a :class:`TaskError`; either way
    with a :class:`RemoteTraceback` as ``__cause__``.
    """
    if not (isinstance(info, list) and len(info) >= 5):
        return ProtocolError(f"malformed error description: {info!r}")
    module_name, qualname, args, message, tb = info[:5]
    module_name = str(module_name)
    qualname = str(qualname)
    message = str(message)
    exc: BaseException | None = None
    cls = _exception_class(module_name, qualname)
    if cls is not None and isinstance(args, list):
        try:
            exc = cls(*args)
        except Exception:
            exc = None
    if exc is None:
        name = qualname if module_name == "builtins" else f"{module_name}.{qualname}"
        exc = TaskError(name, message)
    exc.__cause__ = RemoteTraceback(str(tb))
    return exc


def call_name(fn: Callable[..., object] | str) -> str:
    """A short printable name of a function or reference (for messages)."""
    if isinstance(fn, str):
        return fn
    return getattr(fn, "__qualname__", None) or repr(fn)

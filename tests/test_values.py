"""Sendable values, function references and remote exceptions (no processes)."""

from __future__ import annotations

import collections
import datetime
import functools
import math
from typing import Any

import pytest

from aioproc import TaskError
from aioproc._errors import RemoteTraceback
from aioproc._values import (
    check_sendable,
    decode_exception,
    encode_exception,
    function_ref,
    pack_checked,
)
from tests import workerfns


def _type_error(value: object, path: str = "args") -> str:
    with pytest.raises(TypeError) as info:
        pack_checked([1, value], value, path)
    return str(info.value)


def test_base_types_and_nesting_are_sendable() -> None:
    check_sendable([None, True, 1, 1.5, "s", b"b", [1], {"k": (1, 2)}, {1: 2, b"x": 3}], "args")


def test_unsendable_value_names_its_type_and_path() -> None:
    when = datetime.datetime(2024, 1, 1)
    message = _type_error((1, {"when": when}))
    assert "datetime.datetime" in message
    assert "args[1]['when']" in message


def test_tuple_dict_key_is_rejected_with_its_path() -> None:
    message = _type_error([{"ok": {(1, 2): "v"}}])
    assert "tuple" in message
    assert "args[0]['ok']" in message


def test_int_past_64_bits_is_rejected_with_its_path() -> None:
    message = _type_error([1, [2**64]])
    assert "args[1][0]" in message
    assert "64 bits" in message


def test_uint64_max_and_int64_min_are_sendable() -> None:
    pack_checked([2**64 - 1, -(2**63)], [2**64 - 1, -(2**63)], "args")


def test_set_and_bytearray_are_not_sendable() -> None:
    assert "set" in _type_error([{1}])
    assert "bytearray" in _type_error([bytearray(b"x")])


def test_subclasses_are_accepted_as_their_base_type() -> None:
    point = collections.namedtuple("point", "x y")
    value = [workerfns.Color.RED, collections.OrderedDict(a=1), point(1, 2)]
    pack_checked(value, value, "args")


def test_self_containing_list_is_rejected_not_recursed_forever() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert "nested too deeply" in _type_error(loop)


def test_module_level_function_is_referenced_by_module_and_qualname() -> None:
    assert function_ref(workerfns.add) == ("tests.workerfns:add", [], {})


def test_builtin_function_is_referenced() -> None:
    assert function_ref(math.sqrt)[0] == "math:sqrt"


def test_classmethod_is_referenced_through_its_class() -> None:
    assert function_ref(workerfns.Local.create)[0] == "tests.workerfns:Local.create"


def test_string_reference_is_taken_as_is() -> None:
    assert function_ref("pkg.mod:fn") == ("pkg.mod:fn", [], {})


def test_malformed_string_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"package\.module:qualname"):
        function_ref("no_colon_here")


def test_partial_is_flattened_into_bound_args_and_keywords() -> None:
    ref = function_ref(functools.partial(functools.partial(workerfns.join, "a"), "b", sep="+"))
    assert ref == ("tests.workerfns:join", ["a", "b"], {"sep": "+"})


def test_partial_with_unsendable_bound_argument_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"fn\.args\[0\]"):
        function_ref(functools.partial(workerfns.echo, object()))


def test_lambda_is_rejected_naming_it() -> None:
    with pytest.raises(TypeError, match="lambda"):
        function_ref(lambda: 1)


def test_local_function_is_rejected_naming_it() -> None:
    def helper() -> None:
        pass

    with pytest.raises(TypeError, match=r"local function.*helper"):
        function_ref(helper)


def test_bound_method_of_an_instance_is_rejected_naming_it() -> None:
    with pytest.raises(TypeError, match=r"bound method Local\.method"):
        function_ref(workerfns.Local().method)


def test_callable_object_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"callable object of type tests\.workerfns\.Adder"):
        function_ref(workerfns.adder)


def _roundtrip(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return decode_exception(encode_exception(caught))


def test_builtin_exception_comes_back_as_itself_with_remote_traceback() -> None:
    rebuilt = _roundtrip(ValueError("bad", 3))
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("bad", 3)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "ValueError: ('bad', 3)" in str(rebuilt.__cause__)


def test_importable_exception_comes_back_as_itself() -> None:
    rebuilt = _roundtrip(workerfns.Custom(4, "four"))
    assert isinstance(rebuilt, workerfns.Custom)
    assert (rebuilt.code, rebuilt.text) == (4, "four")


def test_exception_not_constructible_from_args_becomes_task_error() -> None:
    rebuilt = _roundtrip(workerfns.NeedsKeyword(reason="x"))
    assert isinstance(rebuilt, TaskError)
    assert rebuilt.type_name == "tests.workerfns.NeedsKeyword"
    assert "because x" in str(rebuilt)


def test_system_exit_and_keyboard_interrupt_become_task_error() -> None:
    assert isinstance(_roundtrip(SystemExit(3)), TaskError)
    assert isinstance(_roundtrip(KeyboardInterrupt()), TaskError)


def test_exception_with_unsendable_args_becomes_task_error() -> None:
    rebuilt = _roundtrip(ValueError(object()))
    assert isinstance(rebuilt, TaskError)
    assert rebuilt.type_name == "ValueError"

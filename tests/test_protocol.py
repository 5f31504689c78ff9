"""The frame codec (sans-IO) and the documented wire protocol."""

from __future__ import annotations

import pathlib
import struct

import msgpack
import pytest

from aioproc import ProtocolError, protocol
from aioproc.protocol import Decoder, Kind, encode

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_frame_is_big_endian_length_then_one_msgpack_value() -> None:
    frame = encode([1, "x"])
    body = msgpack.packb([1, "x"])
    assert frame == struct.pack(">I", len(body)) + body


def test_decoder_returns_messages_completed_by_each_chunk() -> None:
    data = encode([1, 2]) + encode({"a": 1})
    decoder = Decoder()
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [[1, 2], {"a": 1}]
    assert decoder.buffered == 0


def test_decoder_splits_several_frames_in_one_chunk() -> None:
    data = b"".join(encode([i]) for i in range(5))
    assert Decoder().feed(data) == [[i] for i in range(5)]


def test_oversize_header_raises_before_any_body_arrives() -> None:
    decoder = Decoder(max_frame=100)
    with pytest.raises(ProtocolError, match="max_frame"):
        decoder.feed(struct.pack(">I", 101))
    assert decoder.buffered == 0


def test_bytes_that_are_not_msgpack_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(struct.pack(">I", 1) + b"\xc1")  # 0xc1 is never used


def test_a_frame_holding_two_values_is_rejected() -> None:
    body = msgpack.packb(1) + msgpack.packb(2)
    with pytest.raises(ProtocolError):
        Decoder().feed(struct.pack(">I", len(body)) + body)


def test_a_broken_decoder_stays_broken() -> None:
    decoder = Decoder(max_frame=10)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 11))
    with pytest.raises(ProtocolError):
        decoder.feed(encode([1]))


def test_a_whole_frame_over_max_frame_is_rejected_even_in_one_chunk() -> None:
    body = msgpack.packb("x" * 20)
    with pytest.raises(ProtocolError, match="max_frame"):
        Decoder(max_frame=10).feed(struct.pack(">I", len(body)) + body)


def test_a_bad_whole_frame_breaks_the_decoder_for_good() -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 1) + b"\xc1")
    with pytest.raises(ProtocolError):
        decoder.feed(encode([1]))


def test_one_whole_frame_after_a_partial_one_completes_both() -> None:
    decoder = Decoder()
    first, second = encode([1, "a"]), encode([2, "b"])
    assert decoder.feed(first[:3]) == []
    assert decoder.feed(first[3:]) == [[1, "a"]]
    assert decoder.feed(second) == [[2, "b"]]
    assert decoder.buffered == 0


def test_arrays_decode_as_lists_and_int_map_keys_are_allowed() -> None:
    (message,) = Decoder().feed(encode({1: [1, 2], b"k": "v"}))
    assert message == {1: [1, 2], b"k": "v"}


def test_tuples_round_trip_through_the_tuple_ext_type() -> None:
    value = (1, [2, (3, "x")], {"t": ()})
    (decoded,) = Decoder().feed(encode(value))
    assert decoded == value
    assert type(decoded[1][1]) is tuple
    packed = protocol.encode_body((1, 2))
    assert msgpack.unpackb(packed) == msgpack.ExtType(protocol.TUPLE_EXT, msgpack.packb([1, 2]))


def test_unknown_ext_type_is_a_protocol_error() -> None:
    body = msgpack.packb(msgpack.ExtType(42, b"zz"))
    with pytest.raises(ProtocolError, match="ext type 42"):
        Decoder().feed(struct.pack(">I", len(body)) + body)


def test_encode_enforces_max_frame() -> None:
    with pytest.raises(ProtocolError, match="max_frame"):
        encode(b"x" * 200, max_frame=100)


def test_encode_rejects_what_msgpack_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode({1, 2})


def test_int_enum_is_encoded_as_a_plain_int() -> None:
    import enum

    class E(enum.IntEnum):
        A = 3

    (decoded,) = Decoder().feed(encode([E.A]))
    assert decoded == [3]
    assert type(decoded[0]) is int


def test_every_message_kind_is_documented() -> None:
    text = DOC.read_text()
    names = [n for n in vars(Kind) if n.isupper()]
    assert len(names) == 15
    for name in names:
        number = getattr(Kind, name)
        assert f"`{name}` ({number})" in text, name


def test_protocol_module_never_imports_anyio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, types; p = types.ModuleType('aioproc'); "
        f"p.__path__ = [{str(DOC.parent.parent / 'aioproc')!r}]; "
        "sys.modules['aioproc'] = p; "
        "import aioproc.protocol; print('anyio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_big_frames_can_be_read_in_place_in_any_split() -> None:
    import random

    messages = [b"x" * 300_000, [1, 2], b"y" * 200_000, "s", {"k": b"z" * 140_000}]
    data = b"".join(encode(m) for m in messages)
    rng = random.Random(7)
    for _ in range(50):
        decoder, out, pos = Decoder(), [], 0
        while pos < len(data):
            view = decoder.read_buffer()
            if view is not None and rng.random() < 0.5:
                n = min(len(view), rng.randint(1, 100_000), len(data) - pos)
                view[:n] = data[pos : pos + n]
                view.release()
                out.extend(decoder.filled(n))
            else:
                n = rng.randint(1, 150_000)
                out.extend(decoder.feed(data[pos : pos + n]))
            pos += n
        assert out == messages

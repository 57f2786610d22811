"""The container's wire work two ways, on the same inputs.

* The Python in runtime/transport.py and runtime/wire.py defines the results and words
  every error; it runs in every install.
* The optional C shortcut (runtime/_wirefast.c, built only where a C compiler was there at
  install time) must give the same frames, bytes and decoded requests wherever it answers,
  and leave everything else to the Python (which then refuses it with the same WireError).

Each test runs the same input through the modules as imported (with the shortcut) and
through fresh copies of them imported with the shortcut blocked, and compares. The tests
skip, saying why, where the extension is not built.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import sys
from types import ModuleType
from typing import Any

import pytest

from schooner.runtime import transport, wire
from schooner.runtime.errors import WireError

fast = pytest.importorskip(
    "schooner.runtime._wirefast", reason="the C extension is not built (no C compiler at install)"
)


def _pure_copy(module: ModuleType) -> ModuleType:
    """``module`` imported again, under another name, with the C shortcut unavailable."""
    name = f"_pure_{module.__name__.replace('.', '_')}"
    saved = sys.modules.get("schooner.runtime._wirefast")
    sys.modules["schooner.runtime._wirefast"] = None  # type: ignore[assignment]  # ImportError
    try:
        spec = importlib.util.spec_from_file_location(name, module.__file__)
        assert spec is not None and spec.loader is not None
        copy = importlib.util.module_from_spec(spec)
        sys.modules[name] = copy  # (dataclasses look their module up while it executes)
        spec.loader.exec_module(copy)
    finally:
        sys.modules["schooner.runtime._wirefast"] = saved  # type: ignore[assignment]
    return copy


pure_wire = _pure_copy(wire)
pure_transport = _pure_copy(transport)


def test_the_modules_use_the_shortcut_and_the_copies_do_not() -> None:
    assert transport.zmtp_bytes is fast.zmtp_join and transport._zmtp_cut is fast.zmtp_cut
    assert wire.stream_bytes is fast.stream_join
    assert wire.encode_predict_response is fast.predict_response
    assert pure_transport._zmtp_cut is None and pure_wire._predict_request is None
    assert pure_wire.encode_packed_response is not fast.packed_response


# --------------------------------------------------------------------------- framing


def _frames(rng: random.Random, count: int) -> list[Any]:
    sizes = [0, 1, 7, 255, 256, 4095, 4096, 70_000]
    out: list[Any] = []
    for _ in range(count):
        data = rng.randbytes(rng.choice(sizes))
        kind = rng.randrange(3)
        out.append(data if kind == 0 else bytearray(data) if kind == 1 else memoryview(data))
    return out


def test_a_message_is_framed_to_the_same_bytes() -> None:
    rng = random.Random(1)
    for count in [0, 1, 2, 6, 30]:
        for _ in range(20):
            frames = _frames(rng, count)
            assert transport.zmtp_bytes(frames) == pure_transport.zmtp_bytes(frames)
            assert wire.stream_bytes(frames) == pure_wire.stream_bytes(frames)
            assert transport.zmtp_bytes(tuple(frames)) == pure_transport.zmtp_bytes(frames)


def test_framing_refuses_what_is_not_a_buffer() -> None:
    for join in (transport.zmtp_bytes, wire.stream_bytes):
        with pytest.raises(TypeError):
            join([b"ok", "text"])
        with pytest.raises(TypeError):
            join(5)


def test_responses_are_the_same_frames() -> None:
    rng = random.Random(2)
    msg_id = struct.pack("<I", 77)
    for count in [0, 1, 3, 64]:
        outputs = [rng.randbytes(rng.choice([0, 3, 300, 5000])) for _ in range(count)]
        for given in (outputs, tuple(outputs), [memoryview(o) for o in outputs]):
            assert wire.encode_predict_response(msg_id, given) == \
                pure_wire.encode_predict_response(msg_id, given)  # fmt: skip
            for status in (None, b"", bytes(range(count)) or b"\x01"):
                assert wire.encode_packed_response(msg_id, given, status) == \
                    pure_wire.encode_packed_response(msg_id, given, status)  # fmt: skip
            assert wire.encode_packed_response(msg_id, given) == \
                pure_wire.encode_packed_response(msg_id, given)  # fmt: skip
    with pytest.raises(TypeError):
        wire.encode_predict_response(msg_id, [b"a", 3])
    with pytest.raises(TypeError):
        wire.encode_packed_response(msg_id, [b"a", None])


# --------------------------------------------------------------------------- cutting ZMTP


def _zmtp_stream(rng: random.Random, messages: int, commands: bool) -> bytes:
    parts: list[bytes] = []
    for _ in range(messages):
        if commands and rng.random() < 0.2:
            parts.append(transport.zmtp_command(b"PING", body=rng.randbytes(rng.randrange(20))))
        frames = [bytes(f) for f in _frames(rng, rng.randrange(1, 12))]
        parts.append(pure_transport.zmtp_bytes(frames))
    return b"".join(parts)


def _feed_all(reader: Any, data: bytes, cuts: list[int]) -> list[Any]:
    """Each chunk's messages (frames as bytes) and commands, or the WireError it raised."""
    seen: list[Any] = []
    start = 0
    for end in [*cuts, len(data)]:
        try:
            messages = reader.feed(data[start:end])
        except WireError as exc:
            seen.append(("error", str(exc)))
            return seen
        seen.append([[bytes(f) for f in m] for m in messages])
        seen.append([(name, bytes(body)) for name, body in reader.commands])
        reader.commands.clear()
        start = end
    seen.append(reader.buffered)
    return seen


@pytest.mark.parametrize("limits", [None, wire.Limits(max_frames=8, max_bytes=10_000)])
def test_the_reader_cuts_the_same_messages_whatever_the_chunking(limits: Any) -> None:
    rng = random.Random(3)
    for _ in range(60):
        data = _zmtp_stream(rng, rng.randrange(1, 12), commands=True)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 8))))
        expected = _feed_all(pure_transport.ZmtpReader(limits), data, cuts)
        assert _feed_all(transport.ZmtpReader(limits), data, cuts) == expected
        # and byte by byte, through every partial frame header
        if len(data) < 3000:
            every = list(range(1, len(data)))
            assert _feed_all(transport.ZmtpReader(limits), data, every) == \
                _feed_all(pure_transport.ZmtpReader(limits), data, every)  # fmt: skip


def test_the_reader_refuses_the_same_way() -> None:
    small = wire.Limits(max_frames=8, max_bytes=1024)
    cases = [
        pure_transport.zmtp_bytes([b"a"] * 9),  # frames past the limit
        pure_transport.zmtp_bytes([b"x" * 200] * 6),  # short frames, bytes past the limit
        pure_transport.zmtp_bytes([b"x" * 600, b"y" * 600]),  # long ones
        pure_transport.zmtp_bytes([b"x" * 1100]),  # one long frame past it
        b"\x03\x00\x00\x00\x00\x00\x00\x00\x05hello\x00\x01!",  # a long frame of 5 bytes
        b"\x01\x01a" + transport.zmtp_command(b"PING"),  # a command inside a message
    ]
    for data in cases:
        for limits in (small, None):
            expected = _feed_all(pure_transport.ZmtpReader(limits), data, [])
            assert _feed_all(transport.ZmtpReader(limits), data, []) == expected
    assert _feed_all(transport.ZmtpReader(small), cases[0], []) == \
        [("error", "a message of more than 8 frames")]  # fmt: skip


def test_zmtp_cut_stops_at_what_it_does_not_take() -> None:
    frames: list[Any] = []
    out: list[Any] = []
    data = b"\x01\x01a\x00\x02bc" + b"\x04\x04PING"
    pos, frames, total = fast.zmtp_cut(data, 0, frames, 0, out, 10, 100)
    assert (pos, frames, total, out) == (7, [], 0, [[b"a", b"bc"]])
    assert fast.zmtp_cut(data, pos, frames, 0, out, 10, 100)[0] == 7  # the command: Python's
    with pytest.raises(TypeError):
        fast.zmtp_cut(bytearray(data), 0, [], 0, [], 10, 100)
    with pytest.raises(ValueError):
        fast.zmtp_cut(data, len(data) + 1, [], 0, [], 10, 100)


# --------------------------------------------------------------------------- decoding


def _request(rng: random.Random, packed: bool, n: int, input_type: int) -> list[Any]:
    inputs = [rng.randbytes(8 * rng.randrange(0, 5)) for _ in range(n)]
    msg_id = rng.randrange(2**32)
    if packed:
        return pure_wire.encode_packed_request(msg_id, wire.InputType(input_type),
                                               [len(i) for i in inputs], b"".join(inputs))  # fmt: skip
    return pure_wire.encode_predict_request(msg_id, wire.InputType(input_type), inputs)


def _decode(module: ModuleType, frames: list[Any]) -> Any:
    try:
        message = module.decode_from_frontend(frames)
    except WireError as exc:
        return ("error", str(exc))
    if type(message).__name__ != "PredictRequest":
        return (type(message).__name__, message.hb_type, message.nonce)
    return (
        message.msg_id, type(message.msg_id), int(message.input_type), message.sizes,
        None if message.inputs is None else [bytes(f) for f in message.inputs],
        None if message.payload is None else bytes(message.payload),
    )  # fmt: skip


def _mutations(rng: random.Random, frames: list[Any]) -> list[list[Any]]:
    """The message as it is, and broken in each of its frames in a few ways."""
    out = [list(frames)]
    for i in range(len(frames)):
        f = bytes(frames[i])
        for changed in (f + b"\x00", f[:-1], b"", rng.randbytes(len(f)),
                        struct.pack("<Q", 2**64 - 1) + f[8:]):  # fmt: skip
            out.append([*frames[:i], changed, *frames[i + 1 :]])
    out.append(frames[:-1])
    out.append([*frames, b"extra"])
    return out


def _as_views(frames: list[Any]) -> list[Any]:
    """The frames as the stream reader gives them: views of one received buffer."""
    data = pure_wire.stream_bytes(frames)
    (message,) = wire.StreamReader().feed(data)
    return message


def test_a_request_decodes_the_same_and_a_broken_one_fails_the_same() -> None:
    rng = random.Random(4)
    compared = decoded = 0
    for packed in (False, True):
        for n in (0, 1, 2, 17):
            for input_type in range(5):
                for frames in _mutations(rng, _request(rng, packed, n, input_type)):
                    for given in (frames, _as_views(frames)):
                        expected = _decode(pure_wire, given)
                        assert _decode(wire, given) == expected, (packed, n, given)
                        compared += 1
                        decoded += expected[0] != "error"
    assert decoded > 100 and compared > decoded  # both kinds were reached


def test_heartbeats_and_sums_that_overflow_are_left_to_python() -> None:
    challenge = pure_wire.encode_auth_challenge(b"n" * 16)
    assert fast.predict_request(challenge) is None
    assert _decode(wire, challenge) == _decode(pure_wire, challenge)
    header = struct.pack("<4Q", 3, 2, 2**63, 2**63)  # sizes whose sum wraps to 0
    frames = [b"", wire._V3, wire._T_CONTENT, b"\0\0\0\1", wire._R_PACKED, header, b""]
    assert fast.predict_request(frames) is None
    assert _decode(wire, frames) == ("error", "packed payload is 0 bytes, header says 18446744073709551616")
    assert fast.predict_request(tuple(frames)) is None  # only a list is looked at


def test_a_packed_responses_texts_decode_the_same() -> None:
    """``PredictResponse.texts`` of a packed response (the frontend's side): one C call,
    the same strings as the Python loop, invalid UTF-8 replaced."""
    pure = pure_wire
    rng = random.Random(7)
    outputs = [b"", b"0", b"3.14", "héllo".encode(), b"a\xff\xfeb", b"\xe2\x82", b"x" * 300]
    for _ in range(50):
        chosen = [rng.choice(outputs) for _ in range(rng.randrange(0, 12))]
        frames = wire.encode_packed_response(b"\0\0\0\7", chosen)
        views = [memoryview(bytes(f)) for f in frames]
        fast_texts = wire.decode_from_container(views).texts()
        assert fast_texts == pure.decode_from_container(views).texts()
        assert fast_texts == [o.decode("utf-8", "replace") for o in chosen]
    with pytest.raises(ValueError):
        fast.packed_texts(b"abc", (2, 2))

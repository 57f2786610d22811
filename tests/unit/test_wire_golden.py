"""Golden bytes for every message of ``schooner.runtime.wire``.

Every expected frame below is a literal written by hand from ``docs/clipper-rpc-v3.md``
(and, for the packed extension, from the wire module's docstring): little-endian, one
integer per frame, u32 = 4 bytes, u64 = 8 bytes. Nothing here is produced by the module
under test, so an encoder and a decoder that agree with each other but not with Clipper
fail these tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from schooner.runtime.errors import SchoonerError, WireError
from schooner.runtime.wire import (
    CAP_PACKED,
    RPC_VERSION,
    Heartbeat,
    HeartbeatReply,
    HeartbeatType,
    InputType,
    MessageType,
    NewContainer,
    PredictRequest,
    PredictResponse,
    RequestType,
    decode_from_container,
    decode_from_frontend,
    encode_heartbeat,
    encode_heartbeat_reply,
    encode_new_container,
    encode_packed_request,
    encode_packed_response,
    encode_predict_request,
    encode_predict_response,
)

# --------------------------------------------------------------------------- literals

DELIM = b""
# u32 frames
U32_0 = b"\x00\x00\x00\x00"
U32_1 = b"\x01\x00\x00\x00"
U32_2 = b"\x02\x00\x00\x00"
U32_3 = b"\x03\x00\x00\x00"
V3 = U32_3  # the RPC version frame
T_NEW, T_CONTENT, T_HEARTBEAT, T_PACKED = U32_0, U32_1, U32_2, U32_3
R_PREDICT, R_FEEDBACK, R_PACKED = U32_0, U32_1, U32_2

# u64 frames / header words
Q0 = b"\x00\x00\x00\x00\x00\x00\x00\x00"
Q1 = b"\x01\x00\x00\x00\x00\x00\x00\x00"
Q2 = b"\x02\x00\x00\x00\x00\x00\x00\x00"
Q3 = b"\x03\x00\x00\x00\x00\x00\x00\x00"
Q4 = b"\x04\x00\x00\x00\x00\x00\x00\x00"
Q5 = b"\x05\x00\x00\x00\x00\x00\x00\x00"
Q6 = b"\x06\x00\x00\x00\x00\x00\x00\x00"
Q8 = b"\x08\x00\x00\x00\x00\x00\x00\x00"
Q9 = b"\x09\x00\x00\x00\x00\x00\x00\x00"
Q12 = b"\x0c\x00\x00\x00\x00\x00\x00\x00"
Q16 = b"\x10\x00\x00\x00\x00\x00\x00\x00"
Q24 = b"\x18\x00\x00\x00\x00\x00\x00\x00"
Q32 = b"\x20\x00\x00\x00\x00\x00\x00\x00"
Q40 = b"\x28\x00\x00\x00\x00\x00\x00\x00"
Q48 = b"\x30\x00\x00\x00\x00\x00\x00\x00"

# element values
F64_1_0 = b"\x00\x00\x00\x00\x00\x00\xf0\x3f"
F64_2_0 = b"\x00\x00\x00\x00\x00\x00\x00\x40"
F64_0_5 = b"\x00\x00\x00\x00\x00\x00\xe0\x3f"
F64_M1_5 = b"\x00\x00\x00\x00\x00\x00\xf8\xbf"
F32_1_5 = b"\x00\x00\xc0\x3f"
F32_M2_0 = b"\x00\x00\x00\xc0"
F32_0_25 = b"\x00\x00\x80\x3e"
F32_3_0 = b"\x00\x00\x40\x40"
I32_1 = b"\x01\x00\x00\x00"
I32_M2 = b"\xfe\xff\xff\xff"
I32_MAX = b"\xff\xff\xff\x7f"

MSG_7 = b"\x07\x00\x00\x00"
MSG_9 = b"\x09\x00\x00\x00"
MSG_01020304 = b"\x04\x03\x02\x01"  # 0x01020304, little-endian


def as_bytes(frames: Sequence[object]) -> list[bytes]:
    """Frames may be bytes, bytearray or memoryview; compare them as bytes."""
    return [bytes(f) for f in frames]  # type: ignore[call-overload]


# --------------------------------------------------------------------------- constants


def test_protocol_constants_match_the_document() -> None:
    assert RPC_VERSION == 3
    assert (MessageType.NEW_CONTAINER, MessageType.CONTAINER_CONTENT, MessageType.HEARTBEAT) == (
        0,
        1,
        2,
    )
    assert (HeartbeatType.KEEP_ALIVE, HeartbeatType.REQUEST_CONTAINER_METADATA) == (0, 1)
    assert (RequestType.PREDICT, RequestType.FEEDBACK) == (0, 1)
    assert [int(t) for t in InputType] == [0, 1, 2, 3, 4]
    assert [t.clipper_name for t in InputType] == ["bytes", "ints", "floats", "doubles", "strings"]
    assert CAP_PACKED == 1


def test_input_type_element_types() -> None:
    assert InputType.BYTES.dtype == np.dtype(np.int8)
    assert InputType.INTS.dtype == np.dtype("<i4")
    assert InputType.FLOATS.dtype == np.dtype("<f4")
    assert InputType.DOUBLES.dtype == np.dtype("<f8")
    assert InputType.STRINGS.dtype is None


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("b", InputType.BYTES), ("bytes", InputType.BYTES), ("0", InputType.BYTES),
        ("i", InputType.INTS), ("ints", InputType.INTS), ("1", InputType.INTS),
        ("f", InputType.FLOATS), ("floats", InputType.FLOATS), ("2", InputType.FLOATS),
        ("d", InputType.DOUBLES), ("doubles", InputType.DOUBLES), ("3", InputType.DOUBLES),
        ("s", InputType.STRINGS), ("strings", InputType.STRINGS), ("4", InputType.STRINGS),
        ("DOUBLES", InputType.DOUBLES), (" Strings ", InputType.STRINGS),
        (3, InputType.DOUBLES), (0, InputType.BYTES), (InputType.INTS, InputType.INTS),
    ],
)  # fmt: skip
def test_input_type_parse_accepts_clipper_names_and_aliases(
    alias: str | int | InputType, expected: InputType
) -> None:
    assert InputType.parse(alias) is expected


@pytest.mark.parametrize("bad", ["complex", "", "doublez", "5", 5, -1])
def test_input_type_parse_rejects_unknown_names(bad: str | int) -> None:
    with pytest.raises(ValueError):
        InputType.parse(bad)


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_golden() -> None:
    golden = [DELIM, b"\x02\x00\x00\x00"]
    assert as_bytes(encode_heartbeat()) == golden
    assert decode_from_container(golden) == Heartbeat()


@pytest.mark.parametrize(
    ("hb_type", "golden"),
    [
        (HeartbeatType.KEEP_ALIVE, [DELIM, V3, T_HEARTBEAT, b"\x00\x00\x00\x00"]),
        (HeartbeatType.REQUEST_CONTAINER_METADATA, [DELIM, V3, T_HEARTBEAT, b"\x01\x00\x00\x00"]),
    ],
)
def test_heartbeat_reply_golden(hb_type: HeartbeatType, golden: list[bytes]) -> None:
    assert as_bytes(encode_heartbeat_reply(hb_type)) == golden
    assert decode_from_frontend(golden) == HeartbeatReply(hb_type)


# --------------------------------------------------------------------------- NewContainer


def test_new_container_plain_golden() -> None:
    golden = [DELIM, T_NEW, b"sum-model", b"1", b"3", b"\x03\x00\x00\x00"]
    assert as_bytes(encode_new_container("sum-model", "1", InputType.DOUBLES)) == golden
    assert decode_from_container(golden) == NewContainer("sum-model", "1", InputType.DOUBLES, 0)


def test_new_container_with_capabilities_golden() -> None:
    # The version frame grows to 8 bytes: u32 3 | u32 capabilities.
    version_and_caps = b"\x03\x00\x00\x00\x01\x00\x00\x00"
    golden = [DELIM, T_NEW, b"m\xc3\xa9t\xc3\xa9o", b"v2", b"4", version_and_caps]
    encoded = encode_new_container("météo", "v2", InputType.STRINGS, capabilities=CAP_PACKED)
    assert as_bytes(encoded) == golden
    decoded = decode_from_container(golden)
    assert decoded == NewContainer("météo", "v2", InputType.STRINGS, CAP_PACKED)
    # What a plain Clipper frontend sees: the first u32 of the last frame is still 3.
    assert golden[-1][:4] == b"\x03\x00\x00\x00"


@pytest.mark.parametrize(
    ("input_type", "digit"),
    [(InputType.BYTES, b"0"), (InputType.INTS, b"1"), (InputType.FLOATS, b"2"),
     (InputType.DOUBLES, b"3"), (InputType.STRINGS, b"4")],
)  # fmt: skip
def test_new_container_input_type_is_a_decimal_string(input_type: InputType, digit: bytes) -> None:
    assert as_bytes(encode_new_container("m", "7", input_type))[4] == digit
    decoded = decode_from_container([DELIM, T_NEW, b"m", b"7", digit, V3])
    assert isinstance(decoded, NewContainer) and decoded.input_type is input_type


# --------------------------------------------------------------------------- plain requests

PLAIN_REQUESTS = {
    "bytes": (
        1,
        InputType.BYTES,
        [b"\x00\xff\x10", b"\x7f"],
        [DELIM, V3, T_CONTENT, b"\x01\x00\x00\x00", R_PREDICT, Q32,
         Q0 + Q2 + Q3 + Q1, b"\x00\xff\x10", b"\x7f"],
    ),
    "ints": (
        2,
        InputType.INTS,
        [I32_1 + I32_M2, I32_MAX],
        [DELIM, V3, T_CONTENT, b"\x02\x00\x00\x00", R_PREDICT, Q32,
         Q1 + Q2 + Q8 + b"\x04\x00\x00\x00\x00\x00\x00\x00", I32_1 + I32_M2, I32_MAX],
    ),
    "floats": (
        3,
        InputType.FLOATS,
        [F32_1_5, F32_M2_0 + F32_0_25 + F32_3_0],
        [DELIM, V3, T_CONTENT, b"\x03\x00\x00\x00", R_PREDICT, Q32,
         Q2 + Q2 + b"\x04\x00\x00\x00\x00\x00\x00\x00" + Q12, F32_1_5,
         F32_M2_0 + F32_0_25 + F32_3_0],
    ),
    "doubles": (
        7,
        InputType.DOUBLES,
        [F64_1_0 + F64_2_0, F64_0_5, F64_M1_5],
        [DELIM, V3, T_CONTENT, MSG_7, R_PREDICT, Q40,
         Q3 + Q3 + Q16 + Q8 + Q8, F64_1_0 + F64_2_0, F64_0_5, F64_M1_5],
    ),
    "strings": (
        0x01020304,
        InputType.STRINGS,
        [b"h\xc3\xa9llo", b"", b"ok"],
        [DELIM, V3, T_CONTENT, MSG_01020304, R_PREDICT, Q40,
         Q4 + Q3 + Q6 + Q0 + Q2, b"h\xc3\xa9llo", b"", b"ok"],
    ),
    "doubles-batch-of-one": (
        0xFFFFFFFF,
        InputType.DOUBLES,
        [F64_0_5],
        [DELIM, V3, T_CONTENT, b"\xff\xff\xff\xff", R_PREDICT, Q24, Q3 + Q1 + Q8, F64_0_5],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PLAIN_REQUESTS))
def test_plain_request_golden(case: str) -> None:
    msg_id, input_type, inputs, golden = PLAIN_REQUESTS[case]
    assert as_bytes(encode_predict_request(msg_id, input_type, inputs)) == golden


@pytest.mark.parametrize("case", sorted(PLAIN_REQUESTS))
def test_plain_request_decodes(case: str) -> None:
    msg_id, input_type, inputs, golden = PLAIN_REQUESTS[case]
    decoded = decode_from_frontend(golden)
    assert isinstance(decoded, PredictRequest)
    assert not decoded.packed
    assert decoded.id == msg_id
    assert decoded.msg_id == golden[3]
    assert decoded.input_type is input_type
    assert tuple(decoded.sizes) == tuple(len(i) for i in inputs)
    assert decoded.inputs is not None and as_bytes(decoded.inputs) == inputs


@pytest.mark.parametrize("case", sorted(PLAIN_REQUESTS))
def test_plain_request_decodes_zero_copy_frames(case: str) -> None:
    # A container may hand the decoder memoryviews of its receive buffers.
    msg_id, input_type, inputs, golden = PLAIN_REQUESTS[case]
    decoded = decode_from_frontend([memoryview(f) for f in golden])
    assert isinstance(decoded, PredictRequest)
    assert decoded.id == msg_id and decoded.input_type is input_type
    assert decoded.inputs is not None and as_bytes(decoded.inputs) == inputs


def test_replies_decode_from_zero_copy_frames() -> None:
    reply = [DELIM, V3, T_HEARTBEAT, U32_1]
    assert decode_from_frontend([memoryview(f) for f in reply]) == HeartbeatReply(
        HeartbeatType.REQUEST_CONTAINER_METADATA
    )
    response = [DELIM, T_CONTENT, MSG_7, Q24, Q2 + Q3 + Q3, b"3.0", b"0.5"]
    decoded = decode_from_container([memoryview(f) for f in response])
    assert isinstance(decoded, PredictResponse) and decoded.texts() == ["3.0", "0.5"]
    new = [DELIM, T_NEW, b"m", b"1", b"3", V3 + U32_1]
    assert decode_from_container([memoryview(f) for f in new]) == NewContainer(
        "m", "1", InputType.DOUBLES, CAP_PACKED
    )


def test_plain_request_values_read_back_as_numbers() -> None:
    decoded = decode_from_frontend(PLAIN_REQUESTS["doubles"][3])
    assert isinstance(decoded, PredictRequest) and decoded.inputs is not None
    arrays = [np.frombuffer(i, dtype=decoded.input_type.dtype) for i in decoded.inputs]
    assert [a.tolist() for a in arrays] == [[1.0, 2.0], [0.5], [-1.5]]
    decoded = decode_from_frontend(PLAIN_REQUESTS["ints"][3])
    assert isinstance(decoded, PredictRequest) and decoded.inputs is not None
    assert [np.frombuffer(i, dtype="<i4").tolist() for i in decoded.inputs] == [
        [1, -2],
        [2147483647],
    ]


def test_plain_request_accepts_memoryviews_without_changing_bytes() -> None:
    _, input_type, inputs, golden = PLAIN_REQUESTS["doubles"]
    views = [memoryview(i) for i in inputs]
    assert as_bytes(encode_predict_request(7, input_type, views)) == golden


# --------------------------------------------------------------------------- plain responses


def test_plain_response_golden_has_no_input_type_field() -> None:
    outputs = [b"3.0", b"0.5", b'{"a": 1}']
    # header = [N, len_0 .. len_{N-1}], H = 8 * (N + 1) = 32
    golden = [DELIM, T_CONTENT, MSG_7, Q32, Q3 + Q3 + Q3 + Q8, b"3.0", b"0.5", b'{"a": 1}']
    assert as_bytes(encode_predict_response(MSG_7, outputs)) == golden
    decoded = decode_from_container(golden)
    assert isinstance(decoded, PredictResponse)
    assert not decoded.packed
    assert decoded.id == 7 and decoded.msg_id == MSG_7
    assert tuple(decoded.lengths) == (3, 3, 8)
    assert decoded.texts() == ["3.0", "0.5", '{"a": 1}']
    assert decoded.error_flags() == [False, False, False]


def test_plain_response_batch_of_one_echoes_the_raw_id() -> None:
    golden = [DELIM, T_CONTENT, MSG_01020304, Q16, Q1 + Q5, b"h\xc3\xa9ll"]
    assert as_bytes(encode_predict_response(MSG_01020304, [b"h\xc3\xa9ll"])) == golden
    decoded = decode_from_container(golden)
    assert isinstance(decoded, PredictResponse)
    assert decoded.id == 0x01020304
    assert decoded.texts() == ["héll"]


def test_plain_response_empty_batch() -> None:
    golden = [DELIM, T_CONTENT, MSG_9, Q8, Q0]
    assert as_bytes(encode_predict_response(MSG_9, [])) == golden
    decoded = decode_from_container(golden)
    assert isinstance(decoded, PredictResponse) and decoded.texts() == []


def test_response_texts_replace_invalid_utf8() -> None:
    decoded = decode_from_container([DELIM, T_CONTENT, MSG_7, Q16, Q1 + Q2, b"a\xff"])
    assert isinstance(decoded, PredictResponse)
    assert decoded.texts() == ["a\ufffd"]


# --------------------------------------------------------------------------- packed extension

PAYLOAD_24 = F64_1_0 + F64_2_0 + F64_0_5


def test_packed_request_golden() -> None:
    golden = [DELIM, V3, T_CONTENT, MSG_9, R_PACKED, Q3 + Q2 + Q16 + Q8, PAYLOAD_24]
    encoded = encode_packed_request(9, InputType.DOUBLES, [16, 8], PAYLOAD_24)
    assert as_bytes(encoded) == golden
    decoded = decode_from_frontend(golden)
    assert isinstance(decoded, PredictRequest)
    assert decoded.packed and decoded.inputs is None
    assert decoded.id == 9 and decoded.input_type is InputType.DOUBLES
    assert tuple(decoded.sizes) == (16, 8)
    assert decoded.payload is not None and bytes(decoded.payload) == PAYLOAD_24


def test_packed_request_strings_golden() -> None:
    golden = [DELIM, V3, T_CONTENT, MSG_01020304, R_PACKED, Q4 + Q3 + Q6 + Q0 + Q2,
              b"h\xc3\xa9llook"]  # fmt: skip
    encoded = encode_packed_request(0x01020304, InputType.STRINGS, [6, 0, 2], b"h\xc3\xa9llook")
    assert as_bytes(encoded) == golden


def test_packed_response_golden_with_status() -> None:
    golden = [DELIM, T_PACKED, MSG_9, Q2 + Q3 + Q5, b"\x00\x01", b"3.0boom!"]
    encoded = encode_packed_response(MSG_9, [b"3.0", b"boom!"], b"\x00\x01")
    assert as_bytes(encoded) == golden
    decoded = decode_from_container(golden)
    assert isinstance(decoded, PredictResponse)
    assert decoded.packed and decoded.outputs is None
    assert decoded.id == 9 and tuple(decoded.lengths) == (3, 5)
    assert decoded.texts() == ["3.0", "boom!"]
    assert decoded.error_flags() == [False, True]


def test_packed_response_default_status_is_all_ok() -> None:
    golden = [DELIM, T_PACKED, MSG_7, Q3 + Q1 + Q0 + Q2, b"\x00\x00\x00", b"aok"]
    assert as_bytes(encode_packed_response(MSG_7, [b"a", b"", b"ok"])) == golden
    decoded = decode_from_container(golden)
    assert isinstance(decoded, PredictResponse)
    assert decoded.texts() == ["a", "", "ok"]
    assert decoded.error_flags() == [False, False, False]


# --------------------------------------------------------------------------- malformed input

GOOD_REQUEST = PLAIN_REQUESTS["doubles"][3]

MALFORMED_FROM_FRONTEND = {
    "no frames": [],
    "too few frames": [DELIM, V3],
    "non-empty delimiter": [b"\x00", V3, T_HEARTBEAT, U32_0],
    "wrong rpc version (2)": [DELIM, U32_2, T_HEARTBEAT, U32_0],
    "wrong rpc version on a request": [DELIM, b"\x04\x00\x00\x00", *GOOD_REQUEST[2:]],
    "rpc version frame of 3 bytes": [DELIM, b"\x03\x00\x00", T_HEARTBEAT, U32_0],
    "rpc version frame of 8 bytes": [DELIM, V3 + U32_1, T_HEARTBEAT, U32_0],
    "heartbeat reply with an extra frame": [DELIM, V3, T_HEARTBEAT, U32_0, U32_0],
    "heartbeat reply without its type": [DELIM, V3, T_HEARTBEAT],
    "unknown heartbeat type": [DELIM, V3, T_HEARTBEAT, b"\x07\x00\x00\x00"],
    "NewContainer type from the frontend": [DELIM, V3, T_NEW, U32_0],
    "unknown message type": [DELIM, V3, b"\x09\x00\x00\x00", U32_0],
    "feedback request": [DELIM, V3, T_CONTENT, MSG_7, R_FEEDBACK, *GOOD_REQUEST[5:]],
    "unknown request type": [DELIM, V3, T_CONTENT, MSG_7, b"\x05\x00\x00\x00", *GOOD_REQUEST[5:]],
    "request cut after the request type": [DELIM, V3, T_CONTENT, MSG_7, R_PREDICT],
    "request without header": [DELIM, V3, T_CONTENT, MSG_7, R_PREDICT, Q40],
    "message id of 3 bytes": [DELIM, V3, T_CONTENT, b"\x07\x00\x00", *GOOD_REQUEST[4:]],
    "header size larger than the header": [*GOOD_REQUEST[:5], Q48, *GOOD_REQUEST[6:]],
    "header size smaller than the header": [*GOOD_REQUEST[:5], Q32, *GOOD_REQUEST[6:]],
    "header size frame of 4 bytes": [*GOOD_REQUEST[:5], b"\x28\x00\x00\x00", *GOOD_REQUEST[6:]],
    "header not a multiple of 8": [*GOOD_REQUEST[:5], Q4, b"\x03\x00\x00\x00"],
    "header N larger than the sizes listed": [*GOOD_REQUEST[:5], Q40, Q3 + Q4 + Q16 + Q8 + Q8,
                                              *GOOD_REQUEST[7:]],
    "header with only the input type": [*GOOD_REQUEST[:5], Q8, Q3],
    "unknown input type": [*GOOD_REQUEST[:5], Q24, Q9 + Q1 + Q8, F64_0_5],
    "more input frames than the header": [*GOOD_REQUEST, F64_0_5],
    "fewer input frames than the header": GOOD_REQUEST[:-1],
    "input size differs from the header": [*GOOD_REQUEST[:7], F64_1_0, F64_0_5, F64_M1_5],
    "packed request with an extra frame": [DELIM, V3, T_CONTENT, MSG_9, R_PACKED,
                                           Q3 + Q2 + Q16 + Q8, PAYLOAD_24, b""],
    "packed payload shorter than the header": [DELIM, V3, T_CONTENT, MSG_9, R_PACKED,
                                               Q3 + Q2 + Q16 + Q8, PAYLOAD_24[:-1]],
    "packed header N mismatch": [DELIM, V3, T_CONTENT, MSG_9, R_PACKED,
                                 Q3 + Q3 + Q16 + Q8, PAYLOAD_24],
    "packed unknown input type": [DELIM, V3, T_CONTENT, MSG_9, R_PACKED, Q5 + Q1 + Q8, F64_0_5],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED_FROM_FRONTEND))
def test_decode_from_frontend_rejects(case: str) -> None:
    with pytest.raises(WireError):
        decode_from_frontend(MALFORMED_FROM_FRONTEND[case])


GOOD_RESPONSE = [DELIM, T_CONTENT, MSG_7, Q24, Q2 + Q3 + Q3, b"3.0", b"0.5"]

MALFORMED_FROM_CONTAINER = {
    "no frames": [],
    "only the delimiter": [DELIM],
    "non-empty delimiter": [b"x", T_HEARTBEAT],
    "message type frame of 2 bytes": [DELIM, b"\x02\x00"],
    "unknown message type": [DELIM, b"\x09\x00\x00\x00"],
    "NewContainer without the rpc version frame": [DELIM, T_NEW, b"m", b"1", b"3"],
    "NewContainer with an extra frame": [DELIM, T_NEW, b"m", b"1", b"3", V3, V3],
    "NewContainer with rpc version 2": [DELIM, T_NEW, b"m", b"1", b"3", U32_2],
    "NewContainer with rpc version 2 and capabilities": [DELIM, T_NEW, b"m", b"1", b"3",
                                                         U32_2 + U32_1],
    "NewContainer version frame of 5 bytes": [DELIM, T_NEW, b"m", b"1", b"3", V3 + b"\x01"],
    "NewContainer version frame of 2 bytes": [DELIM, T_NEW, b"m", b"1", b"3", b"\x03\x00"],
    "NewContainer unknown input type": [DELIM, T_NEW, b"m", b"1", b"9", V3],
    "NewContainer input type not a number": [DELIM, T_NEW, b"m", b"1", b"doubles", V3],
    "NewContainer input type as a u32": [DELIM, T_NEW, b"m", b"1", U32_3, V3],
    "NewContainer empty name": [DELIM, T_NEW, b"", b"1", b"3", V3],
    "NewContainer empty version": [DELIM, T_NEW, b"m", b"", b"3", V3],
    "NewContainer name not UTF-8": [DELIM, T_NEW, b"\xff\xfe", b"1", b"3", V3],
    "response cut after the header size": GOOD_RESPONSE[:4],
    "response message id of 8 bytes": [DELIM, T_CONTENT, MSG_7 + MSG_7, *GOOD_RESPONSE[3:]],
    "response header size mismatch": [DELIM, T_CONTENT, MSG_7, Q32, *GOOD_RESPONSE[4:]],
    "response header size frame of 4 bytes": [DELIM, T_CONTENT, MSG_7, b"\x18\x00\x00\x00",
                                              *GOOD_RESPONSE[4:]],
    "response empty header": [DELIM, T_CONTENT, MSG_7, Q0, b""],
    "response header N mismatch": [DELIM, T_CONTENT, MSG_7, Q24, Q3 + Q3 + Q3,
                                   *GOOD_RESPONSE[5:]],
    # a request-style header ([input_type, N, len..]) is not a v3 response header
    "response header with an input-type field": [DELIM, T_CONTENT, MSG_7, Q32,
                                                 Q3 + Q2 + Q3 + Q3, b"3.0", b"0.5"],
    "response with more outputs than the header": [*GOOD_RESPONSE, b"x"],
    "response with fewer outputs than the header": GOOD_RESPONSE[:-1],
    "response output length differs from the header": [*GOOD_RESPONSE[:5], b"3.0", b"0.55"],
    "packed response with 5 frames": [DELIM, T_PACKED, MSG_9, Q2 + Q3 + Q5, b"\x00\x00"],
    "packed response with 7 frames": [DELIM, T_PACKED, MSG_9, Q2 + Q3 + Q5, b"\x00\x00",
                                      b"3.0boom!", b""],
    "packed status shorter than N": [DELIM, T_PACKED, MSG_9, Q2 + Q3 + Q5, b"\x00", b"3.0boom!"],
    "packed payload longer than the header": [DELIM, T_PACKED, MSG_9, Q2 + Q3 + Q5, b"\x00\x00",
                                              b"3.0boom!!"],
    "packed header N mismatch": [DELIM, T_PACKED, MSG_9, Q1 + Q3 + Q5, b"\x00\x00", b"3.0boom!"],
    "packed message id of 3 bytes": [DELIM, T_PACKED, b"\x09\x00\x00", Q2 + Q3 + Q5,
                                     b"\x00\x00", b"3.0boom!"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED_FROM_CONTAINER))
def test_decode_from_container_rejects(case: str) -> None:
    with pytest.raises(WireError):
        decode_from_container(MALFORMED_FROM_CONTAINER[case])


def test_good_references_of_the_malformed_cases_do_decode() -> None:
    # The malformed cases above are built from these; make sure they are valid themselves.
    assert isinstance(decode_from_frontend(GOOD_REQUEST), PredictRequest)
    assert isinstance(decode_from_container(GOOD_RESPONSE), PredictResponse)


def test_wire_error_is_a_value_error_in_the_tree() -> None:
    with pytest.raises(WireError) as info:
        decode_from_container([DELIM, b"\x09\x00\x00\x00"])
    assert isinstance(info.value, SchoonerError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("position", [0, 31, 63])
@pytest.mark.parametrize("view", [False, True], ids=["bytes", "memoryview"])
def test_plain_decode_names_the_input_whose_size_is_wrong(position: int, view: bool) -> None:
    """The size check runs in one C-level pass; a mismatch anywhere is still a WireError that
    says which input and both sizes."""
    inputs = [bytes(800)] * 64
    frames: list = encode_predict_request(9, InputType.DOUBLES, inputs)
    frames[7 + position] = bytes(792)  # the header still says 800
    if view:
        frames = [memoryview(f) for f in frames]
    with pytest.raises(WireError, match=f"input {position} is 792 bytes, header says 800"):
        decode_from_frontend(frames)
    frames[7 + position] = bytes(800)
    assert decode_from_frontend(frames).sizes == (800,) * 64
    with pytest.raises(WireError, match="announces 64 inputs, message carries 63"):
        decode_from_frontend(frames[:-1])

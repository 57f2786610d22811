"""Hypothesis over the real RPC v3 decoders: any frames a peer sends decode to a message or
raise WireError, never anything else, and what decodes re-encodes to the same frames."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from schooner.runtime import wire
from schooner.runtime.errors import WireError

# Frames built from the pieces a real message has (u32 fields, small blobs) and arbitrary
# bytes, so that the search reaches past the first length check.
u32 = st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: struct.pack("<I", n))
small_u32 = st.integers(min_value=0, max_value=8).map(lambda n: struct.pack("<I", n))
frame = st.one_of(st.binary(max_size=64), u32, small_u32, st.just(b""))
frames = st.lists(frame, max_size=12).map(lambda fs: [b"", *fs])


@settings(max_examples=400, deadline=None)
@given(frames)
def test_frames_from_a_container_decode_or_raise_wire_error(message: list[bytes]) -> None:
    try:
        decoded = wire.decode_from_container(message)
    except WireError:
        return
    assert decoded is not None


@settings(max_examples=400, deadline=None)
@given(frames)
def test_frames_from_a_frontend_decode_or_raise_wire_error(message: list[bytes]) -> None:
    try:
        decoded = wire.decode_from_frontend(message)
    except WireError:
        return
    assert decoded is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=32), min_size=1, max_size=16))
def test_a_plain_response_round_trips(outputs: list[bytes]) -> None:
    msg_id = struct.pack("<I", 7)
    encoded = wire.encode_predict_response(msg_id, outputs)
    decoded = wire.decode_from_container(encoded)
    assert isinstance(decoded, wire.PredictResponse)
    assert [bytes(o) for o in decoded.outputs or []] == outputs

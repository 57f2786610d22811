"""Clipper RPC v3 on the wire: frames <-> typed messages, and nothing else.

No sockets live here. Every function takes or returns the list of frames a ZeroMQ
DEALER sees (the leading empty delimiter included); the ROUTER side adds or strips
its routing identity itself. The protocol is written down in ``docs/clipper-rpc-v3.md``.

Schooner extension, "packed batches" (capability bit ``CAP_PACKED``)
--------------------------------------------------------------------
Plain v3 spends one frame per input and per output. A Schooner container announces
that it can do better by sending its NewContainer RPC-version frame as 8 bytes,
``u32 3 | u32 capabilities``; Clipper's frontend reads only the first ``u32`` of that
frame, so it still sees version 3 and registers the container as usual. Only a
frontend that understood the capability sends the packed messages below, so a plain
v3 peer never receives one:

* packed request, frontend -> container:
  ``"" | u32 3 | u32 1 | u32 msg_id | u32 2 | header | payload``
  header is ``[input_type, N, size_0 .. size_{N-1}]`` as u64 (as in v3); payload is the
  N inputs back to back.
* packed response, container -> frontend:
  ``"" | u32 3 | msg_id | header | status | payload``
  header is ``[N, len_0 .. len_{N-1}]`` as u64, status is N bytes (``0`` ok, ``1`` the
  output is an error message), payload the N UTF-8 outputs back to back.

Both move a whole batch in a constant number of frames, so the payload can be a
zero-copy view of one buffer.

Schooner extension, "stream framing" (the local transport)
----------------------------------------------------------
Between a frontend and a Schooner container on the same machine the same messages can
travel over a Unix stream socket instead of ZeroMQ (no I/O threads between the two
processes: one write and one wake-up per message). A stream carries no frame boundaries,
so each message is written as ``u32 n | u32 len_0 .. len_{n-1} | frame_0 .. frame_{n-1}``
(little endian, the frames exactly as a DEALER would see them). ``stream_header`` writes
that prefix; ``StreamReader`` cuts a received byte stream back into messages.

Schooner extension, "authenticated registration" (capability bit ``CAP_AUTH``)
--------------------------------------------------------------------------------
A container that was given the cluster's secret (``SCHOONER_RPC_SECRET``) sets ``CAP_AUTH``
in its NewContainer capabilities. A frontend that holds a secret does not register such a
container at once; it answers with a challenge, a heartbeat reply of a type only a
``CAP_AUTH`` container is ever sent:

* challenge, frontend -> container: ``"" | u32 3 | u32 2 | u32 2 | nonce`` (16 to 64 random
  bytes, fresh for every challenge);
* answer, container -> frontend: ``"" | u32 4 | mac``, where ``mac`` is the 32-byte
  HMAC-SHA256 of the cluster secret over ``AUTH_CONTEXT | nonce`` and the NewContainer's
  name, version, input type and capability frames, each preceded by its length as a u32
  (``auth_mac``). The secret itself never travels.

The frontend registers the container only when the mac is right (compared in constant
time). A frontend without a secret registers a ``CAP_AUTH`` container as any other; a
Clipper frontend reads only the first ``u32`` of the capability frame, so it never sends a
challenge either. A plain v3 container (no ``CAP_AUTH``) cannot authenticate: a frontend
with a secret refuses it unless the operator allowed unauthenticated containers.

Limits (everything a peer controls is bounded)
----------------------------------------------
``Limits`` holds the bounds a receiver applies before it decodes a message: frames per
message and bytes per message (``DEFAULT_MAX_FRAMES``, ``DEFAULT_MAX_MESSAGE_BYTES``), so
a peer cannot make a receiver build millions of frame objects or buffer gigabytes. Model
names and versions are at most ``MAX_NAME_BYTES`` bytes (checked by
``decode_from_container``). ``excerpt`` shortens anything a peer sent before it is logged.

The container's side in C
-------------------------
Where the optional extension is built (runtime/_wirefast.c), ``decode_from_frontend`` hands
a well-formed prediction request to one C call first, and ``encode_predict_response``,
``encode_packed_response`` and ``stream_bytes`` are C functions giving the same frames and
bytes; on the frontend's side ``PredictResponse.texts`` decodes a packed response's outputs
in one C call. The Python here stays the definition: it decodes everything the C call leaves to it
and words every error.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from schooner.runtime.errors import WireError

try:  # the optional C shortcut (runtime/_wirefast.c): the same results where it answers
    from schooner.runtime._wirefast import packed_response as _packed_response
    from schooner.runtime._wirefast import packed_texts as _packed_texts
    from schooner.runtime._wirefast import predict_request as _predict_request
    from schooner.runtime._wirefast import predict_response as _predict_response
    from schooner.runtime._wirefast import stream_join as _stream_join
except ImportError:
    _packed_response = _predict_request = _predict_response = _stream_join = None
    _packed_texts = None

__all__ = [
    "RPC_VERSION",
    "CAP_PACKED",
    "SCHOONER_CAPABILITIES",
    "MessageType",
    "HeartbeatType",
    "RequestType",
    "InputType",
    "DTYPES",
    "Heartbeat",
    "HeartbeatReply",
    "NewContainer",
    "PredictRequest",
    "PredictResponse",
    "encode_heartbeat",
    "encode_heartbeat_reply",
    "encode_new_container",
    "encode_predict_request",
    "encode_packed_request",
    "encode_predict_response",
    "encode_packed_response",
    "decode_from_frontend",
    "decode_from_container",
    "stream_header",
    "stream_bytes",
    "StreamReader",
    "CAP_AUTH",
    "AUTH_CONTEXT",
    "AuthResponse",
    "Limits",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_NAME_BYTES",
    "auth_mac",
    "encode_auth_challenge",
    "encode_auth_response",
    "excerpt",
]

RPC_VERSION = 3
CAP_PACKED = 1
CAP_AUTH = 2  # the container holds the cluster secret and answers a challenge
SCHOONER_CAPABILITIES = CAP_PACKED
AUTH_CONTEXT = b"schooner-rpc-auth-v1\0"
NONCE_MIN_BYTES, NONCE_MAX_BYTES, MAC_BYTES = 16, 64, 32

# Bounds a receiver applies to every message (``Limits``); see the module docstring.
DEFAULT_MAX_FRAMES = 65_536
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_NAME_BYTES = 255  # a model name or version in NewContainer
_EXCERPT = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may hold: at most ``max_frames`` frames and ``max_bytes`` bytes."""

    max_frames: int = DEFAULT_MAX_FRAMES
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_frames < 8 or self.max_bytes < 1024:
            raise ValueError("a message must be allowed at least 8 frames and 1024 bytes")


def excerpt(data: bytes | bytearray | memoryview | str, limit: int = _EXCERPT) -> str:
    """``data`` for a log line: at most ``limit`` characters, with the full length if cut."""
    text = data if isinstance(data, str) else bytes(data[: limit + 1]).decode("utf-8", "replace")
    size = len(data)
    if size <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({size} {'characters' if isinstance(data, str) else 'bytes'})"


class MessageType(IntEnum):
    NEW_CONTAINER = 0
    CONTAINER_CONTENT = 1
    HEARTBEAT = 2
    PACKED_CONTENT = 3  # Schooner extension, container -> frontend only
    AUTH_RESPONSE = 4  # Schooner extension (CAP_AUTH), container -> frontend only


class HeartbeatType(IntEnum):
    KEEP_ALIVE = 0
    REQUEST_CONTAINER_METADATA = 1
    AUTH_CHALLENGE = 2  # Schooner extension, only ever sent to a CAP_AUTH container


class RequestType(IntEnum):
    PREDICT = 0
    FEEDBACK = 1  # defined by v3, never implemented by Clipper
    PREDICT_PACKED = 2  # Schooner extension


_INPUT_ALIASES = {
    "b": 0, "bytes": 0, "byte": 0,
    "i": 1, "ints": 1, "int": 1, "integers": 1,
    "f": 2, "floats": 2, "float": 2,
    "d": 3, "doubles": 3, "double": 3,
    "s": 4, "strings": 4, "string": 4, "str": 4,
}  # fmt: skip


class InputType(IntEnum):
    BYTES = 0
    INTS = 1
    FLOATS = 2
    DOUBLES = 3
    STRINGS = 4

    @classmethod
    def parse(cls, value: str | int | InputType) -> InputType:
        """Accept an InputType, its number, its Clipper name or alias (``"d"``, ``"doubles"``)."""
        if isinstance(value, InputType):
            return value
        if isinstance(value, int):
            return cls(value)
        key = str(value).strip().lower()
        if key.isdigit():
            return cls(int(key))
        try:
            return cls(_INPUT_ALIASES[key])
        except KeyError:
            raise ValueError(
                f"unknown input type {value!r}: use one of bytes, ints, floats, doubles, strings"
            ) from None

    @property
    def dtype(self) -> np.dtype | None:
        """numpy element type of one input, or None for strings (UTF-8 text)."""
        return DTYPES[self]

    @property
    def clipper_name(self) -> str:
        return self.name.lower()


# An input type's dtype, by position (``DTYPES[input_type]``): no call, where the property is
# one, and no Enum hash (in Python) as a dict key would be.
DTYPES: tuple[np.dtype | None, ...] = (
    np.dtype(np.int8),  # BYTES
    np.dtype("<i4"),  # INTS
    np.dtype("<f4"),  # FLOATS
    np.dtype("<f8"),  # DOUBLES
    None,  # STRINGS
)

Buffer = bytes | bytearray | memoryview

# Frames that never change, built once.
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EMPTY = b""
_V3 = _U32.pack(RPC_VERSION)
_T_NEW = _U32.pack(MessageType.NEW_CONTAINER)
_T_CONTENT = _U32.pack(MessageType.CONTAINER_CONTENT)
_T_HEARTBEAT = _U32.pack(MessageType.HEARTBEAT)
_T_PACKED = _U32.pack(MessageType.PACKED_CONTENT)
_T_AUTH = _U32.pack(MessageType.AUTH_RESPONSE)
_R_PREDICT = _U32.pack(RequestType.PREDICT)
_R_PACKED = _U32.pack(RequestType.PREDICT_PACKED)
_HB = (
    _U32.pack(HeartbeatType.KEEP_ALIVE),
    _U32.pack(HeartbeatType.REQUEST_CONTAINER_METADATA),
    _U32.pack(HeartbeatType.AUTH_CHALLENGE),
)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Container -> frontend: ``"" | u32 2``."""


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """Frontend -> container: ``"" | u32 3 | u32 2 | u32 hb_type`` (``| nonce`` for a
    challenge)."""

    hb_type: HeartbeatType
    nonce: bytes = b""


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """Container -> frontend, the answer to a challenge: ``"" | u32 4 | mac``."""

    mac: bytes


@dataclass(frozen=True, slots=True)
class NewContainer:
    """Container -> frontend, after a RequestContainerMetadata heartbeat reply."""

    name: str
    version: str
    input_type: InputType
    capabilities: int = 0  # 0 for a plain v3 container


@dataclass(slots=True)
class PredictRequest:
    """Frontend -> container. ``inputs`` holds one buffer per input (plain v3), or is
    None and ``payload`` holds them back to back (packed)."""

    msg_id: bytes  # the 4 raw bytes, echoed in the response
    input_type: InputType
    sizes: tuple[int, ...]
    inputs: list[Buffer] | None = None
    payload: Buffer | None = None

    @property
    def packed(self) -> bool:
        return self.inputs is None

    @property
    def id(self) -> int:
        return int(_U32.unpack(self.msg_id)[0])


@dataclass(slots=True)
class PredictResponse:
    """Container -> frontend. ``outputs`` is one buffer per output (plain v3), or None and
    ``payload``/``status`` hold them (packed). ``errors`` flags outputs that are errors."""

    msg_id: bytes
    lengths: tuple[int, ...]
    outputs: list[Buffer] | None = None
    payload: Buffer | None = None
    status: Buffer | None = None

    @property
    def packed(self) -> bool:
        return self.outputs is None

    @property
    def id(self) -> int:
        return int(_U32.unpack(self.msg_id)[0])

    def texts(self) -> list[str]:
        """The N outputs decoded as UTF-8 (invalid bytes replaced, never raised)."""
        if self.outputs is not None:
            return [bytes(o).decode("utf-8", "replace") for o in self.outputs]
        if _packed_texts is not None and self.payload is not None:
            return _packed_texts(self.payload, self.lengths)  # type: ignore[no-any-return]
        data = bytes(self.payload or b"")
        out, pos = [], 0
        for n in self.lengths:
            out.append(data[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        return out

    def error_flags(self) -> list[bool]:
        if self.status is None:
            return [False] * len(self.lengths)
        return [b != 0 for b in bytes(self.status)]


FromFrontend = HeartbeatReply | PredictRequest
FromContainer = Heartbeat | NewContainer | PredictResponse | AuthResponse


# --------------------------------------------------------------------------- helpers


def _u32(frame: Buffer, what: str) -> int:
    if len(frame) != 4:
        raise WireError(f"{what}: expected a 4-byte u32 frame, got {len(frame)} bytes")
    return int(_U32.unpack(frame)[0])


@functools.lru_cache(maxsize=256)  # a C-level lookup; the lengths headers usually have
def _u64_array(n: int) -> struct.Struct:
    """The format of ``n`` little-endian u64s, compiled once."""
    return struct.Struct(f"<{n}Q")


def _u64s(frame: Buffer, what: str) -> tuple[int, ...]:
    n, rem = divmod(len(frame), 8)
    if rem:
        raise WireError(f"{what}: length {len(frame)} is not a multiple of 8")
    return _u64_array(n).unpack(frame)


def _pack_u64s(*values: int) -> bytes:
    return _u64_array(len(values)).pack(*values)


# --------------------------------------------------------------------------- container side


def encode_heartbeat() -> list[bytes]:
    return [_EMPTY, _T_HEARTBEAT]


def encode_new_container(
    name: str, version: str, input_type: InputType, capabilities: int = 0
) -> list[bytes]:
    """NewContainer. With capabilities, the version frame grows to ``u32 3 | u32 caps``."""
    version_frame = _V3 if not capabilities else _V3 + _U32.pack(capabilities)
    return [
        _EMPTY,
        _T_NEW,
        name.encode("utf-8"),
        str(version).encode("utf-8"),
        str(int(input_type)).encode("ascii"),
        version_frame,
    ]


def auth_mac(secret: bytes, nonce: bytes, info: NewContainer) -> bytes:
    """The answer to a challenge: HMAC-SHA256 of the secret over the nonce and what the
    container registers as (so a captured answer fits no other nonce and no other model)."""
    fields = encode_new_container(info.name, info.version, info.input_type, info.capabilities)
    parts = [AUTH_CONTEXT, nonce, *fields[2:]]
    message = b"".join(_U32.pack(len(p)) + p for p in parts)
    return hmac.new(secret, message, hashlib.sha256).digest()


def encode_auth_response(mac: bytes) -> list[bytes]:
    return [_EMPTY, _T_AUTH, mac]


def encode_predict_response(msg_id: bytes, outputs: Sequence[bytes]) -> list[bytes]:
    """Plain v3 response: header ``[N, len_0..]`` (no input-type field), a frame per output."""
    n = len(outputs)
    header = _pack_u64s(n, *map(len, outputs))
    return [_EMPTY, _T_CONTENT, msg_id, _U64.pack(len(header)), header, *outputs]


def encode_packed_response(
    msg_id: bytes, outputs: Sequence[bytes], status: bytes | None = None
) -> list[bytes]:
    """Packed response (Schooner extension): a constant six frames whatever N is."""
    n = len(outputs)
    header = _pack_u64s(n, *map(len, outputs))
    return [_EMPTY, _T_PACKED, msg_id, header, status or bytes(n), b"".join(outputs)]


if _predict_response is not None:  # the same frames, each in one C call
    encode_predict_response = _predict_response  # type: ignore[assignment]  # noqa: F811
    encode_packed_response = _packed_response  # type: ignore[assignment]  # noqa: F811


def decode_from_frontend(frames: Sequence[Buffer]) -> FromFrontend:
    """Decode what a container receives. Raises WireError on anything malformed."""
    if _predict_request is not None:  # a well-formed prediction request, in one C call
        found = _predict_request(frames)
        if found is not None:
            msg_id, input_type, sizes, inputs, payload = found
            return PredictRequest(msg_id, _INPUT_TYPES[input_type], sizes, inputs, payload)
    count = len(frames)
    if count < 3:
        raise WireError(f"message of {count} frames is too short")
    if len(frames[0]) != 0:
        raise WireError("first frame must be the empty delimiter")
    if frames[1] != _V3:
        version = _u32(frames[1], "rpc version")
        raise WireError(f"unsupported RPC version {version} (this container speaks {RPC_VERSION})")
    mtype = frames[2]
    if mtype == _T_CONTENT:
        if count < 6:
            raise WireError("prediction request is too short")
        msg_id = bytes(frames[3])
        if len(msg_id) != 4:
            raise WireError("message id must be a 4-byte frame")
        rtype = frames[4]
        if rtype == _R_PREDICT:
            return _decode_plain_request(msg_id, frames)
        if rtype == _R_PACKED:
            return _decode_packed_request(msg_id, frames)
        raise WireError(f"request type {_u32(rtype, 'request type')} is not supported")
    if mtype == _T_HEARTBEAT:
        if len(frames) == 5 and frames[3] == _HB[HeartbeatType.AUTH_CHALLENGE]:
            nonce = bytes(frames[4])
            if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
                raise WireError(f"challenge nonce of {len(nonce)} bytes")
            return HeartbeatReply(HeartbeatType.AUTH_CHALLENGE, nonce)
        if len(frames) != 4:
            raise WireError(f"heartbeat reply has {len(frames)} frames, expected 4")
        hb = _u32(frames[3], "heartbeat type")
        if hb == HeartbeatType.AUTH_CHALLENGE:
            raise WireError("a challenge needs its nonce frame")
        try:
            return HeartbeatReply(HeartbeatType(hb))
        except ValueError:
            raise WireError(f"unknown heartbeat type {hb}") from None
    raise WireError(f"unexpected message type {_u32(mtype, 'message type')} from the frontend")


_INPUT_TYPES = {int(t): t for t in InputType}


def _request_header(frame: Buffer) -> tuple[InputType, tuple[int, ...]]:
    header = _u64s(frame, "request header")
    if len(header) < 2:
        raise WireError("request header needs at least [input_type, N]")
    input_type = _INPUT_TYPES.get(header[0])  # a dict lookup, not an Enum call per request
    if input_type is None:
        raise WireError(f"unknown input type {header[0]}")
    n = header[1]
    sizes = header[2:]
    if len(sizes) != n:
        raise WireError(f"request header announces {n} inputs but lists {len(sizes)} sizes")
    return input_type, sizes


def _decode_plain_request(msg_id: bytes, frames: Sequence[Buffer]) -> PredictRequest:
    declared = _u64s(frames[5], "header size")
    if len(declared) != 1:
        raise WireError("header size must be one u64")
    if len(frames) < 7 or declared[0] != len(frames[6]):
        raise WireError("header size frame does not match the header")
    input_type, sizes = _request_header(frames[6])
    inputs = list(frames[7:])
    if len(inputs) != len(sizes):
        raise WireError(f"header announces {len(sizes)} inputs, message carries {len(inputs)}")
    if tuple(map(len, inputs)) != sizes:  # one C-level pass; the loop only to say which
        for i, (frame, size) in enumerate(zip(inputs, sizes)):
            if _nbytes(frame) != size:
                raise WireError(f"input {i} is {_nbytes(frame)} bytes, header says {size}")
    return PredictRequest(msg_id, input_type, sizes, inputs)


def _decode_packed_request(msg_id: bytes, frames: Sequence[Buffer]) -> PredictRequest:
    if len(frames) != 7:
        raise WireError(f"packed request has {len(frames)} frames, expected 7")
    input_type, sizes = _request_header(frames[5])
    payload = frames[6]
    if sum(sizes) != len(payload):
        raise WireError(f"packed payload is {len(payload)} bytes, header says {sum(sizes)}")
    return PredictRequest(msg_id, input_type, sizes, payload=payload)


# --------------------------------------------------------------------------- frontend side


def encode_heartbeat_reply(hb_type: HeartbeatType) -> list[bytes]:
    return [_EMPTY, _V3, _T_HEARTBEAT, _HB[hb_type]]


def encode_auth_challenge(nonce: bytes) -> list[bytes]:
    """The challenge (only ever sent to a container that announced CAP_AUTH)."""
    if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
        raise ValueError(f"a nonce is {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes")
    return [_EMPTY, _V3, _T_HEARTBEAT, _HB[HeartbeatType.AUTH_CHALLENGE], nonce]


def encode_predict_request(
    msg_id: int, input_type: InputType, inputs: Sequence[Buffer]
) -> list[Buffer]:
    """Plain v3 request: ``u64 H | header | input_0 .. input_{N-1}``."""
    header = _pack_u64s(int(input_type), len(inputs), *map(len, inputs))
    return [
        _EMPTY, _V3, _T_CONTENT, _U32.pack(msg_id), _R_PREDICT,
        _U64.pack(len(header)), header, *inputs,
    ]  # fmt: skip


def encode_packed_request(
    msg_id: int, input_type: InputType, sizes: Sequence[int], payload: Buffer
) -> list[Buffer]:
    """Packed request (Schooner extension, only to a container that announced CAP_PACKED)."""
    header = _pack_u64s(int(input_type), len(sizes), *sizes)
    return [_EMPTY, _V3, _T_CONTENT, _U32.pack(msg_id), _R_PACKED, header, payload]


def decode_from_container(frames: Sequence[Buffer]) -> FromContainer:
    """Decode what the frontend receives (identity frame already stripped)."""
    if len(frames) < 2:
        raise WireError(f"message of {len(frames)} frames is too short")
    if len(frames[0]) != 0:
        raise WireError("first frame must be the empty delimiter")
    mtype = _u32(frames[1], "message type")
    if mtype == MessageType.HEARTBEAT:
        return Heartbeat()
    if mtype == MessageType.NEW_CONTAINER:
        return _decode_new_container(frames)
    if mtype == MessageType.CONTAINER_CONTENT:
        return _decode_plain_response(frames)
    if mtype == MessageType.PACKED_CONTENT:
        return _decode_packed_response(frames)
    if mtype == MessageType.AUTH_RESPONSE:
        if len(frames) != 3 or len(frames[2]) != MAC_BYTES:
            raise WireError(f"an auth response is 3 frames, the last {MAC_BYTES} bytes")
        return AuthResponse(bytes(frames[2]))
    raise WireError(f"unknown message type {mtype}")


def _decode_new_container(frames: Sequence[Buffer]) -> NewContainer:
    if len(frames) != 6:
        raise WireError(
            f"NewContainer has {len(frames)} frames; v3 needs 6 (the last one the RPC version)"
        )
    vframe = bytes(frames[5])
    if len(vframe) not in (4, 8):
        raise WireError("NewContainer RPC version frame must be 4 (or 8, with capabilities) bytes")
    version = _U32.unpack_from(vframe)[0]
    if version != RPC_VERSION:
        raise WireError(f"container speaks RPC version {version}, this frontend speaks 3")
    caps = _U32.unpack_from(vframe, 4)[0] if len(vframe) == 8 else 0
    for i, what in ((2, "model name"), (3, "model version")):
        if len(frames[i]) > MAX_NAME_BYTES:
            raise WireError(f"NewContainer {what} of {len(frames[i])} bytes "
                            f"(at most {MAX_NAME_BYTES})")  # fmt: skip
    if len(frames[4]) > 3:
        raise WireError(f"NewContainer input type frame of {len(frames[4])} bytes")
    try:
        name = bytes(frames[2]).decode("utf-8")
        model_version = bytes(frames[3]).decode("utf-8")
        input_type = InputType(int(bytes(frames[4]).decode("ascii")))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"bad NewContainer metadata: {excerpt(str(exc))}") from None
    if not name or not model_version:
        raise WireError("NewContainer needs a model name and version")
    return NewContainer(name, model_version, input_type, caps)


def _response_header(frame: Buffer) -> tuple[int, ...]:
    header = _u64s(frame, "response header")
    if not header or header[0] != len(header) - 1:
        raise WireError("response header must be [N, len_0 .. len_{N-1}]")
    return header[1:]


def _decode_plain_response(frames: Sequence[Buffer]) -> PredictResponse:
    if len(frames) < 5:
        raise WireError("prediction response is too short")
    msg_id = bytes(frames[2])
    if len(msg_id) != 4:
        raise WireError("message id must be a 4-byte frame")
    declared = _u64s(frames[3], "header size")
    if len(declared) != 1 or declared[0] != len(frames[4]):
        raise WireError("header size frame does not match the header")
    lengths = _response_header(frames[4])
    outputs = list(frames[5:])
    if len(outputs) != len(lengths):
        raise WireError(f"header announces {len(lengths)} outputs, message carries {len(outputs)}")
    for i, (frame, n) in enumerate(zip(outputs, lengths)):
        if len(frame) != n:
            raise WireError(f"output {i} is {len(frame)} bytes, header says {n}")
    return PredictResponse(msg_id, lengths, outputs=outputs)


def _decode_packed_response(frames: Sequence[Buffer]) -> PredictResponse:
    if len(frames) != 6:
        raise WireError(f"packed response has {len(frames)} frames, expected 6")
    msg_id = bytes(frames[2])
    if len(msg_id) != 4:
        raise WireError("message id must be a 4-byte frame")
    lengths = _response_header(frames[3])
    status, payload = frames[4], frames[5]
    if len(status) != len(lengths):
        raise WireError("packed status must hold one byte per output")
    if sum(lengths) != len(payload):
        raise WireError("packed payload length does not match the header")
    return PredictResponse(msg_id, lengths, payload=payload, status=status)


# --------------------------------------------------------------------------- stream framing

def _nbytes(frame: Buffer) -> int:
    return frame.nbytes if type(frame) is memoryview else len(frame)


def stream_header(frames: Sequence[Buffer]) -> bytes:
    """The prefix that delimits one message on a stream; write it, then the frames."""
    n = len(frames)
    return struct.pack(f"<{n + 1}I", n, *[_nbytes(f) for f in frames])


def stream_bytes(frames: Sequence[Buffer]) -> bytes:
    """One message as the bytes to write on a stream: its header, then its frames."""
    return b"".join([stream_header(frames), *frames])


if _stream_join is not None:
    stream_bytes = _stream_join  # noqa: F811 (the same bytes, in one C call)


class StreamReader:
    """Cuts a byte stream into messages (lists of frames, zero-copy views of the input).

    ``feed`` takes whatever the socket returned and gives back every message completed by
    it; a partial message is kept until the rest arrives. While it is incomplete, further
    chunks are only appended (a large tensor arriving in many chunks is copied once, not
    once per chunk). A prefix over ``limits`` (more frames, or a declared length of more
    bytes, than a message may hold) raises WireError as soon as the prefix is read, before
    the message body is buffered: the connection must be closed.
    """

    __slots__ = ("_buf", "_need", "_max_frames", "_max_bytes")

    def __init__(self, limits: Limits | None = None) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must hold before the pending message can be cut
        limits = limits or Limits()
        self._max_frames, self._max_bytes = limits.max_frames, limits.max_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[list[memoryview]]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            view = memoryview(bytes(self._buf))
        else:
            view = memoryview(data).cast("B")
        out: list[list[memoryview]] = []
        pos, end = 0, len(view)
        unpack = _U32.unpack_from
        while True:
            left = end - pos
            if left < 4:
                need = 4
                break
            (n,) = unpack(view, pos)
            if n > self._max_frames:
                raise WireError(f"a message of {n} frames (at most {self._max_frames})")
            need = head = 4 + 4 * n
            if left < head:
                break
            sizes = struct.unpack_from(f"<{n}I", view, pos + 4)
            need = total = head + sum(sizes)
            if total > self._max_bytes:
                raise WireError(f"a message of {total} bytes (at most {self._max_bytes})")
            if left < total:
                break
            at = pos + head
            frames = []
            for size in sizes:
                frames.append(view[at : at + size])
                at += size
            out.append(frames)
            pos += total
        if pos < end:
            self._buf, self._need = bytearray(view[pos:]), need
        else:
            self._buf, self._need = bytearray(), 0
        return out

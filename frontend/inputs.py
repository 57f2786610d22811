"""JSON inputs -> the bytes a container receives, one converter per input type.

Runs on the request path for every input. Each converter takes the decoded JSON value and
returns the wire bytes, or raises ``BadInput`` with a cause a client can act on:

* doubles: array of numbers -> float64 little endian; floats -> float32;
* ints: array of integers within int32 -> int32 little endian (no floats, no booleans);
* strings: a string -> UTF-8;
* bytes: a base64 string -> the decoded bytes.

A request holds at most ``MAX_INPUTS_PER_REQUEST`` inputs by default (``--max-inputs-per-request``;
more: 413). For the numeric types, ``surely_too_many`` says so from the body's bytes, before
the JSON is decoded (decoding 2 M small arrays alone blocks the event loop for a second).
"""

from __future__ import annotations

import binascii
import struct
from base64 import b64decode
from collections.abc import Callable

from schooner.runtime.errors import SchoonerError
from schooner.runtime.wire import InputType

__all__ = [
    "BadInput", "CONVERTERS", "CONVERTERS_WITHOUT_BOOLEANS", "FAST_CODES", "fast_single_input",
    "may_hold_booleans", "convert", "MAX_INPUTS_PER_REQUEST", "surely_too_many",
]  # fmt: skip

try:  # the optional C shortcut (frontend/_fastpath.c); the same results when it answers
    from schooner.frontend._fastpath import parse_input as fast_single_input
except ImportError:  # built without a C compiler: every body takes the general path
    fast_single_input = None

# Input types the shortcut handles, with its code for each.
FAST_CODES = {InputType.DOUBLES: "d", InputType.FLOATS: "f", InputType.INTS: "i"}

MAX_INPUTS_PER_REQUEST = 10_000
# "[" a valid numeric body may hold besides one per input: its outer input_batch array, and
# any in the "version" string
_BRACKETS_SLACK = 64

_NUMBER_TYPES = {int, float}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class BadInput(SchoonerError, ValueError):
    """An input that does not match the app's input type; the message is the 400 cause."""


def may_hold_booleans(body: bytes) -> bool:
    """Whether a JSON document may decode to a ``bool`` anywhere: only the literals ``true``
    and ``false`` do, so a body without either cannot (a string containing them only
    makes this answer yes needlessly). A one-byte search is a ``memchr``, ten times faster
    than a substring search, and a numeric body rarely holds an ``r`` or an ``l``."""
    return (b"r" in body and b"true" in body) or (b"l" in body and b"false" in body)


def surely_too_many(body: bytes, input_type: InputType, limit: int) -> bool:
    """Whether a Clipper request body for an app of ``input_type`` holds more than ``limit``
    inputs (or arrays or strings besides them), decided without decoding it: for the numeric
    types every input is one flat array, so a body of at most ``limit`` inputs holds at most
    ``limit`` + ``_BRACKETS_SLACK`` "["; for strings and bytes every input is one string,
    two unescaped quotes. Byte counts (``memchr``-fast), and only for bodies long enough to
    hold that many inputs (each at least 3 bytes: ``[n],`` or ``"",``). False says nothing:
    the caller counts the decoded inputs."""
    if len(body) <= 3 * limit:
        return False
    if input_type in FAST_CODES:
        return body.count(b"[") > limit + _BRACKETS_SLACK
    # an escaped quote is \" (a closing quote after an escaped backslash counts as escaped
    # too: fewer quotes, never a refusal too many)
    return body.count(b'"') - body.count(b'\\"') > 2 * (limit + _BRACKETS_SLACK)


def _pack(value: list[object], code: str) -> bytes | None:
    """``struct.pack`` of a list known to hold no booleans, or None if it fails.

    ``struct`` rejects strings, nulls, arrays and objects itself, and range errors too, so
    for such a list a successful pack is exactly what the full checks would accept: the
    per-value type scan (as costly as the packing) is skipped. On failure the caller runs
    the full checks, which say what is wrong.
    """
    try:
        return struct.pack(f"<{len(value)}{code}", *value)
    except (struct.error, OverflowError, TypeError):
        return None


def _numbers(value: object, code: str, what: str, booleans: bool = True) -> bytes:
    if type(value) is not list:
        raise BadInput(f"expected a JSON array of {what}, got {_kind(value)}")
    if not value:
        raise BadInput(f"expected a non-empty JSON array of {what}")
    if not booleans:
        packed = _pack(value, code)
        if packed is not None:
            return packed
    types = {type(v) for v in value}
    if not types <= _NUMBER_TYPES:
        bad = next(v for v in value if type(v) not in _NUMBER_TYPES)
        raise BadInput(f"expected a flat JSON array of {what}, found {_kind(bad)}")
    try:
        return struct.pack(f"<{len(value)}{code}", *value)
    except (struct.error, OverflowError) as exc:
        raise BadInput(f"a value does not fit in {what}: {exc}") from None


def _doubles(value: object) -> bytes:
    return _numbers(value, "d", "doubles")


def _floats(value: object) -> bytes:
    return _numbers(value, "f", "floats")


def _ints(value: object, booleans: bool = True) -> bytes:
    if type(value) is not list:
        raise BadInput(f"expected a JSON array of integers, got {_kind(value)}")
    if not value:
        raise BadInput("expected a non-empty JSON array of integers")
    if not booleans:
        packed = _pack(value, "i")  # struct refuses floats and values outside int32
        if packed is not None:
            return packed
    for v in value:
        if type(v) is not int:
            raise BadInput(f"expected a flat JSON array of integers, found {_kind(v)}")
        if not _INT32_MIN <= v <= _INT32_MAX:
            raise BadInput(f"{v} is out of the int32 range")
    return struct.pack(f"<{len(value)}i", *value)


def _strings(value: object) -> bytes:
    if type(value) is not str:
        raise BadInput(f"expected a JSON string, got {_kind(value)}")
    return value.encode("utf-8")


def _bytes(value: object) -> bytes:
    if type(value) is not str:
        raise BadInput(f"expected a base64-encoded JSON string, got {_kind(value)}")
    try:
        return b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"the input is not valid base64: {exc}") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


CONVERTERS: dict[InputType, Callable[[object], bytes]] = {
    InputType.DOUBLES: _doubles,
    InputType.FLOATS: _floats,
    InputType.INTS: _ints,
    InputType.STRINGS: _strings,
    InputType.BYTES: _bytes,
}


# For inputs decoded from a body that ``may_hold_booleans`` says no to: the same results
# and the same errors as CONVERTERS, without a Python-level pass over every number.
CONVERTERS_WITHOUT_BOOLEANS: dict[InputType, Callable[[object], bytes]] = {
    **CONVERTERS,
    InputType.DOUBLES: lambda value: _numbers(value, "d", "doubles", booleans=False),
    InputType.FLOATS: lambda value: _numbers(value, "f", "floats", booleans=False),
    InputType.INTS: lambda value: _ints(value, booleans=False),
}


def convert(input_type: InputType, value: object) -> bytes:
    """The wire bytes of one JSON input of ``input_type``; raises BadInput."""
    return CONVERTERS[input_type](value)

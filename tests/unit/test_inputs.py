"""The JSON-to-wire converters, and their fast path for bodies without booleans."""

import struct

import orjson
import pytest

from schooner.frontend.inputs import (
    CONVERTERS,
    CONVERTERS_WITHOUT_BOOLEANS,
    BadInput,
    may_hold_booleans,
)
from schooner.runtime.wire import InputType

NUMERIC = (InputType.DOUBLES, InputType.FLOATS, InputType.INTS)

# Every JSON value that reaches a numeric converter from a body with no true/false token.
CASES = [
    [1.5, -2.0, 3], [0], [1, 2, 3], [2**31 - 1, -(2**31)], [2**31], [1e300], [1e39],
    ["1.0"], [None], [[1.0]], [{"a": 1}], [1.0, "x"], [], "1.0", None, 3.0, {"a": [1]},
    [2**70], [-(2**70)], [float("1e308")] * 3,
]  # fmt: skip


def outcome(convert, value):
    try:
        return convert(value)
    except BadInput as exc:
        return f"BadInput: {exc}"


@pytest.mark.parametrize("input_type", NUMERIC, ids=lambda t: t.clipper_name)
@pytest.mark.parametrize("value", CASES, ids=repr)
def test_fast_path_answers_exactly_as_the_full_checks(input_type, value):
    assert outcome(CONVERTERS_WITHOUT_BOOLEANS[input_type], value) == outcome(
        CONVERTERS[input_type], value)  # fmt: skip


def test_values_are_packed_little_endian():
    assert CONVERTERS_WITHOUT_BOOLEANS[InputType.FLOATS]([1.0, 2]) == struct.pack("<2f", 1.0, 2.0)
    assert CONVERTERS_WITHOUT_BOOLEANS[InputType.DOUBLES]([1.5]) == struct.pack("<d", 1.5)
    assert CONVERTERS_WITHOUT_BOOLEANS[InputType.INTS]([7, -1]) == struct.pack("<2i", 7, -1)


@pytest.mark.parametrize("input_type", NUMERIC, ids=lambda t: t.clipper_name)
def test_booleans_are_refused_by_the_full_checks(input_type):
    with pytest.raises(BadInput, match="boolean"):
        CONVERTERS[input_type]([1, True])


def test_only_true_and_false_literals_can_make_booleans():
    assert may_hold_booleans(b'{"input": [1.0, true]}')
    assert may_hold_booleans(b'{"input": [false]}')
    assert may_hold_booleans(b'{"input": "it is true"}')  # a needless yes is harmless
    body = b'{"input": [1.0, 2e5, -3, null, "x"], "version": "2"}'
    assert not may_hold_booleans(body)
    assert bool not in {type(v) for v in orjson.loads(body)["input"]}

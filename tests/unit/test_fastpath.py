"""The C shortcut of the query path (frontend/_fastpath.c) against the general path.

The general path (orjson, then the converters of frontend/inputs.py) defines what a body
means. Wherever the shortcut answers, it must answer the same bytes; wherever it is not
sure, it must say None so that the general path answers (and words the error).
"""

from __future__ import annotations

import math
import random
import struct

import orjson
import pytest

from schooner.frontend import inputs
from schooner.frontend._fastpath import parse_input  # built by the install (setup.py)
from schooner.frontend.inputs import CONVERTERS, FAST_CODES, BadInput
from schooner.runtime.wire import InputType

TYPES = list(FAST_CODES)


def general(body: bytes, input_type: InputType) -> bytes | None:
    """What the general path makes of a body {"input": ...}; None if it rejects it."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict or set(value) != {"input"}:
        return None
    try:
        return CONVERTERS[input_type](value["input"])
    except BadInput:
        return None


def test_the_query_api_uses_it():
    assert inputs.fast_single_input is parse_input


def random_number(rng: random.Random, integers: bool, max_exp: int = 308) -> str:
    if integers:
        return str(rng.choice([0, -1, 1, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)]))
    x = rng.choice([0.0, -0.0, 1.0, rng.random(), -rng.random() * 1e6, rng.uniform(-1, 1) * 10.0 ** rng.randrange(-320, max_exp)])  # fmt: skip
    style = rng.randrange(5)
    if style == 0:
        return repr(x)
    if style == 1 and abs(x) < 1e15:  # fixed notation of a huge number: a token too long
        return f"{x:.4f}"
    if style == 2:
        return f"{x:.17e}"
    if style == 3:
        return f"{x:.3E}".replace("E+", "E")
    return str(rng.randrange(-(10**17), 10**17))


@pytest.mark.parametrize("input_type", TYPES, ids=lambda t: t.name.lower())
def test_random_bodies_give_the_general_paths_bytes(input_type: InputType):
    rng = random.Random(int(input_type))
    integers = input_type is InputType.INTS
    answered = 0
    for _ in range(3000):
        max_exp = 38 if input_type is InputType.FLOATS else 308  # mostly within float32
        numbers = [random_number(rng, integers, max_exp) for _ in range(rng.randrange(1, 40))]
        sep = rng.choice([",", ", ", " ,\n"])
        body = rng.choice(['{"input":[%s]}', ' { "input" : [ %s ] } \n', '{"input":\t[%s]\r\n}'])
        body = (body % sep.join(numbers)).encode()
        fast = parse_input(body, FAST_CODES[input_type])
        expected = general(body, input_type)
        if fast is not None:
            answered += 1
            assert fast == expected, body
        else:  # only where the general path has to speak (here: values out of range)
            assert expected is None or input_type is InputType.FLOATS, body
    assert answered > 2900  # the shortcut is taken for ordinary bodies


def test_a_typical_float32_body():
    values = [(i % 17) / 17 for i in range(256)]
    body = b'{"input":[%s]}' % ",".join(f"{v:.4f}" for v in values).encode()
    assert parse_input(body, "f") == struct.pack("<256f", *[float(f"{v:.4f}") for v in values])


@pytest.mark.parametrize(
    "body",
    [
        b'{"input":[]}', b'{"input":[1,]}', b'{"input":[,1]}', b'{"input":[1 2]}',
        b'{"input":[1]', b'{"input":[1]}x', b'{"input":[1],"version":"2"}',
        b'{"version":"2","input":[1]}', b'{"input_batch":[[1]]}', b'{"input":[[1]]}',
        b'{"input":[true]}', b'{"input":[null]}', b'{"input":["1"]}', b'{"input":1}',
        b'{"input":[1.]}', b'{"input":[.5]}', b'{"input":[01]}', b'{"input":[+1]}',
        b'{"input":[-]}', b'{"input":[1e]}', b'{"input":[NaN]}', b'{"input":[Infinity]}',
        b'{"input":[1e400]}', b'{"input":[123456789012345678901234567890]}',
        b'{"\\u0069nput":[1]}', b'["input",[1]]', b"", b"{", b'{"input":[0x10]}',
    ],
)  # fmt: skip
def test_anything_unusual_is_left_to_the_general_path(body: bytes):
    for code in "dfi":
        assert parse_input(body, code) is None


def test_ranges_are_left_to_the_general_path():
    assert parse_input(b'{"input":[1e39]}', "f") is None  # float32 overflow: an error there
    assert parse_input(b'{"input":[1e39]}', "d") == struct.pack("<d", 1e39)
    assert parse_input(b'{"input":[2147483648]}', "i") is None
    assert parse_input(b'{"input":[-2147483649]}', "i") is None
    assert parse_input(b'{"input":[1.5]}', "i") is None
    assert parse_input(b'{"input":[1e2]}', "i") is None
    assert parse_input(b'{"input":[-2147483648, 2147483647]}', "i") == struct.pack("<2i", -(2**31), 2**31 - 1)
    tiny = parse_input(b'{"input":[1e-45, -0.0]}', "f")
    assert tiny is not None and struct.unpack("<2f", tiny)[0] > 0
    assert math.copysign(1, struct.unpack("<2f", tiny)[1]) == -1


def test_bad_code():
    with pytest.raises(ValueError):
        parse_input(b'{"input":[1]}', "q")


def test_negative_zero_as_json_means_it():
    # "-0" is the integer 0 to a JSON parser (ints have no sign of zero); "-0.0" is -0.0
    for code, fmt in (("d", "<d"), ("f", "<f")):
        assert parse_input(b'{"input":[-0]}', code) == struct.pack(fmt, 0.0)
        assert parse_input(b'{"input":[-0.0]}', code) == struct.pack(fmt, -0.0)
        assert parse_input(b'{"input":[-0e0]}', code) == struct.pack(fmt, -0.0)
        assert parse_input(b'{"input":[-0]}', code) == general(b'{"input":[-0]}', InputType.DOUBLES if code == "d" else InputType.FLOATS)


def test_long_and_exact_edge_tokens_match_the_general_path():
    tokens = ["9007199254740993", "9007199254740992", "0.1", "0.30000000000000004",
              "123456789012345678", "1.7976931348623157e308", "2.2250738585072014e-308",
              "4.9e-324", "1e22", "1e23", "8.589973e9", "0.000001", "123.456e-30",
              "3.4028235e38", "3.4028236e38", "1.00000000000000011102230246251565404236316680908203125"]  # fmt: skip
    for token in tokens:
        body = b'{"input":[%s]}' % token.encode()
        for input_type in (InputType.DOUBLES, InputType.FLOATS):
            fast = parse_input(body, FAST_CODES[input_type])
            assert fast is None or fast == general(body, input_type), token
            if input_type is InputType.DOUBLES:
                assert fast is not None, token

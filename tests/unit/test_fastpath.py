"""The two ways the query path turns a body into wire bytes, on the same cases.

* The general path (orjson, then the converters of frontend/inputs.py, the boolean-free
  table where ``may_hold_booleans`` says no) defines what a body means. It runs in every
  install, so it is tested everywhere, against an independent reference (the standard
  library's ``json`` and ``struct`` with the contract's rules).
* The optional C shortcut (frontend/_fastpath.c, built only where a C compiler was there
  at install time). Wherever it answers, it must answer the general path's bytes; wherever
  it is not sure, it must say None so that the general path answers (and words the error).
  Its tests skip, saying why, where the extension is not built.
"""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest

from schooner.frontend.inputs import (
    CONVERTERS,
    CONVERTERS_WITHOUT_BOOLEANS,
    FAST_CODES,
    BadInput,
    may_hold_booleans,
)
from schooner.runtime.wire import InputType

TYPES = list(FAST_CODES)
EXTENSION = "schooner.frontend._fastpath"


# --------------------------------------------------------------------------- the paths


def general(body: bytes, input_type: InputType) -> bytes | None:
    """What the query API's general path makes of a body {"input": ...}: orjson, then
    the converter (boolean-free table when no boolean can occur); None if it rejects it."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict or set(value) != {"input"}:
        return None
    table = CONVERTERS if may_hold_booleans(body) else CONVERTERS_WITHOUT_BOOLEANS
    try:
        return table[input_type](value["input"])
    except BadInput:
        return None


def _finite(token: str) -> float:
    x = float(token)
    if math.isinf(x):
        raise ValueError(f"{token} is not a finite double")
    return x


def _no_constants(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def reference(body: bytes, input_type: InputType) -> bytes | None:
    """The contract, computed with neither path's code: a JSON object whose only field
    "input" is a non-empty flat array of numbers (no booleans; integers only for ints),
    each representable in the wire type (finite doubles; float32 range; int32)."""
    try:
        value = json.loads(body, parse_float=_finite, parse_constant=_no_constants)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if type(value) is not dict or set(value) != {"input"}:
        return None
    items = value["input"]
    if type(items) is not list or not items:
        return None
    allowed = (int,) if input_type is InputType.INTS else (int, float)
    if any(type(v) not in allowed for v in items):
        return None
    try:
        return struct.pack(f"<{len(items)}{FAST_CODES[input_type]}", *items)
    except (struct.error, OverflowError):
        return None


@dataclass(frozen=True)
class QueryPath:
    name: str
    convert: Callable[[bytes, InputType], bytes | None]

    @property
    def is_shortcut(self) -> bool:
        """The shortcut may decline (None) a body the general path accepts."""
        return self.name == "c"


@pytest.fixture(scope="module")
def parse_input() -> Callable[[bytes, str], bytes | None]:
    """The C shortcut; the test skips where the extension is not built."""
    module = pytest.importorskip(
        EXTENSION,
        reason=f"{EXTENSION} is not built here (installed without a C compiler?): "
        "only the general path is tested",
        exc_type=ImportError,
    )
    return module.parse_input  # type: ignore[no-any-return]


@pytest.fixture(params=["general", "c"])
def path(request: pytest.FixtureRequest) -> QueryPath:
    """Each path in turn (the C one skips where it is not built)."""
    if request.param == "general":
        return QueryPath("general", general)
    parse = request.getfixturevalue("parse_input")
    return QueryPath("c", lambda body, input_type: parse(body, FAST_CODES[input_type]))


# --------------------------------------------------------------------------- which one runs


def test_the_query_api_uses_the_extension_when_it_is_built(parse_input):
    from schooner.frontend import inputs, query_api

    assert inputs.fast_single_input is parse_input
    assert query_api.fast_single_input is parse_input


def test_without_the_extension_the_query_api_takes_the_general_path():
    """As in an install without a C compiler: the import of the extension fails."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{EXTENSION!r}] = None  # any import of it raises ImportError
        from schooner.frontend import inputs, query_api
        from schooner.frontend.http import Request
        from schooner.frontend.metrics import FrontendMetrics
        from schooner.frontend.state import App, Model, StateStore
        from schooner.runtime.wire import InputType

        assert inputs.fast_single_input is None and query_api.fast_single_input is None

        class Dispatcher:
            submitted = []
            def submit(self, queries, key, slo):
                self.submitted.append((key, [q.data.hex() for q in queries]))

        state = StateStore.open(":memory:")
        state.add_app(App("a", InputType.DOUBLES, "null", 1000))
        state.add_model(Model("m", "1", InputType.DOUBLES, [], "", "", -1))
        state.link("a", "m")
        dispatcher = Dispatcher()
        api = query_api.QueryApi(state, dispatcher, FrontendMetrics(), lambda: True)
        replies = []
        for body in (b'{{"input":[1.5,2]}}', b'{{"input":[true]}}'):
            request = Request("POST", "/a/predict", "", body)
            request.param = "a"
            api.predict(request, lambda status, *rest: replies.append(status))
        state.close()
        print(dispatcher.submitted, replies)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = [(("m", "1"), [struct.pack("<2d", 1.5, 2.0).hex()])]
    assert result.stdout.strip() == f"{expected!r} [400]"


# --------------------------------------------------------------------------- the same cases


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


def random_bodies(input_type: InputType, n: int = 3000) -> list[bytes]:
    rng = random.Random(int(input_type))
    integers = input_type is InputType.INTS
    max_exp = 38 if input_type is InputType.FLOATS else 308  # mostly within float32
    bodies = []
    for _ in range(n):
        numbers = [random_number(rng, integers, max_exp) for _ in range(rng.randrange(1, 40))]
        sep = rng.choice([",", ", ", " ,\n"])
        body = rng.choice(['{"input":[%s]}', ' { "input" : [ %s ] } \n', '{"input":\t[%s]\r\n}'])
        bodies.append((body % sep.join(numbers)).encode())
    return bodies


UNUSUAL = [
    b'{"input":[]}', b'{"input":[1,]}', b'{"input":[,1]}', b'{"input":[1 2]}',
    b'{"input":[1]', b'{"input":[1]}x', b'{"input":[1],"version":"2"}',
    b'{"version":"2","input":[1]}', b'{"input_batch":[[1]]}', b'{"input":[[1]]}',
    b'{"input":[true]}', b'{"input":[null]}', b'{"input":["1"]}', b'{"input":1}',
    b'{"input":[1.]}', b'{"input":[.5]}', b'{"input":[01]}', b'{"input":[+1]}',
    b'{"input":[-]}', b'{"input":[1e]}', b'{"input":[NaN]}', b'{"input":[Infinity]}',
    b'{"input":[1e400]}', b'{"input":[123456789012345678901234567890]}',
    b'{"\\u0069nput":[1]}', b'["input",[1]]', b"", b"{", b'{"input":[0x10]}',
]  # fmt: skip

EDGE_TOKENS = [
    "9007199254740993", "9007199254740992", "0.1", "0.30000000000000004",
    "123456789012345678", "1.7976931348623157e308", "2.2250738585072014e-308",
    "4.9e-324", "1e22", "1e23", "8.589973e9", "0.000001", "123.456e-30",
    "3.4028235e38", "3.4028236e38", "1.00000000000000011102230246251565404236316680908203125",
]  # fmt: skip


@pytest.mark.parametrize("input_type", TYPES, ids=lambda t: t.name.lower())
def test_random_bodies_give_the_contracts_bytes(path: QueryPath, input_type: InputType):
    answered = 0
    for body in random_bodies(input_type):
        got = path.convert(body, input_type)
        expected = reference(body, input_type)
        if got is not None:
            answered += 1
            assert got == expected, body
        elif path.is_shortcut:  # only where the general path has to speak (out of range)
            assert expected is None or input_type is InputType.FLOATS, body
        else:
            assert expected is None, body
    assert answered > 2900  # ordinary bodies are answered (by the shortcut, when it runs)


def test_a_typical_float32_body(path: QueryPath):
    values = [(i % 17) / 17 for i in range(256)]
    body = b'{"input":[%s]}' % ",".join(f"{v:.4f}" for v in values).encode()
    expected = struct.pack("<256f", *[float(f"{v:.4f}") for v in values])
    assert path.convert(body, InputType.FLOATS) == expected


@pytest.mark.parametrize("body", UNUSUAL)
def test_anything_unusual_is_left_to_the_general_path(parse_input, body: bytes):
    for code in "dfi":
        assert parse_input(body, code) is None


@pytest.mark.parametrize("body", UNUSUAL)
def test_the_general_path_decides_unusual_bodies(body: bytes):
    for input_type in TYPES:
        assert general(body, input_type) == reference(body, input_type), input_type


def test_the_general_path_reads_an_escaped_field_name():
    """The one unusual body above that means something: the shortcut declines it, the
    general path serves it."""
    assert general(b'{"\\u0069nput":[1]}', InputType.INTS) == struct.pack("<i", 1)


def test_ranges(path: QueryPath):
    """Out of range is None on both paths: declined by the shortcut, rejected (400) by the
    general path, which words the error."""
    d, f, i = InputType.DOUBLES, InputType.FLOATS, InputType.INTS
    assert path.convert(b'{"input":[1e39]}', f) is None  # float32 overflow: an error there
    assert path.convert(b'{"input":[1e39]}', d) == struct.pack("<d", 1e39)
    assert path.convert(b'{"input":[2147483648]}', i) is None
    assert path.convert(b'{"input":[-2147483649]}', i) is None
    assert path.convert(b'{"input":[1.5]}', i) is None
    assert path.convert(b'{"input":[1e2]}', i) is None
    assert path.convert(b'{"input":[-2147483648, 2147483647]}', i) == struct.pack("<2i", -(2**31), 2**31 - 1)
    tiny = path.convert(b'{"input":[1e-45, -0.0]}', f)
    assert tiny is not None and struct.unpack("<2f", tiny)[0] > 0
    assert math.copysign(1, struct.unpack("<2f", tiny)[1]) == -1


def test_the_general_path_words_what_is_out_of_range():
    with pytest.raises(BadInput, match="does not fit in floats"):
        CONVERTERS[InputType.FLOATS](orjson.loads(b"[1e39]"))
    with pytest.raises(BadInput, match="out of the int32 range"):
        CONVERTERS[InputType.INTS](orjson.loads(b"[2147483648]"))


def test_bad_code(parse_input):
    with pytest.raises(ValueError):
        parse_input(b'{"input":[1]}', "q")


def test_negative_zero_as_json_means_it(path: QueryPath):
    # "-0" is the integer 0 to a JSON parser (ints have no sign of zero); "-0.0" is -0.0
    for input_type, fmt in ((InputType.DOUBLES, "<d"), (InputType.FLOATS, "<f")):
        assert path.convert(b'{"input":[-0]}', input_type) == struct.pack(fmt, 0.0)
        assert path.convert(b'{"input":[-0.0]}', input_type) == struct.pack(fmt, -0.0)
        assert path.convert(b'{"input":[-0e0]}', input_type) == struct.pack(fmt, -0.0)


def test_long_and_exact_edge_tokens(path: QueryPath):
    for token in EDGE_TOKENS:
        body = b'{"input":[%s]}' % token.encode()
        for input_type in (InputType.DOUBLES, InputType.FLOATS):
            got = path.convert(body, input_type)
            expected = reference(body, input_type)
            if path.is_shortcut:
                assert got is None or got == expected, token
            else:
                assert got == expected, token
            if input_type is InputType.DOUBLES:
                assert got is not None, token


def test_both_paths_agree_wherever_the_shortcut_answers(parse_input):
    cases = [b'{"input":[%s]}' % t.encode() for t in EDGE_TOKENS] + UNUSUAL
    compared = 0
    for input_type in TYPES:
        for body in cases + random_bodies(input_type, 300):
            fast = parse_input(body, FAST_CODES[input_type])
            if fast is not None:
                compared += 1
                assert fast == general(body, input_type), (input_type, body)
    assert compared > 800


def fraction_runs() -> list[str]:
    """Fractions of every length from 1 to 24 digits, with and without leading zeros,
    signs and exponents: the digit runs the shortcut reads eight bytes at a time."""
    tokens = []
    for n in range(1, 25):
        digits = "".join(str((7 * i + 3) % 10) for i in range(n))
        for lead in ("", "0" * (n % 9), "0" * 11):
            for int_part in ("0", "3", "12345678", "-0", "-98765"):
                tokens.append(f"{int_part}.{lead}{digits}")
        tokens.append(f"1.{digits}e-5")
        tokens.append(f"-2.{digits}E+7")
        tokens.append(f"0.{digits}0000000")
    return tokens


@pytest.mark.parametrize("input_type", [InputType.DOUBLES, InputType.FLOATS], ids=["d", "f"])
def test_digit_runs_of_every_length_and_at_every_offset(path: QueryPath, input_type: InputType):
    """Every token alone (so that fewer than eight bytes follow it), then the same tokens
    in one body, shifted by 0 to 7 spaces, so that each run starts at every offset of an
    eight-byte word and ends next to ``,``, ``]``, ``e`` or the body's end."""
    tokens = fraction_runs()
    for token in tokens:
        for body in (b'{"input":[%s]}' % token.encode(), b'{"input":[%s ] }' % token.encode()):
            assert path.convert(body, input_type) == reference(body, input_type), body
    for shift in range(8):
        body = (b'{"input":[' + b" " * shift + ",".join(tokens).encode() + b"]}")
        assert path.convert(body, input_type) == reference(body, input_type), shift

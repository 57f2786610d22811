"""The JSON-to-wire converters, and their fast path for bodies without booleans; the
bound on inputs per request and the sliced conversion of a large input_batch."""

import struct
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------- bounds (issue 10)


def test_surely_too_many_counts_only_what_a_valid_numeric_body_must_hold() -> None:
    from schooner.frontend.inputs import surely_too_many

    batch = orjson.dumps({"input_batch": [[1.0, 2.0]] * 200})
    assert surely_too_many(batch, InputType.DOUBLES, 100)
    assert not surely_too_many(batch, InputType.DOUBLES, 200)  # exactly the limit: it counts
    # one input with many numbers: one "[" only
    assert not surely_too_many(orjson.dumps({"input": [1.0] * 10_000}), InputType.DOUBLES, 100)
    # strings may hold "[" and escaped quotes: those are not inputs
    strings = orjson.dumps({"input_batch": ['[[[["\\"'] * 100})
    assert not surely_too_many(strings, InputType.STRINGS, 100)
    assert surely_too_many(orjson.dumps({"input_batch": ["abc"] * 200}), InputType.STRINGS, 100)
    assert surely_too_many(orjson.dumps({"input_batch": ["YQ=="] * 200}), InputType.BYTES, 100)
    assert not surely_too_many(b"[" * 100, InputType.INTS, 100)  # too short to hold 100 inputs


class _Recorder:
    """The dispatcher's submit, recorded."""

    def __init__(self) -> None:
        self.submitted: list[list[bytes]] = []

    def submit(self, queries: Any, key: Any, slo_micros: int) -> None:
        self.submitted.append([q.data for q in queries])

    def cancel(self, queries: Any) -> None:
        pass


def _query_api(tmp_path: Path, max_inputs: int = 10_000) -> tuple[Any, _Recorder, Any]:
    from schooner.frontend.metrics import FrontendMetrics
    from schooner.frontend.query_api import QueryApi
    from schooner.frontend.state import App, Model, StateStore

    state = StateStore.open(str(tmp_path / "state.db"))
    state.add_app(App("a", InputType.DOUBLES, "null", 1_000_000))
    state.add_model(Model("m", "1", InputType.DOUBLES, [], "", "", -1))
    state.link("a", "m")
    recorder = _Recorder()
    return QueryApi(state, recorder, FrontendMetrics(), lambda: True, max_inputs), recorder, state


def _predict(api: Any, body: object, replies: list[Any]) -> None:
    from schooner.frontend.http import Request

    request = Request("POST", "/a/predict", "", orjson.dumps(body))
    request.param = "a"
    api.predict(request, lambda status, payload, *rest: replies.append((status, payload)))


def test_a_large_input_batch_is_converted_in_slices_with_others_answered_between(
    tmp_path: Path,
) -> None:
    import asyncio

    from schooner.frontend.query_api import SLICE_INPUTS

    n = 3 * SLICE_INPUTS + 7
    values = [[float(i), 0.5] for i in range(n)]

    async def main() -> None:
        api, recorder, state = _query_api(tmp_path)
        replies: list[Any] = []
        _predict(api, {"input_batch": values}, replies)
        assert recorder.submitted == []  # nothing converted yet: the loop runs others first
        _predict(api, {"input": [9.0]}, replies)  # a small request meanwhile
        assert recorder.submitted == [[struct.pack("<d", 9.0)]]
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(recorder.submitted) == 2 and replies == []
        # the same bytes, in order, as converting them in one go
        assert recorder.submitted[1] == [struct.pack("<2d", float(i), 0.5) for i in range(n)]
        # a bad input in a later slice: 400 naming it, and nothing submitted
        bad = [*values[: 2 * SLICE_INPUTS], ["x"], *values[: 10]]
        _predict(api, {"input_batch": bad}, replies)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(recorder.submitted) == 2
        assert replies[0][0] == 400 and f"input_batch[{2 * SLICE_INPUTS}]".encode() in replies[0][1]
        state.close()

    asyncio.run(main())


def test_more_inputs_than_the_limit_are_413_before_any_is_queued(tmp_path: Path) -> None:
    api, recorder, state = _query_api(tmp_path, max_inputs=50)
    replies: list[Any] = []
    _predict(api, {"input_batch": [[1.0]] * 51}, replies)
    _predict(api, {"input_batch": [[1.0]] * 5000}, replies)  # refused from the byte count
    _predict(api, {"input_batch": ["a"] * 51}, replies)  # a string batch is counted
    assert [r[0] for r in replies] == [413, 413, 413] and recorder.submitted == []
    assert b"at most 50" in replies[0][1]
    _predict(api, {"input_batch": [[1.0]] * 50}, replies)
    assert len(recorder.submitted) == 1 and len(recorder.submitted[0]) == 50
    state.close()

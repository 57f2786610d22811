"""The body of a Clipper answer: built in one step from a remembered serialization of the
output, it must be what ``orjson.dumps`` of the answer's dict gives, for every output, alone
and inside an ``input_batch`` answer. A one-input request's answer is made in C where the
extension is built (``_fastpath.Query`` and ``SingleAnswer``) and in Python without it: both
are checked."""

from __future__ import annotations

import orjson
import pytest

from schooner.frontend import dispatch, query_api
from schooner.frontend.dispatch import SHED, Query
from schooner.frontend.query_api import (
    _answer_json,
    _as_json,
    _BatchReply,
    output_json,
)
from schooner.frontend.state import App
from schooner.runtime.wire import InputType

OUTPUTS = ["0", "3.0", "1e2", " 7 ", "-0", "null", "true", '{"a": [1, 2]}', "cat", "", "NaN",
           "18446744073709551616", '"quoted"', "é\u2028", "x" * 200, "[1,"]  # fmt: skip


# (Query, the one-input answer) as the frontend pairs them: C where built, and Python
PAIRS = {"built": (dispatch.Query, query_api._single_reply),
         "python": (dispatch._PyQuery, query_api._py_single_reply)}  # fmt: skip


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("text", OUTPUTS)
def test_a_single_answer_is_the_dict_orjson_would_serialize(text: str, pair: str) -> None:
    make, single_reply = PAIRS[pair]
    app = App("a", InputType.DOUBLES, "null", 1000)
    got: list[bytes] = []
    done = single_reply(app, lambda status, body, *rest: got.append(body), None)
    q = make(41, "a", b"", 0.0, 1000, done)
    q.output = text
    done(q)
    expected = orjson.dumps({"query_id": 41, "output": _as_json(text), "default": False})
    assert got == [expected]
    assert _answer_json(app, q) == expected


@pytest.mark.parametrize("text", OUTPUTS)
def test_a_batch_answer_is_the_list_orjson_would_serialize(text: str) -> None:
    app = App("a", InputType.DOUBLES, text, 1000)  # the app's default output is the text too
    got: list[bytes] = []
    group = _BatchReply(app, 2, lambda status, body, *rest: got.append(body), None)
    group.first_id = 7
    answered = Query(7, "a", b"", 0.0, 1000, group.add)
    defaulted = Query(8, "a", b"", 0.0, 1000, group.add)
    answered.output = text
    defaulted.explanation = "the latency SLO was missed"
    group.add(defaulted)
    group.add(answered)
    assert got == [orjson.dumps({"batch_predictions": [
        {"query_id": 7, "output": _as_json(text), "default": False},
        {"query_id": 8, "output": _as_json(text), "default": True,
         "default_explanation": "the latency SLO was missed"},
    ]})]  # fmt: skip


def test_remembered_outputs_are_bounded_in_size_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query_api, "_OUTPUT_JSON", {})
    monkeypatch.setattr(query_api, "OUTPUT_JSON_ENTRIES", 3)
    output_json("y" * (query_api.OUTPUT_JSON_CHARS + 1))
    assert query_api._OUTPUT_JSON == {}
    for text in ["1", "2", "3"]:
        output_json(text)
    assert len(query_api._OUTPUT_JSON) == 3
    assert output_json("4") == b"4" and query_api._OUTPUT_JSON == {"4": b"4"}


@pytest.mark.parametrize("pair", PAIRS)
def test_a_single_answer_gives_defaults_and_sheds_as_the_app_asks(pair: str) -> None:
    make, single_reply = PAIRS[pair]
    app = App("a", InputType.DOUBLES, "[1, 2]", 1000)
    got: list[tuple[int, bytes]] = []
    shed: list[object] = []

    def reply(status: int, body: bytes, *rest: object) -> None:
        got.append((status, body))

    def overload(q: object, r: object) -> None:
        shed.append((q, r))

    default = {"query_id": 5, "output": [1, 2], "default": True, "default_explanation": "why"}
    for reason, answer_with_503 in [(SHED, False), ("slo_missed", True)]:
        q = make(5, "a", b"", 0.0, 1000, lambda q: None)
        q.explanation, q.reason = "why", reason
        single_reply(app, reply, overload if answer_with_503 else None)(q)
    assert got == [(200, orjson.dumps(default))] * 2 and shed == []
    q = make(5, "a", b"", 0.0, 1000, lambda q: None)
    q.explanation, q.reason = "why", SHED
    single_reply(app, reply, overload)(q)
    assert shed == [(q, reply)] and len(got) == 2


def test_the_c_query_is_the_python_query() -> None:
    fields = ("id", "app", "data", "arrival", "deadline", "slo_micros", "done", "output",
              "explanation", "reason", "lost", "model", "queued")  # fmt: skip

    def on_done(q: object) -> None:
        pass

    made = [kind(12, "app", b"xy", 1234.5678, 250_000, on_done)
            for kind in (dispatch.Query, dispatch._PyQuery)]  # fmt: skip
    assert [[getattr(q, f) for f in fields] for q in made] == [
        [12, "app", b"xy", 1234.5678, 1234.5678 + 250_000 * 1e-6, 250_000, False, None, None,
         None, None, None, False]] * 2  # fmt: skip
    assert all(q.on_done is on_done for q in made)
    for q in made:
        q.done, q.queued, q.output, q.deadline = True, True, "out", 1.5
        assert (q.done, q.queued, q.output, q.deadline) == (True, True, "out", 1.5)

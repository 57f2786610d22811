"""The body of a Clipper answer: built in one step from a remembered serialization of the
output, it must be what ``orjson.dumps`` of the answer's dict gives, for every output, alone
and inside an ``input_batch`` answer."""

from __future__ import annotations

import orjson
import pytest

from schooner.frontend import query_api
from schooner.frontend.dispatch import Query
from schooner.frontend.query_api import (
    _answer_json,
    _as_json,
    _BatchReply,
    _single_reply,
    output_json,
)
from schooner.frontend.state import App
from schooner.runtime.wire import InputType

OUTPUTS = ["0", "3.0", "1e2", " 7 ", "-0", "null", "true", '{"a": [1, 2]}', "cat", "", "NaN",
           "18446744073709551616", '"quoted"', "é\u2028", "x" * 200, "[1,"]  # fmt: skip


@pytest.mark.parametrize("text", OUTPUTS)
def test_a_single_answer_is_the_dict_orjson_would_serialize(text: str) -> None:
    app = App("a", InputType.DOUBLES, "null", 1000)
    got: list[bytes] = []
    done = _single_reply(app, lambda status, body, *rest: got.append(body), None)
    q = Query(41, "a", b"", 0.0, 1000, done)
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

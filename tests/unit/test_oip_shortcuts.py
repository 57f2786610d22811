"""schooner.frontend.oip's shortcuts against its general paths: the C-parsed "data" array
and the one-row response template give exactly what the general code gives, or step aside."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from schooner.frontend import oip
from schooner.frontend.dispatch import Query
from schooner.frontend.inputs import BadInput
from schooner.frontend.state import App
from schooner.runtime.wire import InputType

APPS = {t: App(f"app-{t.clipper_name}", t, "null", 1_000_000, "m") for t in InputType}


def general(app, header):
    return oip._rows(app, oip._parse(header), memoryview(b""), True, None)


def shortcut(app, header):
    fast = oip._fast_data(app, header)
    if fast is None:
        return None
    return oip._rows(app, oip._parse(fast[1]), memoryview(b""), True, fast[0])


def outcome(fn, app, header):
    try:
        return ("rows", fn(app, header))
    except (BadInput, oip.OipError) as exc:
        return ("error", str(exc))


def bodies():
    rng = random.Random(7)
    tokens = ["0", "-0", "1", "-1.5", "1e3", "2.5E-3", "3.4028235e38", "3.5e38", "1e400",
              "2147483647", "2147483648", "-2147483649", "9007199254740993", "0.1", "true",
              "null", '"1"', "[1]"]  # fmt: skip
    for _ in range(600):
        n, width = rng.randint(1, 3), rng.randint(1, 4)
        count = n * width + rng.choice([0, 0, 0, -1, 1])
        values = ",".join(rng.choice(tokens) if rng.random() < 0.2
                          else repr(rng.uniform(-1e6, 1e6)) if rng.random() < 0.5
                          else str(rng.randint(-100, 100)) for _ in range(max(count, 1)))  # fmt: skip
        datatype = rng.choice(["FP64", "FP32", "INT32", "INT64", "FP16", "BYTES"])
        extra = rng.choice(["", ',"parameters":{"a":1}', ',"parameters":{"data":[1]}'])
        yield (b'{"inputs":[{"name":"x","shape":[%d,%d],"datatype":"%s","data":[%s]%s}]}'
               % (n, width, datatype.encode(), values.encode(), extra.encode()))


@pytest.mark.skipif(oip.parse_array_at is None, reason="the C fast path is not built here")
@pytest.mark.parametrize("input_type", [InputType.DOUBLES, InputType.FLOATS, InputType.INTS])
def test_the_c_shortcut_gives_what_the_general_path_gives(input_type):
    app = APPS[input_type]
    answered = 0
    for header in bodies():
        want = outcome(general, app, header)
        got = outcome(shortcut, app, header)
        if got == ("rows", None):  # stepped aside: the caller runs the general path
            continue
        assert got == want, header
        answered += 1
    assert answered > 20  # the shortcut did take part


def test_the_one_row_template_is_the_general_response():
    app = APPS[InputType.FLOATS]
    for text in ["0", "1.5", "-3", "1e300", "12345678901234567890", "[1, 2]", "NaN", '"cat"',
                 "not json"]:  # fmt: skip
        q = Query(1, app.name, b"", 0.0, 1000, lambda q: None)
        q.output = text
        sent = []
        oip._reply_rest(lambda status, body, *rest, out=sent: out.append(body), app, [q],
                        list(oip._ALL_JSON), None, None)  # fmt: skip
        tensors = oip.output_tensors(app, [q], oip.OUTPUTS)
        want = {"model_name": app.name, "parameters": {"defaults": 0},
                "outputs": [{"name": n, "datatype": d, "shape": s, "data": v}
                            for n, d, s, v in tensors]}  # fmt: skip
        assert json.loads(sent[0]) == want, text


class _State:
    def __init__(self, app):
        self.apps = {app.name: app}
        self.current = {app.linked_model: "1"}
        self.models = {(app.linked_model, "1"): None}
        self._next_id = 0

    def reserve_query_ids(self, count):
        first, self._next_id = self._next_id, self._next_id + count
        return first


class _AnsweringDispatcher:
    """Answers every query at once with ``answer(query)`` (or the default for "raise")."""

    queues: dict = {}

    def __init__(self, answer):
        self.answer = answer

    def submit(self, queries, key, slo):
        for q in queries:
            q.done = True
            text = self.answer(q)
            if text == "raise":
                q.explanation = "model m:1 failed"
            else:
                q.output = text
            q.on_done(q)

    def answer_default(self, q, reason, explanation):
        q.done, q.explanation = True, explanation
        q.on_done(q)


def _api(app, answer):
    from schooner.frontend.query_api import QueryApi

    state, dispatcher = _State(app), _AnsweringDispatcher(answer)
    queries = QueryApi(state, dispatcher, None, lambda: True)
    return oip.OipApi(state, dispatcher, queries, lambda: True, "test")


@pytest.mark.skipif(oip.parse_array_at is None, reason="the C fast path is not built here")
def test_the_one_row_path_answers_what_the_general_path_answers():
    from schooner.frontend.http import Request

    bodies = [
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2.5,-3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}],"id":"a"}',
        b'{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[1,2]}]}',
        b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[true]}]}',
        b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[3.5e38]}]}',
        b'{"inputs":[{"name":"data","shape":[1,1],"datatype":"FP32","data":[1]}]}',
    ]  # fmt: skip
    import struct

    def binary(header, values, code="f"):
        return (header + struct.pack(f"<{len(values)}{code}", *values), len(header))

    binaries = [
        binary(b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32",'
               b'"parameters":{"binary_data_size":8}}]}', [1.5, 2.0]),
        binary(b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32",'
               b'"parameters":{"binary_data_size":8}}]}', [1.5, 2.0]),
        binary(b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP64",'
               b'"parameters":{"binary_data_size":8}}]}', [1.5], "d"),
        binary(b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32",'
               b'"parameters":{"binary_data_size":4}}]}', [1.5, 2.0]),
    ]  # fmt: skip
    app = APPS[InputType.FLOATS]
    cases = [(body, None) for body in bodies] + binaries
    for answer in ("7", "2.5", '"text"', "[1, 2]", "raise"):
        for body, length in cases:
            fast, general = [], []
            api = _api(app, lambda q, a=answer: a)
            request = Request("POST", f"/v2/models/{app.name}/infer", "", body, length)
            api.handle(request, lambda status, payload, *rest, out=fast: out.append((status, payload)))
            try:
                api._infer(request, lambda status, payload, *rest, out=general: out.append((status, payload)),
                           app, ("m", "1"), None)  # fmt: skip
            except oip.OipError as exc:
                general.append((exc.status, orjson.dumps({"error": str(exc)})))
            assert fast == general, (answer, body)
    # the first body is the one the shortcut is for: it did take it
    path = f"/v2/models/{app.name}/infer"
    for (body, length), taken in ((cases[0], True), (cases[3], False), (binaries[0], True),
                                  (binaries[1], False)):  # fmt: skip
        request = Request("POST", path, "", body, length)
        assert _api(app, lambda q: "1")._one_row(app, request, lambda *a: None) is taken

"""The commonest request's own path (``QueryApi._submit_one``: one input for the linked model's
current version) must do what the general one (``_submit`` -> ``make_queries`` -> ``dispatch``
-> ``cancel_on_disconnect``) does; its C route (``_fastpath.PredictRoute``) must send there
only what ``predict`` would; and the dispatcher's deadline sweep must reach every pending
query although ``on_pending`` is only called when a pending line was empty."""

from __future__ import annotations

import re

import pytest

from schooner.frontend.dispatch import Dispatcher, Query
from schooner.frontend.http import Request
from schooner.frontend.inputs import FAST_CODES
from schooner.frontend.metrics import FrontendMetrics
from schooner.frontend.query_api import QueryApi, _fastpath
from schooner.frontend.state import App, Model, StateStore
from schooner.runtime.wire import InputType

KEY = ("m", "1")
DATA = b"\x00\x00\x80\x3f"  # one float32, 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _api(on_overload: str, max_queued: int = 100) -> tuple[QueryApi, Dispatcher, App, Clock]:
    state = StateStore.open(":memory:")
    state.add_app(App("a", InputType.FLOATS, "-1", 50_000, on_overload=on_overload))
    state.add_model(Model("m", "1", InputType.FLOATS))
    state.link("a", "m")
    clock = Clock()
    dispatcher = Dispatcher(lambda identity, frames: True, FrontendMetrics(), clock=clock,
                            max_queued=max_queued)  # fmt: skip
    dispatcher.expect_replicas(KEY, 60.0)  # no replica yet: the queries wait in the queue
    return QueryApi(state, dispatcher, FrontendMetrics(), lambda: True), dispatcher, state.apps["a"], clock


def _request() -> Request:
    return Request("POST", "/a/predict", "", b'{"input": [1.0]}')


def _replies() -> tuple[list[tuple[object, ...]], object]:
    got: list[tuple[object, ...]] = []
    return got, lambda *answer: got.append(answer)


def _queued(dispatcher: Dispatcher) -> list[Query]:
    return list(dispatcher.queues[KEY].queue)


@pytest.mark.parametrize("on_overload", ["default", "503"])
def test_the_single_query_path_queues_answers_and_cancels_as_the_general_path(on_overload: str) -> None:
    api, dispatcher, app, _ = _api(on_overload)
    one, general = _request(), _request()
    got_one, reply_one = _replies()
    got_general, reply_general = _replies()
    api._submit_one(one, app, DATA, KEY, reply_one)
    api._submit(general, app, [DATA], False, KEY, reply_general)
    q_one, q_general = _queued(dispatcher)
    assert q_general.id == q_one.id + 1  # ids from the same blocks, in order
    for q in (q_one, q_general):
        assert (q.app, q.data, q.slo_micros, q.model, q.queued, q.done) == (
            "a", DATA, 50_000, dispatcher.queues[KEY], True, False)
        assert q.deadline - q.arrival == pytest.approx(0.05)
    dispatcher.answer(q_one, "7")
    dispatcher.answer(q_general, "7")
    assert got_one == [(200, b'{"query_id":%d,"output":7,"default":false}' % q_one.id)]
    assert got_general == [(200, b'{"query_id":%d,"output":7,"default":false}' % q_general.id)]

    # a client that leaves: both requests' queries are dropped, unanswered
    one, general = _request(), _request()
    api._submit_one(one, app, DATA, KEY, reply_one)
    api._submit(general, app, [DATA], False, KEY, reply_general)
    assert one.cancel is not None and general.cancel is not None
    one.cancel()
    general.cancel()
    assert all(q.done and q.output is None and q.explanation is None for q in _queued(dispatcher)[-2:])
    assert len(got_one) == len(got_general) == 1  # nothing more was answered


@pytest.mark.parametrize("on_overload", ["default", "503"])
def test_a_shed_single_query_is_answered_as_the_general_path_answers_it(on_overload: str) -> None:
    api, dispatcher, app, _ = _api(on_overload, max_queued=1)
    api._submit_one(_request(), app, DATA, KEY, lambda *answer: None)  # fills the queue
    got_one, reply_one = _replies()
    got_general, reply_general = _replies()
    api._submit_one(_request(), app, DATA, KEY, reply_one)
    api._submit(_request(), app, [DATA], False, KEY, reply_general)
    assert len(got_one) == len(got_general) == 1
    (answer_one,), (answer_general,) = got_one, got_general
    if on_overload == "503":  # 503, the same cause and Retry-After
        assert answer_one == answer_general
        assert answer_one[0] == 503 and answer_one[-1] == b"Retry-After: 1\r\n"
    else:  # the default output with the same reason; only the query ids differ
        assert answer_one[0] == answer_general[0] == 200
        assert re.sub(rb'"query_id":\d+', b"", answer_one[1]) == re.sub(  # type: ignore[arg-type]
            rb'"query_id":\d+', b"", answer_general[1])  # type: ignore[arg-type]
        assert b'"default":true' in answer_one[1] and b"overloaded" in answer_one[1]  # type: ignore[operator]


def test_every_pending_query_gets_its_default_though_on_pending_comes_once_per_line() -> None:
    clock = Clock()
    dispatcher = Dispatcher(lambda identity, frames: True, FrontendMetrics(), clock=clock)
    dispatcher.expect_replicas(KEY, 60.0)
    armed: list[float] = []
    dispatcher.on_pending = lambda: armed.append(clock.now)
    answers: list[Query] = []

    def submit(slo: int) -> Query:
        q = Query(len(answers) + 1000 + len(armed) * 100, "a", DATA, clock.now, slo, answers.append)
        dispatcher.submit([q], KEY, slo)
        return q

    first = submit(1_000)
    assert len(armed) == 1 and dispatcher.has_pending
    second = submit(1_000)  # its line is not empty: the timer armed for the first covers it
    assert len(armed) == 1
    other = submit(2_000)  # another SLO's line, empty: armed again
    assert len(armed) == 2
    # the server's timer sweeps and arms itself again while anything is pending
    clock.now += 0.0015
    dispatcher.sweep()
    assert answers == [first, second] and dispatcher.has_pending
    clock.now += 0.001
    dispatcher.sweep()
    assert answers == [first, second, other] and not dispatcher.has_pending
    assert all(q.reason == "no_replica" and q.explanation for q in answers)  # none connected
    submit(1_000)  # its line is empty again: armed again
    assert len(armed) == 3


# ------------------------------------------------------------------ the C route of predict

BODIES = [
    b'{"input": [1.0]}', b'{"input": [1.0, 2.5e3, -7]}', b' {"input":[3]} ', b'{"input": []}',
    b'{"input": [1.0], "version": "1"}', b'{"input": [1.0], "version": "9"}',
    b'{"input_batch": [[1.0], [2.0]]}', b'{"input": ["x"]}', b"not json", b"[]",
    b'{"input": [1e400]}', b'{"inputs": [1.0]}',
]  # fmt: skip


def _with_apps() -> tuple[QueryApi, Dispatcher]:
    api, dispatcher, _, _ = _api("default")
    state = api._state
    state.add_app(App("ints", InputType.INTS, "0", 50_000))
    state.add_model(Model("mi", "3", InputType.INTS))
    state.link("ints", "mi")
    dispatcher.expect_replicas(("mi", "3"), 60.0)
    state.add_app(App("bytes", InputType.BYTES, "0", 50_000))
    state.add_app(App("unlinked", InputType.FLOATS, "0", 50_000))
    state.add_app(App("shed", InputType.FLOATS, "0", 50_000, on_overload="503"))
    state.link("shed", "m")
    return api, dispatcher


def _serve_all(app: str, route: str) -> tuple[object, list[bytes]]:
    """Every body of BODIES to ``/<app>/predict`` through the C route or ``predict``: the
    answers and queued queries, and the bodies the C route handed to ``predict``."""
    api, dispatcher = _with_apps()
    general: list[bytes] = []
    handler = api.predict
    if route == "c":
        handler = _fastpath.PredictRoute(api, FAST_CODES)
        predict = api.predict

        def counted(request: Request, reply: object) -> None:
            general.append(request.body)
            predict(request, reply)  # type: ignore[arg-type]

        api.predict = counted  # type: ignore[method-assign]
    answers: list[tuple[object, ...]] = []
    for body in BODIES:
        request = Request("POST", f"/{app}/predict", "", body)
        request.param = app
        handler(request, lambda *answer: answers.append(answer))
    queued = [(q.id, q.app, q.data, q.slo_micros) for mq in dispatcher.queues.values()
              for q in mq.queue]  # fmt: skip
    return (answers, queued), general


@pytest.mark.skipif(_fastpath is None, reason="the C extension is not built")
@pytest.mark.parametrize("app", ["a", "ints", "bytes", "unlinked", "shed", "nope"])
def test_the_c_route_answers_and_queues_as_predict(app: str) -> None:
    """``_fastpath.PredictRoute`` sends only what ``predict`` would send to ``_submit_one``
    there, and everything else to ``predict``: the same answers and the same queued queries
    for every body, app and version."""
    through_c, general = _serve_all(app, "c")
    through_python, _ = _serve_all(app, "python")
    assert through_c == through_python
    fast = {"a": 3, "shed": 3, "ints": 1}.get(app, 0)  # the common bodies: to _submit_one
    assert len(general) == len(BODIES) - fast
    if app in ("a", "shed"):
        assert len(through_c[1]) >= 4  # type: ignore[index]


@pytest.mark.skipif(_fastpath is None, reason="the C extension is not built")
def test_the_c_route_is_the_predict_route_and_takes_only_requests_of_the_http_core() -> None:
    from schooner.frontend.http import Router, _PyRequest

    api, dispatcher = _with_apps()
    router = api.routes(Router())
    assert type(router._pattern[("POST", "predict")]) is _fastpath.PredictRoute
    request = _PyRequest("POST", "/a/predict", "", b'{"input": [1.0]}')
    request.param = "a"
    got: list[tuple[object, ...]] = []
    _fastpath.PredictRoute(api, FAST_CODES)(request, lambda *answer: got.append(answer))
    assert len(dispatcher.queues[KEY].queue) == 1  # through predict, which queued it

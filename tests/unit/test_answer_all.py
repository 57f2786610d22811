"""A batch's answers: ``_fastpath.answer_all`` (C, used where built) must do what the
dispatcher's Python loops do (``Dispatcher._answer`` for each query, ``answer_default`` for
an output the model flagged as failed): the same queries answered in the same order with
the same outputs and defaults, the answered ones skipped, and the same metrics."""

from __future__ import annotations

import pytest

from schooner.frontend import dispatch
from schooner.frontend.dispatch import Dispatcher, Query
from schooner.frontend.metrics import FrontendMetrics

fastpath = pytest.importorskip(
    "schooner.frontend._fastpath", reason="the C extension is not built (no C compiler at install)"
)

NOW = 1000.0


def batch(order: list[str]) -> tuple[list[Query], list[str], list[int]]:
    answered: list[int] = []
    queries = [Query(i, app, b"", NOW - 0.001 * (i + 1), 10**6, lambda q: answered.append(q.id))
               for i, app in enumerate(order)]  # fmt: skip
    return queries, [f"out{i}" for i in range(len(order))], answered


def histograms(metrics: FrontendMetrics) -> dict[str, tuple[list[int], float, int]]:
    return {app: (h.counts, h.total, h.count) for app, h in metrics._hot.latency.items()}


@pytest.mark.parametrize("order", [["a"] * 5, ["a", "b", "b", "a", "c"], ["x"]])
def test_answer_all_is_the_dispatchers_loop(order: list[str]) -> None:
    results = []
    for use_c in (True, False):
        metrics = FrontendMetrics()
        d = Dispatcher(lambda identity, frames: True, metrics, clock=lambda: NOW)
        queries, texts, answered = batch(order)
        queries[1 % len(queries)].done = True  # answered already (a default): skipped
        if use_c:
            fastpath.answer_all(queries, texts, NOW, metrics.answered_many, None, None)
        else:
            for q, text in zip(queries, texts):
                if not q.done:
                    d._answer(q, text, NOW)
        results.append((answered, [(q.done, q.output) for q in queries], histograms(metrics)))
    assert results[0] == results[1]
    assert sum(count for _, _, count in results[0][2].values()) == len(results[0][0])


def test_an_on_done_that_raises_stops_the_batch_but_its_answers_are_counted() -> None:
    metrics = FrontendMetrics()
    queries, texts, answered = batch(["a", "a", "a"])

    def broken(q: Query) -> None:
        raise RuntimeError("reply failed")

    queries[1].on_done = broken
    with pytest.raises(RuntimeError, match="reply failed"):
        fastpath.answer_all(queries, texts, NOW, metrics.answered_many, None, None)
    assert answered == [0] and [q.done for q in queries] == [True, True, False]
    assert histograms(metrics)["a"][2] == 2  # the two answered before it stopped


def test_answer_all_refuses_what_is_not_a_query_and_mismatched_texts() -> None:
    metrics = FrontendMetrics()
    queries, texts, _ = batch(["a", "a"])
    with pytest.raises(ValueError):
        fastpath.answer_all(queries, texts[:1], NOW, metrics.answered_many, None, None)
    with pytest.raises(ValueError):
        fastpath.answer_all(queries, texts, NOW, metrics.answered_many, b"\0", None)
    with pytest.raises(TypeError):
        fastpath.answer_all([dispatch._PyQuery(1, "a", b"", NOW, 1, print)], ["x"], NOW,
                            metrics.answered_many, None, None)  # fmt: skip
    assert not any(q.done for q in queries)


def test_observe_many_is_observe_for_each() -> None:
    from schooner.runtime.metrics import BucketHistogram

    values = [0.0001, 0.5, 0.003, 2.0, 0.003, 100.0]
    one, many = BucketHistogram((0.001, 0.01, 1.0)), BucketHistogram((0.001, 0.01, 1.0))
    for v in values:
        one.observe(v)
    many.observe_many(values)
    assert (one.counts, one.total, one.count) == (many.counts, many.total, many.count)


@pytest.mark.parametrize("status", [None, b"\0\0\0\0\0", b"\0\1\0\1\1"])
def test_a_response_answers_the_same_with_and_without_the_c_loop(
    status: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole ``Dispatcher.on_response``, packed (with a status frame, some outputs
    failed) and plain, with ``answer_all`` and with the Python loops."""
    from schooner.runtime import wire
    from schooner.runtime.wire import CAP_PACKED, InputType, NewContainer

    results = []
    for use_c in (True, False):
        monkeypatch.setattr(dispatch, "_answer_all", fastpath.answer_all if use_c else None)
        metrics = FrontendMetrics()
        sent: list[list[object]] = []
        def send(identity: bytes, frames: list[object], sent: list[list[object]] = sent) -> bool:
            sent.append(list(frames))
            return True

        d = Dispatcher(send, metrics, clock=lambda: NOW)
        d.configure_model(("m", "1"), 5)  # one batch of all five
        d.add_replica(b"r", NewContainer("m", "1", InputType.DOUBLES, CAP_PACKED))
        answered: list[tuple[object, ...]] = []

        def done(q: Query, answered: list[tuple[object, ...]] = answered) -> None:
            answered.append((q.id, q.output, q.explanation, q.reason))

        queries = [Query(i, "a" if i < 3 else "b", b"\0" * 8, NOW - 0.01, 10**6, done)
                   for i in range(5)]  # fmt: skip
        d.submit(queries, ("m", "1"), 10**6)
        d.cancel([queries[2]])
        msg_id = bytes(sent[0][3])
        outputs = [b"o%d" % i for i in range(5)]
        if status is None:
            frames = wire.encode_predict_response(msg_id, outputs)
        else:
            frames = wire.encode_packed_response(msg_id, outputs, status)
        response = wire.decode_from_container([memoryview(bytes(f)) for f in frames])
        d.on_response(b"r", response)
        hot = metrics._hot
        results.append((answered, histograms(metrics), dict(hot.default_reasons),
                        dict(hot.defaults)))  # fmt: skip
    assert results[0] == results[1]
    assert len(results[0][0]) == 4  # the cancelled query is not answered
    if status is not None and any(status):
        assert ("b", "model_error") in results[0][2]

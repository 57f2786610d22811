"""The prediction cache with a real frontend and real containers: hits answer what the model
answered, N identical pending queries make one model call, the byte bound evicts, and a
version change empties it. The model counts its calls in a file (one line per input)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import requests
from conftest import held_model
from test_selection import add_app, add_version, metric

pytestmark = pytest.mark.slow


def counting(calls: Path, offset: float):
    calls_path = str(calls)

    def model(xs):
        with open(calls_path, "a") as f:
            f.write("".join(f"{x[0]}\n" for x in xs))
        return [str(x[0] * 10 + offset) for x in xs]

    return model


def calls_of(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def events(fe, event: str) -> float:
    return metric(fe, "schooner_frontend_cache_events_total", app="app", event=event)


def test_hits_answer_what_the_model_answered_and_a_version_change_invalidates(
    start_frontend, start_container, closure_artifact, tmp_path
):
    fe = start_frontend(log_level="INFO")
    add_app(fe)
    v1_calls, v2_calls = tmp_path / "v1.calls", tmp_path / "v2.calls"
    add_version(fe, start_container, closure_artifact(counting(v1_calls, 0.5), name="v1"), "m", "1")
    add_version(fe, start_container, closure_artifact(counting(v2_calls, 0.25), name="v2"), "m", "2")
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["m"]})
    fe.admin("set_model_version", {"model_name": "m", "model_version": "1"})
    # off by default: every query asks the model
    for _ in range(3):
        assert fe.predict("app", {"input": [7.0]})[1]["output"] == 70.5
    assert len(calls_of(v1_calls)) == 3

    fe.admin("set_prediction_cache", {"name": "app", "size_mb": 1})
    assert fe.admin("get_application", {"name": "app"})["selection"]["cache_mb"] == 1
    first = [fe.predict("app", {"input": [float(i)]})[1] for i in range(10)]
    again = [fe.predict("app", {"input": [float(i)]})[1] for i in range(10)]
    # 1 and 1.0 are the same input bytes: one entry
    ints = [fe.predict("app", {"input": [i]})[1] for i in range(10)]
    batch = fe.predict("app", {"input_batch": [[float(i)] for i in range(12)]})[1]
    assert [a["output"] for a in first] == [i * 10 + 0.5 for i in range(10)]
    assert [a["output"] for a in again] == [a["output"] for a in first]
    assert [a["output"] for a in ints] == [a["output"] for a in first]
    assert [p["output"] for p in batch["batch_predictions"]] == [i * 10 + 0.5 for i in range(12)]
    assert not [a for a in first + again + ints if a["default"]]
    assert len({a["query_id"] for a in first + again + ints}) == 30  # ids are still fresh
    assert len(calls_of(v1_calls)) == 3 + 10 + 2  # the batch's two new inputs
    assert (events(fe, "hit"), events(fe, "miss")) == (30, 12)
    # the OIP path shares the cache
    body = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [3.0]}]}
    r = requests.post(f"{fe.query_url}/v2/models/app/infer", json=body, timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"][0] in (30.5, "30.5")
    assert len(calls_of(v1_calls)) == 15 and events(fe, "hit") == 31

    # a version change: nothing of version 1 is served again
    fe.admin("set_model_version", {"model_name": "m", "model_version": "2"})
    assert fe.predict("app", {"input": [1.0]})[1]["output"] == 10.25
    assert fe.predict("app", {"input": [1.0]})[1]["output"] == 10.25
    assert calls_of(v2_calls) == ["1.0"] and len(calls_of(v1_calls)) == 15
    assert events(fe, "invalidated") == 12
    # a pinned version bypasses the cache
    assert fe.predict("app", {"input": [1.0], "version": "1"})[1]["output"] == 10.5
    assert len(calls_of(v1_calls)) == 16
    fe.admin("set_prediction_cache", {"name": "app", "size_mb": 0})
    assert fe.admin("get_application", {"name": "app"})["selection"] is None
    fe.predict("app", {"input": [1.0]})
    assert calls_of(v2_calls) == ["1.0", "1.0"]


def test_the_byte_bound_evicts(start_frontend, start_container, closure_artifact, tmp_path):
    fe = start_frontend(log_level="INFO")
    add_app(fe)
    calls = tmp_path / "calls"
    add_version(fe, start_container, closure_artifact(counting(calls, 0.5)), "m", "1")
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["m"]})
    # an entry is 8 input bytes + a short answer + 160 of overhead: about 5 fit in 1000 bytes
    fe.admin("set_prediction_cache", {"name": "app", "size_mb": 1000 / 2**20})
    for i in range(40):
        assert fe.predict("app", {"input": [float(i)]})[1]["output"] == i * 10 + 0.5
    evicted = events(fe, "evict")
    assert 40 - 6 <= evicted <= 40 - 4
    # the newest are still there, the oldest are not
    fe.predict("app", {"input": [39.0]})
    assert len(calls_of(calls)) == 40
    fe.predict("app", {"input": [0.0]})
    assert len(calls_of(calls)) == 41
    assert events(fe, "evict") == evicted + 1


def test_identical_pending_queries_make_one_model_call(
    start_frontend, start_container, closure_artifact, tmp_path
):
    fe = start_frontend(log_level="INFO")
    add_app(fe, slo=30_000_000)
    calls, started, release = tmp_path / "calls", tmp_path / "started", tmp_path / "release"
    model = held_model(started, release, counting(calls, 0.5))
    add_version(fe, start_container, closure_artifact(model), "m", "1")
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["m"]})
    fe.admin("set_prediction_cache", {"name": "app", "size_mb": 1})
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(fe.predict, "app", {"input": [5.0]}) for _ in range(16)]
        fe.process.wait_until(lambda: started.exists() or None, timeout=30, what="held")
        fe.process.wait_until(lambda: events(fe, "coalesced") == 15 or None, timeout=30,
                              what="15 queries waiting for the one in flight")  # fmt: skip
        assert not any(f.done() for f in futures)
        release.touch()
        answers = [f.result()[1] for f in futures]
    assert [a["output"] for a in answers] == [50.5] * 16
    assert len({a["query_id"] for a in answers}) == 16
    assert calls_of(calls) == ["5.0"]
    assert (events(fe, "miss"), events(fe, "coalesced"), events(fe, "hit")) == (1, 15, 0)

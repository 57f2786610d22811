"""Model selection with a real frontend and real containers: traffic split (exact and sticky),
shadow traffic that never touches the primary's answers, a bandit learning from feedback,
an ensemble that answers without its stalled member, and both request paths (Clipper's and
the Open Inference Protocol's).

Assertions are counts and orderings: which model answered (each model answers something of
its own), what the metrics counted, and whether an answer came while another model was
still held in its predict call (a file it creates, a file that releases it).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import free_port, held_model

pytestmark = pytest.mark.slow


def constant(value: float):
    def model(xs):
        return [str(value) for _ in xs]

    return model


def failing(xs):
    raise RuntimeError("this shadow always fails")


def add_app(fe, app="app", slo=2_000_000, default="-1"):
    fe.admin("add_app", {"name": app, "input_type": "doubles", "default_output": default,
                         "latency_slo_micros": slo})  # fmt: skip


def add_version(fe, start_container, artifact: Path, model: str, version: str) -> Any:
    fe.admin("add_model", {"model_name": model, "model_version": version, "labels": [],
                           "input_type": "doubles", "container_name": "local",
                           "model_data_path": str(artifact), "batch_size": -1})  # fmt: skip
    container = start_container(artifact, rpc_port=fe.rpc_port, model_name=model,
                                model_version=version, name=f"c-{model}-{version}")  # fmt: skip
    fe.wait_for_replica(model, version, timeout=30)
    return container


def metric(fe, name: str, **labels: str) -> float:
    text = requests.get(f"{fe.query_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class Client:
    """Concurrent POSTs, one keep-alive session per thread."""

    def __init__(self, threads: int = 8) -> None:
        self._local = threading.local()
        self._pool = concurrent.futures.ThreadPoolExecutor(threads)

    def _session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = requests.Session()
        return s

    def post(self, url: str, body: Any) -> Any:
        r = self._session().post(url, json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def map(self, url: str, bodies: list[Any]) -> list[Any]:
        return list(self._pool.map(lambda b: self.post(url, b), bodies))

    def close(self) -> None:
        self._pool.shutdown()


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def test_a_split_is_exact_sticky_keys_stay_and_set_model_version_takes_all(
    start_frontend, start_container, closure_artifact, client
):
    fe = start_frontend(log_level="INFO")
    add_app(fe)
    add_version(fe, start_container, closure_artifact(constant(3.0), name="v3"), "cnn", "3")
    add_version(fe, start_container, closure_artifact(constant(4.0), name="v4"), "cnn", "4")
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["cnn"]})
    fe.admin("set_traffic_split", {"name": "app", "split": {"cnn:3": 90, "cnn:4": 10},
                                   "sticky_field": "user"})  # fmt: skip
    url = f"{fe.query_url}/app/predict"

    # without a key: exactly 90/10 (the split is a smooth weighted round robin)
    answers = client.map(url, [{"input": [float(i)]} for i in range(2000)])
    assert not [a for a in answers if a["default"]]
    assert Counter(a["output"] for a in answers) == {3.0: 1800, 4.0: 200}

    # with a key: each user always gets the same version; users spread by the weights
    users = [f"user-{i}" for i in range(600)]
    bodies = [{"input": [1.0], "user": u} for u in users for _ in range(3)]
    answers = client.map(url, bodies)
    seen: dict[str, set[float]] = {}
    for body, answer in zip(bodies, answers):
        seen.setdefault(body["user"], set()).add(answer["output"])
    assert all(len(outputs) == 1 for outputs in seen.values())
    on_four = sum(outputs == {4.0} for outputs in seen.values())
    assert 30 <= on_four <= 100  # binomial(600, 0.1): mean 60, sd 7.3; 4 sd either side
    # the same keys keep their version on the OIP path too (its request "parameters")
    oip = f"{fe.query_url}/v2/models/app/infer"
    for user in users[:50]:
        body = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64",
                            "data": [1.0]}], "parameters": {"user": user}}  # fmt: skip
        out = client.post(oip, body)["outputs"][0]["data"][0]
        assert {float(out)} == seen[user]
    # ... and the v2 model is ready (a replica of a member is connected)
    assert requests.get(f"{fe.query_url}/v2/models/app/ready", timeout=10).status_code == 200

    info = fe.admin("get_application", {"name": "app"})
    assert info["selection"]["policy"] == "split"
    assert info["selection"]["models"] == [["cnn:3", 90.0], ["cnn:4", 10.0]]
    # a pinned version bypasses the split
    answers = client.map(url, [{"input": [1.0], "version": "4"}] * 20)
    assert {a["output"] for a in answers} == {4.0}
    # a new split at run time, while queries are in flight: none is dropped
    bodies = [{"input": [float(i)]} for i in range(400)]
    futures = [client._pool.submit(client.post, url, b) for b in bodies]
    fe.admin("set_traffic_split", {"name": "app", "split": {"cnn:4": 1}})
    answers = [f.result() for f in futures]
    assert len(answers) == 400 and not [a for a in answers if a["default"]]
    assert {a["output"] for a in client.map(url, bodies[:50])} == {4.0}
    # set_model_version keeps its meaning: all traffic to that version
    fe.admin("set_model_version", {"model_name": "cnn", "model_version": "3"})
    assert {a["output"] for a in client.map(url, bodies[:50])} == {3.0}
    assert fe.admin("get_application", {"name": "app"})["selection"] is None


def test_sticky_keys_over_grpc(start_frontend, start_container, closure_artifact, client):
    """A gRPC ModelInfer request's string parameter named by the app's sticky_field keeps its
    member, the same one the Clipper path's JSON field gives the same key."""
    grpc = pytest.importorskip("grpc")
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")
    grpc_port = free_port()
    fe = start_frontend(log_level="INFO", extra_args=["--grpc-port", str(grpc_port)])
    add_app(fe)
    add_version(fe, start_container, closure_artifact(constant(3.0), name="v3"), "cnn", "3")
    add_version(fe, start_container, closure_artifact(constant(4.0), name="v4"), "cnn", "4")
    fe.admin("set_traffic_split", {"name": "app", "split": {"cnn:3": 50, "cnn:4": 50},
                                   "sticky_field": "user"})  # fmt: skip
    users = [f"user-{i}" for i in range(60)]
    url = f"{fe.query_url}/app/predict"
    seen = {u: client.post(url, {"input": [1.0], "user": u})["output"] for u in users}
    assert set(seen.values()) == {3.0, 4.0}
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
    for user in users:
        for _ in range(2):
            request = pb.ModelInferRequest(model_name="app")
            request.inputs.add(name="input", datatype="FP64", shape=[1, 1],
                               contents=pb.InferTensorContents(fp64_contents=[1.0]))  # fmt: skip
            request.parameters["user"].string_param = user
            response = infer(request, timeout=30)
            (out,) = np.frombuffer(response.raw_output_contents[0], "<f8").tolist()
            assert out == seen[user]
    channel.close()


def test_a_slow_or_failing_shadow_never_touches_the_primary(
    start_frontend, start_container, closure_artifact, client, tmp_path
):
    fe = start_frontend(log_level="INFO")
    add_app(fe, slo=5_000_000)
    add_version(fe, start_container, closure_artifact(constant(1.0), name="primary"), "m", "1")
    started, release = tmp_path / "started", tmp_path / "release"
    slow = held_model(started, release, lambda xs: [str(2.0) for _ in xs])
    add_version(fe, start_container, closure_artifact(slow, name="slow"), "m", "2")
    add_version(fe, start_container, closure_artifact(failing, name="fails"), "m", "3")
    add_version(fe, start_container, closure_artifact(constant(1.0), name="same"), "m", "4")
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["m"]})
    fe.admin("set_model_version", {"model_name": "m", "model_version": "1"})
    url = f"{fe.query_url}/app/predict"

    def outcomes() -> dict[str, float]:
        return {o: metric(fe, "schooner_frontend_shadow_comparisons_total", outcome=o)
                for o in ("agree", "disagree", "shadow_default", "primary_default", "skipped")}

    def settled(total: int) -> dict[str, float] | None:
        seen = outcomes()  # every sampled query counted once: compared, or skipped
        return seen if sum(seen.values()) >= total else None

    # a shadow that hangs: every primary answer comes while the shadow is still held, and
    # once SHADOW_MAX_WAITING (64) copies wait for it, no more are sent (shed first: skipped)
    fe.admin("set_shadow", {"name": "app", "model": "m:2"})
    answers = client.map(url, [{"input": [float(i)]} for i in range(200)])
    assert started.exists() and not release.exists()
    assert [a["output"] for a in answers] == [1.0] * 200
    assert not [a for a in answers if a["default"]]
    assert outcomes()["agree"] == outcomes()["disagree"] == 0
    assert 200 - 64 - 20 <= outcomes()["skipped"] < 200
    release.touch()
    first = fe.process.wait_until(lambda: settled(200), timeout=30, what="shadow comparisons")
    # the copies that were sent: the shadow answered 2.0 where the primary answered 1.0
    assert first["disagree"] > 0 and first["agree"] == first["primary_default"] == 0
    assert sum(first.values()) == 200

    # a shadow that raises: the primary answers as before, the failures are counted
    fe.admin("set_shadow", {"name": "app", "model": "m:3"})
    answers = client.map(url, [{"input": [float(i)]} for i in range(100)])
    assert [a["output"] for a in answers] == [1.0] * 100
    second = fe.process.wait_until(lambda: settled(300), timeout=30, what="failed shadows")
    assert second["shadow_default"] > first["shadow_default"]
    assert second["agree"] == 0 and sum(second.values()) == 300

    # a shadow that agrees, on a sampled half of the queries, through the OIP path too
    fe.admin("set_shadow", {"name": "app", "model": "m:4", "fraction": 0.5})
    client.map(url, [{"input": [float(i)]} for i in range(100)])
    oip = f"{fe.query_url}/v2/models/app/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
    for _ in range(20):
        assert client.post(oip, body)["outputs"][0]["data"][0] in (1.0, "1.0")
    third = fe.process.wait_until(lambda: settled(360), timeout=30, what="agreeing shadows")
    assert sum(third.values()) == 360 and third["agree"] > 0  # 60 of 120 sampled
    assert third["disagree"] == first["disagree"]
    # every copy sent was answered (counted apart from the app's own answers)
    sent = sum(third.values()) - third["skipped"]
    assert metric(fe, "schooner_frontend_predictions_total", app="app/shadow") == sent
    assert metric(fe, "schooner_frontend_predictions_total", app="app") == 200 + 100 + 100 + 20
    fe.admin("set_shadow", {"name": "app", "model": None})
    assert fe.admin("get_application", {"name": "app"})["selection"] is None


def test_a_bandit_learns_the_better_model_from_feedback_and_keeps_it_over_a_restart(
    start_frontend, start_container, closure_artifact, client
):
    def good(xs):
        return [str(2 * x[0]) for x in xs]

    def bad(xs):
        return [str(2 * x[0] + 1) for x in xs]

    fe = start_frontend(log_level="INFO")
    add_app(fe)
    add_version(fe, start_container, closure_artifact(good, name="good"), "good", "1")
    add_version(fe, start_container, closure_artifact(bad, name="bad"), "bad", "1")
    fe.admin("set_selection_policy", {"name": "app", "policy": "exp3", "gamma": 0.1,
                                      "models": {"good:1": 1, "bad:1": 1}})  # fmt: skip
    predict, update = f"{fe.query_url}/app/predict", f"{fe.query_url}/app/update"
    picks = []
    for i in range(300):
        answer = client.post(predict, {"input": [float(i)]})
        assert not answer["default"]
        picks.append("good" if answer["output"] == 2 * i else "bad")
        scored = client.post(update, {"input": [float(i)], "label": 2 * i})
        assert scored["scored"] is True and scored["model"] == f"{picks[-1]}:1"
        assert scored["reward"] == (1.0 if picks[-1] == "good" else 0.0)
    assert picks[-100:].count("good") >= 80
    assert client.post(update, {"input": [-1.0], "label": 0}) == {
        "scored": False, "cause": "no recent answer for this input"}  # fmt: skip
    assert metric(fe, "schooner_frontend_feedback_total", outcome="scored") == 300
    assert metric(fe, "schooner_frontend_feedback_total", outcome="unmatched") == 1
    learned = fe.admin("get_application", {"name": "app"})["policy_state"]
    assert learned["log_weights"][0] > learned["log_weights"][1]

    # the policy's state persists with the app
    fe.process.stop()
    again = start_frontend(state_db=fe.state_db, name="frontend-again", log_level="INFO")
    info = again.admin("get_application", {"name": "app"})
    assert info["policy_state"] == learned and info["selection"]["policy"] == "exp3"


def test_an_ensemble_answers_within_the_slo_when_a_member_stalls(
    start_frontend, start_container, closure_artifact, client, tmp_path
):
    fe = start_frontend(log_level="INFO")
    add_app(fe, slo=2_000_000)
    started, release = tmp_path / "started", tmp_path / "release"
    stalls = held_model(started, release, lambda xs: [str(100.0) for _ in xs])
    add_version(fe, start_container, closure_artifact(constant(1.0), name="one"), "one", "1")
    add_version(fe, start_container, closure_artifact(constant(3.0), name="three"), "three", "1")
    add_version(fe, start_container, closure_artifact(stalls, name="stalls"), "stalls", "1")
    fe.admin("set_selection_policy", {"name": "app", "policy": "ensemble", "straggler": 0.25,
                                      "models": ["one:1", "three:1", "stalls:1"]})  # fmt: skip
    url = f"{fe.query_url}/app/predict"
    answers = client.map(url, [{"input": [float(i)]} for i in range(8)])
    # answered (by the two others, averaged) while the third was still held
    assert started.exists() and not release.exists()
    assert [(a["output"], a["default"]) for a in answers] == [(2.0, False)] * 8
    release.touch()
    # once it answers in time, all three count
    fe.process.wait_until(
        lambda: client.post(url, {"input": [0.5]})["output"] == 104.0 / 3 or None,
        timeout=30, what="an answer of all three members",
    )  # fmt: skip
    fe.admin("set_selection_policy", {"name": "app", "policy": "ensemble", "combine": "vote",
                                      "models": ["one:1", "three:1", "one:1x"]}, expect=404)  # fmt: skip
    assert metric(fe, "schooner_frontend_predictions_total", app="app/member") >= 16

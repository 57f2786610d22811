"""The real frontend and real containers, as separate processes, queried over HTTP.

Every test runs over both transports between frontend and containers: RPC v3 on ZeroMQ
(``zmq``, as with Clipper's containers or a container on another machine) and the
frontend's local Unix socket (``local``, what the local manager uses on one machine).
"""

from __future__ import annotations

import concurrent.futures
import re
import signal

import numpy as np
import pytest
import requests
from conftest import held_model

pytestmark = pytest.mark.slow


def metrics(fe) -> str:
    return requests.get(f"{fe.query_url}/metrics", timeout=10).text


@pytest.fixture(params=["zmq", "local"])
def start_frontend(request, start_frontend):
    """The conftest's ``start_frontend``, with the local socket for the ``local`` runs."""
    local = request.param == "local"
    return lambda **kwargs: start_frontend(local_socket=local, **kwargs)


def deploy(frontend, start_container, artifact, *, app="app", model="m", version="1",
           slo=2_000_000, default="-1", link=True, batch_size=-1, replicas=1, **env):  # fmt: skip
    """Register app/model/link through the management API and start replica processes
    (on the frontend's local socket when it has one)."""
    if frontend.rpc_socket:
        env = {"SCHOONER_RPC_SOCKET": frontend.rpc_socket, **env}
    if app and not any(a == app for a in frontend.admin("get_all_applications", {"verbose": False})):
        frontend.admin("add_app", {"name": app, "input_type": "doubles", "default_output": default,
                                   "latency_slo_micros": slo})  # fmt: skip
    frontend.admin("add_model", {"model_name": model, "model_version": version, "labels": [],
                                 "input_type": "doubles", "container_name": "local",
                                 "model_data_path": str(artifact), "batch_size": batch_size})  # fmt: skip
    if app and link:
        frontend.admin("add_model_links", {"app_name": app, "model_names": [model]})
    containers = [
        start_container(artifact, rpc_port=frontend.rpc_port, model_name=model,
                        model_version=version, env=env, name=f"{model}-{version}-{i}")  # fmt: skip
        for i in range(replicas)
    ]
    for _ in containers:
        frontend.wait_for_replica(model, version, timeout=30)
    frontend.process.wait_until(
        lambda: sum(c["model_name"] == model and str(c["model_version"]) == version
                    for c in frontend.containers()) == replicas,  # fmt: skip
        timeout=30, what=f"{replicas} replicas of {model}:{version}",
    )
    return containers


def test_predict_input_batch_and_pinned_versions(start_frontend, start_container, closure_artifact):
    fe = start_frontend()

    def v1(xs):
        return [str(float(np.sum(x))) for x in xs]

    def v2(xs):
        return [f'{{"sum": {float(np.sum(x))}, "v": 2}}' for x in xs]

    deploy(fe, start_container, closure_artifact(v1, "v1"), version="1")
    status, body = fe.predict("app", {"input": [1.0, 2.0]})
    assert status == 200 and body["output"] == 3.0 and body["default"] is False
    deploy(fe, start_container, closure_artifact(v2, "v2"), version="2", link=False)
    assert fe.predict("app", {"input": [1.0, 2.0]})[1]["output"] == {"sum": 3.0, "v": 2}
    assert fe.predict("app", {"input": [1.0, 2.0], "version": "1"})[1]["output"] == 3.0
    status, body = fe.predict("app", {"input_batch": [[1.0], [2.0, 3.0], [4.0]]})
    assert status == 200 and [p["output"]["sum"] for p in body["batch_predictions"]] == [1.0, 5.0, 4.0]
    fe.admin("set_model_version", {"model_name": "m", "model_version": "1"})  # roll back
    assert fe.predict("app", {"input": [5.0]})[1]["output"] == 5.0
    status, body = fe.predict("app", {"input": [5.0], "version": "9"})
    assert status == 400 and "9" in body["cause"]
    status, body = fe.predict("app", {"input": "not numbers"})
    assert status == 400 and body["error"]


def test_slow_model_gets_the_default_output_with_its_explanation(start_frontend, start_container,
                                                                  closure_artifact, tmp_path):  # fmt: skip
    fe = start_frontend()
    started, release = tmp_path / "started", tmp_path / "release"
    slow = held_model(started, release, lambda xs: ["late"] * len(xs))
    deploy(fe, start_container, closure_artifact(slow), slo=200_000, default='"fallback"')
    status, body = fe.predict("app", {"input": [1.0]})
    # The model has the query and cannot answer it before the release file, created only
    # below: the default came from the SLO while the model was still predicting.
    assert started.exists()
    assert status == 200 and body["default"] is True and body["output"] == "fallback"
    assert body["default_explanation"] == (
        "the latency SLO of 200000 us was missed: model m:1 did not answer in time"
    )
    assert 'schooner_frontend_default_outputs_total{app="app",reason="slo_missed"} 1.0' in metrics(fe)
    release.touch()
    status, body = fe.predict("app", {"input": [2.0]})  # released: answers in time again
    assert status == 200 and body["output"] == "late" and body["default"] is False


def test_raising_model_answers_every_query_and_keeps_serving(start_frontend, start_container,
                                                             closure_artifact):  # fmt: skip
    fe = start_frontend()

    def fragile(xs):
        if any(float(x[0]) < 0 for x in xs):
            raise RuntimeError("cannot take negatives")
        return [str(float(x[0])) for x in xs]

    # Batches of up to 8: a good query batched with a bad one must still get its output.
    (replica,) = deploy(fe, start_container, closure_artifact(fragile), default="0", batch_size=8)
    status, body = fe.predict("app", {"input_batch": [[1.0], [-1.0], [2.0], [3.0]]})
    assert status == 200
    assert [(p["default"], p["output"]) for p in body["batch_predictions"]] == [
        (False, 1.0), (True, 0), (False, 2.0), (False, 3.0)]  # fmt: skip
    assert "predicting each input alone" in replica.process.log()  # one batch of four raised

    bodies = [{"input": [float(v)]} for v in (1, -1, 2, -2, 3, 4, -5, 6) * 4]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: fe.predict("app", b, timeout=20), bodies))
    assert all(status == 200 for status, _ in answers)
    for body, (_, answer) in zip(bodies, answers):
        x = body["input"][0]
        if x < 0:
            assert answer["default"] is True and answer["output"] == 0, (x, answer)
            assert answer["default_explanation"] == (
                "model m:1 failed: RuntimeError: cannot take negatives"), (x, answer)
        else:
            assert (answer["default"], answer["output"]) == (False, x), (x, answer)
    status, body = fe.predict("app", {"input": [8.0]})
    assert status == 200 and body["output"] == 8.0 and body["default"] is False


def test_a_killed_replica_loses_no_query(start_frontend, start_container, closure_artifact,
                                         tmp_path):  # fmt: skip
    fe = start_frontend()
    flags = str(tmp_path)

    def steady(xs):
        import os
        import time

        pid = os.getpid()
        if os.path.exists(f"{flags}/hold-{pid}"):  # keep this batch until the test kills us
            open(f"{flags}/holding-{pid}", "w").close()
            time.sleep(60)
        time.sleep(0.02)
        return [str(float(x[0])) for x in xs]

    replicas = deploy(fe, start_container, closure_artifact(steady), replicas=2, slo=5_000_000)
    victim = replicas[0].process
    n = 400
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(fe.predict, "app", {"input": [float(i)]}, timeout=30) for i in range(n)]
        fe.process.wait_until(lambda: sum(f.done() for f in futures) >= 40, timeout=60,
                              what="the first 40 answers")  # fmt: skip
        (tmp_path / f"hold-{victim.pid}").touch()
        # The victim is inside predict with a batch of ours: kill it mid-batch.
        victim.wait_until((tmp_path / f"holding-{victim.pid}").exists, timeout=30,
                          what="the victim to take a batch")  # fmt: skip
        victim.send_signal(signal.SIGKILL)
        answers = [f.result(timeout=60) for f in futures]
    assert all(status == 200 for status, _ in answers)
    defaults = [(i, a) for i, (_, a) in enumerate(answers) if a["default"]]
    assert not defaults, f"{len(defaults)} of {n} fell back to the default: {defaults[:3]}"
    assert [a["output"] for _, a in answers] == [float(i) for i in range(n)]
    requeued = re.findall(r"replica \d+ of model m:1 removed: .*; (\d+) queries re-queued",
                          fe.process.log())  # fmt: skip
    assert requeued and int(requeued[0]) > 0, fe.process.tail()  # the held batch went on
    assert "schooner_frontend_default_outputs_total{" not in metrics(fe)
    fe.process.wait_until(lambda: len(fe.containers()) == 1, timeout=15, what="dead replica dropped")


def test_frontend_restart_keeps_state_and_containers_reconnect(start_frontend, start_container,
                                                                closure_artifact, spawn):  # fmt: skip
    fe = start_frontend()
    deploy(fe, start_container, closure_artifact(lambda xs: ["ok"] * len(xs)))
    assert fe.predict("app", {"input": [1.0]})[1]["output"] == "ok"
    fe.process.send_signal(signal.SIGKILL)
    fe.process.wait_for_exit(10)
    again = spawn("frontend-again", fe.process.argv)
    again.wait_for_log("frontend ready", timeout=30)
    fe.process = again
    assert fe.admin("get_all_applications", {"verbose": False}) == ["app"]
    assert fe.admin("get_linked_models", {"app_name": "app"}) == ["m"]
    assert fe.admin("get_all_models", {"verbose": False}) == ["m:1"]
    fe.wait_for_replica("m", "1", timeout=20)  # the container re-registers by itself
    status, body = fe.predict("app", {"input": [1.0]})
    assert status == 200 and body["output"] == "ok"

"""The container process against a ROUTER driven by the test (real sockets, real process)."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request

import numpy as np
import pytest
import zmq

from schooner.runtime import wire

pytestmark = pytest.mark.slow

D = wire.InputType.DOUBLES


class Frontend:
    """The frontend's side of the conversation, just enough to drive a container."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.identity = b""

    def recv(self, timeout: float = 20.0):
        assert self.sock.poll(int(timeout * 1000)), f"nothing from the container in {timeout}s"
        identity, *frames = self.sock.recv_multipart()
        return identity, wire.decode_from_container(frames)

    def register(self) -> wire.NewContainer:
        self.identity, msg = self.recv()
        assert isinstance(msg, wire.Heartbeat)
        self.sock.send_multipart([self.identity, *wire.encode_heartbeat_reply(
            wire.HeartbeatType.REQUEST_CONTAINER_METADATA)])  # fmt: skip
        _, hello = self.recv()
        assert isinstance(hello, wire.NewContainer)
        return hello

    def send(self, frames) -> None:
        self.sock.send_multipart([self.identity, *frames])

    def packed(self, msg_id: int, rows) -> None:
        x = np.asarray(rows, dtype="<f8")
        self.send(wire.encode_packed_request(msg_id, D, [x.shape[1] * 8] * len(x), x.tobytes()))

    def response(self, timeout: float = 20.0) -> wire.PredictResponse:
        while True:
            _, msg = self.recv(timeout)
            if isinstance(msg, wire.PredictResponse):
                return msg

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def frontend():
    f = Frontend()
    yield f
    f.close()


def _start(start_container, closure_artifact, frontend, func, **env):
    art = closure_artifact(func)
    c = start_container(art, rpc_port=frontend.port, model_name="m", env=env)
    hello = frontend.register()
    assert hello == wire.NewContainer("m", "1", D, wire.CAP_PACKED)
    return c


@pytest.mark.parametrize("zero_copy", ["0", "1"])
def test_answers_both_framings_and_serves_after_a_raising_batch(
    start_container, closure_artifact, frontend, zero_copy
):
    def model(xs):
        if any(float(x[0]) < 0 for x in xs):
            raise ValueError("negative input")
        return [str(float(np.sum(x))) for x in xs]

    _start(start_container, closure_artifact, frontend, model, SCHOONER_ZERO_COPY=zero_copy)
    frontend.packed(1, [[1.0, 2.0], [3.0, 4.0]])
    r = frontend.response()
    assert (r.id, r.packed, r.texts(), r.error_flags()) == (1, True, ["3.0", "7.0"], [False, False])
    frontend.packed(2, [[-1.0, 0.0], [3.0, 4.0]])
    r = frontend.response()
    assert r.error_flags() == [True, True] and "ValueError: negative input" in r.texts()[0]
    frontend.send(wire.encode_predict_request(3, D, [np.array([-1.0]).tobytes()]))
    r = frontend.response()
    assert not r.packed and json.loads(r.texts()[0])["cause"] == "ValueError: negative input"
    frontend.send(wire.encode_predict_request(4, D, [np.array([5.0, 6.0]).tobytes()]))
    assert frontend.response().texts() == ["11.0"]


@pytest.mark.parametrize("bad,message", [
    (lambda xs: ["x"], "returned 1 outputs for 2 inputs"),
    (lambda xs: [1.0 for _ in xs], "output 0 is float"),
    (lambda xs: None, "got NoneType"),
])  # fmt: skip
def test_wrong_count_or_type_answers_errors(start_container, closure_artifact, frontend, bad, message):
    _start(start_container, closure_artifact, frontend, bad)
    frontend.packed(1, [[1.0], [2.0]])
    r = frontend.response()
    assert r.error_flags() == [True, True] and message in r.texts()[0]


def test_heartbeats_continue_during_a_long_predict(start_container, closure_artifact, frontend):
    def slow(xs):
        time.sleep(3.0)
        return ["done"] * len(xs)

    _start(start_container, closure_artifact, frontend, slow, SCHOONER_HEARTBEAT_INTERVAL="0.4")
    frontend.packed(1, [[1.0]])
    heartbeats, started = 0, time.monotonic()
    while True:
        _, msg = frontend.recv()
        if isinstance(msg, wire.Heartbeat):
            heartbeats += 1
            frontend.send(wire.encode_heartbeat_reply(wire.HeartbeatType.KEEP_ALIVE))
        else:
            assert isinstance(msg, wire.PredictResponse) and msg.texts() == ["done"]
            break
    assert time.monotonic() - started >= 2.9
    assert heartbeats >= 3, f"only {heartbeats} heartbeats during a 3 s predict"


def test_reconnects_with_a_fresh_socket_after_silence(start_container, closure_artifact, frontend):
    c = _start(start_container, closure_artifact, frontend, lambda xs: ["ok"] * len(xs),
               SCHOONER_HEARTBEAT_INTERVAL="0.2", SCHOONER_SESSION_TIMEOUT="1.0")  # fmt: skip
    first = frontend.identity
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # never answer: the container must give up on us
        identity, msg = frontend.recv()
        if identity != first:
            break
    assert identity != first and isinstance(msg, wire.Heartbeat)
    frontend.identity = identity
    frontend.send(wire.encode_heartbeat_reply(wire.HeartbeatType.REQUEST_CONTAINER_METADATA))
    assert isinstance(frontend.recv()[1], wire.NewContainer)
    frontend.packed(9, [[1.0]])
    assert frontend.response().texts() == ["ok"]
    assert "reconnecting" in c.process.log()


def test_queued_requests_coalesce_up_to_the_max_batch_size(start_container, closure_artifact, frontend):
    def sizes(xs):
        if len(xs) == 1 and float(xs[0][0]) == 0.0:
            time.sleep(1.0)  # hold the loop so the next requests queue up
        return [str(len(xs))] * len(xs)

    _start(start_container, closure_artifact, frontend, sizes, SCHOONER_MAX_BATCH_SIZE="4")
    frontend.packed(1, [[0.0]])
    time.sleep(0.3)
    frontend.packed(2, [[1.0], [1.0]])
    frontend.send(wire.encode_predict_request(3, D, [np.array([1.0]).tobytes()] * 2))
    frontend.packed(4, [[1.0]])
    frontend.packed(5, [[1.0]] * 6)  # bigger than the limit on its own: predicted in chunks
    got = {}
    for _ in range(5):
        r = frontend.response()
        got[r.id] = r.texts()
    assert got == {1: ["1"], 2: ["4", "4"], 3: ["4", "4"], 4: ["1"], 5: ["4"] * 4 + ["2"] * 2}


def test_malformed_messages_are_dropped_and_counted(start_container, closure_artifact, frontend):
    _start(start_container, closure_artifact, frontend, lambda xs: ["ok"] * len(xs),
           SCHOONER_METRICS_PORT="0")  # fmt: skip
    for frames in ([b"x"], [b"", b"\x04\x00\x00\x00", b"\x01\x00\x00\x00"],
                   [b"", b"\x03\x00\x00\x00", b"\x01\x00\x00\x00", b"id", b"\x00\x00\x00\x00"]):  # fmt: skip
        frontend.send(frames)
    bad_size = wire.encode_predict_request(7, D, [b"12345678"])
    bad_size[-2] = bad_size[-2][:8] + b"\x00" * 8 + bad_size[-2][16:]  # header says 0 bytes
    frontend.send(bad_size)
    frontend.packed(8, [[1.0]])
    assert frontend.response().texts() == ["ok"]


def test_readiness_metrics_and_clean_stop(start_container, closure_artifact, frontend, tmp_path):
    c = _start(start_container, closure_artifact, frontend, lambda xs: ["ok"] * len(xs),
               SCHOONER_METRICS_PORT="0")  # fmt: skip
    assert c.ready_file.read_text() == "ready\n"
    port = int(c.process.log().split("metrics and health on http://0.0.0.0:")[1].split()[0])
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    assert health == {"status": "ready", "model": "m", "version": "1"}
    frontend.packed(1, [[1.0], [2.0], [3.0]])
    frontend.response()
    frontend.send([b"garbage"])
    frontend.packed(2, [[1.0]])
    frontend.response()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'schooner_container_requests_total{model="m",version="1"} 2.0' in text
    assert 'schooner_container_inputs_total{model="m",version="1"} 4.0' in text
    assert 'schooner_container_malformed_messages_total{model="m",version="1"} 1.0' in text
    assert 'schooner_container_batch_size_bucket{le="4.0",model="m",version="1"} 2.0' in text
    c.process.send_signal(signal.SIGTERM)
    assert c.process.wait_for_exit(10) == 0
    assert not c.ready_file.exists()


def test_bad_configuration_exits_2_listing_every_problem(spawn):
    p = spawn("bad-config", [sys.executable, "-m", "schooner.runtime"],
              env={"CLIPPER_PORT": "x", "SCHOONER_DEVICE": "tpu"})  # fmt: skip
    assert p.wait_for_exit(30) == 2
    log = p.log()
    for name in ("CLIPPER_MODEL_NAME", "CLIPPER_MODEL_VERSION", "CLIPPER_PORT", "SCHOONER_DEVICE"):
        assert name in log


def test_unloadable_artifact_exits_3_with_the_reason(spawn, tmp_path):
    env = {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1",
           "CLIPPER_MODEL_PATH": str(tmp_path), "SCHOONER_READY_FILE": "none"}  # fmt: skip
    p = spawn("no-artifact", [sys.executable, "-m", "schooner.runtime"], env=env)
    assert p.wait_for_exit(30) == 3
    assert "schooner.json is missing" in p.log()


def test_cuda_for_a_cpu_only_framework_is_a_start_up_error(spawn, closure_artifact):
    env = {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1", "SCHOONER_DEVICE": "cuda",
           "CLIPPER_MODEL_PATH": str(closure_artifact(lambda xs: xs)), "SCHOONER_READY_FILE": "none"}  # fmt: skip
    p = spawn("cuda", [sys.executable, "-m", "schooner.runtime"], env=env)
    assert p.wait_for_exit(30) == 2
    assert "runs on cpu only" in p.log()

"""The container process against a frontend played by the test (real sockets, real process):
a ROUTER on ZeroMQ, or, where the local channel matters too, the frontend's Unix socket.

Where a test needs the model to be busy at a given moment, the model blocks until a file
appears (and says it started by creating another): the test orders events with files, not
with sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import held_model

from benchmarks.hot_path import cpu_seconds
from schooner.runtime import wire
from schooner.runtime.transport import unix_address, zmtp_bytes

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
        self.sent = 0  # ZMTP bytes of every message sent


    def recv(self, timeout: float = 20.0):
        assert self.sock.poll(int(timeout * 1000)), f"nothing from the container in {timeout}s"
        identity, *frames = self.sock.recv_multipart()
        return identity, wire.decode_from_container(frames)

    def register(self) -> wire.NewContainer:
        self.identity, msg = self.recv()
        assert isinstance(msg, wire.Heartbeat)
        self.send(wire.encode_heartbeat_reply(wire.HeartbeatType.REQUEST_CONTAINER_METADATA))
        _, hello = self.recv()
        assert isinstance(hello, wire.NewContainer)
        return hello

    def send(self, frames) -> None:
        self.sock.send_multipart([self.identity, *frames])
        self.sent += len(zmtp_bytes(frames))

    def wait_delivered(self, since: int, timeout: float = 10.0) -> None:
        """Wait until the bytes sent after ``sent`` was ``since`` wait in the container's
        socket (a ZeroMQ send only queues them for libzmq's I/O thread). Only while the
        container reads nothing, e.g. inside a held predict."""
        # The container's end of the connection: the one whose remote port is ours
        # (/proc/net/tcp: addresses as hex ip:port, then "tx_queue:rx_queue" in hex)
        want, queued, deadline = self.sent - since, -1, time.monotonic() + timeout
        while queued < want:
            assert time.monotonic() < deadline, f"{queued} of {want} bytes delivered"
            time.sleep(0.01)
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].split(":")[1], 16) == self.port and fields[3] == "01":
                    queued = int(fields[4].split(":")[1], 16)

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


class StreamFrontend(Frontend):
    """The same conversation on a Unix stream socket (``SCHOONER_RPC_SOCKET``), framed by
    ``wire.stream_header``. A send that returned has put the bytes in the container's
    socket buffer: the container's next read of the socket gets them."""

    _names = itertools.count()

    def __init__(self) -> None:
        self.name = f"@schooner-test-container-{os.getpid()}-{next(self._names)}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(unix_address(self.name))
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        self.reader = wire.StreamReader()
        self.pending: deque[list[bytes]] = deque()
        self.port = 1  # CLIPPER_PORT: unused once SCHOONER_RPC_SOCKET is set
        self.identity = b"local"
        self.sent = 0

    def recv(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing from the container in {timeout}s"
            try:
                if self.conn is None:
                    self.listener.settimeout(left)
                    self.conn, _ = self.listener.accept()
                self.conn.settimeout(left)
                data = self.conn.recv(1 << 20)
            except TimeoutError:
                continue
            assert data, "the container closed the connection"
            self.pending.extend([bytes(f) for f in m] for m in self.reader.feed(data))
        return self.identity, wire.decode_from_container(self.pending.popleft())

    def send(self, frames) -> None:
        assert self.conn is not None, "no container connected"
        self.conn.sendall(wire.stream_header(frames) + b"".join(bytes(f) for f in frames))

    def wait_delivered(self, since: int, timeout: float = 10.0) -> None:
        """Nothing to wait for: a send that returned has delivered."""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def frontend():
    f = Frontend()
    yield f
    f.close()


@pytest.fixture(params=["zmq", "local"])
def any_frontend(request):
    """The test's frontend on either channel the container speaks."""
    f = StreamFrontend() if request.param == "local" else Frontend()
    yield f
    f.close()


class Gate:
    """Holds a model inside predict: the model creates ``started`` and waits (at most a
    minute) for ``release``, which the test creates when it is ready."""

    def __init__(self, directory: Path) -> None:
        self.started = directory / "predict-started"
        self.release_file = directory / "predict-release"

    def wait_started(self, container) -> None:
        container.process.wait_until(self.started.exists, timeout=30, what="the model to start")

    def release(self) -> None:
        self.release_file.touch()


def _start(start_container, closure_artifact, frontend, func, **env):
    art = closure_artifact(func)
    if isinstance(frontend, StreamFrontend):
        env = {"SCHOONER_RPC_SOCKET": frontend.name, **env}
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
    frontend.packed(2, [[-1.0, 0.0], [3.0, 4.0], [-2.0, 1.0], [5.0, 5.0]])
    r = frontend.response()  # only the inputs it raises on fail: the others get their outputs
    assert r.error_flags() == [True, False, True, False]
    assert r.texts()[1::2] == ["7.0", "10.0"]
    assert all(t == "ValueError: negative input" for t in r.texts()[::2]), r.texts()
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


def gated_model(gate: Gate, answer, hold=lambda xs: True):
    """A model that answers ``answer(xs)``, but first, for a batch that ``hold`` picks,
    stays in predict until the test releases it (a minute at most)."""
    return held_model(gate.started, gate.release_file, answer, hold)


def test_heartbeats_continue_during_a_long_predict(start_container, closure_artifact,
                                                   any_frontend, tmp_path):  # fmt: skip
    frontend, gate = any_frontend, Gate(tmp_path)
    model = gated_model(gate, lambda xs: ["done"] * len(xs))
    c = _start(start_container, closure_artifact, frontend, model, SCHOONER_HEARTBEAT_INTERVAL="0.4")
    frontend.packed(1, [[1.0]])
    gate.wait_started(c)
    # From here until the release, the loop is inside predict: heartbeats can only come
    # from the heartbeat thread (but one sent by the idle loop may still be on its way).
    heartbeats = 0
    while heartbeats < 4:
        _, msg = frontend.recv()
        assert isinstance(msg, wire.Heartbeat), f"{msg!r} before the model was released"
        heartbeats += 1
        frontend.send(wire.encode_heartbeat_reply(wire.HeartbeatType.KEEP_ALIVE))
    gate.release()
    assert frontend.response().texts() == ["done"]
    assert c.process.log().count("heartbeat sent during a predict") >= 3, c.process.tail()
    frontend.packed(2, [[2.0]])  # the same session goes on
    assert frontend.response().texts() == ["done"]


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


def test_queued_requests_coalesce_up_to_the_max_batch_size(start_container, closure_artifact,
                                                           any_frontend, tmp_path):  # fmt: skip
    frontend, gate = any_frontend, Gate(tmp_path)
    sizes = gated_model(gate, lambda xs: [str(len(xs))] * len(xs),
                        hold=lambda xs: len(xs) == 1 and float(xs[0][0]) == 0.0)  # fmt: skip

    c = _start(start_container, closure_artifact, frontend, sizes, SCHOONER_MAX_BATCH_SIZE="4")
    frontend.packed(1, [[0.0]])
    gate.wait_started(c)  # request 1 is being predicted alone; the rest queue behind it
    mark = frontend.sent
    frontend.packed(2, [[1.0], [1.0]])
    frontend.send(wire.encode_predict_request(3, D, [np.array([1.0]).tobytes()] * 2))
    frontend.packed(4, [[1.0]])
    frontend.packed(5, [[1.0]] * 6)  # bigger than the limit on its own: predicted in chunks
    frontend.wait_delivered(mark)
    gate.release()
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
    # Metrics listen on loopback by default; the ready file reports the port bound.
    port = int(c.process.log().split("metrics and health on http://127.0.0.1:")[1].split()[0])
    assert c.ready_file.read_text() == f"ready\nmetrics_port={port}\n"
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


def test_inputs_answered_with_errors_are_counted_on_both_framings(
    start_container, closure_artifact, frontend
):
    def model(xs):
        if any(float(x[0]) < 0 for x in xs):
            raise ValueError("negative input")
        return [str(float(x[0])) for x in xs]

    c = _start(start_container, closure_artifact, frontend, model, SCHOONER_METRICS_PORT="0")
    port = int(c.process.log().split("metrics and health on http://127.0.0.1:")[1].split()[0])
    frontend.send(wire.encode_predict_request(1, D, [np.array([-1.0]).tobytes()]))  # plain
    assert json.loads(frontend.response().texts()[0])["cause"] == "ValueError: negative input"
    frontend.packed(2, [[-1.0], [2.0], [-3.0]])  # each input alone: two of three fail
    assert frontend.response().error_flags() == [True, False, True]
    frontend.send(wire.encode_predict_request(3, wire.InputType.INTS, [b"\0" * 4]))  # wrong type
    assert "this container serves doubles" in json.loads(frontend.response().texts()[0])["cause"]
    frontend.packed(4, [[5.0]])
    assert frontend.response().texts() == ["5.0"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'schooner_container_requests_total{model="m",version="1"} 4.0' in text
    assert 'schooner_container_inputs_total{model="m",version="1"} 6.0' in text
    assert 'schooner_container_errors_total{model="m",version="1"} 4.0' in text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_busy_poll_answers_and_sleeps_when_idle(start_container, closure_artifact, any_frontend):
    frontend = any_frontend
    c = _start(start_container, closure_artifact, frontend, lambda xs: [str(x[0]) for x in xs],
               SCHOONER_BUSY_POLL_US="5000", SCHOONER_HEARTBEAT_INTERVAL="0.2")  # fmt: skip
    for i in range(50):  # one in flight: each request comes while the container polls
        frontend.packed(i, [[float(i)]])
        assert frontend.response().texts() == [str(float(i))]
    frontend.send(wire.encode_predict_request(50, D, [np.array([7.0]).tobytes()]))
    assert frontend.response().texts() == ["7.0"]
    # Idle: each wait for a request polls for 5 ms, then sleeps until the heartbeat is due
    # (0.2 s): a few percent of a core, where a poll that never stopped would take all of it.
    before = cpu_seconds(c.process.pid)
    time.sleep(2.0)
    assert cpu_seconds(c.process.pid) - before < 0.5
    frontend.packed(51, [[1.5]])  # and the session is still there
    assert frontend.response().texts() == ["1.5"]


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


def _start_up_env(artifact, **extra):
    return {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1",
            "CLIPPER_MODEL_PATH": str(artifact), "SCHOONER_READY_FILE": "none", **extra}  # fmt: skip


def _one_line_error(log: str, needle: str) -> None:
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if needle in line]
    assert len(lines) == 1, log


def test_a_busy_metrics_port_is_one_line_and_exit_2(spawn, closure_artifact):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        env = _start_up_env(closure_artifact(lambda xs: xs), SCHOONER_METRICS_PORT=str(port),
                            SCHOONER_METRICS_HOST="127.0.0.1")  # fmt: skip
        p = spawn("busy-metrics", [sys.executable, "-m", "schooner.runtime"], env=env)
        assert p.wait_for_exit(30) == 2
        _one_line_error(p.log(), f"SCHOONER_METRICS_PORT={port}: cannot listen there")
    finally:
        taken.close()


def test_a_metrics_host_not_on_this_machine_is_one_line_and_exit_2(spawn, closure_artifact):
    env = _start_up_env(closure_artifact(lambda xs: xs), SCHOONER_METRICS_PORT="0",
                        SCHOONER_METRICS_HOST="192.0.2.1")  # TEST-NET-1: on no interface here
    p = spawn("foreign-metrics-host", [sys.executable, "-m", "schooner.runtime"], env=env)
    assert p.wait_for_exit(30) == 2
    _one_line_error(p.log(), "SCHOONER_METRICS_HOST=192.0.2.1")


def test_a_frontend_socket_that_cannot_ever_be_reached_is_one_line_and_exit_2(
    spawn, closure_artifact, tmp_path
):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    env = _start_up_env(closure_artifact(lambda xs: xs),
                        SCHOONER_RPC_SOCKET=str(not_a_dir / "rpc.sock"))  # fmt: skip
    p = spawn("bad-socket", [sys.executable, "-m", "schooner.runtime"], env=env)
    assert p.wait_for_exit(30) == 2
    _one_line_error(p.log(), "SCHOONER_RPC_SOCKET=")

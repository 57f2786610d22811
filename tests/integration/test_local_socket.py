"""The frontend's local Unix socket (``--rpc-socket`` / ``SCHOONER_RPC_SOCKET``): what the
end-to-end tests do not already cover over both transports."""

from __future__ import annotations

import socket
import struct
import sys
import time

import pytest

from schooner.runtime import wire
from schooner.runtime.transport import unix_address

pytestmark = pytest.mark.slow


def register(fe, artifact, model="m"):
    fe.admin("add_app", {"name": "app", "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": 2_000_000})  # fmt: skip
    fe.admin("add_model", {"model_name": model, "model_version": "1", "labels": [],
                           "input_type": "doubles", "container_name": "local",
                           "model_data_path": str(artifact), "batch_size": -1})  # fmt: skip
    fe.admin("add_model_links", {"app_name": "app", "model_names": [model]})


def echo_first(xs):
    return [str(float(x[0])) for x in xs]


def test_a_container_uses_the_socket_and_serves(start_frontend, start_container, closure_artifact):
    fe = start_frontend(local_socket=True)
    register(fe, artifact := closure_artifact(echo_first))
    container = start_container(artifact, rpc_port=fe.rpc_port, model_name="m",
                                env={"SCHOONER_RPC_SOCKET": fe.rpc_socket})  # fmt: skip
    fe.wait_for_replica("m", "1", timeout=30)
    assert f"session open: unix:{fe.rpc_socket}" in container.process.log()
    for i in range(50):
        status, body = fe.predict("app", {"input": [float(i), 1.0]})
        assert (status, body["output"], body["default"]) == (200, float(i), False)


def test_a_container_started_before_its_frontend_connects_when_it_comes_up(
    start_frontend, start_container, closure_artifact, spawn
):
    name = f"@schooner-test-early-{time.monotonic_ns()}"
    artifact = closure_artifact(echo_first)
    container = start_container(artifact, rpc_port=1, model_name="m", wait_ready=False,
                                env={"SCHOONER_RPC_SOCKET": name})  # fmt: skip
    container.wait_ready()  # loaded, and retrying the connection meanwhile
    time.sleep(0.5)
    fe = start_frontend(extra_args=["--rpc-socket", name])
    register(fe, artifact)
    fe.wait_for_replica("m", "1", timeout=30)
    assert fe.predict("app", {"input": [3.0]})[1]["output"] == 3.0


def test_a_stream_out_of_step_closes_only_that_connection(
    start_frontend, start_container, closure_artifact
):
    fe = start_frontend(local_socket=True)
    register(fe, artifact := closure_artifact(echo_first))
    start_container(artifact, rpc_port=fe.rpc_port, model_name="m",
                    env={"SCHOONER_RPC_SOCKET": fe.rpc_socket})  # fmt: skip
    fe.wait_for_replica("m", "1", timeout=30)

    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(unix_address(fe.rpc_socket))
    bad.settimeout(5)
    hello = wire.encode_heartbeat()
    bad.sendall(wire.stream_header(hello) + b"".join(hello))
    (reply,) = wire.StreamReader().feed(bad.recv(4096))  # asked for its metadata
    assert bytes(reply[-1]) == struct.pack("<I", wire.HeartbeatType.REQUEST_CONTAINER_METADATA)
    bad.sendall(b"\xff\xff\xff\xff garbage")
    assert bad.recv(4096) == b""  # the frontend closed this connection...
    bad.close()
    fe.process.wait_for_log("a message of 4294967295 frames (at most 65536)", timeout=10)
    for i in range(5):  # ...and serves on
        assert fe.predict("app", {"input": [float(i)]})[1]["output"] == float(i)
    assert len(fe.containers()) == 1


def test_a_too_long_socket_address_is_refused(spawn, tmp_path):
    long_name = "@" + "x" * 200
    frontend = spawn("frontend-long", [sys.executable, "-m", "schooner.frontend",
                                       "--rpc-socket", long_name,
                                       "--state-db", str(tmp_path / "s.db")])  # fmt: skip
    assert frontend.wait_for_exit(30) == 2
    assert "107 bytes" in frontend.log()
    container = spawn("container-long", [sys.executable, "-m", "schooner.runtime"],
                      env={"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1",
                           "SCHOONER_RPC_SOCKET": long_name})  # fmt: skip
    assert container.wait_for_exit(30) == 2
    assert "SCHOONER_RPC_SOCKET" in container.log()

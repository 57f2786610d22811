"""The frontend as a real process, driven over HTTP, with fake containers on raw pyzmq.

Each fake container is a DEALER thread that speaks Clipper RPC v3 through
``schooner.runtime.wire``: it heartbeats, registers (with or without CAP_PACKED) when asked,
and answers predictions with a function of its inputs, or holds them (never answers). It
counts what the frontend told it (registrations asked for, keep-alives), so that tests can
wait for the frontend to have handled its messages instead of sleeping.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq
from conftest import wait_until

from schooner.runtime import wire
from schooner.runtime.wire import CAP_PACKED, HeartbeatReply, HeartbeatType, InputType

pytestmark = pytest.mark.slow

Model = Callable[[InputType, bytes], bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sum_doubles(input_type: InputType, data: bytes) -> bytes:
    values = struct.unpack(f"<{len(data) // 8}d", data)
    return repr(sum(values)).encode()


class FakeContainer:
    """A container on a DEALER socket, run in a thread until ``close``."""

    def __init__(
        self,
        port: int,
        name: str,
        version: str = "1",
        *,
        input_type: InputType = InputType.DOUBLES,
        capabilities: int = CAP_PACKED,
        model: Model = sum_doubles,
        fail_on: bytes | None = None,
    ) -> None:
        self.port, self.name, self.version = port, name, version
        self.input_type, self.capabilities = input_type, capabilities
        self.model, self.fail_on = model, fail_on
        self.requests: list[wire.PredictRequest] = []
        self.registered = threading.Event()
        self.registrations = 0  # times the frontend asked who we are
        self.keep_alives = 0  # heartbeats answered as from a registered replica
        self.got_request = threading.Event()
        self._stop = threading.Event()
        self._hold = threading.Event()  # set: receive requests but never answer
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def hold(self) -> None:
        self._hold.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._ctx.term()

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        try:
            sock.send_multipart(wire.encode_heartbeat())
            last_hb = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() - last_hb > 0.5:
                    sock.send_multipart(wire.encode_heartbeat())
                    last_hb = time.monotonic()
                if not sock.poll(50):
                    continue
                msg = wire.decode_from_frontend(sock.recv_multipart())
                if isinstance(msg, HeartbeatReply):
                    if msg.hb_type == HeartbeatType.REQUEST_CONTAINER_METADATA:
                        sock.send_multipart(
                            wire.encode_new_container(
                                self.name, self.version, self.input_type, self.capabilities
                            )
                        )
                        self.registrations += 1
                        self.registered.set()
                    else:
                        self.keep_alives += 1
                    continue
                self.requests.append(msg)
                self.got_request.set()
                if self._hold.is_set():
                    continue
                sock.send_multipart(self._answer(msg))
        finally:
            sock.close(0)

    def _answer(self, req: wire.PredictRequest) -> list[bytes]:
        if req.inputs is not None:
            inputs = [bytes(x) for x in req.inputs]
        else:
            payload, pos, inputs = bytes(req.payload or b""), 0, []
            for n in req.sizes:
                inputs.append(payload[pos : pos + n])
                pos += n
        outputs, status = [], bytearray()
        for data in inputs:
            if self.fail_on is not None and data == self.fail_on:
                outputs.append(b"ValueError: bad input")
                status.append(1)
            else:
                outputs.append(self.model(req.input_type, data))
                status.append(0)
        if req.packed:
            return wire.encode_packed_response(req.msg_id, outputs, bytes(status))
        return wire.encode_predict_response(req.msg_id, outputs)


class FrontendProcess:
    def __init__(self, state_db: Path) -> None:
        self.state_db = state_db
        self.query_port, self.mgmt_port, self.rpc_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_db.with_suffix(".log")

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "schooner.frontend",
            "--query-host", "127.0.0.1", "--query-port", str(self.query_port),
            "--management-port", str(self.mgmt_port),
            "--rpc-host", "127.0.0.1", "--rpc-port", str(self.rpc_port),
            "--state-db", str(self.state_db), "--max-body-bytes", "100000",
        ]  # fmt: skip
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, env=dict(os.environ))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"frontend ready" in self.log.read_bytes()[offset:]:
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError("frontend did not become ready:\n" + self.log.read_text())

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        rc = self.proc.wait(10)
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def auth(self) -> dict[str, str]:
        """The management API's credential (the token file beside the state database)."""
        token = (self.state_db.parent / "admin.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def admin(self, op: str, **body: Any) -> Any:
        r = requests.post(f"http://127.0.0.1:{self.mgmt_port}/admin/{op}", json=body, timeout=10,
                          headers=self.auth)  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    def predict(self, app: str, body: Any, *, timeout: float = 10.0) -> requests.Response:
        return requests.post(
            f"http://127.0.0.1:{self.query_port}/{app}/predict", json=body, timeout=timeout
        )

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.query_port}/metrics", timeout=10).text

    def replica_ids(self) -> list[int]:
        return sorted(r["replica_id"] for r in self.admin("get_all_containers", verbose=True))

    def wait_for_replica_ids(self, expected: list[int], timeout: float = 10.0) -> None:
        """Until the frontend's connected replicas are exactly ``expected`` (by id)."""
        wait_until(lambda: self.replica_ids() == expected, timeout=timeout,
                   what=f"replicas {expected} (the frontend has {self.replica_ids()})")  # fmt: skip

    def deploy(
        self, app: str, model: str, *, slo: int = 2_000_000, input_type: str = "doubles",
        version: str = "1", default: str = "-1",
    ) -> None:  # fmt: skip
        self.admin(
            "add_app", name=app, input_type=input_type, default_output=default,
            latency_slo_micros=slo,
        )  # fmt: skip
        self.admin(
            "add_model", model_name=model, model_version=version, labels=[],
            input_type=input_type, container_name="fake", model_data_path="/m", batch_size=-1,
        )  # fmt: skip
        self.admin("add_model_links", app_name=app, model_names=[model])

    def wait_replicas(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.admin("get_all_containers", verbose=True)
            if len(found) >= n or time.monotonic() > deadline:
                assert len(found) >= n, found
                return list(found)
            time.sleep(0.05)


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[FrontendProcess]:
    fe = FrontendProcess(tmp_path / "state.db")
    fe.start()
    try:
        yield fe
    finally:
        if fe.proc is not None:
            assert fe.stop() == 0, fe.log.read_text()


@pytest.fixture
def containers() -> Iterator[list[FakeContainer]]:
    made: list[FakeContainer] = []
    yield made
    for c in made:
        c.close()


@pytest.mark.parametrize("capabilities", [CAP_PACKED, 0], ids=["packed", "plain-v3"])
def test_predict_through_both_framings(
    frontend: FrontendProcess, containers: list[FakeContainer], capabilities: int
) -> None:
    frontend.deploy("sum", "summer")
    c = FakeContainer(frontend.rpc_port, "summer", capabilities=capabilities)
    containers.append(c)
    (replica,) = frontend.wait_replicas(1)
    assert replica["capabilities"] == capabilities and replica["replica_id"] == 0

    r = frontend.predict("sum", {"input": [1.0, 2.0, 3.5]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == 6.5 and body["default"] is False
    assert isinstance(body["query_id"], int)
    assert c.requests[-1].packed is bool(capabilities)

    r = frontend.predict("sum", {"input_batch": [[1.0], [2.0, 2.0], [3.0]]})
    preds = r.json()["batch_predictions"]
    assert [p["output"] for p in preds] == [1.0, 4.0, 3.0]
    assert len({p["query_id"] for p in preds}) == 3

    r = frontend.predict("sum", {"input_batch": [[5.0]]})
    assert r.json()["output"] == 5.0  # a batch of one answers like a single input


def test_input_types_and_bad_input(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    def echo(input_type: InputType, data: bytes) -> bytes:
        return ('"' + base64.b64encode(data).decode() + '"').encode()

    for itype in ("ints", "floats", "strings", "bytes"):
        frontend.deploy(f"app-{itype}", f"m-{itype}", input_type=itype)
        containers.append(
            FakeContainer(
                frontend.rpc_port, f"m-{itype}", input_type=InputType.parse(itype), model=echo
            )
        )
    frontend.wait_replicas(4)

    def out(app: str, value: Any) -> bytes:
        r = frontend.predict(app, {"input": value})
        assert r.status_code == 200, r.text
        return base64.b64decode(r.json()["output"])

    assert out("app-ints", [1, -2]) == struct.pack("<2i", 1, -2)
    assert out("app-floats", [1.5, 2]) == struct.pack("<2f", 1.5, 2.0)
    assert out("app-strings", "héllo") == "héllo".encode()
    assert out("app-bytes", base64.b64encode(b"\x00\xff").decode()) == b"\x00\xff"

    for app, body in [
        ("app-ints", {"input": [1.5]}),
        ("app-ints", {"input": [2**31]}),
        ("app-ints", {"input": [True]}),
        ("app-floats", {"input": [[1.0]]}),
        ("app-floats", {"input": "x"}),
        ("app-strings", {"input": 3}),
        ("app-bytes", {"input": "not base64!"}),
        ("app-ints", {"inputs": [1]}),
        ("app-ints", {"input_batch": [[1], ["a"]]}),
        ("app-ints", {"input_batch": []}),
        ("app-ints", [1, 2]),
    ]:
        r = frontend.predict(app, body)
        assert r.status_code == 400, (app, body, r.text)
        assert set(r.json()) == {"error", "cause"} and r.json()["cause"]
    r = requests.post(
        f"http://127.0.0.1:{frontend.query_port}/app-ints/predict", data=b"{nope", timeout=5
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert frontend.predict("nope", {"input": [1]}).status_code == 404
    big = {"input": "x" * 200_000}
    assert frontend.predict("app-strings", big).status_code == 413


def test_version_pinning(frontend: FrontendProcess, containers: list[FakeContainer]) -> None:
    frontend.deploy("pin", "m")
    frontend.admin(
        "add_model", model_name="m", model_version="2", input_type="doubles", batch_size=-1
    )
    containers.append(FakeContainer(frontend.rpc_port, "m", "1", model=lambda t, d: b'"v1"'))
    containers.append(FakeContainer(frontend.rpc_port, "m", "2", model=lambda t, d: b'"v2"'))
    frontend.wait_replicas(2)
    assert frontend.predict("pin", {"input": [1.0]}).json()["output"] == "v2"
    assert frontend.predict("pin", {"input": [1.0], "version": "1"}).json()["output"] == "v1"
    r = frontend.predict("pin", {"input": [1.0], "version": "7"})
    assert r.status_code == 400 and "7" in r.json()["cause"]
    frontend.admin("set_model_version", model_name="m", model_version="1")
    assert frontend.predict("pin", {"input": [1.0]}).json()["output"] == "v1"


def test_defaults_with_explanations(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.admin(
        "add_app", name="lonely", input_type="doubles", default_output="0",
        latency_slo_micros=20_000,
    )  # fmt: skip
    r = frontend.predict("lonely", {"input": [1.0]}).json()
    assert r["default"] is True and r["output"] == 0
    assert "no model is linked" in r["default_explanation"]

    frontend.deploy("nobody", "absent", slo=50_000, default='{"label": "unknown"}')
    r = frontend.predict("nobody", {"input": [1.0]}).json()
    assert r["default"] is True and r["output"] == {"label": "unknown"}
    assert "no replica of model absent:1 is connected" in r["default_explanation"]

    frontend.deploy("slow", "sloth", slo=100_000, default="late")
    sloth = FakeContainer(frontend.rpc_port, "sloth")
    sloth.hold()  # takes the query, never answers: only the SLO can answer it
    containers.append(sloth)
    frontend.wait_replicas(1)
    r = frontend.predict("slow", {"input": [1.0]}).json()
    assert sloth.got_request.is_set()  # it reached the replica: not "no replica"
    assert r == {
        "query_id": r["query_id"], "output": "late", "default": True,
        "default_explanation": r["default_explanation"],
    }  # fmt: skip
    assert "SLO" in r["default_explanation"] and "sloth:1" in r["default_explanation"]


def test_model_error_for_one_input_of_a_packed_batch(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.deploy("partial", "picky", default="null")
    bad = struct.pack("<d", 13.0)
    containers.append(FakeContainer(frontend.rpc_port, "picky", fail_on=bad))
    frontend.wait_replicas(1)
    preds = frontend.predict("partial", {"input_batch": [[1.0], [13.0]]}).json()
    ok, failed = preds["batch_predictions"]
    assert ok["output"] == 1.0 and ok["default"] is False
    assert failed["default"] is True and failed["output"] is None
    assert "picky:1" in failed["default_explanation"]
    assert "bad input" in failed["default_explanation"]


def test_queries_of_a_disconnected_replica_are_redispatched(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.deploy("ha", "twin", slo=10_000_000)
    doomed = FakeContainer(frontend.rpc_port, "twin")
    doomed.hold()  # takes the batch and never answers
    containers.append(doomed)
    frontend.wait_replicas(1)

    result: dict[str, Any] = {}
    body = {"input": [20.0, 22.0]}
    t = threading.Thread(
        target=lambda: result.update(frontend.predict("ha", body, timeout=30).json())
    )
    t.start()
    assert doomed.got_request.wait(5)
    survivor = FakeContainer(frontend.rpc_port, "twin")
    containers.append(survivor)
    frontend.wait_replicas(2)
    assert survivor.requests == []  # the query is the doomed replica's alone
    doomed.close()
    containers.remove(doomed)
    t.join(30)
    assert not t.is_alive(), "the query was never answered"
    # Answered by the survivor, not by the deadline (that would be the default output, with
    # "was lost ... and no other replica answered within the latency SLO").
    assert result == {"query_id": result["query_id"], "output": 42.0, "default": False}
    assert [r.sizes for r in survivor.requests] == [(16,)]
    assert "replica 0 of model twin:1 removed: it disconnected; 1 queries re-queued" in (
        frontend.log.read_text())
    assert 'schooner_frontend_default_outputs_total{app="ha"' not in frontend.metrics()
    frontend.wait_for_replica_ids([1])


def test_restart_keeps_apps_models_and_links(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.deploy("keep", "kept", default="d")
    frontend.admin(
        "add_model", model_name="kept", model_version="2", input_type="doubles", batch_size=4
    )
    frontend.admin("set_model_version", model_name="kept", model_version="1")
    assert frontend.stop() == 0
    frontend.start()
    assert frontend.admin("get_all_applications", verbose=False) == ["keep"]
    app = frontend.admin("get_application", name="keep")
    assert app["linked_models"] == ["kept"] and app["default_output"] == "d"
    model = frontend.admin("get_model", model_name="kept", model_version="2")
    assert model["batch_size"] == 4 and model["is_current_version"] is False
    assert frontend.admin("get_all_models", verbose=False) == ["kept:1", "kept:2"]
    containers.append(FakeContainer(frontend.rpc_port, "kept", "1"))
    frontend.wait_replicas(1)
    assert frontend.predict("keep", {"input": [2.0, 3.0]}).json()["output"] == 5.0


def test_bad_frames_and_wrong_rpc_version_do_not_crash(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.deploy("robust", "solid")
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(f"tcp://127.0.0.1:{frontend.rpc_port}")
    try:
        bad_version = wire.encode_new_container("solid", "1", InputType.DOUBLES)
        bad_version[-1] = struct.pack("<I", 2)
        for frames in [
            [b"junk"],
            [b"", b"\x01"],
            [b"", struct.pack("<I", 9)],
            [b"", struct.pack("<I", 1), b"\x00\x00\x00\x00", b"short"],
            bad_version,
            [b"", struct.pack("<I", 3), b"id", b"", b""],
        ]:
            rogue.send_multipart(frames)
        rogue.send_multipart(wire.encode_heartbeat())
        assert rogue.poll(5000), "the frontend stopped answering heartbeats"
        reply = wire.decode_from_frontend(rogue.recv_multipart())
        assert reply == HeartbeatReply(HeartbeatType.REQUEST_CONTAINER_METADATA)
    finally:
        rogue.close(0)
        ctx.term()
    assert frontend.alive()
    assert frontend.admin("get_all_containers", verbose=False) == []
    containers.append(FakeContainer(frontend.rpc_port, "solid"))
    frontend.wait_replicas(1)
    assert frontend.predict("robust", {"input": [1.0]}).json()["output"] == 1.0


def test_management_api_errors_and_metrics(frontend: FrontendProcess) -> None:
    base = f"http://127.0.0.1:{frontend.mgmt_port}/admin"
    assert requests.get(f"{base}/ping", timeout=5).json() == {"ok": True}
    frontend.deploy("a", "m")
    r = requests.post(f"{base}/add_app", json={"name": "a", "input_type": "doubles",
                                               "latency_slo_micros": 1000}, timeout=5,
                      headers=frontend.auth)
    assert r.status_code == 409
    r = requests.post(f"{base}/get_application", json={"name": "zz"}, timeout=5,
                      headers=frontend.auth)
    assert r.status_code == 404 and r.json()["cause"]
    frontend.admin(
        "add_app", name="s", input_type="strings", default_output="x", latency_slo_micros=1000
    )
    r = requests.post(f"{base}/add_model_links", json={"app_name": "s", "model_names": ["m"]},
                      timeout=5, headers=frontend.auth)
    assert r.status_code == 400 and "strings" in r.json()["cause"]
    frontend.predict("a", {"input": [1.0]})
    q = f"http://127.0.0.1:{frontend.query_port}"
    assert requests.get(f"{q}/health", timeout=5).status_code == 200
    assert requests.get(f"{q}/ready", timeout=5).status_code == 200
    metrics = requests.get(f"{q}/metrics", timeout=5).text
    assert 'schooner_frontend_default_outputs_total{app="a",reason="no_replica"} 1.0' in metrics


def test_reused_file_descriptors_never_drop_the_new_replica(
    frontend: FrontendProcess, containers: list[FakeContainer]
) -> None:
    frontend.deploy("churn", "flaky")
    kept: list[int] = []
    for k in range(5):
        old = FakeContainer(frontend.rpc_port, "flaky")
        frontend.wait_for_replica_ids([*kept, 2 * k])  # the frontend registered it
        old.close()  # its fd is free for the next connection, often reused at once
        new = FakeContainer(frontend.rpc_port, "flaky")
        containers.append(new)
        kept.append(2 * k + 1)
        frontend.wait_for_replica_ids(kept)  # the old one dropped, the new one registered
        # Two more heartbeats of the new one answered: the frontend read its socket again,
        # and drains disconnect events before every read, so a stale event of the old
        # connection would have dropped the new replica by now.
        target = new.keep_alives + 2
        wait_until(lambda c=new, n=target: c.keep_alives >= n, timeout=10, what="two keep-alives")
        assert frontend.replica_ids() == kept
        assert [c.registrations for c in containers] == [1] * len(containers)
    assert frontend.predict("churn", {"input": [4.0]}).json()["output"] == 4.0
    assert frontend.replica_ids() == [1, 3, 5, 7, 9]

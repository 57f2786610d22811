"""Issue 10, part 1: only the cluster's own replicas and admins get in.

Real frontends and containers (``python -m schooner.frontend`` / ``schooner.runtime``), real
ZeroMQ and Unix sockets. The handshake is driven by hand from ``docs/clipper-rpc-v3.md``
(struct and hmac, not Schooner's encoder), so an encoder and decoder that merely agree with
each other would not pass.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest
import requests
import zmq
from v3_peers import INPUT_DOUBLES, MiniContainer, MiniFrontend

SLO = 2_000_000
SECRET = "correct horse battery staple"


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def register(fe, model="m", version="1"):
    fe.admin("add_app", {"name": "app", "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": SLO})  # fmt: skip
    fe.admin("add_model", {"model_name": model, "model_version": version, "labels": [],
                           "input_type": "doubles", "container_name": "c",
                           "model_data_path": "/secret/artifacts/m", "batch_size": -1})  # fmt: skip
    fe.admin("add_model_links", {"app_name": "app", "model_names": [model]})


def tagged(tag):
    def predict(xs):
        return [f"{tag}:{float(x[0])}" for x in xs]

    return predict


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "rpc.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def mac_by_hand(secret: bytes, nonce: bytes, fields: list[bytes]) -> bytes:
    """The challenge answer as the protocol page defines it."""
    parts = [b"schooner-rpc-auth-v1\0", nonce, *fields]
    return hmac.new(secret, b"".join(u32(len(p)) + p for p in parts), hashlib.sha256).digest()


class RawContainer:
    """A DEALER speaking the registration by hand."""

    def __init__(self, port: int, name: str = "m", version: str = "1", caps: int = 3):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10_000)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.fields = [name.encode(), version.encode(), b"3", u32(3) + u32(caps)]

    def hello(self) -> list[bytes]:
        """Heartbeat, then NewContainer on the metadata request; returns the next reply."""
        self.sock.send_multipart([b"", u32(2)])
        reply = self.sock.recv_multipart()
        assert reply == [b"", u32(3), u32(2), u32(1)]  # "send your metadata"
        self.sock.send_multipart([b"", u32(0), *self.fields])
        return self.sock.recv_multipart() if self.sock.poll(3000) else []

    def keep_alive(self) -> bool:
        """Whether a heartbeat is now answered KeepAlive (i.e. we are registered)."""
        self.sock.send_multipart([b"", u32(2)])
        while True:
            reply = self.sock.recv_multipart()
            if reply[:3] == [b"", u32(3), u32(2)]:
                return reply[3] == u32(0)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------- containers


def test_only_containers_holding_the_secret_register(start_frontend, start_container,
                                                      closure_artifact, secret_file):  # fmt: skip
    fe = start_frontend(extra_args=["--rpc-secret-file", str(secret_file)])
    register(fe)
    good = closure_artifact(tagged("good"), name="good")
    fake = closure_artifact(tagged("fake"), name="fake")
    start_container(good, rpc_port=fe.rpc_port, model_name="m", name="good",
                    env={"SCHOONER_RPC_SECRET_FILE": str(secret_file)})  # fmt: skip
    start_container(fake, rpc_port=fe.rpc_port, model_name="m", name="wrong-secret",
                    env={"SCHOONER_RPC_SECRET": "guessed"})  # fmt: skip
    start_container(fake, rpc_port=fe.rpc_port, model_name="m", name="no-secret")
    fe.wait_for_replica("m", "1", timeout=30)
    fe.process.wait_until(lambda: fe.process.log().count("refused container") >= 2,
                          timeout=30, what="both fakes refused")  # fmt: skip
    outputs = {fe.predict("app", {"input": [float(i)]})[1]["output"] for i in range(40)}
    assert outputs == {f"good:{float(i)}" for i in range(40)}  # no fake saw a query
    assert len(fe.containers()) == 1
    log = fe.process.log()
    assert "does not hold this cluster's secret" in log and "did not authenticate" in log
    assert SECRET not in log and "guessed" not in log


def test_the_handshake_by_hand_and_a_replayed_answer(start_frontend, secret_file):
    fe = start_frontend(extra_args=["--rpc-secret-file", str(secret_file)])
    first = RawContainer(fe.rpc_port)
    try:
        challenge = first.hello()
        assert challenge[:4] == [b"", u32(3), u32(2), u32(2)] and len(challenge) == 5
        nonce = challenge[4]
        assert 16 <= len(nonce) <= 64
        answer = mac_by_hand(SECRET.encode(), nonce, first.fields)
        first.sock.send_multipart([b"", u32(4), answer])
        assert first.keep_alive()
        assert fe.containers()[0]["model_name"] == "m"
        # Someone who captured that answer replays it for a challenge of their own.
        thief = RawContainer(fe.rpc_port)
        try:
            second = thief.hello()
            assert second[4] != nonce  # every challenge is fresh
            thief.sock.send_multipart([b"", u32(4), answer])
            assert not thief.keep_alive()
            assert len(fe.containers()) == 1
        finally:
            thief.close()
    finally:
        first.close()


def test_a_plain_v3_container_needs_the_operators_consent(start_frontend, secret_file):
    strict = start_frontend(extra_args=["--rpc-secret-file", str(secret_file)], name="strict")
    with MiniContainer(port=strict.rpc_port, name="clipper") as mini:
        strict.process.wait_for_log("did not authenticate", timeout=30)
        assert mini.violations == []  # it was never sent anything but plain v3
        assert not mini.registered.is_set() and strict.containers() == []
    lenient = start_frontend(name="lenient", extra_args=[
        "--rpc-secret-file", str(secret_file), "--allow-unauthenticated-containers"])
    with MiniContainer(port=lenient.rpc_port, name="clipper") as mini:
        mini.wait_registered(30)
        assert mini.violations == []
        assert [c["model_name"] for c in lenient.containers()] == ["clipper"]


def test_a_container_holding_a_secret_still_serves_a_clipper_frontend(start_container,
                                                                       closure_artifact):  # fmt: skip
    """The handshake is negotiated: a plain v3 frontend never sends a challenge, and the
    container serves it as before (its capability word is all that changes)."""
    with MiniFrontend() as frontend:
        start_container(closure_artifact(tagged("s")), rpc_port=frontend.port, model_name="m",
                        env={"SCHOONER_RPC_SECRET": SECRET})  # fmt: skip
        reg = frontend.wait_for_registration(timeout=30)
        assert reg.version_frame == u32(3) + u32(3)  # packed | auth, after the plain u32 3
        texts = frontend.predict_texts(reg.identity, INPUT_DOUBLES,
                                       [struct.pack("<d", 2.0)], timeout=10)  # fmt: skip
        assert texts == ["s:2.0"]
        assert frontend.violations == []


def test_without_a_secret_it_warns_once_and_serves_as_clipper_did(start_frontend):
    fe = start_frontend()
    with MiniContainer(port=fe.rpc_port, name="clipper") as mini:
        mini.wait_registered(30)
    assert fe.process.log().count("no RPC secret configured") == 1


def test_listeners_default_to_loopback(spawn, tmp_path):
    from conftest import free_port

    query, management, rpc = free_port(), free_port(), free_port()
    fe = spawn("defaults", [sys.executable, "-m", "schooner.frontend", "--query-port",
                            str(query), "--management-port", str(management), "--rpc-port",
                            str(rpc), "--state-db", str(tmp_path / "s.db")])  # fmt: skip
    fe.wait_for_log("frontend ready", timeout=30)
    listening = _listening_tcp(fe.pid)
    assert ("127.0.0.1", rpc) in listening and ("127.0.0.1", management) in listening
    assert not any(port in (rpc, management) and host != "127.0.0.1"
                   for host, port in listening)  # fmt: skip


def _listening_tcp(pid: int) -> set[tuple[str, int]]:
    """(host, port) of the TCP sockets process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                hex_ip, hex_port = cols[1].split(":")
                ip = socket.inet_ntoa(struct.pack("<I", int(hex_ip, 16)))
                found.add((ip, int(hex_port, 16)))
    return found


# --------------------------------------------------------------------------- management API


def test_the_management_api_needs_its_token(start_frontend):
    fe = start_frontend()
    register(fe)
    url = fe.management_url
    token_file = fe.state_db.parent / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for path in ("/admin/delete_app", "/admin/add_model", "/admin/set_model_version",
                 "/admin/get_all_models", "/admin/get_model"):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": fe.admin_token}):  # fmt: skip
            r = requests.post(url + path, json={"name": "app"}, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers)
            assert fe.admin_token not in r.text and r.json()["error"] == "unauthorized"
    assert requests.get(url + "/metrics", timeout=10).status_code == 401
    assert requests.get(url + "/health", timeout=10).status_code == 200
    assert requests.get(url + "/admin/ping", timeout=10).status_code == 200
    assert fe.admin("get_all_applications") == ["app"]  # nothing was deleted
    model = fe.admin("get_model", {"model_name": "m", "model_version": "1"})
    assert model["model_data_path"] == "/secret/artifacts/m"
    assert fe.admin_token not in fe.process.log()


def test_clipper_admin_compatibility_is_explicit_and_hides_artifact_paths(start_frontend):
    fe = start_frontend(extra_args=["--allow-anonymous-admin"])
    register(fe)
    r = requests.post(fe.management_url + "/admin/get_all_models", json={"verbose": True},
                      timeout=10)  # fmt: skip
    assert r.status_code == 200
    (model,) = r.json()
    assert model["model_name"] == "m" and "model_data_path" not in model
    assert fe.admin("get_all_models", {"verbose": True})[0]["model_data_path"]


# --------------------------------------------------------------------------- local clusters


def test_a_local_cluster_keeps_its_credentials_owner_only(tmp_path):
    from conftest import local_cluster

    with local_cluster("sec", home=tmp_path / "home", grace_s=2.0) as conn:
        layout = conn.cm.layout
        assert stat.S_IMODE(layout.root.stat().st_mode) == 0o700
        for path in (layout.rpc_secret_file, layout.admin_token_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        sock_path = layout.rpc_socket
        assert sock_path is not None and not sock_path.startswith("@")
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        # The connection found the token by itself, and the frontend needs it.
        assert conn.get_all_apps() == []
        r = requests.post(f"http://{conn.cm.get_admin_addr()}/admin/get_all_applications",
                          json={}, timeout=10)  # fmt: skip
        assert r.status_code == 401
        # A fake container on the cluster's RPC port, without the secret, is refused.
        with MiniContainer(port=conn.cm.settings.rpc_port, name="sum") as mini:
            deadline = time.monotonic() + 20
            while mini.metadata_requests < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert mini.metadata_requests >= 3 and not mini.registered.is_set()
        assert conn.cm.management.post("/admin/get_all_containers", {}) == []
        # The CLI finds the token by itself too.
        cli = subprocess.run([sys.executable, "-m", "schooner.admin.cli", "status", "--cluster",
                              "sec"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SCHOONER_HOME": str(tmp_path / "home")})  # fmt: skip
        assert cli.returncode == 0 and "frontend: up" in cli.stdout, cli.stdout + cli.stderr
        log = layout.frontend_log.read_text()
        assert "did not authenticate" in log
        assert layout.admin_token_file.read_text().strip() not in log
        assert layout.rpc_secret_file.read_text().strip() not in log


_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
address = sys.argv[1]
try:
    s.connect(b"\\0" + address[1:].encode() if address.startswith("@") else address)
except OSError as exc:
    print("refused", exc.errno); sys.exit(0)
s.settimeout(10)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print("closed" if s.recv(4096) == b"" else "answered")
except (BrokenPipeError, ConnectionResetError):
    print("closed")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_use_the_local_socket(start_frontend, tmp_path):
    from schooner.runtime import wire

    hello = wire.encode_heartbeat()
    message = (wire.stream_header(hello) + b"".join(hello)).hex()
    fe = start_frontend(local_socket=True)  # abstract: no file permissions, the uid check
    out = subprocess.run([sys.executable, "-c", _AS_NOBODY, fe.rpc_socket, message],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "closed", out.stderr
    fe.process.wait_for_log("refused a local connection from uid 65534", timeout=10)
    folder = tmp_path / "cluster"
    folder.mkdir(mode=0o700)
    path = folder / "rpc.sock"
    fe2 = start_frontend(name="file-socket", extra_args=["--rpc-socket", str(path)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(path), message],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.split()[0] == "refused", out.stdout + out.stderr
    assert fe2.process.alive

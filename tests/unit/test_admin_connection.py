"""ClipperConnection against a fake management API and a recording container manager."""

from __future__ import annotations

import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import schooner.admin
from schooner.admin import ClipperConnection, ClipperException
from schooner.admin.connection import normalize_input_type, validate_model_name
from schooner.admin.deployers import python as python_deployer
from schooner.admin.management import ManagementClient, ManagementError
from schooner.admin.managers.base import ContainerManager


class FakeFrontend:
    """Answers management calls from a table: path -> (status, body) or a callable."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: Any) -> None:
                fake.calls.append((self.path, body))
                status, answer = fake.answers.get(self.path, (200, {"ok": True}))
                if callable(answer):
                    answer = answer(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers["Content-Length"])
                self._answer(json.loads(self.rfile.read(length)))

            def do_GET(self) -> None:  # noqa: N802
                self._answer(None)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class RecordingManager(ContainerManager):
    def __init__(self, address: str) -> None:
        self.address = address
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_deploy = False

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def start_clipper(self, *args: Any) -> None:
        self._record("start_clipper", *args)

    def connect(self) -> None:
        self._record("connect")

    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None) -> str:
        self._record("build_model", name, version, model_data_path, base_image,
                     container_registry, pkgs_to_install)
        return f"/artifacts/{name}/{version}"

    def model_data_path(self, image: str) -> str:
        return image

    def deploy_model(self, name, version, input_type, image, num_replicas=1, batch_size=-1):
        self._record("deploy_model", name, version, input_type, image, num_replicas, batch_size)
        if self.fail_deploy:
            raise ClipperException("replica exited")

    def set_num_replicas(self, name, version, input_type, image, num_replicas, batch_size=-1):
        self._record("set_num_replicas", name, version, input_type, image, num_replicas)

    def get_num_replicas(self, name, version) -> int:
        self._record("get_num_replicas", name, version)
        return 3

    def stop_models(self, models) -> None:
        self._record("stop_models", models)

    def stop_all_model_containers(self) -> None:
        self._record("stop_all_model_containers")

    def stop_all(self, graceful=True) -> None:
        self._record("stop_all", graceful)

    def get_logs(self, logging_dir) -> list[str]:
        return []

    def get_query_addr(self) -> str:
        return "127.0.0.1:1"

    def get_admin_addr(self) -> str:
        return self.address

    def get_metric_addr(self) -> str:
        return "127.0.0.1:1"


@pytest.fixture
def frontend():
    fake = FakeFrontend()
    yield fake
    fake.close()


@pytest.fixture
def conn(frontend):
    c = ClipperConnection(RecordingManager(frontend.address))
    c.connect()
    return c


def test_public_api():
    assert sorted(schooner.admin.__all__) == sorted(
        ["ClipperConnection", "ContainerManager", "LocalContainerManager",
         "DockerContainerManager", "KubernetesContainerManager", "ClipperException"])
    assert set(python_deployer.__all__) == {"deploy_python_closure", "create_endpoint"}


def test_signatures_match_clipper():
    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    e = inspect.Parameter.empty
    assert params(ClipperConnection.deploy_model)[1:] == [
        ("name", e), ("version", e), ("input_type", e), ("image", e), ("labels", None),
        ("num_replicas", 1), ("batch_size", -1)]
    assert params(ClipperConnection.build_and_deploy_model)[1:] == [
        ("name", e), ("version", e), ("input_type", e), ("model_data_path", e),
        ("base_image", e), ("labels", None), ("container_registry", None),
        ("num_replicas", 1), ("batch_size", -1), ("pkgs_to_install", None)]
    assert params(python_deployer.create_endpoint)[:10] == [
        ("clipper_conn", e), ("name", e), ("input_type", e), ("func", e),
        ("default_output", "None"), ("version", 1), ("slo_micros", 3000000), ("labels", None),
        ("registry", None), ("base_image", "default")]
    assert [n for n, _ in params(python_deployer.deploy_python_closure)] == [
        "clipper_conn", "name", "version", "input_type", "func", "base_image", "labels",
        "registry", "num_replicas", "batch_size", "pkgs_to_install"]


@pytest.mark.parametrize("call", [
    lambda c: c.register_application("a", "doubles", "None", 1000),
    lambda c: c.get_all_apps(),
    lambda c: c.deploy_model("m", 1, "doubles", "/x"),
    lambda c: c.get_query_addr(),
    lambda c: c.get_clipper_logs(),
    lambda c: c.stop_all_model_containers(),
    lambda c: c.set_num_replicas("m", 2),
])
def test_operations_need_a_connection(call):
    conn = ClipperConnection(RecordingManager("127.0.0.1:1"))
    with pytest.raises(ClipperException, match="not connected"):
        call(conn)


@pytest.mark.parametrize("name, version", [("Model", "1"), ("m", "v_1"), ("-m", "1"),
                                           ("m", ""), ("m.x", "1")])
def test_invalid_model_names_are_refused(name, version):
    with pytest.raises(ClipperException, match="invalid model"):
        validate_model_name(name, version)


def test_input_types_are_normalised():
    assert normalize_input_type("d") == "doubles"
    assert normalize_input_type("strings") == "strings"
    with pytest.raises(ClipperException, match="unknown input type"):
        normalize_input_type("tensors")


def test_register_application_sends_clipper_fields(conn, frontend):
    conn.register_application("app", "double", "0.0", 20000)
    assert frontend.calls[-1] == ("/admin/add_app", {
        "name": "app", "input_type": "doubles", "default_output": "0.0",
        "latency_slo_micros": 20000})


def test_server_errors_carry_the_cause(conn, frontend):
    frontend.answers["/admin/add_app"] = (409, {"error": "exists", "cause": "app a exists"})
    with pytest.raises(ManagementError, match="HTTP 409: exists: app a exists") as info:
        conn.register_application("a", "doubles", "None", 1000)
    assert info.value.status == 409 and info.value.cause == "app a exists"


def test_missing_app_and_model_are_none(conn, frontend):
    frontend.answers["/admin/get_application"] = (404, {"error": "not found", "cause": "x"})
    frontend.answers["/admin/get_model"] = (404, {"error": "not found", "cause": "x"})
    assert conn.get_app_info("x") is None
    assert conn.get_model_info("m", 1) is None
    assert frontend.calls[-1] == ("/admin/get_model", {"model_name": "m", "model_version": "1"})


def test_deploy_runs_replicas_then_registers(conn, frontend):
    frontend.answers["/admin/get_model"] = (404, {"error": "not found", "cause": ""})
    conn.deploy_model("m", 2, "ints", "/artifacts/m/2", labels=["a"], num_replicas=2,
                      batch_size=4)
    assert conn.cm.calls[-1] == ("deploy_model", ("m", "2", "ints", "/artifacts/m/2", 2, 4))
    assert frontend.calls[-1] == ("/admin/add_model", {
        "model_name": "m", "model_version": "2", "labels": ["a"], "input_type": "ints",
        "container_name": "/artifacts/m/2", "model_data_path": "/artifacts/m/2",
        "batch_size": 4})


def test_failed_deploy_registers_nothing(conn, frontend):
    frontend.answers["/admin/get_model"] = (404, {"error": "not found", "cause": ""})
    conn.cm.fail_deploy = True
    with pytest.raises(ClipperException, match="replica exited"):
        conn.deploy_model("m", 1, "doubles", "/a")
    assert "/admin/add_model" not in [path for path, _ in frontend.calls]


def test_deploying_an_existing_version_is_refused(conn, frontend):
    with pytest.raises(ClipperException, match="already registered"):
        conn.deploy_model("m", 1, "doubles", "/a")
    assert not [c for c in conn.cm.calls if c[0] == "deploy_model"]


def test_build_and_deploy_passes_registry_and_packages(conn, frontend):
    frontend.answers["/admin/get_model"] = (404, {"error": "not found", "cause": ""})
    conn.build_and_deploy_model("m", 1, "doubles", "/data", "base", None, "reg.io", 1, -1,
                                ["numpy"])
    assert conn.cm.calls[1] == ("build_model", ("m", "1", "/data", "base", "reg.io", ["numpy"]))


MODELS = [
    {"model_name": "m", "model_version": "1", "is_current_version": False,
     "input_type": "doubles", "container_name": "/a/m/1", "batch_size": -1},
    {"model_name": "m", "model_version": "2", "is_current_version": True,
     "input_type": "doubles", "container_name": "/a/m/2", "batch_size": 8},
    {"model_name": "o", "model_version": "1", "is_current_version": True,
     "input_type": "doubles", "container_name": "NO_CONTAINER", "batch_size": -1},
]


def test_replicas_default_to_the_current_version(conn, frontend):
    frontend.answers["/admin/get_all_models"] = (200, MODELS)
    frontend.answers["/admin/get_model"] = (200, MODELS[1])
    assert conn.get_num_replicas("m") == 3
    conn.set_num_replicas("m", 2)
    assert conn.cm.calls[-2:] == [("get_num_replicas", ("m", "2")),
                                  ("set_num_replicas", ("m", "2", "doubles", "/a/m/2", 2))]
    # the frontend is told the replicas are starting, so their queries wait for them
    expect = [body for path, body in frontend.calls if path == "/admin/expect_replicas"]
    assert expect and expect[-1]["model_name"] == "m" and expect[-1]["model_version"] == "2"
    assert expect[-1]["seconds"] > 0


def test_register_application_can_ask_for_503_under_overload(conn, frontend):
    conn.register_application("app", "doubles", "0.0", 20000, on_overload="503")
    assert frontend.calls[-1][1]["on_overload"] == "503"
    conn.set_app_on_overload("app", "default")
    assert frontend.calls[-1] == ("/admin/set_app_on_overload",
                                  {"name": "app", "on_overload": "default"})


def test_containerless_models_cannot_be_scaled(conn, frontend):
    frontend.answers["/admin/get_model"] = (200, MODELS[2])
    with pytest.raises(ClipperException, match="without an image"):
        conn.set_num_replicas("o", 2, version=1)


def test_stop_variants(conn, frontend):
    frontend.answers["/admin/get_all_models"] = (200, MODELS)
    conn.stop_models(["m"])
    conn.stop_inactive_model_versions(["m", "o"])
    conn.stop_versioned_models({"o": [1]})
    assert [c[1][0] for c in conn.cm.calls if c[0] == "stop_models"] == [
        {"m": ["1", "2"]}, {"m": ["1"]}, {"o": ["1"]}]


def test_register_model_without_image(conn, frontend):
    conn.register_model("m", 3, "strings")
    assert frontend.calls[-1][1]["container_name"] == "NO_CONTAINER"
    assert frontend.calls[-1][1]["model_version"] == "3"


def test_unreachable_frontend_is_a_clipper_exception():
    client = ManagementClient("127.0.0.1:9", timeout=2.0)
    assert client.ping() is False
    with pytest.raises(ClipperException, match="cannot reach the management API"):
        client.post("/admin/get_all_models", {"verbose": False})

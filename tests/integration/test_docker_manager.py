"""DockerContainerManager on a real Docker engine, with a real registry on 127.0.0.1.

Skipped only when no engine answers (`docker version`); CI starts one (.ci/run). The images
are built for real FROM the Python base the engine has (the Debian base .ci/run builds with
base_images/debian/build.sh, or python:3.11-slim-bookworm); a missing base fails with the
command that makes it. The registry is Debian's docker-registry package, started here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from schooner.admin import ClipperConnection, ClipperException, DockerContainerManager
from schooner.admin import images as image_builds
from schooner.admin.deployers import python as python_deployer
from schooner.admin.engine import Engine
from schooner.admin.managers.base import (
    CLIPPER_DOCKER_LABEL,
    CLIPPER_MODEL_CONTAINER_LABEL,
    CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL,
)
from tests.conftest import free_port, wait_until
from tests.integration import docker_support

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

WHEELS = docker_support.TORCH_CPU_WHEELS


engine = docker_support.engine  # the fixture


def _manager(**kwargs) -> DockerContainerManager:
    name = f"t{uuid.uuid4().hex[:8]}"
    return DockerContainerManager(
        cluster_name=name, docker_network=f"schooner-{name}",
        clipper_query_port=free_port(), clipper_management_port=free_port(),
        clipper_rpc_port=free_port(), wheels=WHEELS, deploy_timeout_s=180.0, **kwargs,
    )


def _leftovers(engine: Engine, cluster: str) -> dict[str, list[str]]:
    labels = {CLIPPER_DOCKER_LABEL: cluster}
    return {kind: engine.ids(kind, labels) for kind in ("container", "network", "volume")}


@pytest.fixture(scope="module")
def conn(engine):
    manager = _manager()
    conn = ClipperConnection(manager)
    conn.start_clipper()
    yield conn
    conn.stop_all()
    assert _leftovers(engine, manager.cluster_name) == {"container": [], "network": [], "volume": []}


def predict(conn: ClipperConnection, app: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://{conn.get_query_addr()}/{app}/predict", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def connected(conn: ClipperConnection, name: str) -> int:
    return sum(1 for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == name)


def test_frontend_and_replicas_are_containers_with_clippers_labels(conn, engine, tmp_path):
    python_deployer.create_endpoint(conn, "sum", "doubles", lambda xs: [str(sum(x)) for x in xs])
    assert predict(conn, "sum", {"input": [1.0, 2.0]})["output"] == 3.0
    cm = conn.cm
    frontend = engine.inspect("container", [cm.frontend_name])[0]
    assert CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL in frontend["Config"]["Labels"]
    assert frontend["Config"]["User"] == "10001"
    for bindings in frontend["NetworkSettings"]["Ports"].values():
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    replicas = engine.ids("container", {CLIPPER_MODEL_CONTAINER_LABEL: "sum_1"})
    assert len(replicas) == 1
    replica = engine.inspect("container", replicas)[0]
    assert replica["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert not replica["NetworkSettings"]["Ports"]  # replicas publish nothing
    logs = conn.get_clipper_logs(str(tmp_path / "logs"))
    assert sorted(Path(p).name for p in logs) == sorted(
        [f"{cm.frontend_name}.log", f"schooner-{cm.cluster_name}-sum-1-0.log"]
    )


def test_scale_up_to_three_and_down_to_one(conn):
    conn.set_num_replicas("sum", 3)
    assert conn.get_num_replicas("sum") == 3
    assert connected(conn, "sum") == 3
    conn.set_num_replicas("sum", 1)
    assert conn.get_num_replicas("sum") == 1
    wait_until(lambda: connected(conn, "sum") == 1, timeout=60, what="two replicas gone")
    assert predict(conn, "sum", {"input": [2.0, 2.0]})["output"] == 4.0


def test_a_killed_replica_is_restarted_by_the_engine(conn, engine):
    (replica,) = engine.inspect("container", engine.ids("container", {
        CLIPPER_MODEL_CONTAINER_LABEL: "sum_1"
    }))
    os.kill(replica["State"]["Pid"], signal.SIGKILL)  # a crash, not a `docker stop`

    def restarted() -> bool:
        now = engine.inspect("container", [replica["Id"]])[0]
        return now["RestartCount"] >= 1 and now["State"]["Running"]

    wait_until(restarted, timeout=60, what="the engine restarted the replica")
    wait_until(lambda: predict(conn, "sum", {"input": [5.0]}).get("default") is False,
               timeout=60, what="the restarted replica answers", ignore=(OSError, KeyError))
    assert conn.get_num_replicas("sum") == 1


def test_a_replica_that_dies_while_starting_fails_the_deploy_with_its_log(conn, engine, tmp_path):
    not_an_artifact = tmp_path / "broken"
    not_an_artifact.mkdir()
    (not_an_artifact / "README").write_text("no manifest here\n")
    image = conn.build_model("broken", "1", str(not_an_artifact), "schooner/python")
    with pytest.raises(ClipperException) as failed:
        conn.deploy_model("broken", "1", "doubles", image)
    assert "exited with code 3" in str(failed.value)
    assert "schooner.json" in str(failed.value)  # the container's own words, from its log
    assert engine.ids("container", {CLIPPER_MODEL_CONTAINER_LABEL: "broken_1"}) == []
    assert conn.get_model_info("broken", "1") is None


def test_a_failing_build_shows_the_failing_steps_output(conn, tmp_path):
    from schooner.frameworks import closure

    artifact = closure.save(lambda xs: list(xs), tmp_path / "model")
    with pytest.raises(ClipperException) as failed:
        conn.build_model("unbuildable", "1", str(artifact), "default",
                         pkgs_to_install=["schooner-no-such-package==0.0.1"])  # fmt: skip
    message = str(failed.value)
    assert "RUN python3 -m pip install" in message.splitlines()[1]  # the step that failed
    assert "schooner-no-such-package" in message and "COPY model" not in message


def test_rebuilding_an_unchanged_model_builds_nothing(conn, engine, tmp_path):
    from schooner.frameworks import closure

    artifact = closure.save(lambda xs: [str(len(x)) for x in xs], tmp_path / "model")
    first = conn.build_model("lengths", "1", str(artifact), "default")
    created = engine.inspect("image", [first])[0]["Id"]
    assert conn.build_model("lengths", "1", str(artifact), "default") == first
    assert engine.inspect("image", [first])[0]["Id"] == created


def test_a_restarted_frontend_keeps_apps_and_models(conn, engine):
    engine.run(["restart", conn.cm.frontend_name], timeout=60)
    wait_until(lambda: conn.cm.management.ping(timeout=1.0), timeout=60, what="frontend back")
    assert conn.get_app_info("sum") is not None
    assert conn.get_model_info("sum", "1") is not None
    wait_until(lambda: connected(conn, "sum") == 1, timeout=60, what="the replica reconnected")
    assert predict(conn, "sum", {"input": [1.0, 1.0]})["output"] == 2.0


def test_connect_attaches_a_new_manager_to_the_running_cluster(conn):
    cm = conn.cm
    other = DockerContainerManager(cluster_name=cm.cluster_name, docker_network="elsewhere")
    again = ClipperConnection(other)
    again.connect()
    assert again.get_query_addr() == conn.get_query_addr()
    assert other.docker_network == cm.docker_network
    assert again.get_num_replicas("sum") == 1


def test_a_pytorch_model_is_built_deployed_and_queried(conn):
    torch = pytest.importorskip("torch")
    from schooner.admin.deployers import pytorch as pytorch_deployer

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 10.0]]))
        model.bias.zero_()

    def run(model, inputs):
        with torch.no_grad():
            return [str(float(y)) for y in model(torch.stack(list(inputs)).float())]

    pytorch_deployer.create_endpoint(conn, "linear", "floats", run, model)
    assert predict(conn, "linear", {"input": [1.0, 2.0]})["output"] == 21.0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read() or b"{}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = shutil.which("docker-registry")
    if server is None:
        pytest.skip("Debian's docker-registry package is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: warn\n"
    )
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen([server, "serve", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/v2/"), timeout=30,
                   what="the registry answers",
                   context=lambda: (root / "registry.log").read_text())  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_model_pushed_to_a_registry_runs_from_the_pulled_image(conn, engine, registry, tmp_path):
    from schooner.frameworks import closure

    artifact = closure.save(lambda xs: [str(max(x)) for x in xs], tmp_path / "model")
    image = conn.build_model("biggest", "1", str(artifact), "default", container_registry=registry)
    assert image == f"{registry}/biggest:1"
    assert json.loads(_get(f"http://{registry}/v2/biggest/tags/list"))["tags"] == ["1"]
    engine.run(["rmi", image])  # the replica must pull it back
    conn.register_application("biggest", "doubles", "none", 1_000_000)
    conn.deploy_model("biggest", "1", "doubles", image)
    conn.link_model_to_app("biggest", "biggest")
    assert predict(conn, "biggest", {"input": [3.0, 9.0, 4.0]})["output"] == 9.0
    assert engine.inspect("image", [image])


def test_stop_all_leaves_no_container_network_or_volume(engine):
    manager = _manager()
    conn = ClipperConnection(manager)
    conn.start_clipper()
    python_deployer.create_endpoint(conn, "echo", "strings", lambda xs: list(xs))
    assert _leftovers(engine, manager.cluster_name)["volume"]
    conn.stop_all()
    assert _leftovers(engine, manager.cluster_name) == {"container": [], "network": [], "volume": []}
    # and it runs again unchanged, starting empty
    conn.start_clipper()
    assert conn.get_all_apps() == []
    conn.stop_all()
    assert _leftovers(engine, manager.cluster_name) == {"container": [], "network": [], "volume": []}


def test_a_closure_serves_with_a_package_it_imports_that_the_user_did_not_name(conn, engine):
    from packaging.version import Version  # in the test environment, not in the python base

    def newest(xs):
        return [max(Version(s) for s in x.split(",")).public for x in xs]

    python_deployer.create_endpoint(conn, "newest", "strings", newest)
    answer = predict(conn, "newest", {"input": "1.10,2.0rc1,1.9"})
    assert answer["output"] == "2.0rc1", answer
    image = conn.get_model_info("newest", "1")["container_name"]
    pip_list = engine.run(["run", "--rm", "--entrypoint", "pip", image, "list", "--format=json"])
    installed = {p["name"]: p["version"] for p in json.loads(pip_list)}
    from importlib.metadata import version

    assert installed["packaging"] == version("packaging")


def test_a_missing_python_base_names_the_command_that_makes_it(engine):
    with pytest.raises(ClipperException) as missing:
        image_builds.python_base(engine, f"127.0.0.1:{free_port()}/python:absent")
    assert "base_images/debian/build.sh" in str(missing.value)

"""The pull check before anything is applied, against Debian's registry server on 127.0.0.1."""

from __future__ import annotations

import shutil
import urllib.request

import docker_support
import pytest
from conftest import free_port
from kube_standin import StandIn, api_client, node, standin_server

from schooner.admin import KubernetesContainerManager
from schooner.admin import images as image_builds
from schooner.admin.managers.kubernetes import check_pullable
from schooner.runtime.errors import ClipperException

docker_engine = docker_support.engine  # the fixture


@pytest.fixture
def registry(spawn, tmp_path):
    server = shutil.which("docker-registry")
    if server is None:
        pytest.skip("Debian's docker-registry package is not installed (.ci/run installs it)")
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
                      "log:\n  level: warn\n")  # fmt: skip
    proc = spawn("registry", [server, "serve", str(config)])
    def answers() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=5):
            return True

    proc.wait_until(answers, timeout=30, what="the registry answers")
    return f"127.0.0.1:{port}"


def test_an_image_the_registry_lacks_is_refused_before_deploying(registry):
    with pytest.raises(ClipperException, match=r"HTTP 404, the registry has no such image"):
        check_pullable(f"{registry}/sum:1", nodes=3)


def test_a_deploy_of_an_image_the_registry_lacks_applies_nothing(registry):
    with standin_server(StandIn(nodes=[node("n1", "10.0.0.1"), node("n2", "10.0.0.2")])) as s:
        manager = KubernetesContainerManager("c1", api_client=api_client(s))
        with pytest.raises(ClipperException, match=f"cannot be pulled from {registry}: HTTP 404"):
            manager.deploy_model("sum", "1", "doubles", f"{registry}/sum:1")
        assert s.calls() == ["GET /api/v1/nodes"]


def test_a_registry_that_does_not_answer_is_named():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClipperException, match=f"registry {address} does not answer"):
        check_pullable(f"{address}/sum:1", nodes=1)


@pytest.mark.docker
def test_a_pushed_image_passes(registry, docker_engine):
    engine = docker_engine
    base = image_builds.python_base(engine)  # the Debian base CI builds (or says how to)
    ref = f"{registry}/k8s-check:1"
    engine.run(["tag", base, ref])
    try:
        engine.run(["push", ref], timeout=600.0)
        check_pullable(ref, nodes=3)
        check_pullable(f"{registry}/k8s-check@{_digest(engine, ref)}", nodes=3)
    finally:
        engine.run(["rmi", ref], check=False)


def _digest(engine, ref: str) -> str:
    (found,) = engine.inspect("image", [ref])
    return str(found["RepoDigests"][0].partition("@")[2])

"""Issue 10, part 1, on Docker: each cluster gets its own secret and token, handed over by
private env files; nothing secret is on a command line, and the management API wants the
token. Skipped where no Docker engine answers (docker_support)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from schooner.admin import ClipperConnection, DockerContainerManager
from schooner.admin.deployers import python as python_deployer
from schooner.admin.managers.base import CLIPPER_DOCKER_LABEL
from tests.conftest import free_port
from tests.integration import docker_support

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

engine = docker_support.engine  # the fixture


def test_a_docker_cluster_has_its_own_credentials_off_the_command_line(engine):
    name = f"s{uuid.uuid4().hex[:8]}"
    manager = DockerContainerManager(
        cluster_name=name, docker_network=f"schooner-{name}",
        clipper_query_port=free_port(), clipper_management_port=free_port(),
        clipper_rpc_port=free_port(), wheels=docker_support.TORCH_CPU_WHEELS,
        deploy_timeout_s=180.0,
    )  # fmt: skip
    conn = ClipperConnection(manager)
    conn.start_clipper()
    try:
        token = manager.admin_token()
        assert token and len(token) == 64
        def count(xs):  # defined here: pickled by value
            return [str(len(xs))] * len(xs)

        python_deployer.create_endpoint(conn, "sec", "doubles", count, slo_micros=2_000_000)
        # The replica registered, so it proved it holds the secret; neither is in argv.
        ours = engine.ids("container", {CLIPPER_DOCKER_LABEL: name})
        assert len(ours) == 2  # the frontend and the replica
        for container in engine.inspect("container", ours):
            argv = " ".join([container.get("Path") or "", *(container.get("Args") or [])])
            assert token not in argv and "SCHOONER_RPC_SECRET" not in argv
        request = urllib.request.Request(
            f"http://{manager.get_admin_addr()}/admin/get_all_applications",
            data=json.dumps({}).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        caught.value.close()
        assert caught.value.code == 401
        # A new manager on the same cluster finds the token again (docker inspect).
        again = DockerContainerManager(cluster_name=name, docker_network=f"schooner-{name}",
                                       clipper_query_port=manager.ports[1337],
                                       clipper_management_port=manager.ports[1338],
                                       clipper_rpc_port=manager.ports[7000])  # fmt: skip
        assert again.admin_token() == token
        reconnected = ClipperConnection(again)
        reconnected.connect()
        assert reconnected.get_all_apps() == ["sec"]
    finally:
        conn.stop_all()

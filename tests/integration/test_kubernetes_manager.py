"""KubernetesContainerManager through the official client against the API stand-in.

The stand-in (kube_standin.py) records every request; these tests assert the exact
sequence for start, connect, deploy, scale and stop. Where a deploy waits for replicas to
connect, a real frontend and real replicas run on 127.0.0.1 and the stand-in's NodePort
Services point at that frontend's ports.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import free_port
from kube_standin import StandIn, api_client, node, standin_server

from schooner.admin import KubernetesContainerManager
from schooner.runtime.errors import ClipperException

pytest.importorskip("kubernetes")

NS = "/api/v1/namespaces/schooner"
APPS = "/apis/apps/v1/namespaces/schooner/deployments"
NETWORKING = "/apis/networking.k8s.io/v1/namespaces/schooner"
CLUSTER = "ai.clipper.container.label=c1"


@pytest.fixture
def standin():
    with standin_server(StandIn()) as s:
        yield s


def manager(standin: StandIn, **kwargs) -> KubernetesContainerManager:
    settings = {"start_timeout_s": 30, "deploy_timeout_s": 30, **kwargs}
    return KubernetesContainerManager(
        "c1", useInternalIP=True, namespace="schooner", create_namespace_if_not_exists=True,
        api_client=api_client(standin), **settings,
    )  # fmt: skip


@pytest.fixture
def frontend(start_frontend, standin):
    """A real frontend the stand-in's NodePort Services lead to (as a node port would)."""
    process = start_frontend(extra_args=["--allow-anonymous-admin"])
    standin.node_ports = {1337: process.query_port, 1338: process.management_port}
    return process


def test_start_connect_and_stop_two_frontends(standin, frontend):
    # another cluster's Deployment in the same namespace: stop_all must leave it
    standin.objects[("Deployment", "schooner", "query-frontend-at-other")] = {
        "metadata": {"name": "query-frontend-at-other", "namespace": "schooner",
                     "labels": {"ai.clipper.container.label": "other"}},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {}}}},
    }  # fmt: skip
    m = manager(standin)
    m.start_clipper(num_frontend_replicas=2)
    assert standin.calls() == [
        f"GET {APPS}/query-frontend-at-c1",  # 404: not running yet
        f"GET {NS}",  # 404
        "POST /api/v1/namespaces schooner",
        "GET /api/v1/nodes",  # one node: images without a registry are allowed
        f"POST {NS}/secrets schooner-c1-credentials",
        f"POST {NS}/persistentvolumeclaims schooner-c1-state",
        f"POST {APPS} redis-at-c1",
        f"POST {NS}/services redis-at-c1",
        f"POST {NETWORKING}/networkpolicies redis-at-c1",
        f"POST {APPS} query-frontend-at-c1",
        f"POST {NS}/services query-frontend-at-c1",
        f"POST {NS}/services mgmt-frontend-at-c1",
        f"POST {NS}/services query-frontend-rpc-at-c1",
        f"POST {NS}/services query-frontend-pods-at-c1",
        f"GET {APPS}/redis-at-c1/status",
        f"GET {APPS}/query-frontend-at-c1/status",
        # connect(): the real state
        f"GET {APPS}/query-frontend-at-c1",
        f"GET {NS}/services/query-frontend-at-c1",
        "GET /api/v1/nodes",
        f"GET {NS}/services/mgmt-frontend-at-c1",
        "GET /api/v1/nodes",
        f"GET {NS}/secrets/schooner-c1-credentials",  # the token, to ping the management API
    ]
    assert m.get_query_addr() == f"127.0.0.1:{frontend.query_port}"

    # a new manager (another machine, another day) reads the replica count back
    again = manager(standin)
    again.connect()
    assert again.num_frontend_replicas == 2
    assert again.get_admin_addr() == m.get_admin_addr()

    # with two frontends and no redis_ip the frontends share the Redis it started
    with pytest.raises(ClipperException, match="already running"):
        manager(standin).start_clipper()

    standin.clear()
    again.stop_all()
    assert standin.calls(reads=False) == [
        f"DELETE {APPS}/query-frontend-at-c1",
        f"DELETE {APPS}/redis-at-c1",
        f"DELETE {NS}/services/mgmt-frontend-at-c1",
        f"DELETE {NS}/services/query-frontend-at-c1",
        f"DELETE {NS}/services/query-frontend-pods-at-c1",
        f"DELETE {NS}/services/query-frontend-rpc-at-c1",
        f"DELETE {NS}/services/redis-at-c1",
        f"DELETE {NS}/persistentvolumeclaims/schooner-c1-state",
        f"DELETE {NETWORKING}/networkpolicies/redis-at-c1",
        f"DELETE {NS}/secrets/schooner-c1-credentials",
        f"DELETE {NS}",  # it made the namespace (the cluster's label is on it)
    ]
    lists = [c for c in standin.calls() if "labelSelector" in c]
    assert all(CLUSTER in c for c in lists), lists


def test_a_management_api_out_of_reach_is_named(standin):
    standin.node_ports = {1338: free_port()}  # nothing answers there
    m = manager(standin, start_timeout_s=1)
    with pytest.raises(ClipperException, match="management API does not answer at 127.0.0.1"):
        m.start_clipper()


def test_logs_and_the_kubectl_proxy_address(standin, frontend, tmp_path):
    m = manager(standin)
    m.start_clipper()
    standin.clear()
    paths = m.get_logs(str(tmp_path / "logs"))
    assert [os.path.basename(p) for p in paths] == ["query-frontend-at-c1-0.log"]
    assert Path(paths[0]).read_text() == "the log of query-frontend-at-c1-0\n"
    assert standin.calls() == [
        f"GET {NS}/pods?labelSelector={CLUSTER}",
        f"GET {NS}/pods/query-frontend-at-c1-0/log",
    ]
    proxied = manager(standin, kubernetes_proxy_addr="http://127.0.0.1:8001/")
    proxied.connect()
    assert proxied.get_admin_addr() == (
        "127.0.0.1:8001/api/v1/namespaces/schooner/services/mgmt-frontend-at-c1:1338/proxy")
    m.stop_all()


def test_addresses_come_from_external_nodes_or_a_load_balancer(standin, frontend):
    manager(standin).start_clipper()
    standin.nodes = [node("n1", "10.0.0.1")]  # an internal address only
    strict = KubernetesContainerManager("c1", namespace="schooner", api_client=api_client(standin))
    with pytest.raises(ClipperException, match="useInternalIP=True"):
        strict.connect()
    standin.nodes[0]["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.9"})
    strict.connect()
    assert strict.get_query_addr().startswith("203.0.113.9:")
    service = standin.objects[("Service", "schooner", "query-frontend-at-c1")]
    service["spec"]["type"] = "LoadBalancer"
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
    strict.connect()
    assert strict.get_query_addr() == "198.51.100.7:1337"


def test_connect_without_a_cluster_says_how_to_start_one(standin):
    with pytest.raises(ClipperException, match="no cluster 'c1' runs in namespace"):
        manager(standin).connect()


def test_deploy_and_scale_wait_for_replicas_that_connected(
    standin, frontend, start_container, closure_artifact
):
    m = manager(standin)
    m.start_clipper()
    assert m.get_admin_addr() == f"127.0.0.1:{frontend.management_port}"

    def double(xs):
        return [str(2 * sum(x)) for x in xs]

    artifact = closure_artifact(double)
    start_container(artifact, rpc_port=frontend.rpc_port, model_name="sum", name="r0")
    standin.clear()
    m.deploy_model("sum", "1", "doubles", "sum:1", num_replicas=1)
    assert standin.calls() == [
        "GET /api/v1/nodes",
        f"POST {APPS} sum-1-at-c1",
        f"GET {APPS}/sum-1-at-c1/status",
    ]
    assert m.get_num_replicas("sum", "1") == 1

    start_container(artifact, rpc_port=frontend.rpc_port, model_name="sum", name="r1")
    standin.clear()
    m.set_num_replicas("sum", "1", "doubles", "sum:1", 2)
    assert standin.calls() == [
        f"PATCH {APPS}/sum-1-at-c1/scale",
        f"GET {APPS}/sum-1-at-c1/status",
    ]
    assert standin.objects[("Deployment", "schooner", "sum-1-at-c1")]["spec"]["replicas"] == 2
    assert m.get_num_replicas("sum", "1") == 2

    standin.clear()
    m.stop_models({"sum": ["1"]})
    assert standin.calls() == [
        f"GET {APPS}?labelSelector=ai.clipper.container.label=c1,ai.clipper.name=model,"
        "ai.clipper.model_container.label=sum_1",
        f"DELETE {APPS}/sum-1-at-c1",
    ]
    assert m.get_num_replicas("sum", "1") == 0
    assert standin.names("Deployment") == ["query-frontend-at-c1"]
    m.stop_all()
    assert standin.objects == {}


def test_a_replica_that_cannot_pull_fails_the_deploy_naming_pods_and_events(standin, frontend):
    m = manager(standin)
    m.start_clipper()
    standin.stuck["sum-1-at-c1"] = [
        ("Normal", "Pulling", "Pulling image \"sum:1\""),
        ("Warning", "Failed", "Failed to pull image \"sum:1\": not found"),
    ]
    standin.clear()
    with pytest.raises(ClipperException) as err:
        m.deploy_model("sum", "1", "doubles", "sum:1", num_replicas=2)
    message = str(err.value)
    assert "0 of 2 pods of sum-1-at-c1 available" in message
    assert "pod sum-1-at-c1-0 (Pending)" in message and "pod sum-1-at-c1-1 (Pending)" in message
    assert "Warning Failed: Failed to pull image" in message
    # the failed version is removed again
    assert f"DELETE {APPS}/sum-1-at-c1" in standin.calls()
    assert "sum-1-at-c1" not in standin.names("Deployment")


def test_an_image_without_a_registry_is_refused_on_several_nodes(standin):
    standin.nodes = [node("node-1", "10.0.0.1"), node("node-2", "10.0.0.2")]
    m = manager(standin)
    with pytest.raises(ClipperException, match="names no registry.*2 nodes"):
        m.start_clipper(query_frontend_image="schooner/frontend:dev")
    assert [c for c in standin.calls() if c.startswith("POST") and "secrets" in c] == []
    assert not any(c.startswith(("POST", "PUT", "PATCH")) and "deployments" in c
                   for c in standin.calls())  # fmt: skip


def _real_cluster() -> bool:
    config = os.environ.get("KUBECONFIG", "")
    return bool(config) and all(os.path.isfile(p) for p in config.split(os.pathsep) if p)


@pytest.mark.kubernetes
@pytest.mark.skipif(not _real_cluster(), reason="needs a Kubernetes cluster: set KUBECONFIG")
def test_the_whole_flow_on_a_real_cluster():
    """Runs where KUBECONFIG names a cluster (and SCHOONER_K8S_REGISTRY a registry its nodes
    pull from, holding the frontend image; the model image is built and pushed there, so a
    Docker engine is needed too); skipped elsewhere."""
    import json
    import urllib.request

    from schooner.admin import ClipperConnection
    from schooner.admin.deployers import python as python_deployer

    registry = os.environ["SCHOONER_K8S_REGISTRY"]
    manager = KubernetesContainerManager(
        cluster_name="schooner-test", namespace="schooner-test",
        create_namespace_if_not_exists=True, useInternalIP=True,
        frontend_image=f"{registry}/schooner/frontend:latest",
    )  # fmt: skip
    conn = ClipperConnection(manager)
    try:
        conn.start_clipper(num_frontend_replicas=2)

        def double_sum(xs):
            return [str(2 * sum(x)) for x in xs]

        python_deployer.create_endpoint(conn, "sum", "doubles", double_sum, registry=registry)
        conn.set_num_replicas("sum", 2)
        again = KubernetesContainerManager(cluster_name="schooner-test",
                                           namespace="schooner-test", useInternalIP=True)
        again.connect()
        assert again.num_frontend_replicas == 2 and again.get_num_replicas("sum", "1") == 2
        for x in range(8):  # whichever frontend pod the Service picks
            request = urllib.request.Request(
                f"http://{manager.get_query_addr()}/sum/predict",
                data=json.dumps({"input": [float(x)]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            assert answer["default"] is False and float(answer["output"]) == 2 * x
    finally:
        conn.stop_all()

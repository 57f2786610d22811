"""The rendered Kubernetes objects: valid for every supported minor, DNS-safe, secret-free."""

from __future__ import annotations

import re

import pytest

from schooner.admin.managers import kubernetes_manifests as k8s
from schooner.admin.managers.kubernetes import check_pullable, image_registry
from schooner.runtime.config import ContainerConfig
from schooner.runtime.errors import ClipperException

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# The minors Schooner supports: 1.29 up to the newest kubernetes-validate ships.
VERSIONS = sorted(
    {v for v in kubernetes_validate.utils.all_versions()
     if tuple(map(int, v.split(".")[:2])) >= (1, 29)},
    key=lambda v: tuple(map(int, v.split("."))),
)  # fmt: skip
SECRETS = {key: f"s3cret-{key}-value" for key in k8s.SECRET_KEYS}
WEIRD = "My_Model.v2 / naïve bayes (final) " + "x" * 80


def rendered() -> list[dict]:
    one = k8s.ClusterSpec(cluster_name="one", namespace="schooner")
    two = k8s.ClusterSpec(cluster_name="two", namespace="schooner", num_frontend_replicas=2,
                          frontend_resources=k8s.Resources("250m", "1", "256Mi", "1Gi"))
    external = k8s.ClusterSpec(cluster_name="ext", num_frontend_replicas=3, redis_ip="10.0.0.5",
                               service_types={"query": "LoadBalancer"},
                               image_pull_secrets=("regcred",))  # fmt: skip
    model = k8s.ModelSpec("sum", "1", "doubles", "registry.example:5000/sum:1", num_replicas=4)
    gpu = k8s.ModelSpec(WEIRD, "7:beta", "strings", "registry.example/m:7", batch_size=8,
                        resources=k8s.Resources("2", "4", "4Gi", "8Gi", gpus=1))
    objects = []
    for spec in (one, two, external):
        objects += k8s.cluster_objects(spec, SECRETS, create_namespace=True)
        objects += [k8s.model_deployment(spec, model), k8s.model_deployment(spec, gpu)]
    return objects


def test_the_supported_range_reaches_1_29_and_the_newest_shipped():
    assert VERSIONS[0] == "1.29.0"
    assert VERSIONS[-1] == kubernetes_validate.latest_version()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(version):
    objects = rendered()
    kinds = {o["kind"] for o in objects}
    assert kinds == {"Namespace", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
                     "NetworkPolicy"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_names_and_label_values_are_dns_safe_and_distinct():
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for name in (WEIRD, "UPPER", "a_b", "a-b", "---", "ü", "x" * 200):
        out = k8s.dns_label(name)
        assert label.match(out) and len(out) <= 63, (name, out)
    assert k8s.dns_label("a_b") != k8s.dns_label("a-b")  # the changed one is hashed
    assert k8s.dns_label("plain-name") == "plain-name"
    names = [o["metadata"]["name"] for o in rendered()]
    assert all(label.match(n) and len(n) <= 63 for n in names), names
    values = [v for o in rendered() for v in o["metadata"].get("labels", {}).values()]
    assert all(re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", v) and len(v) <= 63
               for v in values), values  # fmt: skip


def test_credentials_only_in_the_secret():
    for obj in rendered():
        text = repr(obj)
        if obj["kind"] == "Secret":
            assert all(value in text for value in SECRETS.values())
        else:
            assert "s3cret" not in text, obj["metadata"]["name"]
    two = k8s.ClusterSpec(cluster_name="two", num_frontend_replicas=2)
    pod = k8s.frontend_deployment(two)["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["env"]}
    assert set(refs) == set(k8s.SECRET_KEYS.values())
    assert {r["name"] for r in refs.values()} == {k8s.names.secret("two")}


def test_one_frontend_keeps_sqlite_on_a_volume_several_share_redis():
    one = k8s.ClusterSpec(cluster_name="one")
    args = k8s.frontend_deployment(one)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--state-db", "/home/schooner/state/state.db"]
    assert not any(o["metadata"]["name"].startswith("redis") for o in k8s.cluster_objects(one, {}))
    two = k8s.ClusterSpec(cluster_name="two", num_frontend_replicas=2)
    deployment = k8s.frontend_deployment(two)
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--state-redis", "redis-at-two:6379", "--state-prefix", "schooner:two"]
    ext = k8s.ClusterSpec(cluster_name="ext", num_frontend_replicas=2, redis_ip="db.example")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in k8s.cluster_objects(ext, {})]
    assert ("Deployment", "redis-at-ext") not in kinds
    assert ("PersistentVolumeClaim", "schooner-ext-state") not in kinds


def test_model_pods_get_the_replica_contract_and_serve_every_frontend():
    spec = k8s.ClusterSpec(cluster_name="c", namespace="ns", num_frontend_replicas=2)
    model = k8s.ModelSpec(WEIRD, "3", "floats", "r.example/m:3", batch_size=16,
                          resources=k8s.Resources(gpus=2))
    deployment = k8s.model_deployment(spec, model)
    pod = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in pod["env"] if "value" in e}
    config = ContainerConfig.from_env(env)
    assert (config.model_name, config.model_version) == (WEIRD, "3")
    assert config.frontend_host == "query-frontend-pods-at-c.ns.svc"
    assert config.every_frontend and env["SCHOONER_EVERY_FRONTEND"] == "1"
    assert config.max_batch_size == 16 and config.device == "cuda"
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert deployment["metadata"]["annotations"][k8s.MODEL_NAME_ANNOTATION] == WEIRD
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(k8s.MODEL_METRICS_PORT)
    assert pod["readinessProbe"]["exec"]["command"] == ["test", "-f", k8s.READY_FILE]
    headless = [s for s in k8s.frontend_services(spec)
                if s["metadata"]["name"] == k8s.names.pods("c")][0]  # fmt: skip
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == deployment_selector(k8s.frontend_deployment(spec))


def deployment_selector(deployment: dict) -> dict:
    return deployment["spec"]["selector"]["matchLabels"]


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ClipperException, match="cluster_name"):
        k8s.ClusterSpec(cluster_name="Bad_Name")
    with pytest.raises(ClipperException, match="service_types"):
        k8s.ClusterSpec(service_types={"query": "Ingress"})
    with pytest.raises(ClipperException, match="quantity"):
        k8s.Resources(cpu_limit="lots")


def test_image_references_and_the_registry_rule():
    assert image_registry("sum:1") == (None, "sum", "1")
    assert image_registry("schooner/frontend") == (None, "schooner/frontend", "latest")
    assert image_registry("registry.example:5000/a/b:2") == ("registry.example:5000", "a/b", "2")
    assert image_registry("localhost/m@sha256:ab") == ("localhost", "m", "sha256:ab")
    check_pullable("sum:1", nodes=1)  # one node: the image it built is there
    with pytest.raises(ClipperException, match="names no registry.*3 nodes"):
        check_pullable("sum:1", nodes=3)

"""``schooner render kubernetes``: the manager's objects as YAML a user can kubectl apply."""

from __future__ import annotations

import pytest

from schooner.admin.cli import main

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def render(capsys, *args: str) -> list[dict]:
    assert main(["render", "kubernetes", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_two_frontends_and_a_model_render_as_valid_yaml(capsys):
    objects = render(capsys, "--cluster", "demo", "--namespace", "schooner",
                     "--create-namespace", "--frontend-replicas", "2",
                     "--model", "sum", "1", "registry.example:5000/sum:1", "--replicas", "3",
                     "--service-type", "query=LoadBalancer")  # fmt: skip
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("Namespace", "schooner"),
        ("Secret", "schooner-demo-credentials"),
        ("PersistentVolumeClaim", "schooner-demo-state"),
        ("Deployment", "redis-at-demo"),
        ("Service", "redis-at-demo"),
        ("NetworkPolicy", "redis-at-demo"),
        ("Deployment", "query-frontend-at-demo"),
        ("Service", "query-frontend-at-demo"),
        ("Service", "mgmt-frontend-at-demo"),
        ("Service", "query-frontend-rpc-at-demo"),
        ("Service", "query-frontend-pods-at-demo"),
        ("Deployment", "sum-1-at-demo"),
    ]
    assert objects[6]["spec"]["replicas"] == 2 and objects[-1]["spec"]["replicas"] == 3
    assert objects[7]["spec"]["type"] == "LoadBalancer"
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_secret_can_be_left_to_the_user(capsys):
    objects = render(capsys, "--without-secret")
    assert "Secret" not in {o["kind"] for o in objects}
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for o in objects if o["kind"] == "Deployment"
            for c in o["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])
            if "valueFrom" in e]  # fmt: skip
    assert refs and set(refs) == {"schooner-default-cluster-credentials"}


def test_each_render_makes_new_credentials(capsys):
    first = render(capsys)[0]["stringData"]
    second = render(capsys)[0]["stringData"]
    assert first.keys() == second.keys() and first != second

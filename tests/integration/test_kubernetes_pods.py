"""The pods the Kubernetes manifests describe, run for real with Docker exactly as written.

No kubelet can run here, so this test is one: it takes the frontend and model Deployments
``kubernetes_manifests`` renders and runs each pod's container with Docker as the spec says
(image, command, args, env with the Secret's keys resolved, the user of its securityContext,
its capabilities dropped), puts the containers on one network under the names the Services
give them (the headless Service's name resolves to every frontend pod, as cluster DNS does),
runs the probes the spec names (exec, httpGet, tcpSocket) inside the pod as the kubelet
would, and queries the result: two frontend pods sharing one Redis and one model replica
serving both. The Redis is either the pod the manager renders (its config from the
Secret, its data on a volume; the image is Debian's redis-server on the local Debian base,
as no image registry is reachable here) or one of the user's own (``redis_ip``: here
redis-server on the network's gateway). Skipped when no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from schooner.admin import DockerContainerManager
from schooner.admin import images as image_builds
from schooner.admin.engine import Engine
from schooner.admin.managers import kubernetes_manifests as k8s
from tests.conftest import free_port, wait_until
from tests.integration import docker_support

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

engine = docker_support.engine  # the fixture

SECRETS = {"container-secret": "pods-rpc-secret", "management-token": "pods-admin-token",
           "state-password": "pods-redis-password"}  # fmt: skip


def _env_file(container: dict[str, Any], secret: dict[str, Any], path: Path) -> None:
    """The container's env, each secretKeyRef resolved from the Secret, as a docker env
    file (owner-only)."""
    lines = []
    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            value = secret["stringData"][ref["key"]]
        lines.append(f"{item['name']}={value}\n")
    path.write_text("".join(lines))
    path.chmod(0o600)


def run_pod(engine: Engine, deployment: dict[str, Any], secret: dict[str, Any], name: str,
            network: str, aliases: list[str], publish: list[int], tmp: Path) -> str:  # fmt: skip
    """``docker run`` one pod of ``deployment`` as its template says; returns its name."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    env_file = tmp / f"{name}.env"
    _env_file(container, secret, env_file)
    user = pod["securityContext"]["runAsUser"]
    argv = ["run", "--detach", "--name", name, "--network", network,
            "--user", str(user), "--group-add", str(pod["securityContext"]["fsGroup"]),
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--env-file", str(env_file),
            "--label", f"{k8s.CLIPPER_NAME_LABEL}={name}",
            "--entrypoint", container["command"][0]]  # fmt: skip
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        argv += ["--volume", f"{_volume(volumes[mount['name']], secret, pod, tmp)}:"
                 f"{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
    for alias in aliases:
        argv += ["--network-alias", alias]
    for port in publish:
        argv += ["--publish", f"127.0.0.1::{port}"]
    argv += [container["image"], *container["command"][1:], *container.get("args", [])]
    engine.run(argv, timeout=120.0)
    return name


def _volume(volume: dict[str, Any], secret: dict[str, Any], pod: dict[str, Any],
            tmp: Path) -> Path:  # fmt: skip
    """A host directory standing in for a pod volume: a claim's (owned by the fsGroup, as
    the kubelet makes it) or a secret's items (the mode it names, group fsGroup)."""
    group = pod["securityContext"]["fsGroup"]
    path = Path(tempfile.mkdtemp(dir=tmp, prefix=volume["name"]))
    if "secret" in volume:
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        for item in volume["secret"]["items"]:
            target = path / item["path"]
            target.write_text(secret["stringData"][item["key"]])
            os.chown(target, 0, group)
            target.chmod(volume["secret"]["defaultMode"])
        path.chmod(0o755)
    else:
        assert "persistentVolumeClaim" in volume
        os.chown(path, 0, group)
        path.chmod(0o770)
    return path


def probe(engine: Engine, name: str, container: dict[str, Any], kind: str) -> bool:
    """Run the container's ``kind`` probe inside it, as the kubelet would."""
    spec = container[kind]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if "exec" in spec:
        command = spec["exec"]["command"]
    else:
        action = spec.get("httpGet") or spec["tcpSocket"]
        port = ports.get(action["port"], action["port"])
        if "httpGet" in spec:
            code = (f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}"
                    f"{action['path']}', timeout=3)")  # fmt: skip
        else:
            code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)"
        command = ["python3", "-c", code]
    result = subprocess.run(["docker", "exec", name, *command], capture_output=True,
                            timeout=30)  # fmt: skip
    return result.returncode == 0


def published(engine: Engine, name: str, port: int) -> str:
    (found,) = engine.inspect("container", [name])
    binding = found["NetworkSettings"]["Ports"][f"{port}/tcp"][0]
    return f"127.0.0.1:{binding['HostPort']}"


def call(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture
def network(engine):
    """(network, its gateway address, the containers started on it: removed at the end)."""
    name = f"schooner-pods-{uuid.uuid4().hex[:8]}"
    engine.run(["network", "create", name])
    (found,) = engine.inspect("network", [name])
    started: list[str] = []
    yield name, found["IPAM"]["Config"][0]["Gateway"], started
    if started:
        engine.run(["rm", "--force", *started], check=False, timeout=120.0)
    engine.run(["network", "rm", name], check=False)
    if started_images:
        engine.run(["rmi", *started_images], check=False)
        started_images.clear()


started_images: list[str] = []  # model images a test built under a version of its own


REDIS_IMAGE = "schooner-test/redis:7"


def redis_image(engine: Engine, python: str, tmp: Path) -> str:
    """Debian's redis-server on the Python base (no image registry is reachable here)."""
    if not engine.inspect("image", [REDIS_IMAGE]):
        (tmp / "Dockerfile").write_text(
            f"FROM {python}\nRUN apt-get update -qq && apt-get install -y -qq "
            "--no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n")
        engine.run(["build", "--tag", REDIS_IMAGE, str(tmp)], timeout=900.0)
    return REDIS_IMAGE


@pytest.mark.parametrize("redis", ["managed", "own"])
def test_two_frontend_pods_and_one_replica_run_as_rendered(engine, network, spawn, tmp_path,
                                                           redis):  # fmt: skip
    server = shutil.which("redis-server")
    if redis == "own" and server is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    net, gateway, started = network
    python = image_builds.python_base(engine)
    if redis == "own":
        # the user's own Redis (redis_ip), reachable from the pods at the network's gateway
        redis_port = free_port()
        conf = tmp_path / "redis.conf"
        conf.write_text(f"port {redis_port}\nbind {gateway}\nrequirepass "
                        f"{SECRETS['state-password']}\nsave \"\"\nappendonly no\n"
                        f"dir {tmp_path}\n")  # fmt: skip
        spawn("redis", [server, str(conf)])
        settings: dict[str, Any] = {"redis_ip": gateway, "redis_port": redis_port}
    else:
        (tmp_path / "redis-image").mkdir()
        settings = {"redis_image": redis_image(engine, python, tmp_path / "redis-image")}

    frontend_image = image_builds.ensure_base_image(engine, "frontend", python)

    def double_sum(xs):
        return [str(2 * sum(x)) for x in xs]

    from schooner.frameworks.closure import save

    artifact = save(double_sum, tmp_path / "artifact")
    builder = DockerContainerManager(cluster_name=f"b{uuid.uuid4().hex[:6]}",
                                     wheels=docker_support.TORCH_CPU_WHEELS)  # fmt: skip
    # a version of its own: other tests on this engine build sum:1 images of other models
    version = uuid.uuid4().hex[:8]
    model_image = builder.build_model("sum", version, str(artifact), "default")
    started_images.append(model_image)

    spec = k8s.ClusterSpec(cluster_name="pods", namespace="ns", num_frontend_replicas=2,
                           frontend_image=frontend_image, **settings)  # fmt: skip
    objects = {(o["kind"], o["metadata"]["name"]): o for o in k8s.cluster_objects(spec, SECRETS)}
    secret = objects[("Secret", k8s.names.secret("pods"))]
    frontend = objects[("Deployment", k8s.names.frontend("pods"))]
    services = [o for (kind, name), o in objects.items()
                if kind == "Service" and name != k8s.names.redis("pods")]  # fmt: skip
    assert {o["metadata"]["name"] for o in services} == {
        k8s.names.frontend("pods"), k8s.names.management("pods"), k8s.names.rpc("pods"),
        k8s.names.pods("pods")}  # fmt: skip
    # every Service selects the frontend pods: each pod answers to each Service's name (the
    # headless one in its cluster-DNS form, which the replicas are given)
    aliases = [o["metadata"]["name"] for o in services]
    aliases.append(f"{k8s.names.pods('pods')}.ns.svc")
    model = k8s.model_deployment(spec, k8s.ModelSpec("sum", version, "doubles", model_image))

    redis_pod = f"{net}-redis-0"
    if redis == "managed":
        database = objects[("Deployment", k8s.names.redis("pods"))]
        started.append(redis_pod)
        run_pod(engine, database, secret, redis_pod, net, [k8s.names.redis("pods")], [],
                tmp_path)  # fmt: skip
        db_container = database["spec"]["template"]["spec"]["containers"][0]
        wait_until(lambda: probe(engine, redis_pod, db_container, "readinessProbe"),
                   timeout=60, what="the Redis pod ready",
                   context=lambda: engine.logs(redis_pod, 30))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        pods = [f"{net}-frontend-{i}" for i in range(2)]
        replica = f"{net}-sum-0"
        started += [*pods, replica]
        for pod in pods:
            run_pod(engine, frontend, secret, pod, net, aliases, [1337, 1338], Path(tmp))
        run_pod(engine, model, secret, replica, net, [], [], Path(tmp))
    frontend_container = frontend["spec"]["template"]["spec"]["containers"][0]
    model_container = model["spec"]["template"]["spec"]["containers"][0]

    def logs() -> str:
        return "\n".join(f"--- {p}:\n{engine.logs(p, 30)}" for p in started)

    for pod in pods:
        wait_until(lambda p=pod: probe(engine, p, frontend_container, "readinessProbe"),
                   timeout=120, what=f"{pod} ready", context=logs)  # fmt: skip
        assert probe(engine, pod, frontend_container, "livenessProbe")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        wait_until(lambda k=kind: probe(engine, replica, model_container, k), timeout=180,
                   what=f"the replica's {kind}", context=logs)  # fmt: skip

    token = SECRETS["management-token"]
    admin = [f"http://{published(engine, p, 1338)}/admin" for p in pods]
    query = [f"http://{published(engine, p, 1337)}" for p in pods]
    # the app, model and link are made through frontend 0 only
    assert call(f"{admin[0]}/add_app", {"name": "sum", "input_type": "doubles",
                "default_output": "-1", "latency_slo_micros": 10_000_000}, token)[0] == 200
    assert call(f"{admin[0]}/add_model", {"model_name": "sum", "model_version": version,
                "input_type": "doubles"}, token)[0] == 200  # fmt: skip
    assert call(f"{admin[0]}/add_model_links", {"app_name": "sum", "model_names": ["sum"]},
                token)[0] == 200  # fmt: skip

    def registered(url: str) -> bool:
        status, replicas = call(f"{url}/get_all_containers", {"verbose": True}, token)
        return status == 200 and [r["model_name"] for r in replicas] == ["sum"]

    for url in admin:  # one replica, registered with both frontend pods (authenticated)
        wait_until(lambda u=url: registered(u), timeout=120, what=f"the replica at {url}",
                   context=logs)  # fmt: skip
    # frontend 1 learned the app from the shared Redis, and both answer from the one replica
    wait_until(lambda: call(f"{admin[1]}/get_linked_models", {"app_name": "sum"}, token)
               == (200, ["sum"]), timeout=30, what="frontend 1 sees the link")  # fmt: skip
    for url, x in ((query[0], 1.0), (query[1], 2.0), (query[0], 3.0), (query[1], 4.0)):
        status, answer = call(f"{url}/sum/predict", {"input": [x, x]})
        assert status == 200 and answer["default"] is False, (url, answer, logs())
        assert float(answer["output"]) == 4 * x
    # the management API wants the token from the Secret
    assert call(f"{admin[1]}/get_all_applications", {}, None)[0] == 401
    # a frontend pod is lost: the other serves on
    engine.run(["rm", "--force", pods[0]])
    status, answer = call(f"{query[1]}/sum/predict", {"input": [5.0]})
    assert status == 200 and float(answer["output"]) == 10.0, answer
    if redis == "managed":
        # the Redis pod is lost and comes back on its volume (Recreate): nothing is forgotten
        engine.run(["restart", redis_pod], timeout=60.0)
        wait_until(lambda: probe(engine, redis_pod, db_container, "readinessProbe"),
                   timeout=60, what="the Redis pod ready again", context=logs)  # fmt: skip
        wait_until(lambda: call(f"{admin[1]}/add_app", {"name": "after", "input_type":
                   "doubles", "latency_slo_micros": 100_000}, token)[0] == 200, timeout=30,
                   what="a change after the Redis pod came back", context=logs)  # fmt: skip
        status, apps = call(f"{admin[1]}/get_all_applications", {}, token)
        assert status == 200 and sorted(apps) == ["after", "sum"], apps

"""The Kubernetes objects of a Schooner cluster, rendered as plain dicts (no client needed).

``KubernetesContainerManager`` creates exactly these objects, and ``schooner render`` prints
them as YAML for ``kubectl apply``, so what a reviewer reads is what the manager applies.

=======================================  ==================================================
object (``<c>`` = cluster name)          what it is
=======================================  ==================================================
Namespace ``<namespace>``                only with ``create_namespace_if_not_exists``
Secret ``schooner-<c>-credentials``      the cluster's credentials (container secret,
                                         management token, the state database's password):
                                         pods read them by ``secretKeyRef``, never argv
Deployment ``query-frontend-at-<c>``     ``num_frontend_replicas`` frontend pods
Service ``query-frontend-at-<c>``        the query port (1337; ``service_types["query"]``)
Service ``mgmt-frontend-at-<c>``         the management port (1338)
Service ``query-frontend-rpc-at-<c>``    the RPC port (7000) for Clipper's containers
Service ``query-frontend-pods-at-<c>``   headless: resolves to every ready frontend pod;
                                         a Schooner replica serves each one it finds
PersistentVolumeClaim                    one frontend: its SQLite state (``state.db``);
``schooner-<c>-state``                   several: the Redis data (append-only file)
Deployment/Service ``redis-at-<c>``      several frontends and no ``redis_ip``: the shared
                                         state database, and a NetworkPolicy letting only
                                         the frontend pods reach it
Deployment ``<name>-<version>-…-at-<c>`` one per model version, ``num_replicas`` pods
=======================================  ==================================================

Every object carries Clipper's labels: ``ai.clipper.container.label=<c>`` on all of them,
``ai.clipper.name`` naming the component, ``ai.clipper.model_container.label=<name>_<version>``
on a model's Deployment and pods (label-safe). Names and label values are valid DNS labels
whatever a model is called (``dns_label``); a model's real name and version are in its
annotations. Model pods are scraped by Prometheus (``prometheus.io/*`` annotations) on
their metrics port; frontend pods on the query port. No pod needs the Kubernetes API, so
none gets a service account token; every pod runs as a non-root user, all capabilities
dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schooner.admin.managers.base import (
    CLIPPER_DOCKER_LABEL,
    CLIPPER_INTERNAL_MANAGEMENT_PORT,
    CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_RPC_PORT,
    CLIPPER_MODEL_CONTAINER_LABEL,
    create_model_container_label,
)
from schooner.runtime.config import ContainerConfig
from schooner.runtime.errors import ClipperException
from schooner.runtime.wire import InputType

__all__ = [
    "CLIPPER_NAME_LABEL",
    "MODEL_METRICS_PORT",
    "STATE_PASSWORD_ENV",
    "SECRET_KEYS",
    "ClusterSpec",
    "ModelSpec",
    "Resources",
    "dns_label",
    "label_value",
    "cluster_objects",
    "model_deployment",
    "names",
]

CLIPPER_NAME_LABEL = "ai.clipper.name"  # Clipper's component label
MODEL_NAME_ANNOTATION = "ai.schooner.model.name"
MODEL_VERSION_ANNOTATION = "ai.schooner.model.version"
MODEL_METRICS_PORT = 1390  # Clipper's CLIPPER_INTERNAL_METRIC_PORT
REDIS_PORT = 6379
READY_FILE = "/tmp/model_is_ready.check"  # what the base images' HEALTHCHECK tests
STATE_DIR = "/home/schooner/state"
DEFAULT_FRONTEND_IMAGE = "schooner/frontend:latest"
DEFAULT_REDIS_IMAGE = "redis:7.4-alpine"
DEFAULT_SERVICE_TYPES = {"query": "NodePort", "management": "NodePort", "rpc": "ClusterIP"}
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")

# The Secret's keys and the environment variables pods read them into (secretKeyRef).
# SCHOONER_RPC_SECRET: what a replica proves it holds when it registers (the frontend checks
# it); SCHOONER_ADMIN_TOKEN: what the management API takes; the state password: Redis's.
# (runtime.config's RPC_SECRET_ENV and ADMIN_TOKEN_ENV.)
STATE_PASSWORD_ENV = "SCHOONER_STATE_PASSWORD"
SECRET_KEYS = {
    "container-secret": "SCHOONER_RPC_SECRET",
    "management-token": "SCHOONER_ADMIN_TOKEN",
    "state-password": STATE_PASSWORD_ENV,
}
_REDIS_CONF_KEY = "redis.conf"

_LABEL_MAX = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei|P|Pi)?$")


def dns_label(text: str, max_len: int = _LABEL_MAX) -> str:
    """``text`` as an RFC 1123 label (lower-case alphanumerics and '-', at most ``max_len``).
    A name that had to change gets a hash suffix of the original, so two different model
    names never map to one object name."""
    clean = _NOT_DNS.sub("-", text.lower()).strip("-")
    if clean == text and len(clean) <= max_len:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = clean[: max_len - len(digest) - 1].strip("-")
    return f"{head}-{digest}" if head else f"x-{digest}"


def label_value(text: str) -> str:
    """``text`` as a label value (63 chars, alphanumeric at both ends; hashed when changed)."""
    clean = _NOT_LABEL.sub("-", text).strip("-._")
    if clean == text and len(clean) <= _LABEL_MAX:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    head = clean[: _LABEL_MAX - len(digest) - 1].strip("-._")
    return f"{head}-{digest}" if head else f"x-{digest}"


@dataclass(frozen=True)
class Resources:
    """CPU/memory requests and limits (Kubernetes quantities: ``"500m"``, ``"1Gi"``) and
    GPUs (``nvidia.com/gpu``, requested and limited alike)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpus: int = 0

    def __post_init__(self) -> None:
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            value = getattr(self, name)
            if value is not None and not _QUANTITY.match(str(value)):
                raise ClipperException(f"{name}={value!r} is not a Kubernetes quantity")
        if self.gpus < 0:
            raise ClipperException("gpus must be 0 or more")

    def render(self) -> dict[str, dict[str, str]]:
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        for key, request, limit in (
            ("cpu", self.cpu_request, self.cpu_limit),
            ("memory", self.memory_request, self.memory_limit),
        ):
            if request is not None:
                requests[key] = str(request)
            if limit is not None:
                limits[key] = str(limit)
        if self.gpus:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(self.gpus)
        out = {}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out


@dataclass(frozen=True)
class ClusterSpec:
    """What the cluster-wide objects depend on (the manager's constructor settings)."""

    cluster_name: str = "default-cluster"
    namespace: str = "default"
    num_frontend_replicas: int = 1
    frontend_image: str = DEFAULT_FRONTEND_IMAGE
    service_types: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SERVICE_TYPES))
    redis_ip: str | None = None
    redis_port: int = REDIS_PORT
    redis_image: str = DEFAULT_REDIS_IMAGE
    state_storage: str = "1Gi"
    storage_class: str | None = None
    frontend_resources: Resources = Resources()
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", self.cluster_name):
            raise ClipperException(
                f"cluster_name {self.cluster_name!r}: lower-case letters, digits and '-', "
                "at most 40 characters, starting and ending alphanumeric (it is part of "
                "every object's name)"
            )
        if dns_label(self.namespace) != self.namespace:
            raise ClipperException(f"namespace {self.namespace!r} is not a DNS label")
        if self.num_frontend_replicas < 1:
            raise ClipperException("num_frontend_replicas must be at least 1")
        unknown = set(self.service_types) - set(DEFAULT_SERVICE_TYPES)
        bad = {v for v in self.service_types.values() if v not in _SERVICE_TYPES}
        if unknown or bad:
            raise ClipperException(
                f"service_types: keys are {sorted(DEFAULT_SERVICE_TYPES)} and values "
                f"{list(_SERVICE_TYPES)}; got {dict(self.service_types)}"
            )

    @property
    def shared_state(self) -> bool:
        """Several frontends share one database (Redis); one keeps SQLite on a volume."""
        return self.num_frontend_replicas > 1 or self.redis_ip is not None

    def service_type(self, which: str) -> str:
        return self.service_types.get(which, DEFAULT_SERVICE_TYPES[which])


@dataclass(frozen=True)
class ModelSpec:
    """One model version's Deployment."""

    name: str
    version: str
    input_type: str
    image: str
    num_replicas: int = 1
    batch_size: int = -1
    resources: Resources = Resources()
    device: str = "cpu"


class names:  # noqa: N801 (a namespace of name functions)
    """Every object name, in one place."""

    @staticmethod
    def secret(cluster: str) -> str:
        return f"schooner-{cluster}-credentials"

    @staticmethod
    def state_claim(cluster: str) -> str:
        return f"schooner-{cluster}-state"

    @staticmethod
    def frontend(cluster: str) -> str:
        return f"query-frontend-at-{cluster}"

    @staticmethod
    def management(cluster: str) -> str:
        return f"mgmt-frontend-at-{cluster}"

    @staticmethod
    def rpc(cluster: str) -> str:
        return f"query-frontend-rpc-at-{cluster}"

    @staticmethod
    def pods(cluster: str) -> str:
        return f"query-frontend-pods-at-{cluster}"

    @staticmethod
    def redis(cluster: str) -> str:
        return f"redis-at-{cluster}"

    @staticmethod
    def model(cluster: str, name: str, version: str) -> str:
        suffix = f"-at-{cluster}"
        return dns_label(f"{name}-{version}", _LABEL_MAX - len(suffix)) + suffix


def _labels(spec: ClusterSpec, component: str, **more: str) -> dict[str, str]:
    return {CLIPPER_DOCKER_LABEL: spec.cluster_name, CLIPPER_NAME_LABEL: component, **more}


def _meta(spec: ClusterSpec, name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels, **extra}


def _secret_env(*keys: str) -> list[dict[str, Any]]:
    return [
        {
            "name": SECRET_KEYS[key],
            "valueFrom": {"secretKeyRef": {"name": "", "key": key, "optional": False}},
        }
        for key in keys
    ]


def _with_secret(env: list[dict[str, Any]], secret: str) -> list[dict[str, Any]]:
    for item in env:
        if "valueFrom" in item:
            item["valueFrom"]["secretKeyRef"]["name"] = secret
    return env


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def secret(spec: ClusterSpec, values: Mapping[str, str]) -> dict[str, Any]:
    """The credentials Secret; ``values`` maps ``SECRET_KEYS`` keys to the secrets."""
    data = {key: values[key] for key in SECRET_KEYS if key in values}
    if spec.shared_state and spec.redis_ip is None and "state-password" in values:
        data[_REDIS_CONF_KEY] = (
            f"requirepass {values['state-password']}\nappendonly yes\ndir /data\n"
            f"port {spec.redis_port}\nprotected-mode no\n"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(spec, names.secret(spec.cluster_name), _labels(spec, "credentials")),
        "type": "Opaque",
        "stringData": data,
    }


def namespace(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": spec.namespace, "labels": {CLIPPER_DOCKER_LABEL: spec.cluster_name}},
    }


def state_claim(spec: ClusterSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.state_storage}},
    }
    if spec.storage_class is not None:
        claim["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(spec, names.state_claim(spec.cluster_name), _labels(spec, "state")),
        "spec": claim,
    }


def frontend_args(spec: ClusterSpec) -> list[str]:
    """The frontend's command line in a pod: every listener on the pod's address (the
    Services are the boundary), the state in SQLite on the volume or in the shared Redis."""
    args = [
        "--query-host", "0.0.0.0", "--query-port", str(CLIPPER_INTERNAL_QUERY_PORT),
        "--management-host", "0.0.0.0", "--management-port", str(CLIPPER_INTERNAL_MANAGEMENT_PORT),
        "--rpc-host", "0.0.0.0", "--rpc-port", str(CLIPPER_INTERNAL_RPC_PORT),
    ]  # fmt: skip
    if spec.shared_state:
        host = spec.redis_ip or names.redis(spec.cluster_name)
        args += ["--state-redis", f"{host}:{spec.redis_port}",
                 "--state-prefix", f"schooner:{spec.cluster_name}"]
    else:
        args += ["--state-db", f"{STATE_DIR}/state.db"]
    return args


def frontend_deployment(spec: ClusterSpec) -> dict[str, Any]:
    labels = _labels(spec, "query-frontend")
    secret_name = names.secret(spec.cluster_name)
    keys = ["container-secret", "management-token"]
    if spec.shared_state:
        keys.append("state-password")
    container: dict[str, Any] = {
        "name": "query-frontend",
        "image": spec.frontend_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python3", "-m", "schooner.frontend"],
        "args": frontend_args(spec),
        "env": _with_secret(_secret_env(*keys), secret_name),
        "ports": [
            {"name": "query", "containerPort": CLIPPER_INTERNAL_QUERY_PORT, "protocol": "TCP"},
            {"name": "management", "containerPort": CLIPPER_INTERNAL_MANAGEMENT_PORT,
             "protocol": "TCP"},
            {"name": "rpc", "containerPort": CLIPPER_INTERNAL_RPC_PORT, "protocol": "TCP"},
        ],  # fmt: skip
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "query"},
            "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3,
        },  # fmt: skip
        "livenessProbe": {
            "tcpSocket": {"port": "query"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 3,
            "failureThreshold": 3,
        },  # fmt: skip
        "securityContext": _container_security(),
    }
    resources = spec.frontend_resources.render()
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"securityContext": _pod_security(), "containers": [container],
                           "automountServiceAccountToken": False}  # fmt: skip
    if not spec.shared_state:
        container["volumeMounts"] = [{"name": "state", "mountPath": STATE_DIR}]
        pod["volumes"] = [
            {"name": "state",
             "persistentVolumeClaim": {"claimName": names.state_claim(spec.cluster_name)}}
        ]  # fmt: skip
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(CLIPPER_INTERNAL_QUERY_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, names.frontend(spec.cluster_name), labels),
        "spec": {
            "replicas": spec.num_frontend_replicas,
            # one SQLite file: never two pods on it at once; shared state: roll
            "strategy": {"type": "RollingUpdate"} if spec.shared_state else {"type": "Recreate"},
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels), "annotations": annotations},
                         "spec": pod},
        },  # fmt: skip
    }


def _service(
    spec: ClusterSpec, name: str, component: str, port_name: str, port: int, kind: str,
    selector: dict[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, name, _labels(spec, component)),
        "spec": {
            "type": kind,
            "selector": dict(selector),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name,
                       "protocol": "TCP"}],
        },  # fmt: skip
    }


def frontend_services(spec: ClusterSpec) -> list[dict[str, Any]]:
    selector = _labels(spec, "query-frontend")
    c = spec.cluster_name
    headless = _service(spec, names.pods(c), "query-frontend-pods", "rpc",
                        CLIPPER_INTERNAL_RPC_PORT, "ClusterIP", selector)  # fmt: skip
    headless["spec"]["clusterIP"] = "None"
    # a replica must find a frontend pod that is starting, so that it can register with it
    headless["spec"]["publishNotReadyAddresses"] = True
    return [
        _service(spec, names.frontend(c), "query-frontend", "query", CLIPPER_INTERNAL_QUERY_PORT,
                 spec.service_type("query"), selector),
        _service(spec, names.management(c), "mgmt-frontend", "management",
                 CLIPPER_INTERNAL_MANAGEMENT_PORT, spec.service_type("management"), selector),
        _service(spec, names.rpc(c), "query-frontend-rpc", "rpc", CLIPPER_INTERNAL_RPC_PORT,
                 spec.service_type("rpc"), selector),
        headless,
    ]  # fmt: skip


def redis_objects(spec: ClusterSpec) -> list[dict[str, Any]]:
    """The shared state database: one Redis pod, its append-only file on the volume, its
    password from the Secret (a config file mounted from it, so not in its argv)."""
    labels = _labels(spec, "redis")
    name = names.redis(spec.cluster_name)
    container = {
        "name": "redis",
        "image": spec.redis_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["redis-server", f"/etc/schooner/{_REDIS_CONF_KEY}"],
        "ports": [{"name": "redis", "containerPort": spec.redis_port, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": "/etc/schooner", "readOnly": True},
        ],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10},  # fmt: skip
        "securityContext": _container_security(),
    }
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999},
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "data",
             "persistentVolumeClaim": {"claimName": names.state_claim(spec.cluster_name)}},
            {"name": "config", "secret": {
                "secretName": names.secret(spec.cluster_name),
                "items": [{"key": _REDIS_CONF_KEY, "path": _REDIS_CONF_KEY}],
                "defaultMode": 0o440}},
        ],
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, name, labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    service = _service(spec, name, "redis", "redis", spec.redis_port, "ClusterIP", labels)
    # only the cluster's frontend pods reach it (where the network enforces policies)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(spec, name, _labels(spec, "redis")),
        "spec": {
            "podSelector": {"matchLabels": dict(labels)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": _labels(spec, "query-frontend")}}],
                "ports": [{"protocol": "TCP", "port": spec.redis_port}],
            }],
        },
    }  # fmt: skip
    return [deployment, service, policy]


def cluster_objects(
    spec: ClusterSpec, secrets: Mapping[str, str], *, create_namespace: bool = False
) -> list[dict[str, Any]]:
    """Every cluster-wide object, in the order they are applied."""
    objects = [namespace(spec)] if create_namespace else []
    objects.append(secret(spec, secrets))
    if spec.redis_ip is None:
        objects.append(state_claim(spec))  # SQLite's file, or Redis's
    if spec.shared_state and spec.redis_ip is None:
        objects += redis_objects(spec)
    objects.append(frontend_deployment(spec))
    objects += frontend_services(spec)
    return objects


def model_labels(spec: ClusterSpec, name: str, version: str) -> dict[str, str]:
    return _labels(spec, "model", **{
        CLIPPER_MODEL_CONTAINER_LABEL: label_value(create_model_container_label(name, version))
    })  # fmt: skip


def model_env(spec: ClusterSpec, model: ModelSpec) -> list[dict[str, Any]]:
    """The replica contract (``ContainerConfig.to_env``) as a pod's env: it serves every
    frontend pod the headless Service resolves to, and reads the container secret from the
    Secret."""
    config = ContainerConfig(
        model_name=model.name,
        model_version=model.version,
        frontend_host=f"{names.pods(spec.cluster_name)}.{spec.namespace}.svc",
        frontend_port=CLIPPER_INTERNAL_RPC_PORT,
        input_type=InputType.parse(model.input_type),
        device="cuda" if model.resources.gpus or model.device != "cpu" else "cpu",
        max_batch_size=max(0, model.batch_size),
        metrics_port=MODEL_METRICS_PORT,
        metrics_host="0.0.0.0",  # Prometheus and the liveness probe reach the pod's address
        ready_file=Path(READY_FILE),
        every_frontend=True,  # CLIPPER_IP is the headless Service: serve every frontend pod
    )
    env = config.to_env()
    items: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return items + _with_secret(_secret_env("container-secret"), names.secret(spec.cluster_name))


def model_deployment(spec: ClusterSpec, model: ModelSpec) -> dict[str, Any]:
    if model.num_replicas < 0:
        raise ClipperException(f"num_replicas must be >= 0, got {model.num_replicas}")
    labels = model_labels(spec, model.name, model.version)
    annotations = {MODEL_NAME_ANNOTATION: model.name, MODEL_VERSION_ANNOTATION: model.version}
    ready = {"exec": {"command": ["test", "-f", READY_FILE]}}
    container: dict[str, Any] = {
        "name": "model",
        "image": model.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python3", "-m", "schooner.runtime"],
        "env": model_env(spec, model),
        "ports": [{"name": "metrics", "containerPort": MODEL_METRICS_PORT, "protocol": "TCP"}],
        # loading a model can take minutes: the startup probe allows 10, then readiness
        # follows the ready file and liveness the metrics listener
        "startupProbe": {**ready, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": "metrics"}, "periodSeconds": 10,
                          "timeoutSeconds": 3, "failureThreshold": 3},  # fmt: skip
        "securityContext": _container_security(),
    }
    resources = model.resources.render()
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"securityContext": _pod_security(), "containers": [container],
                           "automountServiceAccountToken": False}  # fmt: skip
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, names.model(spec.cluster_name, model.name, model.version),
                          labels, annotations=annotations),
        "spec": {
            "replicas": model.num_replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {
                    **annotations,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(MODEL_METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                }},
                "spec": pod,
            },
        },
    }  # fmt: skip

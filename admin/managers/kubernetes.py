"""The Kubernetes container manager: a Schooner cluster as Deployments and Services.

Clipper's ``KubernetesContainerManager``, with its parameters and defaults, on the official
``kubernetes`` client (``pip install schooner[kubernetes]``) and the user's kubeconfig, or
the pod's service account when it runs inside the cluster. The objects are those of
``schooner.admin.managers.kubernetes_manifests`` (``schooner render`` prints them):

* ``start_clipper(num_frontend_replicas=N)`` applies the Secret, the state volume (and the
  shared Redis when N > 1 and no ``redis_ip`` is given), the frontend Deployment and its
  Services, then waits until N frontend pods are available;
* ``deploy_model`` checks that every node can pull the image (a registry's v2 API answers
  for its manifest; an image without a registry is refused on a cluster of more than one
  node) before it applies one Deployment per model version; its pods serve every frontend
  pod (``SCHOONER_EVERY_FRONTEND``), so replicas are not multiplied by frontends;
* ``set_num_replicas`` patches ``spec.replicas`` and waits for the available replicas; a
  wait that runs out (``deploy_timeout_s``) names the pods and their last events;
* ``connect`` reads the cluster back (frontend replica count, ports, addresses);
* ``stop_models``/``stop_all_model_containers``/``stop_all`` delete, by label selector,
  exactly the objects they made (the namespace only if this manager created it).

Settings beyond Clipper's (keyword-only): ``frontend_image``, ``frontend_resources`` and
``model_resources`` (``Resources``: CPU/memory requests and limits, GPUs), ``state_storage``
and ``storage_class`` (the state volume), ``image_pull_secrets``, ``start_timeout_s`` and
``deploy_timeout_s`` (300 s each), ``insecure_registries`` (registries the pull check
reaches over plain HTTP; ``localhost``/``127.0.0.1`` always are), ``api_client`` (a
configured ``kubernetes.client.ApiClient``, instead of the kubeconfig), ``docker_manager``
(what builds and pushes images; a ``DockerContainerManager`` by default).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import secrets as secrets_module
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from schooner.admin.management import ManagementClient
from schooner.admin.managers import kubernetes_manifests as k8s
from schooner.admin.managers.base import (
    CLIPPER_DOCKER_LABEL,
    CLIPPER_INTERNAL_MANAGEMENT_PORT,
    CLIPPER_INTERNAL_QUERY_PORT,
    ContainerManager,
)
from schooner.admin.managers.kubernetes_manifests import (
    CLIPPER_NAME_LABEL,
    ClusterSpec,
    ModelSpec,
    Resources,
    names,
)
from schooner.admin.replicas import wait_for_replicas
from schooner.runtime.errors import ClipperException, MissingExtra

__all__ = ["KubernetesContainerManager", "check_pullable", "image_registry"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5
_EVENTS_QUOTED = 5
_MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip
_BAD_WAITING = ("ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "InvalidImageName",
                "CreateContainerConfigError", "CreateContainerError")  # fmt: skip


def _client() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise MissingExtra(
            "the Kubernetes manager needs the kubernetes client: pip install schooner[kubernetes]"
        ) from exc
    return kubernetes


def image_registry(image: str) -> tuple[str | None, str, str]:
    """``(registry, repository, tag or digest)`` of an image reference; registry is None
    when the reference names none (Docker's rule: a first part with '.' or ':' or
    ``localhost`` is a registry)."""
    ref, at, digest = image.partition("@")
    first, slash, rest = ref.partition("/")
    registry = None
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, ref = first, rest
    repo, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        repo, tag = ref, "latest"
    return registry, repo, digest if at else tag


def check_pullable(
    image: str, nodes: int, insecure_registries: tuple[str, ...] = (), timeout: float = 10.0
) -> None:
    """Raise ClipperException saying why ``image`` cannot be pulled by a cluster of
    ``nodes`` nodes: no registry on a multi-node cluster, or the registry does not have it."""
    registry, repo, tag = image_registry(image)
    if registry is None:
        if nodes > 1:
            raise ClipperException(
                f"image {image!r} names no registry, so only a node that built it has it; "
                f"this cluster has {nodes} nodes. Build it with a registry every node pulls "
                "from (registry='host:port' / container_registry=...) and deploy that image"
            )
        logger.info("image %s names no registry: the cluster's one node must have it", image)
        return
    host = registry.split(":")[0]
    plain = host in ("localhost", "127.0.0.1") or registry in insecure_registries
    if registry == "docker.io":
        registry = "registry-1.docker.io"
        if "/" not in repo:
            repo = f"library/{repo}"
    url = f"{'http' if plain else 'https'}://{registry}/v2/{repo}/manifests/{tag}"
    try:
        _head(url, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 401 and "bearer" in exc.headers.get("WWW-Authenticate", "").lower():
            token = _anonymous_token(exc.headers["WWW-Authenticate"], timeout)
            if token is None:
                logger.warning("registry %s needs credentials to check %s; the cluster's "
                               "image pull secrets decide", registry, image)  # fmt: skip
                return
            try:
                _head(url, timeout, token)
            except urllib.error.HTTPError as again:
                again.close()
                raise _not_pullable(image, registry, again) from None
            return
        raise _not_pullable(image, registry, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClipperException(
            f"image {image!r} cannot be pulled: registry {registry} does not answer ({reason})"
        ) from None


def _head(url: str, timeout: float, token: str | None = None) -> None:
    headers = {"Accept": _MANIFEST_TYPES}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method="HEAD", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout):
        pass


def _anonymous_token(challenge: str, timeout: float) -> str | None:
    """The anonymous pull token a Bearer challenge offers (Docker Hub's way), or None."""
    fields = dict(
        part.strip().split("=", 1) for part in challenge.split(" ", 1)[1].split(",") if "=" in part
    )
    fields = {k: v.strip('"') for k, v in fields.items()}
    if "realm" not in fields:
        return None
    query = "&".join(f"{k}={fields[k]}" for k in ("service", "scope") if k in fields)
    try:
        with urllib.request.urlopen(f"{fields['realm']}?{query}", timeout=timeout) as resp:
            body = json.loads(resp.read(64 * 1024))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    token = body.get("token") or body.get("access_token")
    return str(token) if token else None


def _not_pullable(image: str, registry: str, exc: urllib.error.HTTPError) -> ClipperException:
    why = {404: "the registry has no such image or tag (was it pushed?)",
           401: "the registry refuses anonymous pulls (give image_pull_secrets)"}  # fmt: skip
    return ClipperException(
        f"image {image!r} cannot be pulled from {registry}: HTTP {exc.code}, "
        f"{why.get(exc.code, exc.reason)}"
    )


class KubernetesContainerManager(ContainerManager):
    """Runs a Schooner cluster on Kubernetes.

    Clipper's parameters: ``cluster_name``; ``kubernetes_proxy_addr`` (``kubectl proxy``'s
    address: the cluster's APIs are reached through the API server's service proxy);
    ``redis_ip``/``redis_port`` (a Redis the frontends share instead of the one this
    manager runs for several frontends; as Clipper's, it should be persistent and
    replicated); ``useInternalIP`` (use nodes' InternalIP when none has an ExternalDNS or
    ExternalIP); ``namespace``; ``create_namespace_if_not_exists``; ``service_types``
    (``{"query"|"management"|"rpc": "ClusterIP"|"NodePort"|"LoadBalancer"}``; NodePort,
    NodePort and ClusterIP by default, as Clipper's). See the module docstring for the rest.
    """

    runs_several_frontends = True

    def __init__(
        self,
        cluster_name: str = "default-cluster",
        kubernetes_proxy_addr: str | None = None,
        redis_ip: str | None = None,
        redis_port: int = 6379,
        useInternalIP: bool = False,  # noqa: N803 (Clipper's name)
        namespace: str = "default",
        create_namespace_if_not_exists: bool = False,
        service_types: Mapping[str, str] | None = None,
        *,
        frontend_image: str = k8s.DEFAULT_FRONTEND_IMAGE,
        frontend_resources: Resources | None = None,
        model_resources: Resources | None = None,
        state_storage: str = "1Gi",
        storage_class: str | None = None,
        image_pull_secrets: tuple[str, ...] = (),
        start_timeout_s: float = 300.0,
        deploy_timeout_s: float = 300.0,
        insecure_registries: tuple[str, ...] = (),
        api_client: Any = None,
        docker_manager: ContainerManager | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        self.kubernetes_proxy_addr = kubernetes_proxy_addr
        self.use_internal_ip = useInternalIP
        self.create_namespace_if_not_exists = create_namespace_if_not_exists
        self.spec = ClusterSpec(
            cluster_name=cluster_name, namespace=namespace, frontend_image=frontend_image,
            service_types=dict(service_types or k8s.DEFAULT_SERVICE_TYPES), redis_ip=redis_ip,
            redis_port=redis_port, state_storage=state_storage, storage_class=storage_class,
            frontend_resources=frontend_resources or Resources(), image_pull_secrets=tuple(image_pull_secrets),
        )  # fmt: skip
        self.model_resources = model_resources or Resources()
        self.start_timeout_s = start_timeout_s
        self.deploy_timeout_s = deploy_timeout_s
        self.insecure_registries = tuple(insecure_registries)
        self._api_client = api_client
        self._docker = docker_manager
        self._addresses: dict[int, str] = {}
        self._clients: tuple[Any, Any, Any] | None = None
        self._token: str | None = None

    # ------------------------------------------------------------------ the API

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @property
    def num_frontend_replicas(self) -> int:
        return self.spec.num_frontend_replicas

    def _apis(self) -> tuple[Any, Any]:
        """(CoreV1Api, AppsV1Api) on the kubeconfig, in-cluster config or ``api_client``."""
        core, apps, _ = self._all_apis()
        return core, apps

    def _all_apis(self) -> tuple[Any, Any, Any]:
        """(CoreV1Api, AppsV1Api, NetworkingV1Api)."""
        if self._clients is None:
            kubernetes = _client()
            api = self._api_client
            if api is None:
                try:
                    kubernetes.config.load_incluster_config()
                except kubernetes.config.ConfigException:
                    kubernetes.config.load_kube_config()
                api = kubernetes.client.ApiClient()
            client = kubernetes.client
            self._clients = (client.CoreV1Api(api), client.AppsV1Api(api),
                             client.NetworkingV1Api(api))  # fmt: skip
        return self._clients

    def _api_error(self) -> Any:
        """The client's ApiException (``status``, ``reason``, ``body``)."""
        return _client().client.exceptions.ApiException

    def _selector(self, **more: str) -> str:
        labels = {CLIPPER_DOCKER_LABEL: self.cluster_name, **more}
        return ",".join(f"{k}={v}" for k, v in labels.items())

    def _create(self, obj: dict[str, Any]) -> None:
        """Create one rendered object; one that exists is replaced (a previous run's)."""
        core, apps, networking = self._all_apis()
        kind, name, ns = obj["kind"], obj["metadata"]["name"], self.namespace
        create: dict[str, Callable[..., Any]] = {
            "Namespace": lambda: core.create_namespace(obj),
            "Secret": lambda: core.create_namespaced_secret(ns, obj),
            "PersistentVolumeClaim":
                lambda: core.create_namespaced_persistent_volume_claim(ns, obj),
            "Service": lambda: core.create_namespaced_service(ns, obj),
            "Deployment": lambda: apps.create_namespaced_deployment(ns, obj),
            "NetworkPolicy": lambda: networking.create_namespaced_network_policy(ns, obj),
        }  # fmt: skip
        replace: dict[str, Callable[..., Any]] = {
            "Deployment": lambda: apps.replace_namespaced_deployment(name, ns, obj),
        }
        try:
            create[kind]()
        except self._api_error() as exc:
            if exc.status != 409:
                raise self._failed(f"creating {kind} {name}", exc) from None
            if kind in replace:
                replace[kind]()
            else:
                logger.info("%s %s exists; kept", kind, name)

    def _failed(self, what: str, exc: Any) -> ClipperException:
        try:
            message = json.loads(exc.body).get("message", exc.reason)
        except (TypeError, ValueError):
            message = exc.reason
        return ClipperException(f"{what}: the API server answered {exc.status}: {message}")

    def _ensure_namespace(self) -> bool:
        """True if this manager created the namespace."""
        core, _ = self._apis()
        try:
            core.read_namespace(self.namespace)
            return False
        except self._api_error() as exc:
            if exc.status != 404:
                raise self._failed(f"reading namespace {self.namespace}", exc) from None
        if not self.create_namespace_if_not_exists:
            raise ClipperException(
                f"namespace {self.namespace!r} does not exist; create it, or pass "
                "KubernetesContainerManager(create_namespace_if_not_exists=True)"
            )
        self._create(k8s.namespace(self.spec))
        return True

    def _node_count(self) -> int:
        core, _ = self._apis()
        return len(core.list_node().items)

    # ------------------------------------------------------------------ lifecycle

    def start_clipper(
        self,
        query_frontend_image: str | None = None,
        mgmt_frontend_image: str | None = None,
        cache_size: int | None = None,
        num_frontend_replicas: int = 1,
    ) -> None:
        """Apply the cluster's objects and return once ``num_frontend_replicas`` frontend
        pods are available and the management API answers.

        ``query_frontend_image`` runs instead of ``frontend_image``; one frontend serves
        queries and management, so ``mgmt_frontend_image`` and ``cache_size`` are not used.
        """
        _, apps = self._apis()
        spec = dataclasses.replace(
            self.spec, num_frontend_replicas=num_frontend_replicas,
            frontend_image=query_frontend_image or self.spec.frontend_image,
        )  # fmt: skip
        try:
            apps.read_namespaced_deployment(names.frontend(self.cluster_name), self.namespace)
        except self._api_error() as exc:
            if exc.status != 404:
                raise self._failed("reading the frontend Deployment", exc) from None
        else:
            raise ClipperException(
                f"cluster {self.cluster_name!r} is already running in namespace "
                f"{self.namespace!r}; connect() to it, or stop it first with stop_all()"
            )
        created_namespace = self._ensure_namespace()
        nodes = self._node_count()
        check_pullable(spec.frontend_image, nodes, self.insecure_registries)
        self.spec = spec
        values = {key: secrets_module.token_urlsafe(32) for key in k8s.SECRET_KEYS}
        objects = k8s.cluster_objects(spec, values)
        if spec.shared_state and spec.redis_ip is None:
            check_pullable(spec.redis_image, nodes, self.insecure_registries)
        try:
            for obj in objects:
                self._create(obj)
            if spec.shared_state and spec.redis_ip is None:
                self._wait_available(names.redis(self.cluster_name), 1, self.start_timeout_s)
            self._wait_available(names.frontend(self.cluster_name), num_frontend_replicas,
                                 self.start_timeout_s)  # fmt: skip
        except ClipperException:
            self.stop_all(graceful=False, _namespace=created_namespace)
            raise
        self.connect()
        self._wait_for_management()

    def _wait_for_management(self) -> None:
        """Until the management API answers here (through its Service's address)."""
        deadline = time.monotonic() + self.start_timeout_s
        management = self._management()
        while not management.ping(timeout=2.0):
            if time.monotonic() >= deadline:
                raise ClipperException(
                    f"the frontend pods are available but the management API does not answer "
                    f"at {self.get_admin_addr()} within {self.start_timeout_s:.0f}s: is that "
                    "address reachable from here? (service_types, useInternalIP, "
                    "kubernetes_proxy_addr). The cluster keeps running: connect() once it "
                    "is, or stop_all()"
                )
            time.sleep(_POLL_S)

    def connect(self) -> None:
        """Read the running cluster back: its frontend replica count and addresses."""
        core, apps = self._apis()
        try:
            frontend = apps.read_namespaced_deployment(
                names.frontend(self.cluster_name), self.namespace
            )
        except self._api_error() as exc:
            if exc.status == 404:
                raise ClipperException(
                    f"no cluster {self.cluster_name!r} runs in namespace {self.namespace!r}; "
                    "start it with ClipperConnection(KubernetesContainerManager(...))"
                    ".start_clipper()"
                ) from None
            raise self._failed("reading the frontend Deployment", exc) from None
        args = frontend.spec.template.spec.containers[0].args or []
        redis = args[args.index("--state-redis") + 1] if "--state-redis" in args else None
        ours = redis is None or redis.startswith(names.redis(self.cluster_name) + ":")
        self.spec = dataclasses.replace(
            self.spec, num_frontend_replicas=int(frontend.spec.replicas),
            frontend_image=frontend.spec.template.spec.containers[0].image,
            redis_ip=self.spec.redis_ip if ours else str(redis).rpartition(":")[0],
        )  # fmt: skip
        self._token = None  # read from the Secret when first needed
        self._addresses = {
            CLIPPER_INTERNAL_QUERY_PORT: self._service_address(
                names.frontend(self.cluster_name), CLIPPER_INTERNAL_QUERY_PORT),
            CLIPPER_INTERNAL_MANAGEMENT_PORT: self._service_address(
                names.management(self.cluster_name), CLIPPER_INTERNAL_MANAGEMENT_PORT),
        }  # fmt: skip
        logger.info("cluster %r: %d frontend pods, queries at %s", self.cluster_name,
                    self.num_frontend_replicas, self.get_query_addr())  # fmt: skip

    def _service_address(self, service: str, port: int) -> str:
        """Where this machine reaches a Service: through ``kubectl proxy``, a load
        balancer, a node port, or (inside the cluster) the Service's own name."""
        if self.kubernetes_proxy_addr:
            proxy = self.kubernetes_proxy_addr.rstrip("/").partition("://")
            return (f"{proxy[2] or proxy[0]}/api/v1/namespaces/{self.namespace}/services/"
                    f"{service}:{port}/proxy")  # fmt: skip
        core, _ = self._apis()
        found = core.read_namespaced_service(service, self.namespace)
        ports = [p for p in found.spec.ports if p.port == port]
        if found.spec.type == "LoadBalancer" and found.status.load_balancer.ingress:
            ingress = found.status.load_balancer.ingress[0]
            return f"{ingress.ip or ingress.hostname}:{port}"
        if found.spec.type in ("NodePort", "LoadBalancer") and ports and ports[0].node_port:
            return f"{self._node_host()}:{ports[0].node_port}"
        return f"{service}.{self.namespace}.svc:{port}"

    def _node_host(self) -> str:
        core, _ = self._apis()
        external, internal = [], []
        for node in core.list_node().items:
            for addr in node.status.addresses or []:
                if addr.type in ("ExternalDNS", "ExternalIP"):
                    external.append(addr.address)
                elif addr.type == "InternalIP":
                    internal.append(addr.address)
        if external:
            return str(external[0])
        if internal and self.use_internal_ip:
            return str(internal[0])
        raise ClipperException(
            "no node has an external address; pass KubernetesContainerManager("
            "useInternalIP=True) to use a node's internal IP, or kubernetes_proxy_addr"
        )

    def _wait_available(self, deployment: str, count: int, timeout_s: float) -> None:
        """Until ``count`` pods of ``deployment`` are available (and no more are starting);
        raises naming the pods and their last events when ``timeout_s`` passes, or at
        once when a pod cannot pull its image or crashes."""
        _, apps = self._apis()
        deadline = time.monotonic() + timeout_s
        while True:
            status = apps.read_namespaced_deployment_status(deployment, self.namespace).status
            if (status.available_replicas or 0) >= count and (status.replicas or 0) <= count:
                return
            broken = self._broken_pods(deployment)
            if broken or time.monotonic() >= deadline:
                raise ClipperException(
                    f"{status.available_replicas or 0} of {count} pods of {deployment} "
                    f"available {'' if broken else f'after {timeout_s:.0f}s'}\n"
                    f"{self._pod_report(deployment)}"
                )
            time.sleep(_POLL_S)

    def _pods(self, deployment: str) -> list[Any]:
        core, apps = self._apis()
        selector = apps.read_namespaced_deployment(deployment, self.namespace).spec.selector
        labels = ",".join(f"{k}={v}" for k, v in (selector.match_labels or {}).items())
        return list(core.list_namespaced_pod(self.namespace, label_selector=labels).items)

    def _broken_pods(self, deployment: str) -> bool:
        for pod in self._pods(deployment):
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in _BAD_WAITING:
                    return True
        return False

    def _pod_report(self, deployment: str) -> str:
        core, _ = self._apis()
        lines = []
        for pod in self._pods(deployment):
            phase = pod.status.phase if pod.status else "?"
            lines.append(f"pod {pod.metadata.name} ({phase}):")
            events = core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
            ).items
            for event in events[-_EVENTS_QUOTED:]:
                lines.append(f"  {event.type} {event.reason}: {event.message}")
        return "\n".join(lines) or f"no pod of {deployment} exists"

    def stop_all(self, graceful: bool = True, _namespace: bool | None = None) -> None:
        """Delete every object of this cluster (its label), and the namespace if this
        manager created it (it carries the cluster's label)."""
        core, apps = self._apis()
        selector = self._selector()
        ns = self.namespace
        self.stop_all_model_containers()
        for deployment in apps.list_namespaced_deployment(ns, label_selector=selector).items:
            self._delete(apps.delete_namespaced_deployment, deployment.metadata.name, graceful)
        for service in core.list_namespaced_service(ns, label_selector=selector).items:
            self._delete(core.delete_namespaced_service, service.metadata.name, graceful)
        for claim in core.list_namespaced_persistent_volume_claim(
            ns, label_selector=selector
        ).items:
            self._delete(core.delete_namespaced_persistent_volume_claim, claim.metadata.name,
                         graceful)  # fmt: skip
        networking = self._all_apis()[2]
        for policy in networking.list_namespaced_network_policy(
            ns, label_selector=selector
        ).items:
            self._delete(networking.delete_namespaced_network_policy, policy.metadata.name,
                         graceful)  # fmt: skip
        for secret in core.list_namespaced_secret(ns, label_selector=selector).items:
            self._delete(core.delete_namespaced_secret, secret.metadata.name, graceful)
        if _namespace is not False:
            try:
                found = core.read_namespace(ns)
            except self._api_error() as exc:
                if exc.status != 404:
                    raise self._failed(f"reading namespace {ns}", exc) from None
                return
            if (found.metadata.labels or {}).get(CLIPPER_DOCKER_LABEL) == self.cluster_name:
                core.delete_namespace(ns)

    def _delete(self, call: Callable[..., Any], name: str, graceful: bool) -> None:
        kubernetes = _client()
        body = kubernetes.client.V1DeleteOptions(
            propagation_policy="Foreground" if graceful else "Background",
            grace_period_seconds=None if graceful else 0,
        )
        try:
            if call.__name__ in ("delete_namespace",):
                call(name, body=body)
            else:
                call(name, self.namespace, body=body)
        except self._api_error() as exc:
            if exc.status != 404:  # gone already: what we wanted
                raise self._failed(f"deleting {name}", exc) from None

    # ------------------------------------------------------------------ models

    def build_model(
        self,
        name: str,
        version: str,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        """Build the model's image with Docker (``DockerContainerManager.build_model``) and
        push it to ``container_registry``, where the cluster's nodes pull it from."""
        if self._docker is None:
            from schooner.admin.managers.docker import DockerContainerManager

            self._docker = DockerContainerManager(cluster_name=self.cluster_name)
        return self._docker.build_model(name, version, model_data_path, base_image,
                                        container_registry, pkgs_to_install)  # fmt: skip

    def _model(self, name: str, version: str, input_type: str, image: str, num_replicas: int,
               batch_size: int) -> ModelSpec:  # fmt: skip
        return ModelSpec(name=name, version=version, input_type=input_type, image=image,
                         num_replicas=num_replicas, batch_size=batch_size,
                         resources=self.model_resources,
                         device="cuda" if self.model_resources.gpus else "cpu")  # fmt: skip

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        num_replicas: int = 1,
        batch_size: int = -1,
    ) -> None:
        """Check the image can be pulled, apply the version's Deployment, and return once
        ``num_replicas`` pods are available and connected to the frontend."""
        check_pullable(image, self._node_count(), self.insecure_registries)
        model = self._model(name, version, input_type, image, num_replicas, batch_size)
        self._create(k8s.model_deployment(self.spec, model))
        try:
            self._wait_model(name, version, num_replicas)
        except ClipperException:
            self.stop_models({name: [version]})
            raise

    def _wait_model(self, name: str, version: str, count: int) -> None:
        deployment = names.model(self.cluster_name, name, version)
        self._wait_available(deployment, count, self.deploy_timeout_s)
        if count:
            wait_for_replicas(self._management(), name, version, count,
                              self.deploy_timeout_s, lambda: None,
                              lambda: self._pod_report(deployment))  # fmt: skip

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int = -1,
    ) -> None:
        """Patch the version's ``spec.replicas`` and wait for that many available pods."""
        if num_replicas < 0:
            raise ClipperException(f"num_replicas must be >= 0, got {num_replicas}")
        _, apps = self._apis()
        deployment = names.model(self.cluster_name, name, version)
        try:
            apps.patch_namespaced_deployment_scale(
                deployment, self.namespace, {"spec": {"replicas": num_replicas}}
            )
        except self._api_error() as exc:
            if exc.status != 404:
                raise self._failed(f"scaling {deployment}", exc) from None
            self.deploy_model(name, version, input_type, image, num_replicas, batch_size)
            return
        self._wait_model(name, version, num_replicas)

    def get_num_replicas(self, name: str, version: str) -> int:
        _, apps = self._apis()
        try:
            found = apps.read_namespaced_deployment(
                names.model(self.cluster_name, name, version), self.namespace
            )
        except self._api_error() as exc:
            if exc.status == 404:
                return 0
            raise self._failed("reading a model Deployment", exc) from None
        return int(found.spec.replicas or 0)

    def stop_models(self, models: dict[str, list[str]]) -> None:
        _, apps = self._apis()
        for name, versions in models.items():
            for version in versions:
                selector = ",".join(
                    f"{k}={v}" for k, v in k8s.model_labels(self.spec, name, version).items()
                )
                for d in apps.list_namespaced_deployment(self.namespace,
                                                         label_selector=selector).items:
                    self._delete(apps.delete_namespaced_deployment, d.metadata.name, True)

    def stop_all_model_containers(self) -> None:
        _, apps = self._apis()
        selector = self._selector(**{CLIPPER_NAME_LABEL: "model"})
        for d in apps.list_namespaced_deployment(self.namespace, label_selector=selector).items:
            self._delete(apps.delete_namespaced_deployment, d.metadata.name, True)

    # ------------------------------------------------------------------ addresses and logs

    def admin_token(self) -> str | None:
        """The management API's token, read from the cluster's Secret."""
        if self._token is None:
            core, _ = self._apis()
            try:
                found = core.read_namespaced_secret(names.secret(self.cluster_name),
                                                    self.namespace)  # fmt: skip
            except self._api_error() as exc:
                raise self._failed("reading the cluster's Secret", exc) from None
            raw = (found.data or {}).get("management-token")
            self._token = base64.b64decode(raw).decode() if raw else None
        return self._token

    def _management(self) -> ManagementClient:
        return ManagementClient(self.get_admin_addr(), token=self.admin_token())

    def _address(self, port: int) -> str:
        if port not in self._addresses:
            raise ClipperException("not connected: call start_clipper() or connect() first")
        return self._addresses[port]

    def get_query_addr(self) -> str:
        return self._address(CLIPPER_INTERNAL_QUERY_PORT)

    def get_admin_addr(self) -> str:
        return self._address(CLIPPER_INTERNAL_MANAGEMENT_PORT)

    def get_logs(self, logging_dir: str) -> list[str]:
        """Write each pod's log to ``logging_dir/<pod>.log``."""
        core, _ = self._apis()
        target = Path(logging_dir)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for pod in core.list_namespaced_pod(self.namespace, label_selector=self._selector()).items:
            path = target / f"{pod.metadata.name}.log"
            path.write_text(core.read_namespaced_pod_log(pod.metadata.name, self.namespace))
            written.append(os.fspath(path))
        return written

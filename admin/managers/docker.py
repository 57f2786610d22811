"""The Docker container manager: the frontend and every replica as containers on one engine.

Clipper's ``DockerContainerManager``, with its parameters, defaults and container labels, so
Clipper's scripts and tooling work on a Schooner cluster:

* the frontend (one container serving queries, management and RPC) and the replicas run on
  a user-defined network (``docker_network``); the frontend's ports are published on
  ``publish_address`` (127.0.0.1 unless the user asks otherwise), its state is on a volume,
  so a restarted frontend keeps apps and models;
* ``build_model`` builds an image ``name:version`` (``registry/name:version``) FROM the
  framework's base image, the artifact at ``/model`` and its requirements installed at build
  time (``schooner.admin.images``), and pushes it when a registry is named;
* replicas are started with the replica contract (``ContainerConfig.to_env``), restarted by
  the engine when they crash (restart policy ``unless-stopped``), counted and scaled by
  their labels; a replica that dies while starting fails the deploy with its log;
* ``stop_all`` removes every container, the network (if this cluster made it) and the volume.

The engine is driven through the Docker CLI (``schooner.admin.engine`` says why).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schooner.admin import images, packaging
from schooner.admin.engine import Engine
from schooner.admin.management import ManagementClient
from schooner.admin.managers.base import (
    CLIPPER_DOCKER_LABEL,
    CLIPPER_INTERNAL_MANAGEMENT_PORT,
    CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_RPC_PORT,
    CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL,
    CLIPPER_MODEL_CONTAINER_LABEL,
    CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL,
    ContainerManager,
    create_model_container_label,
)
from schooner.admin.replicas import wait_for_replicas
from schooner.frameworks.artifact import REQUIREMENTS_NAME
from schooner.runtime.config import (
    ADMIN_TOKEN_ENV,
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    RPC_SECRET_ENV,
    ContainerConfig,
)
from schooner.runtime.errors import ClipperException, ConfigError
from schooner.runtime.wire import InputType

__all__ = ["DockerContainerManager"]

logger = logging.getLogger(__name__)

SLOT_LABEL = "ai.schooner.replica.slot"
VOLUME_LABEL = "ai.schooner.volume"
NETWORK_LABEL = "ai.schooner.network"
_STATE_DIR = "/home/schooner/state"
_POLL_S = 0.1
_FAILED = ("exited", "dead")

# extra_container_kwargs (the Docker SDK's names, as Clipper took them) -> docker run flags.
_FLAGS = {
    "mem_limit": "--memory",
    "memswap_limit": "--memory-swap",
    "cpu_shares": "--cpu-shares",
    "cpuset_cpus": "--cpuset-cpus",
    "cpu_period": "--cpu-period",
    "cpu_quota": "--cpu-quota",
    "shm_size": "--shm-size",
    "user": "--user",
    "pids_limit": "--pids-limit",
}


class DockerContainerManager(ContainerManager):
    """Runs a Schooner cluster as containers on a Docker engine.

    Clipper's parameters: ``cluster_name``, ``docker_ip_address`` (where this machine reaches
    the published ports), ``clipper_query_port``/``clipper_management_port``/
    ``clipper_rpc_port`` (the host ports they are published on), ``docker_network``,
    ``extra_container_kwargs`` (added to every container: ``mem_limit``, ``cpuset_cpus``,
    ``shm_size``, ``environment``, ``labels``, ...). ``use_centralized_log``,
    ``fluentd_port``, ``redis_ip``, ``redis_port`` and ``prometheus_port`` are accepted and
    not needed: logs stay with each container (``get_clipper_logs`` collects them), state is
    in the frontend's own database on a volume, and the frontend serves ``/metrics`` itself.

    Schooner's: ``publish_address`` (the host address ports are published on; 127.0.0.1, so
    nothing is reachable from other machines unless you say ``"0.0.0.0"``), ``python_base``
    (the image every base image starts FROM; see ``schooner.admin.images``), ``wheels``
    (local wheels pip prefers when building base images, e.g. a CPU build of torch),
    ``device`` (``cuda:N`` becomes a GPU device request), ``start_timeout_s`` and
    ``deploy_timeout_s``, ``docker_host`` (the engine, as ``DOCKER_HOST`` names one),
    ``capture_dependencies`` (install the packages the deployer found the model's function
    imports; ``False`` installs only the artifact's requirements, ``pkgs_to_install``).
    """

    def __init__(
        self,
        cluster_name: str = "default-cluster",
        docker_ip_address: str = "localhost",
        use_centralized_log: bool = False,
        fluentd_port: int = 24224,
        clipper_query_port: int = DEFAULT_QUERY_PORT,
        clipper_management_port: int = DEFAULT_MANAGEMENT_PORT,
        clipper_rpc_port: int = DEFAULT_RPC_PORT,
        redis_ip: str | None = None,
        redis_port: int = 6379,
        prometheus_port: int = 9090,
        docker_network: str = "clipper_network",
        extra_container_kwargs: dict[str, Any] | None = None,
        *,
        publish_address: str = "127.0.0.1",
        python_base: str | None = None,
        wheels: Sequence[str | os.PathLike[str]] = (),
        device: str = "cpu",
        start_timeout_s: float = 120.0,
        deploy_timeout_s: float = 300.0,
        docker_host: str | None = None,
        capture_dependencies: bool = True,
    ) -> None:
        if use_centralized_log or redis_ip:
            logger.info("fluentd and Redis are not needed by Schooner (see the class docstring)")
        self.cluster_name = cluster_name
        self.docker_ip_address = docker_ip_address
        self.ports = {
            CLIPPER_INTERNAL_QUERY_PORT: int(clipper_query_port),
            CLIPPER_INTERNAL_MANAGEMENT_PORT: int(clipper_management_port),
            CLIPPER_INTERNAL_RPC_PORT: int(clipper_rpc_port),
        }
        self.docker_network = docker_network
        self.extra_options, self.extra_env, self.extra_labels = _container_options(
            extra_container_kwargs or {}
        )
        self.publish_address = publish_address
        self.python_base = python_base
        self.wheels = [Path(w) for w in wheels]
        self.device = device
        self.start_timeout_s = start_timeout_s
        self.deploy_timeout_s = deploy_timeout_s
        self.engine = Engine(host=docker_host)
        self.capture_dependencies = capture_dependencies
        self._secrets: dict[str, str] = {}  # the cluster secret and admin token (_credentials)
        try:  # the container's own parser judges the device
            ContainerConfig.from_env(
                {"CLIPPER_MODEL_NAME": "-", "CLIPPER_MODEL_VERSION": "-", "SCHOONER_DEVICE": device}
            )
        except ConfigError as exc:
            raise ClipperException(f"device={device!r}: expected cpu, cuda or cuda:N") from exc
        self._gpus = _gpu_request(device.lower())

    # ------------------------------------------------------------------ names

    @property
    def frontend_name(self) -> str:
        return f"schooner-{self.cluster_name}-frontend"

    @property
    def volume_name(self) -> str:
        return f"schooner-{self.cluster_name}-state"

    def _labels(self, **more: str) -> dict[str, str]:
        return {CLIPPER_DOCKER_LABEL: self.cluster_name, **more}

    @property
    def management(self) -> ManagementClient:
        return ManagementClient(self.get_admin_addr(), token=self.admin_token())

    def _credentials(self) -> dict[str, str]:
        """The cluster secret and the admin token, as the frontend container was given them
        (by its private env file; ``docker inspect`` shows them only to who may run Docker,
        who can do anything to the cluster anyway). Empty while no frontend exists."""
        if not self._secrets:
            found = self.engine.inspect("container", [self.frontend_name])
            env = (found[0].get("Config") or {}).get("Env") or [] if found else []
            pairs = dict(item.partition("=")[::2] for item in env)
            self._secrets = {k: pairs[k] for k in (RPC_SECRET_ENV, ADMIN_TOKEN_ENV) if k in pairs}
        return self._secrets

    def admin_token(self) -> str | None:
        return self._credentials().get(ADMIN_TOKEN_ENV)

    # ------------------------------------------------------------------ lifecycle

    def start_clipper(
        self,
        query_frontend_image: str | None = None,
        mgmt_frontend_image: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        """Create the network and the state volume, run the frontend container, and return
        once its management API answers (or raise with its log if it exits first).

        ``query_frontend_image`` runs instead of the frontend image Schooner builds
        (``base_images/frontend``); one container serves queries and management, so
        ``mgmt_frontend_image`` and ``cache_size`` are not used.
        """
        if mgmt_frontend_image or cache_size:
            logger.info("one frontend container serves queries and management; "
                        "mgmt_frontend_image and cache_size are not used")
        existing = self.engine.inspect("container", [self.frontend_name])
        if existing and existing[0]["State"]["Running"]:
            raise ClipperException(
                f"cluster {self.cluster_name!r} is already running on this Docker engine; "
                "connect() to it, or stop it first with stop_all()"
            )
        if self.engine.ids("container", self._labels()):
            logger.warning("cluster %r: removing the containers a previous run left",
                           self.cluster_name)
            self._remove_containers(self._labels())
        if self.engine.inspect("volume", [self.volume_name]):
            logger.warning(
                "cluster %r was not stopped with stop_all(): it starts with the apps and "
                "models it had (volume %s); stop_all() removes them",
                self.cluster_name, self.volume_name,
            )
        image = query_frontend_image or self._frontend_image()
        self._ensure_network()
        self.engine.run(["volume", "create", *_label_args(self._labels()), self.volume_name])
        labels = self._labels(**{
            CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL: "",
            CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL: "",
            VOLUME_LABEL: self.volume_name,
            NETWORK_LABEL: self.docker_network,
        })
        publish = [
            arg for inside, outside in self.ports.items()
            for arg in ("--publish", f"{self.publish_address}:{outside}:{inside}")
        ]
        import secrets

        # A fresh secret and token per cluster, handed over by the private env file.
        self._secrets = {RPC_SECRET_ENV: secrets.token_hex(32),
                         ADMIN_TOKEN_ENV: secrets.token_hex(32)}  # fmt: skip
        self._run_container(
            self.frontend_name, image, labels,
            [*publish, "--volume", f"{self.volume_name}:{_STATE_DIR}"], dict(self._secrets),
        )
        try:
            self._wait_for_frontend()
        except BaseException:
            self.stop_all(graceful=False)
            raise
        logger.info("cluster %r running: queries at http://%s, management at http://%s",
                    self.cluster_name, self.get_query_addr(), self.get_admin_addr())

    def _frontend_image(self) -> str:
        python = images.python_base(self.engine, self.python_base)
        return images.ensure_base_image(self.engine, "frontend", python)

    def _ensure_network(self) -> None:
        if self.engine.inspect("network", [self.docker_network]):
            return
        self.engine.run(["network", "create", *_label_args(self._labels()), self.docker_network])

    def _wait_for_frontend(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        management = self.management
        while time.monotonic() < deadline:
            state = self._state(self.frontend_name)
            if state is None or state["Status"] in _FAILED or state.get("RestartCount"):
                raise ClipperException(
                    f"the frontend container {self.frontend_name} exited while starting; "
                    f"its last lines:\n{self.engine.logs(self.frontend_name, 30)}"
                )
            if management.ping(timeout=1.0):
                return
            time.sleep(_POLL_S)
        raise ClipperException(
            f"the frontend did not answer /admin/ping at {self.get_admin_addr()} within "
            f"{self.start_timeout_s:.0f}s; its last lines:\n"
            f"{self.engine.logs(self.frontend_name, 30)}"
        )

    def _state(self, container: str) -> dict[str, Any] | None:
        found = self.engine.inspect("container", [container])
        if not found:
            return None
        state: dict[str, Any] = found[0]["State"]
        state["RestartCount"] = found[0].get("RestartCount", 0)
        return state

    def connect(self) -> None:
        """Attach to the running cluster, adopting the host ports it was published on."""
        found = self.engine.inspect("container", [self.frontend_name])
        if not found or not found[0]["State"]["Running"]:
            raise ClipperException(
                f"no cluster {self.cluster_name!r} is running on this Docker engine; start it "
                "with ClipperConnection(DockerContainerManager(...)).start_clipper()"
            )
        published = found[0]["NetworkSettings"]["Ports"] or {}
        for inside in self.ports:
            bindings = published.get(f"{inside}/tcp") or []
            if bindings:
                self.ports[inside] = int(bindings[0]["HostPort"])
        labels = found[0]["Config"]["Labels"] or {}
        self.docker_network = labels.get(NETWORK_LABEL, self.docker_network)
        if not self.management.ping(timeout=5.0):
            raise ClipperException(
                f"cluster {self.cluster_name!r} is running but its frontend does not answer "
                f"at {self.get_admin_addr()}; its last lines:\n"
                f"{self.engine.logs(self.frontend_name, 30)}"
            )

    def stop_all(self, graceful: bool = True) -> None:
        """Remove every container of the cluster, then its volume (apps, models, links) and
        the network if this cluster created it; the next ``start_clipper`` starts empty."""
        self.stop_all_model_containers(graceful)
        self._remove_containers(self._labels(), graceful)
        for volume in self.engine.ids("volume", self._labels()):
            self.engine.run(["volume", "rm", "--force", volume])
        for network in self.engine.inspect("network", [self.docker_network]):
            ours = (network.get("Labels") or {}).get(CLIPPER_DOCKER_LABEL) == self.cluster_name
            if ours and not network.get("Containers"):
                self.engine.run(["network", "rm", network["Id"]], check=False)
        self._secrets = {}

    def _remove_containers(self, labels: dict[str, str], graceful: bool = False) -> None:
        self._remove(self.engine.ids("container", labels), graceful)

    def _remove(self, ids: list[str], graceful: bool) -> None:
        """Remove these containers (after ``docker stop``'s SIGTERM and 10 s if graceful)."""
        if not ids:
            return
        if graceful:
            self.engine.run(["stop", "--time", "10", *ids], check=False, timeout=60.0)
        self.engine.run(["rm", "--force", "--volumes", *ids], timeout=60.0)

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
        """Build the image ``[registry/]name:version`` of this artifact and return it.

        FROM the framework's base image (``base_image="default"``; ``schooner/<name>``
        names one of ``base_images/``), built first if the engine lacks it; the artifact at
        ``/model``; ``pkgs_to_install`` (merged into the artifact's requirements) installed
        now, never when a replica starts. An unchanged artifact builds nothing. With
        ``container_registry`` the image is pushed there, and replicas run that reference.
        """
        source = Path(model_data_path)
        if not source.is_dir():
            raise ClipperException(f"model_data_path {model_data_path!r} is not a directory")
        ref = f"{container_registry.rstrip('/')}/{name}:{version}" if container_registry \
            else f"{name}:{version}"
        with tempfile.TemporaryDirectory(prefix=f"schooner-{name}-") as tmp:
            staging = Path(tmp) / "model"
            shutil.copytree(source, staging)
            if pkgs_to_install:
                packaging.record_requirements(staging / REQUIREMENTS_NAME, pkgs_to_install)
            pkg = packaging.package(staging, base_image, captured=self.capture_dependencies)
            python = images.python_base(self.engine, self.python_base)
            base_ref = images.ensure_base_image(self.engine, pkg.base_image, python, self.wheels)
            images.build_model_image(self.engine, pkg, ref, base_ref)
        if container_registry:
            images.push(self.engine, ref)
        return ref

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        num_replicas: int = 1,
        batch_size: int = -1,
    ) -> None:
        """Run ``num_replicas`` containers of ``image``; return once they connected, or stop
        them and raise with a replica's log if one dies first."""
        try:
            self._scale(name, version, input_type, image, num_replicas, batch_size)
        except ClipperException:
            self.stop_models({name: [version]})
            raise

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int = -1,
    ) -> None:
        """Add or remove containers of one model version; waits for added ones."""
        self._scale(name, version, input_type, image, num_replicas, batch_size)

    def _replicas(self, name: str, version: str) -> list[dict[str, Any]]:
        """The containers of one model version that have not been removed, by slot."""
        labels = self._labels(**{
            CLIPPER_MODEL_CONTAINER_LABEL: create_model_container_label(name, version)
        })
        found = self.engine.inspect("container", self.engine.ids("container", labels))
        return sorted(found, key=lambda c: int(c["Config"]["Labels"].get(SLOT_LABEL, 0)))

    def _scale(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int,
    ) -> None:
        if num_replicas < 0:
            raise ClipperException(f"num_replicas must be >= 0, got {num_replicas}")
        current = self._replicas(name, version)
        self._remove([c["Id"] for c in current[num_replicas:]], graceful=True)
        used = {int(c["Config"]["Labels"].get(SLOT_LABEL, 0)) for c in current[:num_replicas]}
        started = []
        slot = 0
        for _ in range(num_replicas - len(current)):
            while slot in used:
                slot += 1
            used.add(slot)
            started.append(self._start_replica(name, version, input_type, image, batch_size, slot))

        def failure() -> str | None:
            for container in started:
                state = self._state(container)
                if state is None or state["Status"] in _FAILED or state["RestartCount"]:
                    code = state["ExitCode"] if state else "?"
                    return (
                        f"replica {container} exited with code {code} before connecting; "
                        f"its last lines:\n{self.engine.logs(container, 30)}"
                    )
            return None

        def logs() -> str:
            return "\n".join(f"--- {c}:\n{self.engine.logs(c, 10)}" for c in started)

        wait_for_replicas(self.management, name, version, num_replicas, self.deploy_timeout_s,
                          failure, logs)

    def _start_replica(
        self, name: str, version: str, input_type: str, image: str, batch_size: int, slot: int
    ) -> str:
        config = ContainerConfig(
            model_name=name,
            model_version=version,
            frontend_host=self.frontend_name,
            frontend_port=CLIPPER_INTERNAL_RPC_PORT,
            input_type=InputType.parse(input_type),
            device="cuda" if self._gpus else "cpu",
            max_batch_size=max(0, batch_size),
            rpc_secret=self._credentials().get(RPC_SECRET_ENV),
        )
        container = f"schooner-{self.cluster_name}-{name}-{version}-{slot}"
        labels = self._labels(**{
            CLIPPER_MODEL_CONTAINER_LABEL: create_model_container_label(name, version),
            SLOT_LABEL: str(slot),
        })
        gpus = ["--gpus", self._gpus] if self._gpus else []
        self._run_container(container, image, labels, gpus, config.to_env())
        return container

    def _run_container(
        self, container: str, image: str, labels: dict[str, str], options: list[str],
        environment: dict[str, str],
    ) -> None:
        """``docker run`` on the cluster's network, restarted when it crashes; the
        environment goes through a private file, never argv."""
        with tempfile.NamedTemporaryFile("w", prefix="schooner-env-", suffix=".list") as env:
            os.chmod(env.name, 0o600)
            for key, value in {**self.extra_env, **environment}.items():
                if "\n" in value:
                    raise ClipperException(f"environment variable {key} holds a newline")
                env.write(f"{key}={value}\n")
            env.flush()
            self.engine.run([
                "run", "--detach", "--name", container, "--network", self.docker_network,
                "--restart", "unless-stopped", "--env-file", env.name,
                *_label_args({**self.extra_labels, **labels}), *self.extra_options, *options,
                image,
            ], timeout=600.0)

    def get_num_replicas(self, name: str, version: str) -> int:
        return len(self._replicas(name, version))

    def stop_models(self, models: dict[str, list[str]]) -> None:
        for name, versions in models.items():
            for version in versions:
                self._remove_containers(self._labels(**{
                    CLIPPER_MODEL_CONTAINER_LABEL: create_model_container_label(name, version)
                }), graceful=True)

    def stop_all_model_containers(self, graceful: bool = True) -> None:
        ids = [
            c["Id"] for c in self.engine.inspect("container", self.engine.ids("container", self._labels()))
            if CLIPPER_MODEL_CONTAINER_LABEL in (c["Config"]["Labels"] or {})
        ]
        self._remove(ids, graceful)

    # ------------------------------------------------------------------ addresses and logs

    def get_query_addr(self) -> str:
        return f"{self.docker_ip_address}:{self.ports[CLIPPER_INTERNAL_QUERY_PORT]}"

    def get_admin_addr(self) -> str:
        return f"{self.docker_ip_address}:{self.ports[CLIPPER_INTERNAL_MANAGEMENT_PORT]}"

    def get_logs(self, logging_dir: str) -> list[str]:
        """Write every container's log to ``logging_dir/<container>.log``."""
        target = Path(logging_dir)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for container in self.engine.inspect("container", self.engine.ids("container", self._labels())):
            name = container["Name"].lstrip("/")
            path = target / f"{name}.log"
            self.engine.save_logs(container["Id"], path)
            written.append(os.fspath(path))
        return written


def _label_args(labels: dict[str, str]) -> list[str]:
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def _gpu_request(device: str) -> str | None:
    """``cuda:N`` -> ``device=N`` (the container then sees that GPU as its cuda:0)."""
    if device == "cpu":
        return None
    index = device.partition(":")[2] or "0"
    return f"device={index}"


def _container_options(
    kwargs: dict[str, Any],
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Clipper's ``extra_container_kwargs`` as docker run options, environment and labels."""
    options: list[str] = []
    environment: dict[str, str] = {}
    labels: dict[str, str] = {}
    unknown = []
    for key, value in kwargs.items():
        if key == "environment":
            pairs = value.items() if isinstance(value, dict) else (
                item.split("=", 1) for item in value
            )
            environment.update({str(k): str(v) for k, v in pairs})
        elif key == "labels":
            labels.update({str(k): str(v) for k, v in dict(value).items()})
        elif key == "nano_cpus":
            options += ["--cpus", f"{int(value) / 1e9:g}"]
        elif key == "read_only":
            options += ["--read-only"] if value else []
        elif key in _FLAGS:
            options += [_FLAGS[key], str(value)]
        else:
            unknown.append(key)
    if unknown:
        raise ClipperException(
            f"extra_container_kwargs {unknown} are not supported; use environment, labels, "
            f"nano_cpus, read_only, {', '.join(_FLAGS)}"
        )
    return options, environment, labels


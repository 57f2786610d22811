"""The local container manager: a cluster of supervised processes on this machine, no Docker.

``start_clipper`` launches ``python -m schooner.admin.managers.local.supervisor`` in a new session; the
supervisor detaches, runs the frontend and the replicas, restarts them when they crash,
and keeps running after this Python session ends (``connect`` attaches to it again, from
any process). Everything lives under ``$SCHOONER_HOME/clusters/<cluster_name>/`` (see
``schooner.admin.managers.local.layout``); ports are configurable so clusters can run side by side.

An "image" for this manager is an artifact directory made by ``build_model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from schooner.admin import packaging
from schooner.admin.management import ManagementClient
from schooner.admin.managers.base import ContainerManager
from schooner.admin.managers.local import control, environments
from schooner.admin.managers.local.children import ChildState
from schooner.admin.managers.local.layout import ClusterLayout, ClusterSettings, cluster_layout
from schooner.admin.managers.local.processes import is_alive, kill_group, log_tail, port_in_use
from schooner.admin.replicas import wait_for_replicas
from schooner.frameworks.artifact import REQUIREMENTS_NAME
from schooner.runtime.config import (
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    default_frontend_workers,
    worker_rpc_port,
)
from schooner.runtime.errors import ClipperException

__all__ = ["LocalContainerManager"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1
DEFAULT_CLUSTER = "default-cluster"
ENVIRONMENT_FILE = "environment.json"  # written into each artifact by build_model
_FAILED_STATES = (ChildState.BACKOFF, ChildState.CONFIG_ERROR)


class LocalContainerManager(ContainerManager):
    """Runs a Schooner cluster as local processes under a detached supervisor.

    ``start_timeout_s`` bounds ``start_clipper``, ``deploy_timeout_s`` the wait for new
    replicas to connect, ``grace_s`` the time a stopping process gets between SIGTERM and
    SIGKILL. ``environment`` picks the Python environment of each model's replicas:
    ``"auto"`` (this interpreter when it satisfies the model's base image, else an isolated
    one built from the base image's requirements), ``"current"`` or ``"isolated"`` (see
    ``schooner.admin.managers.local.environments``); ``python`` forces one interpreter for every replica.
    ``device`` (``cpu``, ``cuda``, ``cuda:N``) is where the replicas place their models.
    ``frontend_workers``: the frontend's worker processes (``schooner-frontend --workers``;
    0, the default: half this machine's cores, at least 1); each replica serves every worker.
    """

    def __init__(
        self,
        cluster_name: str = DEFAULT_CLUSTER,
        clipper_query_port: int = DEFAULT_QUERY_PORT,
        clipper_management_port: int = DEFAULT_MANAGEMENT_PORT,
        clipper_rpc_port: int = DEFAULT_RPC_PORT,
        schooner_home: str | os.PathLike[str] | None = None,
        query_host: str = "0.0.0.0",
        start_timeout_s: float = 60.0,
        deploy_timeout_s: float = 120.0,
        grace_s: float = 10.0,
        python: str | None = None,
        environment: str = "auto",
        device: str = "cpu",
        frontend_workers: int = 0,
    ) -> None:
        if environment not in environments.MODES:
            raise ClipperException(
                f"environment={environment!r}: use one of {', '.join(environments.MODES)}"
            )
        self.layout: ClusterLayout = cluster_layout(cluster_name, schooner_home)
        self.settings = ClusterSettings(
            cluster_name=cluster_name,
            query_port=int(clipper_query_port),
            management_port=int(clipper_management_port),
            rpc_port=int(clipper_rpc_port),
            query_host=query_host,
            frontend_workers=int(frontend_workers),
        )
        self.start_timeout_s = start_timeout_s
        self.deploy_timeout_s = deploy_timeout_s
        self.grace_s = grace_s
        self.python = python
        self.environment = environment
        self.device = device

    # ------------------------------------------------------------------ helpers

    @property
    def cluster_name(self) -> str:
        return self.settings.cluster_name

    @property
    def management(self) -> ManagementClient:
        return ManagementClient(self.get_admin_addr(), token=self.admin_token())

    def admin_token(self) -> str | None:
        return self.layout.admin_token()

    def _control(self, op: str, timeout: float = 30.0, **arguments: Any) -> Any:
        return control.request(self.layout.control_socket, op, timeout=timeout, **arguments)

    def is_running(self) -> bool:
        """True if this cluster's supervisor answers on its control channel."""
        try:
            self._control("ping", timeout=2.0)
        except control.ControlError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """The supervisor's view: its pid, the frontend and every replica (see control)."""
        result: dict[str, Any] = self._control("status")
        return result

    def _not_running(self) -> ClipperException:
        return ClipperException(
            f"no cluster {self.cluster_name!r} is running (looked in {self.layout.root}); "
            f"start it with ClipperConnection.start_clipper() or: "
            f"schooner start --cluster {self.cluster_name}"
        )

    # ------------------------------------------------------------------ lifecycle

    def start_clipper(
        self,
        query_frontend_image: str | None = None,
        mgmt_frontend_image: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        """Start the supervisor and the frontend; returns once ``/admin/ping`` answers.

        Image arguments have no meaning for local processes and are ignored. If the
        frontend exits while starting, the cluster is torn down and the ClipperException
        quotes the end of its log (Clipper waited forever instead).
        """
        if query_frontend_image or mgmt_frontend_image or cache_size:
            logger.info("the local manager runs the frontend as a process; image options ignored")
        if self.is_running():
            raise ClipperException(
                f"cluster {self.cluster_name!r} is already running; connect() to it, or stop "
                f"it first with: schooner stop --cluster {self.cluster_name}"
            )
        s = self.settings
        rpc_ports = [worker_rpc_port(s.rpc_port, i)
                     for i in range(default_frontend_workers(s.frontend_workers))]  # fmt: skip
        busy = [p for p in (s.query_port, s.management_port, *rpc_ports) if port_in_use(p)]
        if busy:
            raise ClipperException(
                f"cannot start cluster {self.cluster_name!r}: port(s) {busy} already in use; "
                "pick others with LocalContainerManager(clipper_query_port=..., "
                "clipper_management_port=..., clipper_rpc_port=...)"
            )
        if self.layout.state_db.exists():
            logger.warning(
                "cluster %r was not stopped with stop_all() (a crash or a reboot?): it starts "
                "with the apps and models it had; stop_all() or `schooner stop%s` removes them",
                self.cluster_name, _cluster_flag(self.cluster_name),
            )
        self.layout.create()
        self.layout.write_settings(s)
        # A crashed cluster's supervisor left its pid file: until the new one overwrites it,
        # that dead pid must not read as "the new supervisor exited".
        stale_pid = self.layout.read_pid()
        self._launch_supervisor()
        try:
            self._wait_for_frontend(stale_pid)
        except BaseException:
            self.stop_all(graceful=False)
            raise
        logger.info(
            "cluster %r running: queries at http://%s, management at http://%s",
            self.cluster_name, self.get_query_addr(), self.get_admin_addr(),
        )

    def _launch_supervisor(self) -> None:
        argv = [
            sys.executable, "-m", "schooner.admin.managers.local.supervisor",
            "--cluster-dir", os.fspath(self.layout.root), "--grace-s", str(self.grace_s),
        ]
        with open(self.layout.supervisor_log, "ab") as log:
            launcher = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=True, start_new_session=True,
            )
        try:
            code = launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            code = -9
        if code != 0:
            raise ClipperException(
                f"the supervisor of cluster {self.cluster_name!r} failed to start "
                f"(exit code {code}); last lines of {self.layout.supervisor_log}:\n"
                f"{log_tail(self.layout.supervisor_log)}"
            )

    def _wait_for_frontend(self, stale_pid: int | None = None) -> None:
        """Until the frontend answers; ``stale_pid``: the pid file's before the supervisor
        was launched (a crashed cluster's), not the new supervisor's."""
        deadline = time.monotonic() + self.start_timeout_s
        management = self.management
        while time.monotonic() < deadline:
            try:
                frontend = self.status()["frontend"]
            except control.ControlError:
                pid = self.layout.read_pid()
                if pid is not None and pid != stale_pid and not is_alive(pid):
                    raise ClipperException(
                        f"the supervisor of cluster {self.cluster_name!r} exited; last lines "
                        f"of {self.layout.supervisor_log}:\n{log_tail(self.layout.supervisor_log)}"
                    ) from None
                time.sleep(_POLL_S)
                continue
            if frontend["last_exit_code"] is not None:
                raise ClipperException(
                    f"the frontend exited with code {frontend['last_exit_code']} while "
                    f"starting; last lines of {frontend['log_path']}:\n"
                    f"{log_tail(frontend['log_path'])}"
                )
            if management.ping(timeout=1.0):
                return
            time.sleep(_POLL_S)
        raise ClipperException(
            f"the frontend did not answer /admin/ping within {self.start_timeout_s:.0f}s; "
            f"last lines of {self.layout.frontend_log}:\n{log_tail(self.layout.frontend_log)}"
        )

    def connect(self) -> None:
        """Attach to the running cluster, adopting the ports it was started with."""
        if not self.layout.settings_file.exists() or not self.is_running():
            raise self._not_running()
        stored = self.layout.read_settings()
        if stored != self.settings:
            logger.info("cluster %r runs with %s", self.cluster_name, stored)
        self.settings = stored
        if not self.management.ping(timeout=5.0):
            raise ClipperException(
                f"cluster {self.cluster_name!r} is running but its frontend does not answer at "
                f"{self.get_admin_addr()}; last lines of {self.layout.frontend_log}:\n"
                f"{log_tail(self.layout.frontend_log)}"
            )

    def stop_all(self, graceful: bool = True) -> None:
        """Stop replicas, then the frontend, then the supervisor, and remove the cluster:
        its state (apps, models, links), artifacts and logs. The next ``start_clipper``
        starts empty, as Clipper's does; only a frontend or supervisor that crashes keeps
        its state. Leaves no process behind.

        Graceful: each child gets SIGTERM and ``grace_s`` to exit before SIGKILL; if the
        supervisor is still there after that, its whole process group is killed.
        Not graceful: the process group is killed at once. Stopping a cluster that is not
        running removes what a crashed run left.
        """
        pid = self.layout.read_pid()
        if graceful:
            try:
                self._control("shutdown", timeout=5.0, grace_s=self.grace_s)
            except control.ControlError as exc:
                logger.info("cluster %r: %s", self.cluster_name, exc)
            deadline = time.monotonic() + 2 * self.grace_s + 10.0
            while pid is not None and is_alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
        if pid is not None and is_alive(pid):
            logger.warning("killing what is left of cluster %r (process group %d)",
                           self.cluster_name, pid)
            kill_group(pid)
            deadline = time.monotonic() + 5.0
            while is_alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
        if pid is not None and is_alive(pid):
            raise ClipperException(
                f"cluster {self.cluster_name!r}: the supervisor (pid {pid}) survived SIGKILL; "
                f"its files in {self.layout.root} are kept"
            )
        shutil.rmtree(self.layout.root, ignore_errors=True)

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
        """Copy ``model_data_path`` to ``<cluster>/artifacts/<name>/<version>/``, choose the
        Python environment its replicas run in, and return that path (the "image").

        Nothing is pushed anywhere: ``container_registry`` is ignored (with a log line).
        ``base_image="default"`` means the base image of the artifact's framework
        (``schooner/<name>`` names one of ``base_images/`` explicitly). The environment is
        picked (or built, once) here from that base image's requirements plus
        ``pkgs_to_install`` — see ``schooner.admin.managers.local.environments`` — so replicas never
        install anything when they start. An existing artifact of a version that has running
        replicas is refused.
        """
        if container_registry is not None:
            logger.info("the local manager pushes nothing; container_registry=%r ignored",
                        container_registry)
        source = Path(model_data_path)
        if not source.is_dir():
            raise ClipperException(f"model_data_path {model_data_path!r} is not a directory")
        destination = self.layout.artifact_dir(name, version)
        if destination.exists():
            if self._live_replicas(name, version):
                raise ClipperException(
                    f"model {name}:{version} has running replicas using {destination}; "
                    "deploy a new version instead"
                )
            shutil.rmtree(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = destination.with_name(f".{destination.name}.building-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        if pkgs_to_install:
            packaging.record_requirements(staging / REQUIREMENTS_NAME, pkgs_to_install)
        try:
            pkg = packaging.package(staging, base_image)
            environment = environments.resolve(
                pkg.base_image, pkg.requirements, needs=pkg.needs, mode=self.environment
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / ENVIRONMENT_FILE).write_text(environment.to_json())
        os.replace(staging, destination)
        logger.info("built model %s:%s at %s (base image %r, python %s)", name, version,
                    destination, pkg.base_image, environment.python)
        return os.fspath(destination)

    def model_data_path(self, image: str) -> str:
        return image

    def _python_for(self, image: str) -> str | None:
        """The interpreter build_model chose for this artifact (``python`` overrides it)."""
        if self.python:
            return self.python
        recorded = Path(image) / ENVIRONMENT_FILE
        if recorded.is_file():
            return environments.Environment.from_json(recorded.read_text()).python
        return None

    def _live_replicas(self, name: str, version: str) -> list[dict[str, Any]]:
        try:
            replicas = self.status()["replicas"]
        except control.ControlError:
            return []
        return [
            r for r in replicas
            if r["model_name"] == name and r["model_version"] == version
            and r["state"] not in (ChildState.STOPPING, ChildState.STOPPED)
        ]

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        num_replicas: int = 1,
        batch_size: int = -1,
    ) -> None:
        """Start replicas from artifact ``image`` and wait until they connected.

        If a replica exits or the wait times out, the new replicas are stopped and the
        ClipperException quotes the end of the replica's log.
        """
        if not Path(image).is_dir():
            raise ClipperException(
                f"image {image!r} is not an artifact directory; the local manager runs "
                "what build_model returned"
            )
        self._scale_and_wait(name, version, input_type, image, num_replicas, batch_size,
                             stop_on_failure=True)

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int = -1,
    ) -> None:
        """Scale one model version; waits for added replicas to connect."""
        self._scale_and_wait(name, version, input_type, image, num_replicas, batch_size,
                             stop_on_failure=False)

    def _scale_and_wait(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int, stop_on_failure: bool,
    ) -> None:
        if num_replicas < 0:
            raise ClipperException(f"num_replicas must be >= 0, got {num_replicas}")
        before = {r["name"]: _fingerprint(r) for r in self._live_replicas(name, version)}
        try:
            self._control(
                "scale", model_name=name, model_version=version, input_type=input_type,
                model_path=image, num_replicas=num_replicas, batch_size=batch_size,
                python=self._python_for(image), device=self.device,
            )
        except control.ControlError as exc:
            if not self.is_running():
                raise self._not_running() from exc
            raise
        try:
            self.wait_for_replicas(name, version, num_replicas, before)
        except ClipperException:
            if stop_on_failure:
                self.stop_models({name: [version]})
            raise

    def wait_for_replicas(
        self, name: str, version: str, count: int,
        baseline: dict[str, tuple[Any, ...]] | None = None,
    ) -> None:
        """Return once ``count`` replicas of ``name:version`` are connected to the frontend.

        Raises ClipperException, quoting the replica's log, as soon as one replica that
        was started or restarted since ``baseline`` exits; and on ``deploy_timeout_s``.
        """
        baseline = baseline or {}

        def failure() -> str | None:
            for replica in self._live_replicas(name, version):
                failed = replica["state"] in _FAILED_STATES
                if failed and baseline.get(replica["name"]) != _fingerprint(replica):
                    return (
                        f"replica {replica['name']} exited with code "
                        f"{replica['last_exit_code']} before connecting; last lines of "
                        f"{replica['log_path']}:\n{log_tail(replica['log_path'])}"
                    )
            return None

        def logs() -> str:
            return "\n".join(
                f"--- {r['log_path']}:\n{log_tail(r['log_path'], 10)}"
                for r in self._live_replicas(name, version)
            )

        wait_for_replicas(self.management, name, version, count, self.deploy_timeout_s,
                          failure, logs)

    def get_num_replicas(self, name: str, version: str) -> int:
        return len(self._live_replicas(name, version))

    def stop_models(self, models: dict[str, list[str]]) -> None:
        """Stop the replicas of the listed versions; returns once they exited."""
        models = {str(k): [str(v) for v in vs] for k, vs in models.items()}
        self._control("stop_models", models=models)
        self._wait_until_gone(lambda r: r["model_version"] in models.get(r["model_name"], []))

    def stop_all_model_containers(self) -> None:
        self._control("stop_all_replicas")
        self._wait_until_gone(lambda r: True)

    def _wait_until_gone(self, selects: Any) -> None:
        deadline = time.monotonic() + self.grace_s + 5.0
        while time.monotonic() < deadline:
            if not [r for r in self.status()["replicas"] if selects(r)]:
                return
            time.sleep(_POLL_S)
        raise ClipperException("replicas did not stop in time; see `schooner status`")

    # ------------------------------------------------------------------ addresses and logs

    def get_query_addr(self) -> str:
        return f"127.0.0.1:{self.settings.query_port}"

    def get_admin_addr(self) -> str:
        return f"127.0.0.1:{self.settings.management_port}"

    def get_logs(self, logging_dir: str) -> list[str]:
        """Copy the supervisor's, the frontend's and every replica's log into ``logging_dir``."""
        target = Path(logging_dir)
        target.mkdir(parents=True, exist_ok=True)
        copied = []
        for log in sorted(self.layout.logs.glob("*.log")):
            destination = target / f"{self.cluster_name}-{log.name}"
            shutil.copyfile(log, destination)
            copied.append(os.fspath(destination))
        return copied


def _cluster_flag(cluster_name: str) -> str:
    return "" if cluster_name == DEFAULT_CLUSTER else f" --cluster {cluster_name}"


def _fingerprint(replica: dict[str, Any]) -> tuple[Any, ...]:
    return (replica["restarts"], replica["last_exit_code"], replica["state"])

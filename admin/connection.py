"""``ClipperConnection``: Clipper's admin API, with the same names, parameters and defaults.

Code written against ``clipper_admin.ClipperConnection`` runs unchanged, with these
differences, each one a fix:

* nothing is pushed to a container registry unless a manager that needs one is used;
* ``deploy_model`` returns once the replicas connected to the frontend, and raises with the
  end of a replica's log if one exits first (Clipper returned before they were up, or hung);
* ``start_clipper`` raises with the end of the frontend's log if it dies while starting;
* ``stop_models`` and friends return once the replicas exited.

Every operation except ``build_model`` needs ``start_clipper()`` or ``connect()`` first and
raises ``ClipperException("... not connected ...")`` otherwise. Versions are sent as strings.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from schooner.admin.management import ManagementClient, ManagementError
from schooner.admin.managers.base import CONTAINERLESS_MODEL_IMAGE, ContainerManager
from schooner.runtime.errors import ClipperException
from schooner.runtime.wire import InputType

__all__ = ["ClipperConnection", "validate_model_name", "normalize_input_type"]

logger = logging.getLogger(__name__)

# Model names and versions become file, process and (later) Kubernetes names: DNS-1123 labels.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def validate_model_name(name: str, version: str) -> None:
    """Refuse model names or versions that are not DNS-1123 labels (lower-case a-z, 0-9, '-')."""
    for what, value in (("model name", name), ("model version", version)):
        if not isinstance(value, str) or not _DNS_LABEL.match(value):
            raise ClipperException(
                f"invalid {what} {value!r}: use lower-case letters, digits and '-', starting "
                "and ending with a letter or digit"
            )


def normalize_input_type(input_type: str | int | InputType) -> str:
    """The Clipper name of ``input_type`` ("doubles", ...); ClipperException if unknown."""
    try:
        return InputType.parse(input_type).clipper_name
    except ValueError as exc:
        raise ClipperException(str(exc)) from exc


class ClipperConnection:
    """A handle on one cluster, run by ``container_manager``."""

    def __init__(self, container_manager: ContainerManager) -> None:
        self.cm = container_manager
        self.connected = False

    # ------------------------------------------------------------------ connection

    def start_clipper(
        self,
        query_frontend_image: str | None = None,
        mgmt_frontend_image: str | None = None,
        cache_size: int | None = None,
        num_frontend_replicas: int = 1,
    ) -> None:
        """Start a new cluster with the container manager and connect to it.

        Returns once the management API answers; raises ClipperException quoting the
        frontend's log if it exits while starting. ``num_frontend_replicas`` above 1 needs
        a manager that runs several frontends (``KubernetesContainerManager``).
        """
        if num_frontend_replicas != 1:
            if not self.cm.runs_several_frontends:
                raise ClipperException(
                    f"{type(self.cm).__name__} runs one frontend; num_frontend_replicas="
                    f"{num_frontend_replicas} needs KubernetesContainerManager"
                )
            self.cm.start_clipper(  # type: ignore[call-arg]
                query_frontend_image, mgmt_frontend_image, cache_size,
                num_frontend_replicas=num_frontend_replicas,
            )  # fmt: skip
        else:
            self.cm.start_clipper(query_frontend_image, mgmt_frontend_image, cache_size)
        self.connected = True
        logger.info("Clipper-compatible cluster is running at %s", self.cm.get_query_addr())

    def connect(self) -> None:
        """Connect to a running cluster; raises ClipperException if none runs."""
        self.cm.connect()
        self.connected = True
        logger.info("connected to the cluster at %s", self.cm.get_query_addr())

    def _api(self) -> ManagementClient:
        if not self.connected:
            raise ClipperException(
                "not connected to a cluster: call start_clipper() or connect() first"
            )
        return ManagementClient(self.cm.get_admin_addr(), token=self.cm.admin_token())

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._api().post(path, body)

    # ------------------------------------------------------------------ applications

    def register_application(
        self, name: str, input_type: str, default_output: str, slo_micros: int,
        on_overload: str = "default",
    ) -> None:  # fmt: skip
        """Create the endpoint ``POST /<name>/predict``; fails if the app already exists.

        ``on_overload`` (not Clipper's): what a query refused under overload gets,
        ``"default"`` (the default output and the reason, Clipper's way) or ``"503"``
        (HTTP 503 with Retry-After)."""
        body = {
            "name": name,
            "input_type": normalize_input_type(input_type),
            "default_output": default_output,
            "latency_slo_micros": int(slo_micros),
        }
        if on_overload != "default":
            body["on_overload"] = on_overload
        self._post("/admin/add_app", body)
        logger.info("application %s registered", name)

    def set_app_on_overload(self, name: str, on_overload: str) -> None:
        """What the app answers a query it refuses under overload with: "default" or "503"."""
        self._post("/admin/set_app_on_overload", {"name": name, "on_overload": on_overload})

    def delete_application(self, name: str) -> None:
        self._post("/admin/delete_app", {"name": name})
        logger.info("application %s deleted", name)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        """Route the app's queries to the model (one model per app; input types must match)."""
        self._post("/admin/add_model_links", {"app_name": app_name, "model_names": [model_name]})
        logger.info("model %s is now linked to application %s", model_name, app_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._post("/admin/delete_model_links",
                   {"app_name": app_name, "model_names": [model_name]})
        logger.info("model %s is no longer linked to application %s", model_name, app_name)

    def get_all_apps(self, verbose: bool = False) -> list[Any]:
        result: list[Any] = self._post("/admin/get_all_applications", {"verbose": bool(verbose)})
        return result

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        """The app's dict, or None if no such app is registered."""
        try:
            info: dict[str, Any] = self._post("/admin/get_application", {"name": name})
        except ManagementError as exc:
            if exc.status == 404:
                return None
            raise
        return info or None

    def get_linked_models(self, app_name: str) -> list[str]:
        result: list[str] = self._post("/admin/get_linked_models", {"app_name": app_name})
        return result

    # ------------------------------------------------------------------ models

    def build_model(
        self,
        name: str,
        version: str | int,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        """Package ``model_data_path`` with the container manager; returns the image reference.

        Works without a connection (as in Clipper). Nothing is pushed to a registry by the
        local manager; ``pkgs_to_install`` are recorded with the artifact, not installed.
        """
        version = str(version)
        validate_model_name(name, version)
        return self.cm.build_model(
            name, version, model_data_path, base_image,
            container_registry=container_registry, pkgs_to_install=pkgs_to_install,
        )

    def deploy_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        image: str,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
    ) -> None:
        """Run ``num_replicas`` replicas of ``image``, wait until they connected, register them.

        The new version becomes the model's current version. Raises ClipperException if
        the version already exists, or (with the end of its log) if a replica exits
        before connecting; in that case its replicas are stopped and nothing is registered.
        """
        version = str(version)
        validate_model_name(name, version)
        input_type = normalize_input_type(input_type)
        if self.get_model_info(name, version) is not None:
            raise ClipperException(
                f"model {name}:{version} is already registered; deploy a new version"
            )
        self.cm.deploy_model(name, version, input_type, image,
                             num_replicas=num_replicas, batch_size=batch_size)
        try:
            self._add_model(name, version, input_type, image, labels, batch_size,
                            self.cm.model_data_path(image))
        except ClipperException:
            self.cm.stop_models({name: [version]})
            raise
        logger.info("model %s:%s deployed with %d replica(s)", name, version, num_replicas)

    def build_and_deploy_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        model_data_path: str,
        base_image: str,
        labels: list[str] | None = None,
        container_registry: str | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        pkgs_to_install: list[str] | None = None,
    ) -> None:
        """``build_model`` then ``deploy_model``."""
        self._api()
        image = self.build_model(name, version, model_data_path, base_image,
                                 container_registry, pkgs_to_install)
        self.deploy_model(name, version, input_type, image, labels, num_replicas, batch_size)

    def register_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        image: str | None = None,
        labels: list[str] | None = None,
        batch_size: int = -1,
    ) -> None:
        """Register a model version without starting replicas.

        For a container started by hand (Clipper's own containers included): once it
        connects with this name and version, it serves the apps linked to the model.
        """
        version = str(version)
        self._add_model(name, version, normalize_input_type(input_type),
                        image or CONTAINERLESS_MODEL_IMAGE, labels, batch_size, "")

    def _add_model(
        self, name: str, version: str, input_type: str, image: str,
        labels: list[str] | None, batch_size: int, model_data_path: str,
    ) -> None:
        self._post("/admin/add_model", {
            "model_name": name,
            "model_version": version,
            "labels": list(labels or []),
            "input_type": input_type,
            "container_name": image,
            "model_data_path": model_data_path,
            "batch_size": int(batch_size),
        })
        logger.info("model %s:%s registered", name, version)

    def get_all_models(self, verbose: bool = False) -> list[Any]:
        result: list[Any] = self._post("/admin/get_all_models", {"verbose": bool(verbose)})
        return result

    def get_model_info(self, name: str, version: str | int) -> dict[str, Any] | None:
        """The model version's dict, or None if it is not registered."""
        try:
            info: dict[str, Any] = self._post(
                "/admin/get_model", {"model_name": name, "model_version": str(version)}
            )
        except ManagementError as exc:
            if exc.status == 404:
                return None
            raise
        return info or None

    def get_current_model_version(self, name: str) -> str:
        for model in self.get_all_models(verbose=True):
            if model["model_name"] == name and model["is_current_version"]:
                return str(model["model_version"])
        raise ClipperException(f"no version of model {name} is registered")

    def get_all_model_replicas(self, verbose: bool = False) -> list[Any]:
        """Replicas connected to the frontend right now."""
        result: list[Any] = self._post("/admin/get_all_containers", {"verbose": bool(verbose)})
        return result

    def set_model_version(
        self, name: str, version: str | int, num_replicas: int | None = None
    ) -> None:
        """Make ``version`` current (roll back or forward); optionally scale it."""
        version = str(version)
        self._post("/admin/set_model_version", {"model_name": name, "model_version": version})
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)

    # ------------------------------------------------------------------ model selection

    def set_traffic_split(
        self, app_name: str, split: dict[str, float], sticky_field: str | None = None
    ) -> None:
        """Send the app's queries to ``{"model:version" | "model": weight}`` in proportion
        (exactly, over many queries); a request whose JSON ``sticky_field`` is set keeps its
        member. ``set_model_version`` later sends all traffic to one version again."""
        self._post("/admin/set_traffic_split",
                   {"name": app_name, "split": dict(split), "sticky_field": sticky_field})  # fmt: skip

    def set_shadow(self, app_name: str, model: str | None, fraction: float = 1.0) -> None:
        """Mirror ``fraction`` of the app's queries to ``model`` ("model:version"; None: stop);
        its answers are discarded and compared with the primary's in the metrics."""
        self._post("/admin/set_shadow", {"name": app_name, "model": model, "fraction": fraction})

    def set_selection_policy(
        self, app_name: str, policy: str, models: list[str] | dict[str, float] | None = None,
        **settings: Any,
    ) -> None:  # fmt: skip
        """``fixed``, ``split``, ``epsilon_greedy``, ``exp3`` (learning from
        ``POST /<app>/update`` feedback) or ``ensemble`` over ``models`` (default: the app's
        current members); ``settings``: epsilon, gamma, combine ("mean"/"vote"), straggler."""
        body: dict[str, Any] = {"name": app_name, "policy": policy, **settings}
        if models is not None:
            body["models"] = models
        self._post("/admin/set_selection_policy", body)

    def set_prediction_cache(self, app_name: str, size_mb: float) -> None:
        """The app's prediction cache, bounded to ``size_mb`` MB (0 turns it off)."""
        self._post("/admin/set_prediction_cache", {"name": app_name, "size_mb": size_mb})

    def get_num_replicas(self, name: str, version: str | int | None = None) -> int:
        """Replicas the manager runs for ``version`` (default: the current version)."""
        self._api()
        version = self.get_current_model_version(name) if version is None else str(version)
        return self.cm.get_num_replicas(name, version)

    def set_num_replicas(
        self, name: str, num_replicas: int, version: str | int | None = None
    ) -> None:
        """Add or stop replicas of ``version`` (default: current); waits for new ones."""
        version = self.get_current_model_version(name) if version is None else str(version)
        info = self.get_model_info(name, version)
        if info is None:
            raise ClipperException(f"model {name}:{version} is not registered")
        if info["container_name"] == CONTAINERLESS_MODEL_IMAGE:
            raise ClipperException(
                f"model {name}:{version} was registered without an image; its replicas are "
                "not managed here"
            )
        expecting = int(num_replicas) > 0
        if expecting:  # queries wait for the replicas being started, not "no replica" at once
            wait_s = min(float(getattr(self.cm, "deploy_timeout_s", 120.0)), 3600.0)
            self._expect_replicas(name, version, wait_s)
        try:
            self.cm.set_num_replicas(name, version, info["input_type"], info["container_name"],
                                     int(num_replicas), batch_size=int(info.get("batch_size", -1)))
        except ClipperException:
            if expecting:
                self._expect_replicas(name, version, 0.0)
            raise

    def _expect_replicas(self, name: str, version: str, seconds: float) -> None:
        self._post("/admin/expect_replicas",
                   {"model_name": name, "model_version": version, "seconds": seconds})  # fmt: skip

    # ------------------------------------------------------------------ stopping

    def stop_models(self, model_names: list[str]) -> None:
        """Stop the replicas of every version of these models (they stay registered)."""
        models: dict[str, list[str]] = {}
        for model in self.get_all_models(verbose=True):
            if model["model_name"] in model_names:
                models.setdefault(model["model_name"], []).append(str(model["model_version"]))
        self.cm.stop_models(models)
        logger.info("stopped the replicas of %s", models)

    def stop_versioned_models(self, model_versions_dict: dict[str, list[str]]) -> None:
        """Stop the replicas of exactly these versions (current ones included)."""
        self._api()
        models = {name: [str(v) for v in versions]
                  for name, versions in model_versions_dict.items()}
        self.cm.stop_models(models)
        logger.info("stopped the replicas of %s", models)

    def stop_inactive_model_versions(self, model_names: list[str]) -> None:
        """Stop the replicas of every version of these models but the current one."""
        models: dict[str, list[str]] = {}
        for model in self.get_all_models(verbose=True):
            if model["model_name"] in model_names and not model["is_current_version"]:
                models.setdefault(model["model_name"], []).append(str(model["model_version"]))
        self.cm.stop_models(models)
        logger.info("stopped the replicas of %s", models)

    def stop_all_model_containers(self) -> None:
        self._api()
        self.cm.stop_all_model_containers()

    def stop_all(self, graceful: bool = True) -> None:
        """Stop every replica, the frontend and the manager's own processes.

        Works without a connection too, so a script can clean up whatever is left.
        """
        self.cm.stop_all(graceful=graceful)
        self.connected = False

    # ------------------------------------------------------------------ addresses and logs

    def get_query_addr(self) -> str:
        self._api()
        return self.cm.get_query_addr()

    def get_metric_addr(self) -> str:
        self._api()
        return self.cm.get_metric_addr()

    def get_clipper_logs(self, logging_dir: str = "clipper_logs/") -> list[str]:
        """Copy every component's log into ``logging_dir``; returns the copies' paths."""
        self._api()
        return self.cm.get_logs(logging_dir)

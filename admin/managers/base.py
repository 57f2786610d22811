"""What a container manager does for ``ClipperConnection``: run the frontend and replicas.

Managers differ in what an "image" is and where replicas run: the local manager
(``schooner.admin.managers.local``) runs processes from an artifact directory; Docker and
Kubernetes managers run images built from the same directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from schooner.runtime.config import DEFAULT_MANAGEMENT_PORT, DEFAULT_QUERY_PORT, DEFAULT_RPC_PORT

__all__ = [
    "ContainerManager",
    "CONTAINERLESS_MODEL_IMAGE",
    "CLIPPER_INTERNAL_QUERY_PORT",
    "CLIPPER_INTERNAL_MANAGEMENT_PORT",
    "CLIPPER_INTERNAL_RPC_PORT",
    "CLIPPER_DOCKER_LABEL",
    "CLIPPER_MODEL_CONTAINER_LABEL",
    "CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL",
    "CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL",
    "create_model_container_label",
    "parse_model_container_label",
]

# container_name recorded for a model registered without an image (a container started by hand).
CONTAINERLESS_MODEL_IMAGE = "NO_CONTAINER"

# The ports inside a cluster, under Clipper's names.
CLIPPER_INTERNAL_QUERY_PORT = DEFAULT_QUERY_PORT
CLIPPER_INTERNAL_MANAGEMENT_PORT = DEFAULT_MANAGEMENT_PORT
CLIPPER_INTERNAL_RPC_PORT = DEFAULT_RPC_PORT

# Clipper's container labels, so Clipper's tooling recognises a Schooner cluster's containers:
# every container carries CLIPPER_DOCKER_LABEL=<cluster name>; a replica carries
# CLIPPER_MODEL_CONTAINER_LABEL=<name>_<version>; the frontend both frontend labels (one
# process serves queries and management).
CLIPPER_DOCKER_LABEL = "ai.clipper.container.label"
CLIPPER_MODEL_CONTAINER_LABEL = "ai.clipper.model_container.label"
CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL = "ai.clipper.query_frontend.label"
CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL = "ai.clipper.management_frontend.label"
_MODEL_LABEL_DELIMITER = "_"  # names and versions are DNS labels: they hold no "_"


def create_model_container_label(name: str, version: str) -> str:
    return f"{name}{_MODEL_LABEL_DELIMITER}{version}"


def parse_model_container_label(label: str) -> tuple[str, str]:
    name, _, version = label.partition(_MODEL_LABEL_DELIMITER)
    return name, version


class ContainerManager(ABC):
    """The operations ``ClipperConnection`` delegates. Versions are always strings here."""

    # Whether ``start_clipper`` takes ``num_frontend_replicas`` (runs several frontends).
    runs_several_frontends = False

    @abstractmethod
    def start_clipper(
        self,
        query_frontend_image: str | None = None,
        mgmt_frontend_image: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        """Start a new cluster and return once its management API answers."""

    @abstractmethod
    def connect(self) -> None:
        """Attach to a running cluster; raises ClipperException if there is none."""

    @abstractmethod
    def build_model(
        self,
        name: str,
        version: str,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        """Package ``model_data_path`` for ``base_image``; returns the image reference."""

    def model_data_path(self, image: str) -> str:
        """The artifact path to record for a model deployed from ``image`` ("" if none)."""
        return ""

    @abstractmethod
    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        num_replicas: int = 1,
        batch_size: int = -1,
    ) -> None:
        """Start ``num_replicas`` replicas and return once they connected to the frontend."""

    @abstractmethod
    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int,
        batch_size: int = -1,
    ) -> None:
        """Add or remove replicas of one model version until ``num_replicas`` run."""

    @abstractmethod
    def get_num_replicas(self, name: str, version: str) -> int:
        """How many replicas of one model version this manager keeps running."""

    @abstractmethod
    def stop_models(self, models: dict[str, list[str]]) -> None:
        """Stop every replica of the listed versions (``{name: [version, ...]}``)."""

    @abstractmethod
    def stop_all_model_containers(self) -> None:
        """Stop every replica of every model; the frontend keeps running."""

    @abstractmethod
    def stop_all(self, graceful: bool = True) -> None:
        """Stop replicas, then the frontend, and everything else the cluster runs."""

    @abstractmethod
    def get_logs(self, logging_dir: str) -> list[str]:
        """Copy every component's log into ``logging_dir``; returns the copies' paths."""

    @abstractmethod
    def get_query_addr(self) -> str:
        """``host:port`` of the query API."""

    @abstractmethod
    def get_admin_addr(self) -> str:
        """``host:port`` of the management API."""

    def admin_token(self) -> str | None:
        """The management API's token (``ClipperConnection`` sends it), None if unknown."""
        return None

    def get_metric_addr(self) -> str:
        """``host:port`` serving Prometheus metrics at ``/metrics``: Schooner's frontend
        serves them itself, on the query port."""
        return self.get_query_addr()

"""Where a local cluster keeps its files, and the settings it was started with.

    $SCHOONER_HOME/clusters/<cluster_name>/     (SCHOONER_HOME defaults to ~/.schooner)
    ├── cluster.json        ports and hosts, written by start_clipper, read by everyone else
    ├── supervisor.pid      the supervisor's pid (also its process group)
    ├── control.sock        the supervisor's control channel
    ├── rpc.sock            the frontend's Unix socket for local replicas (0600)
    ├── rpc.secret          the cluster secret replicas prove they hold (0600)
    ├── admin.token         the management API's token (0600), read by ClipperConnection
    ├── state.db            the frontend's SQLite state (apps, models, links)
    ├── logs/               supervisor.log, frontend.log, replica-<model>-<version>-<n>.log
    ├── ready/              one ready file per replica (SCHOONER_READY_FILE)
    └── artifacts/<model>/<version>/   what build_model copied in
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from schooner.runtime.config import (
    ADMIN_TOKEN_FILE,
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    UNIX_SOCKET_PATH_LIMIT,
    create_secret_file,
    read_secret_file,
)
from schooner.runtime.errors import ClipperException

__all__ = ["ClusterLayout", "ClusterSettings", "schooner_home", "cluster_layout"]

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def schooner_home() -> Path:
    """``$SCHOONER_HOME``, or ``~/.schooner`` when it is unset; read each time it is needed."""
    configured = os.environ.get("SCHOONER_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".schooner"


@dataclass(frozen=True)
class ClusterSettings:
    """How a cluster's frontend listens; saved to ``cluster.json`` when the cluster starts."""

    cluster_name: str
    query_port: int = DEFAULT_QUERY_PORT
    management_port: int = DEFAULT_MANAGEMENT_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    query_host: str = "0.0.0.0"
    management_host: str = "127.0.0.1"
    rpc_host: str = "127.0.0.1"
    # the frontend's worker processes (schooner-frontend --workers; 0: its default for
    # this machine, runtime.config.default_frontend_workers)
    frontend_workers: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterSettings:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class ClusterLayout:
    """The paths inside one cluster directory (nothing is created until ``create``)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def settings_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def rpc_socket(self) -> str | None:
        """The frontend's Unix socket for this cluster's local replicas (RPC v3 without
        ZeroMQ): ``rpc.sock`` in the (owner-only) cluster directory, itself owner-only. Where
        that path is too long for a socket address: on Linux a name in the abstract namespace
        derived from the directory (guarded by the frontend's peer-uid check and the cluster
        secret, since it has no file permissions), elsewhere None (ZeroMQ is used)."""
        path = os.fspath(self.root / "rpc.sock")
        if len(os.fsencode(path)) <= UNIX_SOCKET_PATH_LIMIT:
            return path
        if sys.platform.startswith("linux"):
            digest = hashlib.sha256(os.fsencode(self.root.resolve())).hexdigest()[:24]
            return f"@schooner-rpc-{digest}"
        return None

    @property
    def rpc_secret_file(self) -> Path:
        return self.root / "rpc.secret"

    @property
    def admin_token_file(self) -> Path:
        return self.root / ADMIN_TOKEN_FILE

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ready(self) -> Path:
        return self.root / "ready"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"

    @property
    def frontend_log(self) -> Path:
        return self.logs / "frontend.log"

    def artifact_dir(self, model_name: str, model_version: str) -> Path:
        return self.artifacts / model_name / model_version

    def replica_log(self, model_name: str, model_version: str, slot: int) -> Path:
        return self.logs / f"replica-{model_name}-{model_version}-{slot}.log"

    def ready_file(self, model_name: str, model_version: str, slot: int) -> Path:
        return self.ready / f"{model_name}-{model_version}-{slot}.ready"

    def create(self) -> None:
        """The folders, and the cluster's two credentials (each made once, owner-only)."""
        for folder in (self.root, self.logs, self.ready, self.artifacts):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        create_secret_file(self.rpc_secret_file)
        create_secret_file(self.admin_token_file)

    def admin_token(self) -> str | None:
        """The management API's token, if the cluster has one."""
        try:
            return read_secret_file(self.admin_token_file).decode()
        except ValueError:
            return None

    def read_settings(self) -> ClusterSettings:
        return ClusterSettings.from_json(self.settings_file.read_text())

    def write_settings(self, settings: ClusterSettings) -> None:
        tmp = self.settings_file.with_suffix(".json.tmp")
        tmp.write_text(settings.to_json())
        os.replace(tmp, self.settings_file)

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def cluster_layout(cluster_name: str, home: str | os.PathLike[str] | None = None) -> ClusterLayout:
    """The layout of cluster ``cluster_name`` under ``home`` (default: ``schooner_home()``)."""
    if not _CLUSTER_NAME.match(cluster_name):
        raise ClipperException(
            f"invalid cluster name {cluster_name!r}: use letters, digits, '.', '_' or '-'"
        )
    base = Path(home).expanduser() if home is not None else schooner_home()
    return ClusterLayout(base / "clusters" / cluster_name)

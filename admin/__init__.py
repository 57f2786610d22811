"""Schooner's admin API: deploy models from Python the way Clipper's ``clipper_admin`` did.

    from schooner.admin import ClipperConnection, LocalContainerManager
    from schooner.admin.deployers import python as python_deployer

    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper()
    python_deployer.create_endpoint(conn, "hello", "doubles", lambda xs: [str(sum(x)) for x in xs])
"""

from schooner.admin.connection import ClipperConnection
from schooner.admin.managers.base import ContainerManager
from schooner.admin.managers.docker import DockerContainerManager
from schooner.admin.managers.kubernetes import KubernetesContainerManager
from schooner.admin.managers.local import LocalContainerManager
from schooner.runtime.errors import ClipperException

__all__ = [
    "ClipperConnection",
    "ContainerManager",
    "LocalContainerManager",
    "DockerContainerManager",
    "KubernetesContainerManager",
    "ClipperException",
]

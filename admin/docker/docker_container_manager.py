"""Clipper's module path ``clipper_admin.docker.docker_container_manager``, with the ``schooner``
prefix. The manager lives in ``schooner.admin.managers.docker``."""

from schooner.admin.managers.docker import DockerContainerManager

__all__ = ["DockerContainerManager"]

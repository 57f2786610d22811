"""Deploy a Python function (a closure, with whatever it captured) as a model.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.python``
(``create_endpoint`` also takes ``pkgs_to_install``). The function takes a list of inputs
and returns one string per input; it is serialized with
``schooner.frameworks.closure.save`` into a temporary directory that ``build_model`` copies.
``base_image="default"`` means the manager's default environment (for the local manager:
the interpreter running this code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link

__all__ = ["deploy_python_closure", "create_endpoint"]


def deploy_python_closure(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any], Sequence[str]],
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Serialize ``func`` and deploy it as model ``name:version``; returns once it serves.

    ``pkgs_to_install`` are recorded in the artifact's requirements; they are installed
    when an environment or image is built, never when a replica starts.
    """
    from schooner.frameworks import closure

    deploy_artifact(
        clipper_conn, name, version, input_type,
        lambda directory: closure.save(func, directory, pkgs_to_install=pkgs_to_install),
        base_image, labels, registry, num_replicas, batch_size, pkgs_to_install, [func],
    )


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[Any], Sequence[str]],
    default_output: str = "None",
    version: str | int = 1,
    slo_micros: int = 3000000,
    labels: list[str] | None = None,
    registry: str | None = None,
    base_image: str = "default",
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Register app ``name``, deploy ``func`` as model ``name``, and link the two."""
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_python_closure(
            clipper_conn, name, version, input_type, func, base_image, labels, registry,
            num_replicas, batch_size, pkgs_to_install,
        ),
    )

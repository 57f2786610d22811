"""Deploy a PyTorch model with the Python function that queries it.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.pytorch``
(``create_endpoint`` also takes ``pkgs_to_install``, as ``deploy_pytorch_model`` does).
``pytorch_model`` is an eager ``torch.nn.Module``, a TorchScript module or a
``torch.export.ExportedProgram``; it is written with ``func`` by
``schooner.frameworks.pytorch.save`` (see that module for the files, the ``weights_only``
choice and how ``func(model, inputs)`` is called) into a temporary directory that
``build_model`` copies. ``base_image="default"`` means the ``pytorch`` base image (for the
local manager: the interpreter running this code when it has torch). torch is imported
only when a model is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link

__all__ = ["deploy_pytorch_model", "create_endpoint"]


def deploy_pytorch_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, Any], Iterable[Any]],
    pytorch_model: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Save ``pytorch_model`` with ``func`` and deploy them as model ``name:version``;
    returns once it serves.

    Each batch is answered as ``func(model, inputs)`` under ``torch.inference_mode()``, with
    ``inputs`` as tensors on the replicas' device; ``func`` returns one output per input.
    ``pkgs_to_install`` are recorded in the artifact's requirements; they are installed when
    an environment or image is built, never when a replica starts.
    """
    from schooner.frameworks import pytorch

    deploy_artifact(
        clipper_conn, name, version, input_type,
        lambda directory: pytorch.save(func, pytorch_model, directory,
                                       pkgs_to_install=pkgs_to_install),
        base_image, labels, registry, num_replicas, batch_size, pkgs_to_install, [func],
    )  # fmt: skip


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[Any, Any], Iterable[Any]],
    pytorch_model: Any,
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
    """Register app ``name``, deploy ``pytorch_model`` as model ``name``, and link the two."""
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_pytorch_model(
            clipper_conn, name, version, input_type, func, pytorch_model, base_image, labels,
            registry, num_replicas, batch_size, pkgs_to_install,
        ),
    )  # fmt: skip

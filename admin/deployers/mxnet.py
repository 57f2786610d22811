"""Deploy an MXNet model with a Python function that calls it.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.mxnet``.
The model is saved with ``schooner.frameworks.mxnet.save`` (``save_checkpoint(prefix, 0)``
plus the data shapes it is bound with at load) and the function is called as
``func(model, inputs)`` with the bound ``mx.mod.Module``; it returns one output per input.

MXNet 1.9.1 needs numpy < 1.24, so its replicas run in an environment of their own, built
from ``base_images/mxnet/requirements.txt`` (the local manager does that by itself). Deploy
either from an environment where MXNet is importable, passing the Module (or a hybridized
Gluon ``HybridBlock``), or from any environment, passing an existing checkpoint as
``(prefix, epoch)`` or a prefix (epoch 0): that path never imports MXNet. ``func`` should
import ``mxnet`` inside its body, so that deploying does not need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link

__all__ = ["deploy_mxnet_model", "create_endpoint"]


def deploy_mxnet_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, Any], Sequence[Any]],
    mxnet_model: Any,
    mxnet_data_shapes: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Save ``mxnet_model`` and ``func`` and deploy them as model ``name:version``; returns
    once it serves.

    ``mxnet_data_shapes``: the inputs the model is bound with when loaded, as a list of
    ``mx.io.DataDesc`` or ``(name, shape)`` pairs, a ``{name: shape}`` mapping, or one
    shape as a list of ints (named ``data``). ``pkgs_to_install`` are recorded in the
    artifact's requirements and installed when the environment or image is built, never
    when a replica starts.
    """
    from schooner.frameworks import mxnet

    deploy_artifact(
        clipper_conn, name, version, input_type,
        lambda directory: mxnet.save(func, mxnet_model, mxnet_data_shapes, directory,
                                     pkgs_to_install=pkgs_to_install),
        base_image, labels, registry, num_replicas, batch_size, pkgs_to_install, [func],
    )  # fmt: skip


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[Any, Any], Sequence[Any]],
    mxnet_model: Any,
    mxnet_data_shapes: Any,
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
    """Register app ``name``, deploy the model as model ``name``, and link the two."""
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_mxnet_model(
            clipper_conn, name, version, input_type, func, mxnet_model, mxnet_data_shapes,
            base_image, labels, registry, num_replicas, batch_size, pkgs_to_install,
        ),
    )  # fmt: skip

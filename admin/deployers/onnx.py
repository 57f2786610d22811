"""Deploy a PyTorch model exported to ONNX, served with ONNX Runtime.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.onnx``,
except ``onnx_backend``: Clipper's default was ``"caffe2"``, whose ONNX backend went away
with Caffe2 itself, so the default here is ``"onnxruntime"``, the one backend supported,
and any other value raises ClipperException before anything is exported.
``create_endpoint`` is ``create_pytorch_endpoint`` under the name every deployer has.

The model is exported with ``schooner.frameworks.onnx.save`` (``torch.onnx.export`` from
the example ``inputs``, dynamic batch axis) into a temporary directory that
``build_model`` copies; replicas load it with ONNX Runtime and call
``func(runner, inputs)``, where ``runner.run(x)`` returns the model's outputs (see
:class:`schooner.frameworks.onnx.OnnxRunner`). Exporting needs torch here; serving does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link
from schooner.frameworks import onnx
from schooner.runtime.errors import ClipperException

__all__ = ["deploy_pytorch_model", "create_pytorch_endpoint", "create_endpoint"]

SUPPORTED_BACKEND = onnx.BACKEND


def _check_backend(onnx_backend: str) -> None:
    """ClipperException unless ``onnx_backend`` is ONNX Runtime."""
    if onnx_backend == SUPPORTED_BACKEND:
        return
    if str(onnx_backend).lower() == "caffe2":
        raise ClipperException(
            'onnx_backend="caffe2" is not supported: Caffe2 and its ONNX backend no longer '
            'exist (removed from PyTorch), so nothing can serve a model with it. Schooner '
            f'serves ONNX models with ONNX Runtime: use onnx_backend="{SUPPORTED_BACKEND}" '
            "(the default)."
        )
    raise ClipperException(
        f"onnx_backend={onnx_backend!r} is not supported; the supported ONNX backend is "
        f'"{SUPPORTED_BACKEND}" (the default).'
    )


def deploy_pytorch_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    inputs: Any,
    func: Callable[[Any, Any], Sequence[Any]],
    pytorch_model: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    onnx_backend: str = SUPPORTED_BACKEND,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Export ``pytorch_model`` to ONNX from the example ``inputs`` (a tensor, or a tuple of
    tensors, batch on axis 0) and deploy it with ``func`` as model ``name:version``;
    returns once it serves.

    ``pkgs_to_install`` are recorded in the artifact's requirements; they are installed
    when an environment or image is built, never when a replica starts.
    """
    _check_backend(onnx_backend)
    deploy_artifact(
        clipper_conn, name, version, input_type,
        lambda directory: onnx.save(func, pytorch_model, inputs, directory,
                                    pkgs_to_install=pkgs_to_install),
        base_image, labels, registry, num_replicas, batch_size, pkgs_to_install, [func],
    )  # fmt: skip


def create_pytorch_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    inputs: Any,
    func: Callable[[Any, Any], Sequence[Any]],
    pytorch_model: Any,
    default_output: str = "None",
    version: str | int = 1,
    slo_micros: int = 3000000,
    labels: list[str] | None = None,
    registry: str | None = None,
    base_image: str = "default",
    num_replicas: int = 1,
    onnx_backend: str = SUPPORTED_BACKEND,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Register app ``name``, deploy ``pytorch_model`` as model ``name``, and link the two."""
    _check_backend(onnx_backend)  # before the app is registered
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_pytorch_model(
            clipper_conn, name, version, input_type, inputs, func, pytorch_model, base_image,
            labels, registry, num_replicas, onnx_backend, batch_size, pkgs_to_install,
        ),
    )  # fmt: skip


create_endpoint = create_pytorch_endpoint

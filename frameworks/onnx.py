"""PyTorch models exported to ONNX and served with ONNX Runtime.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`)::

    model.onnx        the exported graph and its weights; axis 0 of every input is the
                      dynamic batch axis "batch"
    model.onnx.data   the weights, only for models over 2 GB (ONNX external data)
    func.pkl          the user's function, cloudpickled (as :mod:`.closure` does)

Saving (admin side, needs ``torch``, ``onnx`` and ``onnxscript``): the model is exported
with ``torch.onnx.export(..., dynamo=True)`` — the ``torch.export``-based exporter, named
explicitly so the result does not depend on the installed torch's default — from the
example ``inputs`` (a tensor, or a tuple of tensors for a model with several inputs), with
one shared dynamic dimension on axis 0 of every input. The model is exported in eval mode
and put back in the mode it was in. The same model and inputs give the same bytes.

Serving (container, needs ``onnxruntime`` only, not torch): the user function is called as
``func(runner, inputs)`` where Clipper's ONNX container passed Caffe2's prepared backend;
``runner`` is an :class:`OnnxRunner` whose ``run(x)`` answers the list of the model's
outputs, so Clipper's ``model.run(np.array(inputs).astype(np.float32))[0]`` works as it
was. Each output of ``func`` is turned into ``str`` (Clipper's container did the same).

Device (``self.device``): ``cpu`` runs on ONNX Runtime's ``CPUExecutionProvider``;
``cuda`` / ``cuda:N`` on its ``CUDAExecutionProvider`` with ``device_id`` N (0 by default),
with the CPU provider behind it only for operators that have no CUDA kernel (ONNX Runtime's
usual partitioning). A CUDA device where ONNX Runtime has no CUDA provider (the
``onnxruntime`` wheel has none; ``onnxruntime-gpu`` has) or cannot start it is a
ConfigError at load, never a silent move to the CPU.

Compatibility: the manifest records the ONNX opset and IR version of ``model.onnx`` and the
versions of torch, onnx, onnxscript and onnxruntime it was made with. The contract between
the two sides is the opset, not a library version: ONNX Runtime runs models of every opset
up to the newest it knows, so any ``onnxruntime`` loads an artifact whose opset it supports,
whichever version made it. A newer opset (or IR version) is an IncompatibleArtifact naming
both. ``func.pkl`` is pickled code, so the Python minor version must match (as for closures).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schooner.frameworks import closure
from schooner.frameworks.artifact import package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.runtime.errors import ArtifactError, ConfigError, IncompatibleArtifact, MissingExtra

__all__ = [
    "NAME",
    "BACKEND",
    "MODEL_FILE",
    "FUNC_FILE",
    "BATCH_AXIS",
    "save",
    "OnnxRunner",
    "OnnxFramework",
]

log = logging.getLogger(__name__)

NAME = "onnx"
#: the only ONNX backend there is to serve with (Caffe2's went with Caffe2)
BACKEND = "onnxruntime"
MODEL_FILE = "model.onnx"
FUNC_FILE = closure.FUNC_FILE
BATCH_AXIS = "batch"

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"

# --------------------------------------------------------------------------- saving


def save(
    func: Callable[[OnnxRunner, Batch], Sequence[Any]],
    pytorch_model: Any,
    inputs: Any,
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
    opset_version: int | None = None,
) -> Path:
    """Export ``pytorch_model`` to ONNX from the example ``inputs``, write it with ``func``
    as an artifact directory and return its path.

    ``opset_version`` None means the exporter's recommended opset (recorded in the
    manifest). Raises ArtifactError when the model cannot be exported with a dynamic batch.
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingExtra(NAME, NAME, "torch") from exc
    for library in ("onnx", "onnxscript"):  # the exporter imports them when it runs
        if package_version(library) is None:
            raise MissingExtra(NAME, NAME, library)
    if not isinstance(pytorch_model, torch.nn.Module):
        raise TypeError(f"pytorch_model must be a torch.nn.Module, got {type(pytorch_model).__name__}")
    path = Path(directory).resolve()
    captured = closure.dump_func(func, path)
    target = path / MODEL_FILE
    _export(torch, pytorch_model, _example_args(torch, inputs), target, opset_version)
    return write_artifact(
        path,
        NAME,
        versions={
            "torch": torch.__version__,
            "onnx": package_version("onnx"),
            "onnxscript": package_version("onnxscript"),
            "onnxruntime": package_version("onnxruntime"),
            "cloudpickle": package_version("cloudpickle"),
        },
        pkgs_to_install=pkgs_to_install,
        extra={"onnx": _describe(target), "captured_modules": captured},
    )


def _example_args(torch: Any, inputs: Any) -> tuple[Any, ...]:
    """The example inputs as a tuple of tensors (numpy arrays are converted)."""
    items = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not items:
        raise ValueError("inputs must hold at least one example tensor")
    args = []
    for i, item in enumerate(items):
        tensor = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
        if tensor.dim() == 0:
            raise ValueError(
                f"example input {i} is a scalar; every input needs a batch axis (axis 0)"
            )
        args.append(tensor)
    return tuple(args)


def _export(
    torch: Any, model: Any, args: tuple[Any, ...], target: Path, opset_version: int | None
) -> None:
    batch = torch.export.Dim(BATCH_AXIS)
    dynamic_shapes = tuple({0: batch} for _ in args)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            program = torch.onnx.export(
                model, args, None, dynamo=True, dynamic_shapes=dynamic_shapes,
                opset_version=opset_version, verbose=False, optimize=True,
            )  # fmt: skip
    except Exception as exc:  # the exporter's many error types convert here, once
        raise ArtifactError(
            f"cannot export {type(model).__name__} to ONNX with a dynamic batch axis from "
            f"inputs of shapes {[tuple(a.shape) for a in args]}: {type(exc).__name__}: {exc}\n"
            "The model must accept any batch size on axis 0 of every input (no fixed-size "
            "reshapes of the batch, no Python branches on tensor values)."
        ) from exc
    finally:
        model.train(was_training)
    for warning in caught:
        # the exporter's own deprecations are torch's business; anything else may matter
        internal = issubclass(warning.category, (DeprecationWarning, FutureWarning))
        log.log(logging.DEBUG if internal else logging.WARNING, "torch.onnx.export: %s",
                warning.message)  # fmt: skip
    target.unlink(missing_ok=True)
    target.with_name(target.name + ".data").unlink(missing_ok=True)
    program.save(str(target))  # external data only when the model is over 2 GB


def _describe(target: Path) -> dict[str, Any]:
    """What the manifest records about ``model.onnx``."""
    import onnx

    proto = onnx.load(str(target), load_external_data=False)
    # torch.export may specialise the batch size instead of failing: refuse that here
    fixed = {
        i.name: dims[0].dim_value
        for i in proto.graph.input
        if (dims := i.type.tensor_type.shape.dim) and not dims[0].dim_param
    }
    if fixed:
        raise ArtifactError(
            f"the ONNX export fixed the batch size of inputs {fixed} instead of keeping a "
            "dynamic batch axis: the model must accept any batch size on axis 0 of every "
            "input (no fixed-size reshapes of the batch, no Python branches on tensor values)"
        )
    return {
        "backend": BACKEND,
        "opset": _default_opset(proto.opset_import),
        "ir_version": int(proto.ir_version),
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
    }


def _default_opset(opset_import: Any) -> int | None:
    for entry in opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


# --------------------------------------------------------------------------- serving

# ONNX tensor element types as ONNX Runtime names them -> numpy dtype names
_NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxRunner:
    """What the user function gets as its first argument: an ONNX Runtime session with
    Caffe2's ``run`` calling convention, which Clipper's ONNX container handed over.

    ``run(inputs)`` returns the list of the model's outputs (numpy arrays, in the model's
    output order); ``inputs`` is one array for the model's first input, a list or tuple with
    one array per input in order, or a dict from input name to array. Each array is
    converted to the element type the model declares (the container receives doubles, a
    model exported from float32 weights takes floats). ``session`` is the
    ``onnxruntime.InferenceSession`` itself, for anything else.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names: list[str] = [i.name for i in session.get_inputs()]
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self._dtypes = {i.name: _NUMPY_TYPES.get(i.type) for i in session.get_inputs()}

    def run(self, inputs: Any, output_names: Sequence[str] | None = None) -> list[Any]:
        """The model's outputs for ``inputs`` (all outputs, or those named)."""
        return list(self.session.run(list(output_names) if output_names else None,
                                     self._feeds(inputs)))  # fmt: skip


    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self.input_names))
            if unknown:
                raise ValueError(f"unknown model inputs {unknown}; the model takes {self.input_names}")
            pairs = list(inputs.items())
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.input_names):
                raise ValueError(
                    f"{len(inputs)} values given for a model with {len(self.input_names)} inputs "
                    f"{self.input_names}; pass one array (e.g. np.asarray(inputs)) for the first"
                    " input, or one array per input"
                )
            pairs = list(zip(self.input_names, inputs))
        else:
            pairs = [(self.input_names[0], inputs)]
        return {name: np.asarray(value, dtype=self._dtypes[name]) for name, value in pairs}


class OnnxFramework(Framework):
    name = NAME
    extra = NAME
    devices = ("cpu", "cuda")
    base_image = NAME
    requires = ("onnxruntime>=1.18 | onnxruntime-gpu>=1.18",)

    def load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingExtra(NAME, NAME, "onnxruntime") from exc
        providers = self._providers(ort)
        self.func = closure.load_func(self.artifact)
        session = self._open(ort, providers)
        if self.device != "cpu" and _CUDA not in session.get_providers():
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: ONNX Runtime {ort.__version__} could not start "
                f"its CUDA provider (the session runs on {session.get_providers()}); its log "
                "above says why (usually CUDA or cuDNN libraries it cannot find)"
            ])  # fmt: skip
        self.runner = OnnxRunner(session)
        log.info("loaded %s (opset %s) on %s with ONNX Runtime %s", MODEL_FILE,
                 self._info().get("opset", "?"), session.get_providers()[0], ort.__version__)

    def predict(self, batch: Batch) -> Sequence[str]:
        return [str(p) for p in self.func(self.runner, batch)]

    # ------------------------------------------------------------------ helpers

    def _info(self) -> Mapping[str, Any]:
        return self.artifact.manifest.get("onnx") or {}

    def _providers(self, ort: Any) -> list[Any]:
        """The execution providers for ``self.device``; ConfigError if CUDA is not there."""
        if self.device == "cpu":
            return [_CPU]
        available = ort.get_available_providers()
        if _CUDA not in available:
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: ONNX Runtime {ort.__version__} here has no "
                f"{_CUDA} (it has {', '.join(available)}); install onnxruntime-gpu=="
                f"{ort.__version__} in place of onnxruntime (the onnx base image: build it with "
                "--build-arg ONNXRUNTIME=onnxruntime-gpu)"
            ])  # fmt: skip
        device_id = int(self.device.partition(":")[2] or 0)
        return [(_CUDA, {"device_id": device_id}), _CPU]

    def _open(self, ort: Any, providers: list[Any]) -> Any:
        model = self.artifact.file(MODEL_FILE)
        try:
            return ort.InferenceSession(str(model), providers=providers)
        except Exception as exc:  # ONNX Runtime's load errors convert here, once
            text = str(exc)
            if re.search(r"opset|ir version", text, re.IGNORECASE):
                raise IncompatibleArtifact(self._too_new(ort, text)) from exc
            if "invalid device ordinal" in text.lower():
                raise ConfigError([
                    f"SCHOONER_DEVICE={self.device}: no such CUDA device ({text.strip()})"
                ]) from exc
            raise ArtifactError(
                f"ONNX Runtime {ort.__version__} cannot load {model}: {text.strip()}"
            ) from exc

    def _too_new(self, ort: Any, text: str) -> str:
        info = self._info()
        versions = self.artifact.manifest.get("versions", {})
        newest = _newest_opset(ort)
        supported = f" (it runs opsets up to {newest})" if newest else ""
        return (
            f"{self.artifact.path / MODEL_FILE} uses ONNX opset {info.get('opset', '?')} "
            f"(IR version {info.get('ir_version', '?')}), made with torch "
            f"{versions.get('torch', '?')} and onnx {versions.get('onnx', '?')}; ONNX Runtime "
            f"{ort.__version__} here cannot run it{supported}. Install a newer onnxruntime, or "
            "redeploy with an older opset. ONNX Runtime said: "
            + text.strip().splitlines()[0][-400:]
        )


def _newest_opset(ort: Any) -> int | None:
    """The newest ai.onnx opset this ONNX Runtime knows, where its build tells (for messages)."""
    try:
        schemas = ort.capi._pybind_state.get_all_operator_schema()
        return max(int(s.since_version) for s in schemas if s.domain in ("", "ai.onnx"))
    except Exception:  # an optional detail of a message; its absence changes nothing
        return None

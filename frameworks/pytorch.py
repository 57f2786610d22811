"""PyTorch models: eager ``nn.Module``, TorchScript, and ``torch.export`` programs.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`), by the kind
of model saved (the manifest's ``pytorch.format``)::

    func.pkl                 the user's function, cloudpickled (as :mod:`.closure` does)
    eager:
      model.pkl              the module's structure, cloudpickled, without any tensor data
      weights.pt             its ``state_dict()``, written with ``torch.save``
      tensors.pt             tensors outside the state dict (non-persistent buffers, plain
                             tensor attributes), ``torch.save``; usually an empty dict
    torchscript:
      model.torchscript.pt   ``torch.jit.save`` of a scripted or traced module
    export:
      model.pt2              ``torch.export.save`` of an ``ExportedProgram``

**weights_only.** Tensor data is only ever read with ``torch.load(..., weights_only=True)``
(the default since torch 2.6, passed explicitly), so no tensor file of an artifact can run
code. The module's *structure* cannot be loaded that way: its class may be the user's own
(defined in ``__main__`` or a local file), so ``model.pkl`` is a cloudpickle, like
``func.pkl``, with the user's local modules pickled by value (see :mod:`.closure`) and each
tensor replaced by a reference into ``weights.pt``/``tensors.pt``. Unpickling it (and
``func.pkl``) runs code: a Schooner artifact is trusted as a whole, because our own deployer
wrote it — never load one from a source you would not run code from. ``weights.pt`` is a
plain ``state_dict``: ``model.load_state_dict(torch.load("weights.pt"))`` works elsewhere.

**Serving.** The model is loaded onto ``self.device`` (``cpu``, ``cuda``, ``cuda:N``), an
eager or TorchScript module is put in ``eval()`` mode (an exported program keeps the mode it
was exported in), and each batch is answered under ``torch.inference_mode()`` as
``func(model, inputs)``, as Clipper's PyTorch container called it. Unlike Clipper, whose
``func`` got numpy arrays, ``inputs`` is already a tensor on the device: a 2-D tensor (one
row per input) when every input has the same size — on the CPU it shares the received
request's memory (``torch.from_numpy``, no copy), so ``func`` must not modify it in place —,
a list of 1-D tensors when sizes differ, and the list of ``str`` for strings. The dtype
follows the input type (``doubles`` -> float64, ``floats`` -> float32, ``ints`` -> int32,
``bytes`` -> int8): cast to the model's (``inputs.float()``) in ``func``. A Clipper
function that called ``torch.from_numpy(x)`` works unchanged with ``torch.as_tensor(x)``.
For an exported program, ``model`` is ``program.module()``. Each output of ``func`` that is
not a ``str`` is turned into one as Clipper's container did with ``str(p)``, except that a
tensor or numpy value becomes the JSON of its ``tolist()`` (``0.25`` or ``[0.1, 0.9]``,
which the frontend returns as JSON) rather than ``tensor(0.2500)``.

**Devices.** ``cuda``/``cuda:N`` where torch sees no CUDA device (or fewer than N+1) is a
ConfigError at load, never a silent fall back to the CPU.

**Versions.** The manifest records the torch version the artifact was made with; ``load``
compares (major, minor) with the installed torch:

* eager and TorchScript: the same major version, and a minor version not newer than the
  installed one (state dicts load forward; TorchScript keeps operator upgraders for older
  files, not the other way around);
* export: the same major.minor — ``torch.export``'s serialized format carries no promise
  across releases.

Anything else is an IncompatibleArtifact naming both versions. ``func.pkl`` and
``model.pkl`` are pickled code, so the Python minor version must match (as for closures).
TorchScript is deprecated by PyTorch (2.x) in favour of ``torch.export``; it is accepted
for models that are already scripted, and its deprecation warnings are silenced here.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from schooner.frameworks import closure
from schooner.frameworks.artifact import MANIFEST_NAME, package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.runtime.errors import ArtifactError, ConfigError, IncompatibleArtifact, MissingExtra

__all__ = [
    "NAME",
    "FORMATS",
    "FUNC_FILE",
    "MODULE_FILE",
    "WEIGHTS_FILE",
    "TENSORS_FILE",
    "SCRIPT_FILE",
    "EXPORT_FILE",
    "save",
    "PyTorchFramework",
]

log = logging.getLogger(__name__)

NAME = "pytorch"
FUNC_FILE = closure.FUNC_FILE
MODULE_FILE = "model.pkl"
WEIGHTS_FILE = "weights.pt"
TENSORS_FILE = "tensors.pt"
SCRIPT_FILE = "model.torchscript.pt"
EXPORT_FILE = "model.pt2"
#: the kinds of model an artifact can hold -> the files that hold it
FORMATS: dict[str, tuple[str, ...]] = {
    "eager": (MODULE_FILE, WEIGHTS_FILE, TENSORS_FILE),
    "torchscript": (SCRIPT_FILE,),
    "export": (EXPORT_FILE,),
}

_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
_NOT_WRITABLE = "The given NumPy array is not writable"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtra(NAME, NAME, "torch") from exc
    return torch


# --------------------------------------------------------------------------- saving


def save(
    func: Callable[[Any, Any], Iterable[Any]],
    pytorch_model: Any,
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
) -> Path:
    """Write ``pytorch_model`` and ``func`` as an artifact directory and return its path.

    ``pytorch_model`` is an ``nn.Module`` (saved as its structure plus its state dict), a
    TorchScript module (``torch.jit.script``/``trace``) or a ``torch.export``
    ``ExportedProgram``; see the module docstring for the files each becomes.
    """
    torch = _import_torch()
    kind = _format_of(torch, pytorch_model)
    path = Path(directory).resolve()
    captured = closure.dump_func(func, path)
    if kind == "eager":
        captured = sorted({*captured, *_save_eager(torch, pytorch_model, path)})
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JIT_DEPRECATED, DeprecationWarning)
            torch.jit.save(pytorch_model, str(path / SCRIPT_FILE))
    else:
        torch.export.save(pytorch_model, str(path / EXPORT_FILE))
    return write_artifact(
        path,
        NAME,
        versions={"torch": torch.__version__, "cloudpickle": package_version("cloudpickle")},
        pkgs_to_install=pkgs_to_install,
        extra={
            "pytorch": {"format": kind, "files": list(FORMATS[kind])},
            "captured_modules": captured,
        },
    )


def _format_of(torch: Any, model: Any) -> str:
    if isinstance(model, torch.export.ExportedProgram):
        return "export"
    if isinstance(model, torch.jit.ScriptModule):  # before nn.Module: it is one too
        return "torchscript"
    if isinstance(model, torch.nn.Module):
        return "eager"
    raise TypeError(
        "pytorch_model must be a torch.nn.Module, a TorchScript module (torch.jit.script or "
        f"torch.jit.trace) or a torch.export.ExportedProgram, got {type(model).__name__}"
    )


def _save_eager(torch: Any, model: Any, path: Path) -> list[str]:
    """Write model.pkl, weights.pt and tensors.pt; return the local modules captured."""
    import cloudpickle

    state = model.state_dict()
    # Each tensor the structure reaches -> ("state", its state-dict key) for Parameters and
    # buffers, ("other", a new key) for the rest; by identity, with the objects kept alive
    # while pickling so that no id is reused.
    refs: dict[int, tuple[str, str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        refs.setdefault(id(tensor), ("state", key))
    others: dict[str, Any] = {}
    alive: list[Any] = []

    class StructurePickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if not isinstance(obj, torch.Tensor):
                return None
            ref = refs.get(id(obj))
            if ref is None:
                ref = refs[id(obj)] = ("other", f"tensor.{len(others)}")
                others[ref[1]] = obj.detach()
                alive.append(obj)
            return (*ref, isinstance(obj, torch.nn.Parameter), obj.requires_grad)

    captured = _local_modules_of(model)
    for module in captured:
        cloudpickle.register_pickle_by_value(module)
    try:
        buffer = io.BytesIO()
        StructurePickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(model)
    except Exception as exc:  # the pickler's many error types convert here, once
        raise ArtifactError(
            f"cannot pickle the structure of {type(model).__name__} ({type(exc).__name__}: "
            f"{exc}); every attribute of the module must be picklable. Alternatively deploy "
            "torch.export.export(model, example_inputs), which needs no pickling"
        ) from exc
    finally:
        for module in captured:
            cloudpickle.unregister_pickle_by_value(module)
    (path / MODULE_FILE).write_bytes(buffer.getvalue())
    torch.save(state, str(path / WEIGHTS_FILE))
    torch.save(others, str(path / TENSORS_FILE))
    return sorted(m.__name__ for m in captured)


def _local_modules_of(model: Any) -> list[Any]:
    """The user's local modules that the classes of ``model`` and its submodules reach."""
    found: dict[str, Any] = {}
    for cls in {type(m) for m in model.modules()}:
        for module in closure.local_modules(cls):
            found.setdefault(module.__name__, module)
    return list(found.values())


# --------------------------------------------------------------------------- serving


class PyTorchFramework(Framework):
    name = NAME
    extra = NAME
    devices = ("cpu", "cuda")
    base_image = NAME
    requires = ("torch>=2.6,<3",)

    def load(self) -> None:
        torch = _import_torch()
        self._torch = torch
        info = self.artifact.manifest.get("pytorch") or {}
        kind = str(info.get("format", ""))
        if kind not in FORMATS:
            raise ArtifactError(
                f"{self.artifact.path / MANIFEST_NAME} names no PyTorch model format "
                f"(pytorch.format={kind!r}; expected one of {', '.join(FORMATS)})"
            )
        self.format = kind
        device = self._device_obj = self._device(torch)
        self._check_version(torch, kind)
        self.func = closure.load_func(self.artifact)  # checks Python and cloudpickle first
        if kind == "eager":
            self.model = self._load_eager(torch, device)
        elif kind == "torchscript":
            self.model = self._load_torchscript(torch, device)
        else:
            self.model = self._load_export(torch, device)
        log.info("loaded a %s PyTorch model (%s) on %s with torch %s", kind,
                 type(self.model).__name__, device, torch.__version__)  # fmt: skip

    def predict(self, batch: Batch) -> Sequence[str]:
        with self._torch.inference_mode():
            preds = self.func(self.model, self._tensors(batch))
            return _texts(preds)

    # ------------------------------------------------------------------ loading

    def _device(self, torch: Any) -> Any:
        """``self.device`` as a torch device; ConfigError where that device does not exist."""
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError([f"SCHOONER_DEVICE={self.device}: {exc}"]) from exc
        if device.type == "cpu":
            return device
        if device.type != "cuda":
            raise ConfigError([f"SCHOONER_DEVICE={self.device}: use cpu, cuda or cuda:N"])
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"built for CUDA {torch.version.cuda}")  # fmt: skip
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: torch {torch.__version__} ({build}) sees no "
                "CUDA device (torch.cuda.is_available() is False); run on a machine with a GPU "
                "and a CUDA build of torch, or use SCHOONER_DEVICE=cpu"
            ])  # fmt: skip
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: no such CUDA device; torch sees {count} "
                f"(cuda:0 to cuda:{count - 1})"
            ])  # fmt: skip
        return torch.device("cuda", index)

    def _check_version(self, torch: Any, kind: str) -> None:
        made = str(self.artifact.manifest.get("versions", {}).get("torch") or "")
        here = str(torch.__version__)
        m, h = _major_minor(made), _major_minor(here)
        if m is None or h is None:
            raise IncompatibleArtifact(
                f"{self.artifact.path} does not record the torch version it was made with "
                f"(versions.torch={made!r}); redeploy it with this Schooner"
            )
        if kind == "export":
            ok = m == h
            rule = "an exported program loads only on the torch major.minor that saved it"
        else:
            ok = m[0] == h[0] and m[1] <= h[1]
            rule = (f"a {kind} model loads on the same torch major version, not older than "
                    "the one that saved it")  # fmt: skip
        if not ok:
            raise IncompatibleArtifact(
                f"{self.artifact.path} holds a {kind} model saved with torch {made}; this "
                f"container has torch {here} and {rule}. Redeploy from torch "
                f"{h[0]}.{h[1]}, or run a base image with torch {m[0]}.{m[1]}."
            )

    def _load_tensors(self, torch: Any, name: str, device: Any) -> Any:
        target = self.artifact.file(name)
        try:
            return torch.load(str(target), map_location=device, weights_only=True)
        except Exception as exc:  # torch.load's error types convert here, once
            raise ArtifactError(f"cannot load {target} with torch {torch.__version__}: "
                                f"{type(exc).__name__}: {exc}") from exc  # fmt: skip

    def _load_eager(self, torch: Any, device: Any) -> Any:
        tensors = {
            "state": self._load_tensors(torch, WEIGHTS_FILE, device),
            "other": self._load_tensors(torch, TENSORS_FILE, device),
        }
        made: dict[tuple[str, str], Any] = {}

        class StructureUnpickler(closure.ArtifactUnpickler):
            def persistent_load(self, pid: Any) -> Any:
                where, key, is_parameter, requires_grad = pid
                if (where, key) not in made:
                    tensor = tensors[where][key]
                    made[(where, key)] = (
                        torch.nn.Parameter(tensor, requires_grad=requires_grad) if is_parameter
                        else tensor.requires_grad_(requires_grad)
                    )  # fmt: skip
                return made[(where, key)]

        target = self.artifact.file(MODULE_FILE)
        try:
            model = StructureUnpickler(
                io.BytesIO(target.read_bytes()), self.artifact.load_id
            ).load()
        except Exception as exc:  # unpickling is the boundary where foreign errors convert
            raise IncompatibleArtifact(
                f"cannot unpickle {target} ({type(exc).__name__}: {exc}); it was made with "
                f"torch {self.artifact.manifest.get('versions', {}).get('torch')}, this "
                f"container has {torch.__version__}. A missing module usually means a "
                "package absent from pkgs_to_install."
            ) from exc
        if not isinstance(model, torch.nn.Module):
            raise ArtifactError(f"{target} does not hold a torch.nn.Module")
        return model.to(device).eval()

    def _load_torchscript(self, torch: Any, device: Any) -> Any:
        target = self.artifact.file(SCRIPT_FILE)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _JIT_DEPRECATED, DeprecationWarning)
                model = torch.jit.load(str(target), map_location=device)
        except Exception as exc:  # TorchScript's load errors convert here, once
            raise IncompatibleArtifact(self._cannot_load(torch, target, exc)) from exc
        return model.eval()

    def _load_export(self, torch: Any, device: Any) -> Any:
        from torch.export.passes import move_to_device_pass

        target = self.artifact.file(EXPORT_FILE)
        try:
            program = torch.export.load(str(target))
        except Exception as exc:  # torch.export's load errors convert here, once
            raise IncompatibleArtifact(self._cannot_load(torch, target, exc)) from exc
        # constants and weights the graph holds move too, whatever device it was saved from
        return move_to_device_pass(program, device).module()

    def _cannot_load(self, torch: Any, target: Path, exc: Exception) -> str:
        made = self.artifact.manifest.get("versions", {}).get("torch")
        return (f"torch {torch.__version__} cannot load {target} (saved with torch {made}): "
                f"{type(exc).__name__}: {exc}")  # fmt: skip

    # ------------------------------------------------------------------ predicting

    def _tensors(self, batch: Batch) -> Any:
        """The batch as tensors on the device (strings stay a list of str)."""
        import numpy as np

        if isinstance(batch, np.ndarray):
            return self._tensor(batch)
        if isinstance(batch, list) and batch and isinstance(batch[0], np.ndarray):
            return [self._tensor(item) for item in batch]
        return batch

    def _tensor(self, array: Any) -> Any:
        torch = self._torch
        if array.flags.writeable:
            tensor = torch.from_numpy(array)
        else:
            # A view of the received request (read-only bytes): shared, not copied; the
            # module docstring tells func not to write to its inputs.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _NOT_WRITABLE, UserWarning)
                tensor = torch.from_numpy(array)
        return tensor.to(self._device_obj)


def _texts(preds: Any) -> Any:
    """One str per output, as Clipper's container made them (``str(p)``), except that
    tensors and numpy values become the JSON of their ``tolist()``; a tensor of outputs is
    converted at once (one copy from the device, not one per input). Anything that is not a
    sequence of outputs is returned as it is, for the runtime to report."""
    if isinstance(preds, (str, bytes)):
        return preds
    tolist = getattr(preds, "tolist", None)
    if callable(tolist):
        preds = tolist()
        if not isinstance(preds, list):
            return preds
        return [p if isinstance(p, str) else json.dumps(p) for p in preds]
    if not isinstance(preds, Iterable):
        return preds
    return [_text(p) for p in preds]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json.dumps(tolist())
    return str(value)


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None

"""MXNet 1.9 models: a symbol and its parameters, served through the Module API.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`)::

    func.pkl                   the user's function, cloudpickled (as :mod:`.closure` does)
    mxnet_model-symbol.json    the network, as ``save_checkpoint(prefix, epoch=0)`` names it
    mxnet_model-0000.params    its parameters (``arg:``/``aux:`` prefixed NDArrays)

The manifest's ``mxnet`` entry records the data shapes the model is bound with
(``{"data_shapes": [{"name": "data", "shape": [1, 784], ...}]}``) and ``versions.mxnet``
the MXNet version that wrote the checkpoint (read from the symbol file, which records it).

What ``save`` accepts as ``mxnet_model``:

* an ``mx.mod.Module`` (anything with ``save_checkpoint``): saved with
  ``save_checkpoint(prefix, 0)``, as Clipper did;
* a Gluon ``HybridBlock``, hybridized and run once: saved with ``export(prefix, 0)``;
* an existing checkpoint: ``(prefix, epoch)``, or a prefix alone for epoch 0. Its two files
  are copied and **MXNet is not imported**, so a model trained elsewhere can be deployed
  from an environment without MXNet (MXNet 1.9.1 needs numpy < 1.24 and cannot be installed
  beside most of today's libraries).

``mxnet_data_shapes`` takes Clipper's forms: a list of ``DataDesc`` (or ``(name, shape)``
pairs, or ``{"name":…, "shape":…}`` dicts), a ``{name: shape}`` mapping, or one shape as a
list of ints (the input is then called ``data``).

Loading (in the container): ``mx.model.load_checkpoint``, then a ``Module`` over the symbol
with the recorded inputs as ``data_names`` and its other non-parameter inputs (a
``SoftmaxOutput``'s ``softmax_label``) as ``label_names``, bound with ``for_training=False``
and the recorded shapes (label shapes inferred from them), parameters set. The user
function is called as ``func(model, inputs)`` with that Module, like Clipper's MXNet
container, and each output is turned into ``str``. ``Module.forward`` reshapes the
executor when a batch's size differs from the bound one, except for a network with label
inputs: there, bind batch size 1 and predict with ``mx.io.NDArrayIter(inputs,
batch_size=1)`` (Clipper's advice), or reshape with label shapes yourself.

Versions: MXNet loads checkpoints written by older releases (it upgrades the symbol JSON)
but promises nothing the other way, so loading refuses (IncompatibleArtifact) a checkpoint
made by another major version or a newer minor one than the installed MXNet.

Numpy: the replicas run with numpy 1.23 while the function is usually pickled under numpy 2,
whose pickles name ``numpy._core``. While ``func.pkl`` is unpickled under numpy 1, that name
is aliased to ``numpy.core`` (what numpy 1.26 itself added for the same reason), so a
function that captured arrays still loads.

Device (``self.device``): ``cpu`` binds on ``mx.cpu()``; ``cuda`` / ``cuda:N`` on
``mx.gpu(N)`` (0 by default), a ConfigError when MXNet sees no such GPU (the ``mxnet``
wheel on PyPI is CPU-only: a GPU needs a CUDA build such as ``mxnet-cu112``). ``Module``
copies each batch to the bound device itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schooner.frameworks import closure
from schooner.frameworks.artifact import package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.runtime.errors import (
    ArtifactError,
    ConfigError,
    FrameworkError,
    IncompatibleArtifact,
    MissingExtra,
)

__all__ = [
    "NAME", "FUNC_FILE", "MODEL_PREFIX", "SYMBOL_FILE", "PARAMS_FILE",
    "save", "data_shapes", "MXNetFramework",
]  # fmt: skip

log = logging.getLogger(__name__)

NAME = "mxnet"
FUNC_FILE = closure.FUNC_FILE
MODEL_PREFIX = "mxnet_model"
EPOCH = 0
SYMBOL_FILE = f"{MODEL_PREFIX}-symbol.json"
PARAMS_FILE = f"{MODEL_PREFIX}-{EPOCH:04d}.params"

# --------------------------------------------------------------------------- saving


def save(
    func: Callable[[Any, Batch], Sequence[Any]],
    mxnet_model: Any,
    mxnet_data_shapes: Any,
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
) -> Path:
    """Write ``func`` and ``mxnet_model`` bound with ``mxnet_data_shapes`` (see the module
    docstring for the forms both may take) as an artifact directory; returns its path."""
    shapes = data_shapes(mxnet_data_shapes)
    path = Path(directory).resolve()
    captured = closure.dump_func(func, path)
    for stale in (SYMBOL_FILE, PARAMS_FILE):
        (path / stale).unlink(missing_ok=True)
    _save_model(mxnet_model, path / MODEL_PREFIX)
    version = _checkpoint_version(path / SYMBOL_FILE) or package_version("mxnet")
    return write_artifact(
        path,
        NAME,
        versions={"mxnet": version, "cloudpickle": package_version("cloudpickle")},
        pkgs_to_install=pkgs_to_install,
        extra={"captured_modules": captured, NAME: {"data_shapes": shapes}},
    )


def _save_model(model: Any, prefix: Path) -> None:
    if isinstance(model, str | os.PathLike):
        _copy_checkpoint(Path(model), EPOCH, prefix)
    elif isinstance(model, tuple):
        if len(model) != 2 or not isinstance(model[0], str | os.PathLike):
            raise TypeError(f"a checkpoint is given as (prefix, epoch), got {model!r}")
        _copy_checkpoint(Path(model[0]), int(model[1]), prefix)
    elif callable(getattr(model, "save_checkpoint", None)):  # mx.mod.Module and kin
        model.save_checkpoint(str(prefix), EPOCH)
    elif callable(getattr(model, "export", None)) and hasattr(model, "hybridize"):
        model.export(str(prefix), epoch=EPOCH)  # a Gluon HybridBlock
    else:
        raise TypeError(
            "mxnet_model must be an mx.mod.Module, a hybridized Gluon HybridBlock, or an "
            f"existing checkpoint as a prefix or (prefix, epoch); got {type(model).__name__}"
        )
    for name in (f"{prefix}-symbol.json", f"{prefix}-{EPOCH:04d}.params"):
        if not Path(name).is_file():
            raise ArtifactError(f"saving the MXNet model did not write {name}")


def _copy_checkpoint(source: Path, epoch: int, prefix: Path) -> None:
    symbol = Path(f"{source}-symbol.json")
    params = Path(f"{source}-{epoch:04d}.params")
    missing = [str(p) for p in (symbol, params) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"no MXNet checkpoint {source} at epoch {epoch}: missing {', '.join(missing)}"
        )
    shutil.copyfile(symbol, f"{prefix}-symbol.json")
    shutil.copyfile(params, f"{prefix}-{EPOCH:04d}.params")


def _checkpoint_version(symbol_file: Path) -> str | None:
    """The MXNet version a symbol file records (``"attrs": {"mxnet_version": ["int", 10901]}``)."""
    try:
        attrs = json.loads(symbol_file.read_text()).get("attrs", {})
        number = int(attrs["mxnet_version"][1])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def data_shapes(shapes: Any) -> list[dict[str, Any]]:
    """``mxnet_data_shapes`` in any of Clipper's forms, as JSON-ready input descriptions."""
    if hasattr(shapes, "name") and hasattr(shapes, "shape"):  # one mx.io.DataDesc
        shapes = [shapes]
    if isinstance(shapes, Mapping):
        items: list[Any] = [(name, shape) for name, shape in shapes.items()]
    elif isinstance(shapes, Sequence) and not isinstance(shapes, str | bytes):
        items = list(shapes)
    else:
        raise TypeError(f"mxnet_data_shapes must be a list or a mapping, got {shapes!r}")
    if items and all(_is_int(d) for d in items):  # one shape, as in Clipper's first deployer
        items = [("data", items)]
    if not items:
        raise ValueError("mxnet_data_shapes is empty: name at least one input and its shape")
    described = [_describe(item) for item in items]
    names = [d["name"] for d in described]
    if len(set(names)) != len(names):
        raise ValueError(f"mxnet_data_shapes names an input twice: {names}")
    return described


def _describe(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        name, shape = item.get("name"), item.get("shape")
        dtype, layout = item.get("dtype"), item.get("layout")
    elif hasattr(item, "name") and hasattr(item, "shape"):  # mx.io.DataDesc
        name, shape = item.name, item.shape
        dtype, layout = getattr(item, "dtype", None), getattr(item, "layout", None)
    elif isinstance(item, Sequence) and len(item) == 2:
        (name, shape), dtype, layout = item, None, None
    else:
        raise TypeError(f"cannot read an input description from {item!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"an input name must be a non-empty str, got {name!r}")
    if not (isinstance(shape, Sequence) and shape and all(_is_int(n) and n > 0 for n in shape)):
        raise ValueError(f"the shape of input {name!r} must be positive ints, got {shape!r}")
    described: dict[str, Any] = {"name": name, "shape": [int(n) for n in shape]}
    if dtype is not None:
        import numpy as np

        described["dtype"] = np.dtype(dtype).name
    if layout is not None:
        described["layout"] = str(layout)
    return described


def _is_int(value: Any) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool)


# --------------------------------------------------------------------------- loading


class MXNetFramework(Framework):
    name = NAME
    extra = NAME
    devices = ("cpu", "cuda")
    base_image = NAME
    #: what an interpreter needs to load an MXNet artifact (the local manager builds an
    #: environment from ``base_images/mxnet/requirements.txt`` when this one lacks it)
    requires = ("mxnet>=1.9,<2", "numpy<1.24")  # np.bool & co. went in 1.24

    def load(self) -> None:
        mx = _import_mxnet()
        self._check_version(mx.__version__)
        context = _context(mx, self.device)
        with _numpy2_pickles():
            self.func = closure.load_func(self.artifact)
        self.model = self._bind(mx, context)
        log.info("MXNet %s model bound on %s with %s", mx.__version__, context,
                 self.artifact.manifest[NAME]["data_shapes"])  # fmt: skip

    def predict(self, batch: Batch) -> Sequence[str]:
        return [str(p) for p in self.func(self.model, batch)]

    def _check_version(self, here: str) -> None:
        made = self.artifact.manifest.get("versions", {}).get("mxnet")
        if not made:
            log.warning("%s does not record the MXNet version that made it", self.artifact.path)
            return
        if not _loads(str(made), here):
            raise IncompatibleArtifact(
                f"{self.artifact.path} holds an MXNet {made} checkpoint; this environment has "
                f"MXNet {here}, which loads checkpoints of MXNet {_major_minor(here)[0]}.x up to "
                f"{'.'.join(map(str, _major_minor(here)))}. Run it with MXNet {made} "
                f"(pip install mxnet=={made}) or re-save the model with MXNet {here}."
            )

    def _bind(self, mx: Any, context: Any) -> Any:
        described = self.artifact.manifest.get(NAME, {}).get("data_shapes")
        if not described:
            raise ArtifactError(f"{self.artifact.path}: the manifest records no MXNet data shapes")
        self.artifact.file(SYMBOL_FILE)
        self.artifact.file(PARAMS_FILE)
        prefix = str(self.artifact.path / MODEL_PREFIX)
        try:
            symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, EPOCH)
            descs = [
                mx.io.DataDesc(d["name"], tuple(d["shape"]), d.get("dtype", "float32"),
                               d.get("layout", "NCHW"))
                for d in described
            ]  # fmt: skip
            arguments = symbol.list_arguments()
            data_names = [d.name for d in descs]
            unknown = [n for n in data_names if n not in arguments]
            if unknown:
                raise ArtifactError(
                    f"{self.artifact.path}: the data shapes name inputs {unknown} that the "
                    f"network does not have; its inputs are "
                    f"{[a for a in arguments if a not in arg_params]}"
                )
            label_names = [a for a in arguments if a not in arg_params and a not in data_names]
            module = mx.mod.Module(symbol=symbol, data_names=data_names,
                                   label_names=label_names, context=context)  # fmt: skip
            module.bind(data_shapes=descs, label_shapes=_label_shapes(symbol, descs, label_names),
                        for_training=False)  # fmt: skip
            module.set_params(arg_params, aux_params)
        except ArtifactError:
            raise
        except Exception as exc:  # MXNet's own errors, converted once here
            raise ArtifactError(
                f"cannot load the MXNet model in {self.artifact.path}: {type(exc).__name__}: {exc}"
            ) from exc
        return module


def _import_mxnet() -> Any:
    try:
        import mxnet as mx
    except ImportError as exc:
        raise MissingExtra(NAME, NAME, "mxnet") from exc
    except Exception as exc:  # e.g. mxnet 1.9 under numpy 2: AttributeError on np.bool
        raise FrameworkError(
            f"mxnet {package_version('mxnet')} failed to import ({type(exc).__name__}: {exc}); "
            f"MXNet 1.9 needs numpy<1.24 and this environment has numpy {package_version('numpy')}: "
            "run MXNet models in the environment of base image 'mxnet' "
            "(base_images/mxnet/requirements.txt), as the local manager does"
        ) from exc
    return mx


def _context(mx: Any, device: str) -> Any:
    if device == "cpu":
        return mx.cpu()
    index = int(device.partition(":")[2] or 0)
    try:
        count = int(mx.context.num_gpus())
    except Exception as exc:  # a CUDA build without a usable driver raises here
        log.warning("MXNet cannot count GPUs: %s", exc)
        count = 0
    if index >= count:
        seen = f"sees {count} GPU(s)" if count else "sees no GPU"
        raise ConfigError([
            f"SCHOONER_DEVICE={device}: MXNet {mx.__version__} {seen}. The mxnet wheel from PyPI "
            "is CPU-only; a GPU needs a CUDA build (e.g. mxnet-cu112) and a visible device."
        ])  # fmt: skip
    return mx.gpu(index)


def _label_shapes(symbol: Any, descs: Sequence[Any], label_names: Sequence[str]) -> Any:
    """Shapes of the label inputs as inferred from the data shapes, or None when unknown."""
    if not label_names:
        return None
    arg_shapes, _, _ = symbol.infer_shape_partial(**{d.name: d.shape for d in descs})
    if arg_shapes is None:
        return None
    known = dict(zip(symbol.list_arguments(), arg_shapes))
    shapes = [(n, tuple(known.get(n) or ())) for n in label_names]
    if any(not s or 0 in s for _, s in shapes):
        return None
    return shapes


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _loads(made: str, here: str) -> bool:
    """Whether MXNet ``here`` loads a checkpoint written by MXNet ``made``."""
    (made_major, made_minor), (here_major, here_minor) = _major_minor(made), _major_minor(here)
    return made_major == here_major and made_minor <= here_minor


@contextmanager
def _numpy2_pickles() -> Iterator[None]:
    """Let numpy 1 unpickle arrays pickled by numpy 2 (which names ``numpy._core``)."""
    if importlib.util.find_spec("numpy._core") is not None:  # numpy >= 1.26
        yield
        return
    importlib.import_module("numpy.core.multiarray")  # the modules numpy 2 pickles name
    importlib.import_module("numpy.core.numeric")

    aliases = {
        "numpy._core" + name[len("numpy.core"):]: module
        for name, module in list(sys.modules.items())
        if name == "numpy.core" or name.startswith("numpy.core.")
    }
    added = [name for name in aliases if name not in sys.modules]
    sys.modules.update({name: aliases[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)

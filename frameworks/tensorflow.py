"""TensorFlow models: a ``tf.compat.v1`` Session, a SavedModel, a frozen graph or a Keras model.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`)::

    func.pkl                      the user's function, cloudpickled (as :mod:`.closure` does)
    tfmodel/                      the model, in one of these forms (manifest ``tensorflow.kind``):
        model.ckpt.meta           "checkpoint": the graph (a MetaGraphDef) ...
        model.ckpt.index          ... and its variables; absent when the graph has none
        model.ckpt.data-*         (a Session, saved with ``tf.compat.v1.train.Saver``, or
                                  a checkpoint directory the user gave)
        saved_model.pb, variables/, assets/
                                  "saved_model": a SavedModel directory, copied as given
        frozen_graph.pb           "frozen_graph": a GraphDef with its variables as constants
        model.keras               "keras": a Keras 3 model (``model.save``), or a given
                                  ``.keras``/``.h5`` file (kept under its own suffix)

What ``save`` accepts as ``model`` and what the user function gets at predict time, called
as ``func(model, inputs)`` like Clipper's TensorFlow container (``func(sess, inputs)``):

=============================================  ==============  =============================
``model``                                      kind            ``func`` receives
=============================================  ==============  =============================
a ``tf.compat.v1.Session`` (or Interactive-)   checkpoint      a new Session on the restored
                                                               graph: ``sess.run("y:0", ...)``
a directory holding ``*.meta`` + checkpoint    checkpoint      the same
a directory holding ``saved_model.pb``         saved_model     what ``tf.saved_model.load``
                                                               returns (call it or use
                                                               ``.signatures``)
a ``tf.Module`` (not Keras)                    saved_model     the same (saved with
                                                               ``tf.saved_model.save``)
a ``.pb`` file (a frozen ``GraphDef``)         frozen_graph    a Session on a graph imported
                                                               with ``name=""``, so tensor
                                                               names are the original ones
a ``keras.Model`` or a ``.keras``/``.h5`` file keras           the Keras model
=============================================  ==============  =============================

Like Clipper (which told a Session from a path with ``isinstance(x, Session)``), a Session
is recognised by type, anything else by what the path holds. Each output of ``func`` is
turned into ``str`` (Clipper's container did the same), so returning numbers is fine.

Versions: the manifest records ``tensorflow`` and ``keras`` as installed when saving, and,
for a SavedModel or Keras file given as a path, the version that wrote it. TensorFlow
loads SavedModels, checkpoints and graphs written by older releases but not the reverse,
so loading refuses (IncompatibleArtifact) an artifact made with a newer major.minor than
the one installed; older ones load. Keras files follow the same rule against ``keras``.

Keras files are loaded with ``compile=False`` (serving needs no optimizer or loss) and
``safe_mode=False``: the artifact was written by Schooner's deployer and already holds
pickled code (``func.pkl``), so refusing its ``Lambda`` layers would protect nothing.

Device (``self.device``): ``cpu`` hides every GPU from TensorFlow
(``tf.config.set_visible_devices([], "GPU")``); ``cuda`` / ``cuda:N`` makes GPU N (0 by
default) the only visible one, with memory growth on, and is a ConfigError when
TensorFlow sees no such GPU (``tensorflow-cpu`` sees none). Soft placement is on, so an
op without a GPU kernel runs on the CPU. When TensorFlow was already initialised in this
process (in-process use, not a container), the visible devices cannot change any more;
the model is then placed with a ``tf.device`` scope instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schooner.frameworks import closure
from schooner.frameworks.artifact import package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.runtime.errors import ArtifactError, ConfigError, IncompatibleArtifact, MissingExtra

__all__ = ["NAME", "FUNC_FILE", "MODEL_DIR", "KINDS", "save", "TensorFlowFramework"]

log = logging.getLogger(__name__)

NAME = "tensorflow"
FUNC_FILE = closure.FUNC_FILE
MODEL_DIR = "tfmodel"
CHECKPOINT_PREFIX = "model.ckpt"
FROZEN_GRAPH_FILE = "frozen_graph.pb"
KERAS_FILE = "model.keras"
KINDS = ("checkpoint", "saved_model", "frozen_graph", "keras")

# --------------------------------------------------------------------------- saving


def save(
    func: Callable[[Any, Batch], Sequence[Any]],
    model: Any,
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
) -> Path:
    """Write ``func`` and ``model`` (see the module docstring for what it may be) as an
    artifact directory and return its path."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingExtra(NAME, NAME, "tensorflow") from exc
    path = Path(directory).resolve()
    captured = closure.dump_func(func, path)
    target = path / MODEL_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    info = _save_model(tf, model, target)
    return write_artifact(
        path,
        NAME,
        versions={
            "tensorflow": tf.__version__,
            "keras": package_version("keras"),
            "cloudpickle": package_version("cloudpickle"),
        },
        pkgs_to_install=pkgs_to_install,
        extra={"tensorflow": info, "captured_modules": captured},
    )


def _save_model(tf: Any, model: Any, target: Path) -> dict[str, Any]:
    """Write ``model`` under ``target``; returns the manifest's ``tensorflow`` section."""
    sessions = (tf.compat.v1.Session, tf.compat.v1.InteractiveSession)
    if isinstance(model, sessions):
        return _save_session(tf, model, target)
    keras = sys.modules.get("keras")  # a Keras model exists only once keras was imported
    if keras is not None and isinstance(model, keras.Model):
        model.save(target / KERAS_FILE)
        return {"kind": "keras", "file": KERAS_FILE, "source": "keras.Model", "made_with": {}}
    if isinstance(model, tf.Module):
        tf.saved_model.save(model, str(target))
        return {"kind": "saved_model", "file": ".", "source": "tf.Module", "made_with": {}}
    if isinstance(model, str | Path):
        return _copy_path(tf, Path(model), target)
    raise TypeError(
        "tf_sess_or_saved_model_path must be a tf.compat.v1.Session, a keras.Model, a "
        "tf.Module, or the path of a SavedModel directory, a checkpoint directory, a frozen "
        f"graph (.pb) or a Keras file (.keras, .h5); got {type(model).__name__}"
    )


def _save_session(tf: Any, sess: Any, target: Path) -> dict[str, Any]:
    """Clipper's format: the session's graph as a meta graph plus a checkpoint.

    The Saver adds its save/restore ops to the session's graph (as Clipper's did).
    """
    prefix = target / CHECKPOINT_PREFIX
    with sess.graph.as_default():
        if tf.compat.v1.global_variables():
            saver = tf.compat.v1.train.Saver()
            saver.save(sess, str(prefix))  # writes .meta, .index, .data-*, checkpoint
            variables = True
        else:  # nothing to checkpoint: the graph alone
            tf.compat.v1.train.export_meta_graph(str(prefix) + ".meta", graph=sess.graph)
            variables = False
    return {
        "kind": "checkpoint", "file": CHECKPOINT_PREFIX, "variables": variables,
        "source": "tf.compat.v1.Session", "made_with": {},
    }  # fmt: skip


def _copy_path(tf: Any, source: Path, target: Path) -> dict[str, Any]:
    if not source.exists():
        raise ArtifactError(f"TensorFlow model {source} does not exist")
    if source.is_dir():
        if (source / "saved_model.pb").is_file() or (source / "saved_model.pbtxt").is_file():
            shutil.copytree(source, target, dirs_exist_ok=True)
            made = _saved_model_tf_version(source)
            return {
                "kind": "saved_model", "file": ".", "source": str(source),
                "made_with": {"tensorflow": made} if made else {},
            }  # fmt: skip
        prefix = _checkpoint_prefix(tf, source)
        if prefix is not None:
            variables = False
            for file in source.iterdir():
                if file.name.startswith(prefix.name + ".") and file.is_file():
                    suffix = file.name.removeprefix(prefix.name)
                    shutil.copyfile(file, target / (CHECKPOINT_PREFIX + suffix))
                    variables = variables or suffix == ".index"
            return {
                "kind": "checkpoint", "file": CHECKPOINT_PREFIX, "variables": variables,
                "source": str(source), "made_with": {},
            }  # fmt: skip
        raise ArtifactError(
            f"{source} is neither a SavedModel (no saved_model.pb) nor a checkpoint directory "
            "(no *.meta graph); pass a frozen graph as the path of its .pb file"
        )
    suffix = source.suffix.lower()
    if suffix == ".pb":
        shutil.copyfile(source, target / FROZEN_GRAPH_FILE)
        return {"kind": "frozen_graph", "file": FROZEN_GRAPH_FILE, "source": str(source),
                "made_with": {}}  # fmt: skip
    if suffix in (".keras", ".h5"):
        name = "model" + suffix
        shutil.copyfile(source, target / name)
        made = _keras_file_version(source)
        return {"kind": "keras", "file": name, "source": str(source),
                "made_with": {"keras": made} if made else {}}  # fmt: skip
    raise ArtifactError(
        f"{source}: a TensorFlow model file must be a frozen graph (.pb) or a Keras file "
        "(.keras, .h5); directories may hold a SavedModel or a checkpoint"
    )


def _checkpoint_prefix(tf: Any, directory: Path) -> Path | None:
    """The newest checkpoint in ``directory`` that has a ``.meta`` graph, if any."""
    latest = tf.train.latest_checkpoint(str(directory))
    if latest and Path(latest + ".meta").is_file():
        return Path(latest)
    metas = sorted(directory.glob("*.meta"), key=lambda p: p.stat().st_mtime)
    return metas[-1].with_suffix("") if metas else None


def _saved_model_tf_version(directory: Path) -> str | None:
    """The TensorFlow version recorded in a SavedModel's meta graphs (the newest one)."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = directory / "saved_model.pb"
    if not pb.is_file():
        return None
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(pb.read_bytes())
    except Exception:  # a damaged file fails later, at load, with TensorFlow's own message
        return None
    versions = [m.meta_info_def.tensorflow_version for m in proto.meta_graphs]
    versions = [v for v in versions if v]
    return max(versions, key=_major_minor) if versions else None


def _keras_file_version(file: Path) -> str | None:
    """The Keras version recorded in a ``.keras`` file (None for ``.h5`` or if unreadable)."""
    try:
        with zipfile.ZipFile(file) as zf:
            meta = json.loads(zf.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return str(version) if version else None


def _major_minor(version: str) -> tuple[int, int]:
    """(major, minor) of a version string; (0, 0) if it has none."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    return (int(match[1]), int(match[2] or 0)) if match else (0, 0)


# --------------------------------------------------------------------------- loading


class TensorFlowFramework(Framework):
    name = NAME
    extra = NAME
    devices = ("cpu", "cuda")
    base_image = NAME
    # The extra's distribution. An environment with the CUDA build ("tensorflow") does not
    # meet it by name; see the base image's requirements for the CUDA variant.
    requires = ("tensorflow-cpu>=2.16,<3 | tensorflow>=2.16,<3",)

    def load(self) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise MissingExtra(self.name, NAME, "tensorflow") from exc
        info = self.artifact.manifest.get("tensorflow")
        if not isinstance(info, dict) or info.get("kind") not in KINDS:
            raise ArtifactError(
                f"{self.artifact.path}: the manifest's tensorflow section is missing or names "
                f"no known kind ({', '.join(KINDS)})"
            )
        kind = str(info["kind"])
        self._tf = tf
        self._check_version("tensorflow", tf.__version__, info)
        self._scope = self._configure_devices(tf)
        # The function second: unpickling it may touch TensorFlow, which fixes the devices.
        self.func = closure.load_func(self.artifact)
        file = str(info.get("file") or ".")
        if kind == "keras":
            location = self.artifact.file(f"{MODEL_DIR}/{file}")
            self.model = self._load_keras(tf, location, info)
        elif kind == "saved_model":
            with self._placed(tf):
                self.model = tf.saved_model.load(str(self.artifact.file(MODEL_DIR)))
        elif kind == "frozen_graph":
            self.model = self._load_frozen_graph(tf, self.artifact.file(f"{MODEL_DIR}/{file}"))
        else:  # checkpoint: ``file`` is the prefix of its files
            self.model = self._load_checkpoint(
                tf, self.artifact.path / MODEL_DIR / file, bool(info.get("variables", True))
            )
        log.info("loaded a TensorFlow %s model (TensorFlow %s, device %s)", kind,
                 tf.__version__, self.device)  # fmt: skip

    def predict(self, batch: Batch) -> Sequence[str]:
        with self._placed(self._tf):
            outputs = self.func(self.model, batch)
        return [str(p) for p in outputs]

    # ------------------------------------------------------------------ helpers

    def _check_version(self, package: str, here: str, info: dict[str, Any]) -> None:
        """Refuse artifacts made with a newer major.minor of ``package`` than ``here``."""
        made_list = [
            str(self.artifact.manifest.get("versions", {}).get(package) or ""),
            str(info.get("made_with", {}).get(package) or ""),
        ]
        for made in filter(None, made_list):
            if _major_minor(made) > _major_minor(here):
                raise IncompatibleArtifact(
                    f"{self.artifact.path} holds a model made with {package} {made}; this "
                    f"container has {package} {here}, which cannot load models from newer "
                    f"releases. Install {package}>={'.'.join(made.split('.')[:2])} in the "
                    f"container's environment, or redeploy from {package} {here}."
                )

    def _placed(self, tf: Any) -> contextlib.AbstractContextManager[Any]:
        """The ``tf.device`` scope when visible devices could not be set, else nothing
        (a scope costs ~0.5 ms per Keras call)."""
        return tf.device(self._scope) if self._scope else contextlib.nullcontext()

    def _configure_devices(self, tf: Any) -> str | None:
        """Make only the configured device visible; returns the ``tf.device`` scope that
        is needed instead when TensorFlow was already initialised, else None."""
        gpus = tf.config.list_physical_devices("GPU")
        scope: str | None = None
        if self.device == "cpu":
            if gpus:
                try:
                    tf.config.set_visible_devices([], "GPU")
                except RuntimeError:  # TensorFlow already initialised (in-process use)
                    scope = "/CPU:0"
                    log.warning("TensorFlow already initialised: placing the model on the "
                                "CPU with tf.device instead of hiding the GPUs")  # fmt: skip
            tf.config.set_soft_device_placement(True)
            return scope
        index = int(self.device.partition(":")[2] or 0)
        if not gpus:
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: TensorFlow {tf.__version__} sees no GPU "
                f"(built with CUDA: {tf.test.is_built_with_cuda()}; tensorflow-cpu never sees "
                "one: install tensorflow[and-cuda] for CUDA)"
            ])  # fmt: skip
        if index >= len(gpus):
            raise ConfigError([
                f"SCHOONER_DEVICE={self.device}: TensorFlow sees {len(gpus)} GPU(s), "
                f"numbered 0 to {len(gpus) - 1}"
            ])  # fmt: skip
        try:
            tf.config.set_visible_devices([gpus[index]], "GPU")
            tf.config.experimental.set_memory_growth(gpus[index], True)
        except RuntimeError:  # already initialised (in-process use): find our GPU's name
            visible = tf.config.get_visible_devices("GPU")
            if gpus[index] not in visible:
                raise ConfigError([
                    f"SCHOONER_DEVICE={self.device}: TensorFlow was initialised in this "
                    f"process with GPU {index} hidden; it cannot be made visible any more"
                ]) from None  # fmt: skip
            scope = f"/GPU:{visible.index(gpus[index])}"
            log.warning("TensorFlow already initialised: placing the model with tf.device(%r)",
                        scope)  # fmt: skip
        tf.config.set_soft_device_placement(True)
        return scope

    def _session(self, tf: Any, graph: Any) -> Any:
        # config=None: the session takes the process's TensorFlow configuration, i.e. the
        # visible devices, memory growth and soft placement set in _configure_devices.
        return tf.compat.v1.Session(graph=graph)

    def _load_checkpoint(self, tf: Any, prefix: Path, variables: bool) -> Any:
        meta = self.artifact.file(f"{MODEL_DIR}/{prefix.name}.meta")
        graph = tf.Graph()
        sess = self._session(tf, graph)
        with graph.as_default(), self._placed(tf):
            saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
            if variables:
                self.artifact.file(f"{MODEL_DIR}/{prefix.name}.index")
                saver.restore(sess, str(prefix))
        return sess

    def _load_frozen_graph(self, tf: Any, file: Path) -> Any:
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(file.read_bytes())
        except Exception as exc:  # protobuf's DecodeError: the file is no GraphDef
            raise ArtifactError(f"{file} is not a frozen TensorFlow graph: {exc}") from exc
        for node in graph_def.node:
            node.device = ""
        graph = tf.Graph()
        with graph.as_default(), self._placed(tf):
            tf.graph_util.import_graph_def(graph_def, name="")
        return self._session(tf, graph)

    def _load_keras(self, tf: Any, file: Path, info: dict[str, Any]) -> Any:
        try:
            import keras
        except ImportError as exc:
            raise MissingExtra(self.name, NAME, "keras") from exc
        self._check_version("keras", keras.__version__, info)
        if keras.backend.backend() != "tensorflow":
            raise ConfigError([
                f"KERAS_BACKEND={keras.backend.backend()}: the tensorflow framework serves "
                "Keras models on the tensorflow backend; unset KERAS_BACKEND"
            ])  # fmt: skip
        with self._placed(tf):
            return keras.models.load_model(str(file), compile=False, safe_mode=False)

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
                                  (or written from a ``tf.Module``); ``saved_model_api``
                                  says which API loads it, "v1" with the ``tags`` of the
                                  meta graph to load, or "v2"
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
a SavedModel directory written by TF1's        saved_model     a Session on a new graph with
``SavedModelBuilder`` (``saved_model.pb``)                     the chosen meta graph loaded:
                                                               ``sess.run("y:0", ...)``
a SavedModel directory written by              saved_model     what ``tf.saved_model.load``
``tf.saved_model.save`` (TF2)                                  returns (call it or use
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

SavedModels: ``tf.saved_model.save`` writes one meta graph holding the TF2 object graph;
TF1's ``SavedModelBuilder`` (Clipper's way) writes meta graphs without one, made from a
Session, so they are loaded into a Session with ``tf.compat.v1.saved_model.loader.load``
(``tf.saved_model.load`` would wrap them in an object with no ``run``). Of a TF1
SavedModel's meta graphs, the one tagged just "serve" is loaded, else the smallest tag set
holding "serve", else the first (the log says which). ``save`` decides this and records
it in the manifest; an artifact saved before the manifest did is told apart from its
``saved_model.pb`` at load.

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
SAVED_MODEL_APIS = ("v1", "v2")
SERVING_TAG = "serve"  # tf.saved_model.SERVING, named here so importing needs no TensorFlow

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
        return {"kind": "saved_model", "file": ".", "source": "tf.Module", "made_with": {},
                "saved_model_api": "v2"}  # fmt: skip
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
            proto = _read_saved_model(source)
            api = _saved_model_api(proto, source)
            shutil.copytree(source, target, dirs_exist_ok=True)
            made = _saved_model_tf_version(proto)
            return {
                "kind": "saved_model", "file": ".", "source": str(source),
                "made_with": {"tensorflow": made} if made else {}, **api,
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


def _read_saved_model(directory: Path) -> Any:
    """The ``SavedModel`` proto of a SavedModel directory (``saved_model.pb``, or its text
    form ``saved_model.pbtxt``, the file TensorFlow's loaders read); ArtifactError if it is
    missing, damaged or holds no meta graph."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    file = directory / "saved_model.pb"
    if not file.is_file() and (directory / "saved_model.pbtxt").is_file():
        file = directory / "saved_model.pbtxt"
    proto = saved_model_pb2.SavedModel()
    try:
        if file.suffix == ".pbtxt":
            text_format.Parse(file.read_text(encoding="utf-8"), proto)
        else:
            proto.ParseFromString(file.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{directory} holds no saved_model.pb") from None
    except (OSError, UnicodeDecodeError, message.Error, text_format.Error) as exc:
        raise ArtifactError(f"{file} is not a readable SavedModel: {exc}") from exc
    if not proto.meta_graphs:
        raise ArtifactError(f"{file} is not a usable SavedModel: it holds no meta graph")
    return proto


def _saved_model_api(proto: Any, directory: Path) -> dict[str, Any]:
    """How to load a SavedModel, as the manifest records it: ``{"saved_model_api": "v2"}``
    for one written by ``tf.saved_model.save``, else ``"v1"`` and the tags to load."""
    # TensorFlow's own test (tf.saved_model.load): one meta graph holding an object graph.
    # The v1 builder writes none, and an empty one has no object to restore either.
    (first, *others) = proto.meta_graphs
    if not others and first.HasField("object_graph_def") and first.object_graph_def.nodes:
        return {"saved_model_api": "v2"}
    return {"saved_model_api": "v1", "tags": _v1_tags(proto, directory)}


def _v1_tags(proto: Any, directory: Path) -> list[str]:
    """The tag set of the meta graph to load from a TF1 SavedModel (see the module docstring)."""
    tag_sets = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    serving = [tags for tags in tag_sets if SERVING_TAG in tags]
    if serving:
        tags = min(serving, key=len)  # the first of the smallest: ["serve"] when there is one
        log.info("%s: a TensorFlow 1 SavedModel; loading its meta graph tagged %s (tag sets: "
                 "%s)", directory, tags, tag_sets)  # fmt: skip
    else:
        tags = tag_sets[0]
        log.info("%s: a TensorFlow 1 SavedModel with no %r tag set; loading its first "
                 "meta graph, tagged %s (tag sets: %s)", directory, SERVING_TAG, tags,
                 tag_sets)  # fmt: skip
    return tags


def _saved_model_tf_version(proto: Any) -> str | None:
    """The TensorFlow version recorded in a SavedModel's meta graphs (the newest one)."""
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
            self.model = self._load_saved_model(tf, self.artifact.file(MODEL_DIR), info)
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

    def _load_saved_model(self, tf: Any, directory: Path, info: dict[str, Any]) -> Any:
        # Read even when the manifest says how to load it: a damaged file is then an
        # ArtifactError rather than TensorFlow's OSError, and the recorded tags are checked.
        proto = _read_saved_model(directory)
        api = info.get("saved_model_api")
        if api not in SAVED_MODEL_APIS:  # saved before the manifest recorded it
            how = _saved_model_api(proto, directory)
            api, tags = how["saved_model_api"], how.get("tags")
            log.info("%s: the manifest does not say which SavedModel API wrote it; its "
                     "saved_model.pb says %s", self.artifact.path, api)  # fmt: skip
        else:
            tags = info.get("tags")
        if api == "v2":
            with self._placed(tf):
                return tf.saved_model.load(str(directory))
        if tags is None:
            tags = _v1_tags(proto, directory)
        tag_sets = [sorted(m.meta_info_def.tags) for m in proto.meta_graphs]
        if not isinstance(tags, list) or sorted(map(str, tags)) not in tag_sets:
            raise ArtifactError(
                f"{self.artifact.path}: the manifest's SavedModel tags {tags!r} name none of "
                f"the meta graphs in its saved_model.pb (tag sets: {tag_sets})"
            )
        graph = tf.Graph()
        sess = self._session(tf, graph)
        with graph.as_default(), self._placed(tf):
            tf.compat.v1.saved_model.loader.load(
                sess, [str(t) for t in tags], str(directory), clear_devices=True
            )
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

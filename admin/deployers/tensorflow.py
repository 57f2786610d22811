"""Deploy a TensorFlow model with a Python function that predicts with it.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.tensorflow``
(``create_endpoint`` also takes ``pkgs_to_install``, last). ``tf_sess_or_saved_model_path``
is what Clipper took — a ``tf.compat.v1.Session`` or the path of a saved model — and also,
on TensorFlow 2: a SavedModel directory, a frozen graph (``.pb`` file), a checkpoint
directory, a Keras 3 model or ``.keras`` file, or a ``tf.Module``. The artifact is written
by ``schooner.frameworks.tensorflow.save`` (its docstring lists the forms and files).

``func`` is called as ``func(model, inputs)`` and returns one output per input (each is
passed through ``str``):

* a Session, a checkpoint directory, a frozen graph, or a SavedModel directory written by
  TensorFlow 1's ``SavedModelBuilder`` (from a Session): ``model`` is a
  ``tf.compat.v1.Session`` on the restored graph, as in Clipper (``func(sess, inputs)``),
  e.g. ``sess.run("y:0", feed_dict={"x:0": inputs})``;
* a SavedModel directory written by ``tf.saved_model.save``, or a ``tf.Module``: what
  ``tf.saved_model.load`` returns;
* a Keras model or file: the loaded ``keras.Model``, e.g. ``model.predict_on_batch(inputs)``
  (Keras's compiled predict step; ``model(inputs)`` runs the layers eagerly, several
  times slower on small batches).

Nothing here imports TensorFlow until a model is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link

__all__ = ["deploy_tensorflow_model", "create_endpoint"]


def deploy_tensorflow_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, Any], Sequence[Any]],
    tf_sess_or_saved_model_path: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Save ``func`` with the model and deploy them as ``name:version``; returns once it
    serves.

    ``pkgs_to_install`` are recorded in the artifact's requirements; they are installed
    when an environment or image is built, never when a replica starts.
    """
    from schooner.frameworks import tensorflow as tf_framework

    def save(directory: Path) -> Path:
        return tf_framework.save(
            func, tf_sess_or_saved_model_path, directory, pkgs_to_install=pkgs_to_install
        )

    deploy_artifact(
        clipper_conn, name, version, input_type, save, base_image, labels, registry,
        num_replicas, batch_size, pkgs_to_install, [func],
    )  # fmt: skip


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[Any, Any], Sequence[Any]],
    tf_sess_or_saved_model_path: Any,
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
    """Register app ``name``, deploy ``func`` with the model as model ``name``, link them."""
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_tensorflow_model(
            clipper_conn, name, version, input_type, func, tf_sess_or_saved_model_path,
            base_image, labels, registry, num_replicas, batch_size, pkgs_to_install,
        ),
    )  # fmt: skip

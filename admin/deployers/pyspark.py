"""Deploy a Spark model (ML model or pipeline, or MLlib model) with a Python function.

Same names, parameter order and defaults as Clipper's ``clipper_admin.deployers.pyspark``
(``create_endpoint`` also takes ``pkgs_to_install``). The function takes a SparkSession, the
model and a list of inputs, and returns one output per input (each turned into a string
with ``str``). The model is written with Spark's own persistence and the function with
cloudpickle by ``schooner.frameworks.pyspark.save``, into a temporary directory that
``build_model`` copies. Each replica starts one local Spark session (a JVM: a Java 17 or
newer runtime must be installed) and keeps it; it reports ready once Spark runs and the
model is loaded, which takes seconds. Spark runs on the CPU only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schooner.admin.connection import ClipperConnection
from schooner.admin.deployers.deploy import deploy_artifact, register_and_link

__all__ = ["deploy_pyspark_model", "create_endpoint"]


def deploy_pyspark_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, Any, Any], Sequence[Any]],
    pyspark_model: Any,
    sc: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Save ``pyspark_model`` and ``func`` and deploy them as model ``name:version``;
    returns once it serves.

    ``func(spark, model, inputs)`` answers a batch. ``pyspark_model`` is a ``pyspark.ml``
    model or ``PipelineModel``, or a ``pyspark.mllib`` model; ``sc`` is the SparkContext
    (needed to save an MLlib model). ``pkgs_to_install`` are recorded in the artifact's
    requirements; they are installed when an environment or image is built, never when a
    replica starts.
    """
    from schooner.frameworks import pyspark as spark_framework

    deploy_artifact(
        clipper_conn, name, version, input_type,
        lambda directory: spark_framework.save(
            func, pyspark_model, sc, directory, pkgs_to_install=pkgs_to_install
        ),
        base_image, labels, registry, num_replicas, batch_size, pkgs_to_install, [func],
    )  # fmt: skip


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[Any, Any, Any], Sequence[Any]],
    pyspark_model: Any,
    sc: Any,
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
    """Register app ``name``, deploy the Spark model as model ``name``, and link the two."""
    register_and_link(
        clipper_conn, name, input_type, default_output, slo_micros,
        lambda: deploy_pyspark_model(
            clipper_conn, name, version, input_type, func, pyspark_model, sc, base_image,
            labels, registry, num_replicas, batch_size, pkgs_to_install,
        ),
    )  # fmt: skip

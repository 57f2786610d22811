"""Spark models — ML models and pipelines, and RDD-based MLlib models — with a Python function.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`)::

    func.pkl        the cloudpickled function, called as ``func(spark, model, inputs)``
                    (written and read as :mod:`.closure` does)
    spark_model/    the model as Spark's own persistence wrote it

The manifest also records:

* ``model_class``: the model's fully qualified class name, e.g.
  ``pyspark.ml.classification.LogisticRegressionModel``; the container loads the model with
  that class;
* ``model_api``: ``"ml"`` for ``pyspark.ml`` models and pipelines (saved with
  ``model.write().overwrite().save(path)``, loaded with ``Class.load(path)``) or ``"mllib"``
  for RDD-based ``pyspark.mllib`` models (``model.save(sc, path)``, ``Class.load(sc, path)``);
* ``spark_conf``: Spark settings given to :func:`save` that override :data:`SPARK_CONF`;
* ``versions``: pyspark and cloudpickle. A container refuses a model saved with another
  pyspark major.minor version (:class:`~schooner.runtime.errors.IncompatibleArtifact`):
  Spark reads models written by other versions on a best-effort basis only, and the
  function was pickled against that pyspark's classes.

In the container, ``load()`` starts one local Spark session (one JVM, see
:data:`SPARK_CONF`) and keeps it for the container's whole life; starting it takes seconds,
and the container reports ready only once it runs, the model is loaded and a first tiny
Spark job is done (so that the first query does not pay for starting the executor). Spark runs on the CPU only: a CUDA device is a configuration error.
Each prediction calls ``func(spark, model, inputs)``; like Clipper's container, each of its
outputs is turned into a string with ``str``.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schooner.frameworks.artifact import Artifact, package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.frameworks.closure import FUNC_FILE, dump_func, load_func
from schooner.runtime.errors import (
    ArtifactError,
    ConfigError,
    FrameworkError,
    IncompatibleArtifact,
    MissingExtra,
)

__all__ = [
    "FUNC_FILE",
    "MODEL_DIR",
    "SPARK_CONF",
    "save",
    "session_conf",
    "start_session",
    "PySparkFramework",
]

log = logging.getLogger(__name__)

NAME = "pyspark"
MODEL_DIR = "spark_model"
ML = "ml"
MLLIB = "mllib"

#: The Spark settings a container starts its session with: one local JVM running tasks
#: on one core (replicas, not threads, scale a model out), bound to the loopback interface,
#: without the web UI or progress bars, logging errors only.
SPARK_CONF: Mapping[str, str] = {
    "spark.master": "local[1]",
    "spark.app.name": "schooner-pyspark",
    "spark.api.mode": "classic",
    "spark.driver.memory": "512m",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.log.level": "ERROR",
    "spark.sql.shuffle.partitions": "1",
}

PredictFunc = Callable[[Any, Any, Batch], Sequence[Any]]


def save(
    func: PredictFunc,
    pyspark_model: Any,
    sc: Any,
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
    spark_conf: Mapping[str, str] | None = None,
) -> Path:
    """Write ``func`` and ``pyspark_model`` as an artifact directory and return its path.

    ``pyspark_model`` is a ``pyspark.ml`` model or ``PipelineModel`` (anything
    ``MLWritable``), or an MLlib model saved with ``model.save(sc, path)``, for which ``sc``,
    the SparkContext, is required. ``spark_conf`` overrides :data:`SPARK_CONF` in the
    container (e.g. ``{"spark.driver.memory": "2g"}``).
    """
    import pyspark

    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    api = _model_api(pyspark_model)
    if api == MLLIB and sc is None:
        raise TypeError(
            f"{type(pyspark_model).__name__} is an MLlib model, saved with model.save(sc, path): "
            "pass the SparkContext as sc"
        )
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    model_path = path / MODEL_DIR
    shutil.rmtree(model_path, ignore_errors=True)
    try:
        if api == ML:
            pyspark_model.write().overwrite().save(model_path.as_uri())
        else:
            pyspark_model.save(sc, model_path.as_uri())
    except Exception as exc:  # Spark's (often Java) failure, converted here
        raise ArtifactError(
            f"Spark could not save the {_class_name(pyspark_model)} to {model_path}: "
            f"{_first_lines(exc)}"
        ) from exc
    captured = dump_func(func, path)
    log.info("saved %s (Spark %s API) to %s", _class_name(pyspark_model), api, path)
    return write_artifact(
        path,
        NAME,
        versions={"pyspark": pyspark.__version__, "cloudpickle": package_version("cloudpickle")},
        pkgs_to_install=pkgs_to_install,
        extra={
            "model_class": _class_name(pyspark_model),
            "model_api": api,
            "spark_conf": {str(k): str(v) for k, v in (spark_conf or {}).items()},
            "captured_modules": captured,
        },
    )


def session_conf(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The Spark settings a container starts its session with for this artifact."""
    return {**SPARK_CONF, **dict(manifest.get("spark_conf") or {})}


def start_session(conf: Mapping[str, str] = SPARK_CONF) -> Any:
    """Start a local Spark session as a container does (blocks until Spark runs).

    Its Python workers run with this interpreter unless ``PYSPARK_PYTHON`` says otherwise.
    Where this process already runs a session, Spark returns that one instead.
    """
    from pyspark.sql import SparkSession

    # RDD code (MLlib's batch predict, Python UDFs) runs in Python workers started from
    # PYSPARK_PYTHON, default "python3" on PATH, which may not be this environment.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    log.info("starting Spark (%s)", ", ".join(f"{k}={v}" for k, v in sorted(conf.items())))
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: no Java, or a bad setting
        raise FrameworkError(
            f"Spark could not start: {_first_lines(exc)}. Spark needs a Java 17 or newer "
            "runtime on PATH or in JAVA_HOME."
        ) from exc


class PySparkFramework(Framework):
    """A Spark model served from one long-lived local Spark session (see the module doc)."""

    name = NAME
    extra = "pyspark"
    devices = ("cpu",)
    base_image = "pyspark"
    requires = ("pyspark>=4.0,<5",)

    def __init__(self, artifact: Artifact, device: str = "cpu") -> None:
        super().__init__(artifact, device)
        self.spark: Any = None
        self.model: Any = None
        self.func: PredictFunc | None = None
        self._owns_session = False

    def load(self) -> None:
        """Start the Spark session (or use this process's active one) and load the model.

        Blocks until Spark runs: the container reports ready only afterwards. A session
        started here is stopped by :meth:`close`, at the latest when the process exits.
        """
        if self.device != "cpu":
            raise ConfigError(
                [f"SCHOONER_DEVICE={self.device}: Spark runs on the CPU only; "
                 "deploy pyspark models with SCHOONER_DEVICE=cpu"]  # fmt: skip
            )
        try:
            import pyspark
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise MissingExtra(NAME, "pyspark", "pyspark") from exc
        _check_version(self.artifact, pyspark.__version__)
        self.func = load_func(self.artifact)
        api = str(self.artifact.manifest.get("model_api", ""))
        if api not in (ML, MLLIB):
            raise ArtifactError(f"{self.artifact.path}: unknown Spark model API {api!r}")
        model_class = _import_class(str(self.artifact.manifest.get("model_class", "")))
        model_path = self.artifact.file(MODEL_DIR)

        self.spark = SparkSession.getActiveSession()
        if self.spark is None:
            self.spark = start_session(session_conf(self.artifact.manifest))
            self._owns_session = True
            atexit.register(self.close)
        try:
            if api == ML:
                self.model = model_class.load(model_path.as_uri())
            else:
                self.model = model_class.load(self.spark.sparkContext, model_path.as_uri())
        except Exception as exc:  # Spark's (often Java) failure, converted here
            raise ArtifactError(
                f"Spark could not load the {model_class.__name__} in {model_path}: "
                f"{_first_lines(exc)}"
            ) from exc
        _warm_up(self.spark)
        log.info("loaded %s with Spark %s", self.artifact.manifest.get("model_class"),
                 pyspark.__version__)  # fmt: skip

    def predict(self, batch: Batch) -> Sequence[str]:
        assert self.func is not None, "predict before load"
        return [str(output) for output in self.func(self.spark, self.model, batch)]

    def close(self) -> None:
        """Stop the Spark session if :meth:`load` started it (idempotent)."""
        spark, self.spark = self.spark, None
        if spark is None or not self._owns_session:
            return
        self._owns_session = False
        try:
            spark.stop()
        except Exception as exc:  # the JVM may already be gone at process exit
            log.debug("stopping Spark: %s", exc)
        else:
            log.info("Spark session stopped")


# --------------------------------------------------------------------------- helpers


def _model_api(model: Any) -> str:
    """"ml" for MLWritable models and pipelines, "mllib" for models with save(sc, path)."""
    from pyspark.ml.util import MLWritable

    if isinstance(model, MLWritable):
        return ML
    if callable(getattr(model, "save", None)) and callable(getattr(type(model), "load", None)):
        return MLLIB
    raise TypeError(
        f"pyspark_model must be a Spark ML model or PipelineModel (MLWritable) or an MLlib "
        f"model with save(sc, path) and load(sc, path); got {_class_name(model)}"
    )


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(qualified: str) -> Any:
    module_name, _, attr = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ArtifactError(
            f"cannot import the model class {qualified!r} recorded in the artifact: {exc}. "
            "A class from the user's own module must be importable in the container."
        ) from exc
    if not callable(getattr(cls, "load", None)):
        raise ArtifactError(f"the model class {qualified!r} has no load method")
    return cls


def _check_version(artifact: Artifact, here: str) -> None:
    made = str(artifact.manifest.get("versions", {}).get("pyspark", ""))
    if made.split(".")[:2] != here.split(".")[:2]:
        want = ".".join(made.split(".")[:2])
        raise IncompatibleArtifact(
            f"{artifact.path} was saved with pyspark {made or '?'}; this container has pyspark "
            f"{here}. Spark reads models of other versions on a best-effort basis only: run "
            f"it with pyspark=={want}.* or redeploy the model from pyspark "
            f"{'.'.join(here.split('.')[:2])}."
        )


def _warm_up(spark: Any) -> None:
    """Run a first tiny job from local rows, as most prediction functions do, so that
    starting the executor and compiling that path does not fall on the first query."""
    spark.createDataFrame([(0.0,)], "x double").selectExpr("x + 1.0 AS y").collect()


def _first_lines(exc: BaseException, n: int = 3) -> str:
    """The head of an exception's message (Java errors carry whole stack traces)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:n]) or type(exc).__name__

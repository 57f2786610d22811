"""Saving and loading Spark artifacts in this process (schooner.frameworks.pyspark).

One Spark session serves every test here (starting one takes seconds); the framework's
``load`` uses this process's active session instead of starting another.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from schooner.frameworks import pyspark as spark_framework
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest
from schooner.runtime.errors import ArtifactError, ConfigError, IncompatibleArtifact, MissingExtra

pytest.importorskip("pyspark")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RNG = np.random.default_rng(7)
X = RNG.normal(size=(40, 3))
Y = ((X @ [1.0, -2.0, 0.5] + RNG.normal(size=40)) > 0).astype(float)


@pytest.fixture(scope="session")
def spark() -> Iterator:
    """This test process's Spark session (shared with tests/frameworks/test_pyspark.py)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession() or spark_framework.start_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def training(spark):
    from pyspark.ml.linalg import Vectors

    rows = [(float(label), Vectors.dense(x)) for x, label in zip(X, Y)]
    return spark.createDataFrame(rows, ["label", "features"])


def probabilities(spark, model, inputs):
    """The prediction function the ML models are deployed with."""
    from pyspark.ml.linalg import Vectors

    frame = spark.createDataFrame([(Vectors.dense(x),) for x in inputs], ["features"])
    return [float(row.probability[1]) for row in model.transform(frame).collect()]


def labels(spark, model, inputs):
    """The prediction function the MLlib model is deployed with (an RDD, so Python workers)."""
    rows = spark.sparkContext.parallelize([[float(v) for v in x] for x in inputs], 1)
    return model.predict(rows).collect()


def load(path, device="cpu"):
    framework = spark_framework.PySparkFramework(open_artifact(path), device)
    framework.load()
    return framework


def test_ml_model_round_trip(spark, training, tmp_path):
    from pyspark.ml.classification import LogisticRegression

    model = LogisticRegression(maxIter=10, regParam=0.01).fit(training)
    path = spark_framework.save(probabilities, model, spark.sparkContext, tmp_path / "a",
                                pkgs_to_install=["scikit-learn==1.5"])  # fmt: skip
    manifest = read_manifest(path)
    assert manifest["framework"] == "pyspark"
    assert manifest["model_class"] == "pyspark.ml.classification.LogisticRegressionModel"
    assert manifest["model_api"] == "ml" and manifest["spark_conf"] == {}
    assert manifest["versions"]["pyspark"] == __import__("pyspark").__version__
    assert manifest["versions"]["cloudpickle"]
    assert (path / "requirements.txt").read_text() == "scikit-learn==1.5\n"
    assert (path / spark_framework.MODEL_DIR / "metadata").is_dir()

    framework = load(path)
    assert framework.spark is spark  # this process's session, not a second one
    expected = probabilities(spark, model, X[:5])
    assert framework.predict(X[:5]) == [str(p) for p in expected]
    assert len(set(expected)) == 5  # real probabilities, not a saturated model
    framework.close()  # not its session: left running
    assert spark.range(1).count() == 1


def test_pipeline_round_trip(spark, training, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StandardScaler

    pipeline = Pipeline(stages=[
        StandardScaler(inputCol="features", outputCol="scaled", withMean=True),
        LogisticRegression(featuresCol="scaled", maxIter=10),
    ]).fit(training)  # fmt: skip
    path = spark_framework.save(probabilities, pipeline, None, tmp_path / "p")
    assert read_manifest(path)["model_class"] == "pyspark.ml.pipeline.PipelineModel"
    framework = load(path)
    assert isinstance(framework.model, PipelineModel)
    assert framework.predict(X[:4]) == [str(p) for p in probabilities(spark, pipeline, X[:4])]


def test_mllib_model_round_trip(spark, tmp_path):
    from pyspark.mllib.classification import LogisticRegressionModel, LogisticRegressionWithLBFGS
    from pyspark.mllib.regression import LabeledPoint

    points = spark.sparkContext.parallelize([LabeledPoint(y, x) for x, y in zip(X, Y)])
    model = LogisticRegressionWithLBFGS.train(points, iterations=10)
    with pytest.raises(TypeError, match="MLlib model.*pass the SparkContext as sc"):
        spark_framework.save(labels, model, None, tmp_path / "no-sc")
    path = spark_framework.save(labels, model, spark.sparkContext, tmp_path / "m")
    manifest = read_manifest(path)
    assert manifest["model_api"] == "mllib"
    assert manifest["model_class"] == "pyspark.mllib.classification.LogisticRegressionModel"
    framework = load(path)
    assert isinstance(framework.model, LogisticRegressionModel)
    assert list(framework.model.weights) == list(model.weights)
    expected = [str(label) for label in labels(spark, model, X)]
    assert framework.predict(X) == expected and {"0", "1"} == set(expected)


@pytest.fixture(scope="module")
def small_artifact(spark, training, tmp_path_factory):
    from pyspark.ml.classification import LogisticRegression

    model = LogisticRegression(maxIter=3).fit(training)
    return spark_framework.save(probabilities, model, None, tmp_path_factory.mktemp("small"),
                                spark_conf={"spark.driver.memory": "768m"})  # fmt: skip


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_spark_conf_is_recorded_and_overrides_the_defaults(small_artifact):
    conf = spark_framework.session_conf(read_manifest(small_artifact))
    assert conf["spark.driver.memory"] == "768m"
    assert conf["spark.master"] == "local[1]" and conf["spark.ui.enabled"] == "false"


def test_other_pyspark_minor_is_refused_clearly(small_artifact, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(small_artifact, path)
    _edit_manifest(path, versions={"pyspark": "3.5.1", "cloudpickle": "3.1.2"})
    here = __import__("pyspark").__version__
    with pytest.raises(IncompatibleArtifact, match=rf"saved with pyspark 3\.5\.1.*has pyspark {here}"):
        load(path)
    patch = ".".join([*here.split(".")[:2], "99"])  # another patch release: loads
    _edit_manifest(path, versions={"pyspark": patch, "cloudpickle": "3.1.2"})
    assert len(load(path).predict(X[:2])) == 2


def test_cuda_is_refused_as_configuration(small_artifact):
    with pytest.raises(ConfigError, match="Spark runs on the CPU only"):
        load(small_artifact, device="cuda:0")


def test_missing_pyspark_names_the_extra(small_artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # makes `import pyspark` fail
    with pytest.raises(MissingExtra, match=r"pip install 'schooner\[pyspark\]'"):
        load(small_artifact)


def test_unknown_model_class_and_missing_model_files(small_artifact, tmp_path):
    path = tmp_path / "broken"
    shutil.copytree(small_artifact, path)
    _edit_manifest(path, model_class="pyspark.ml.nowhere.NoModel")
    with pytest.raises(ArtifactError, match="cannot import the model class 'pyspark.ml.nowhere"):
        load(path)
    _edit_manifest(path, model_class="pyspark.ml.classification.LogisticRegressionModel")
    shutil.rmtree(path / spark_framework.MODEL_DIR)
    with pytest.raises(ArtifactError, match="spark_model is missing"):
        load(path)


def test_no_java_is_a_clear_error(small_artifact, tmp_path):
    code = textwrap.dedent(f"""
        from schooner.frameworks.artifact import open_artifact
        from schooner.frameworks.pyspark import PySparkFramework
        from schooner.runtime.errors import FrameworkError
        try:
            PySparkFramework(open_artifact({str(small_artifact)!r})).load()
        except FrameworkError as exc:
            print(exc)
    """)
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)  # fmt: skip
    assert "Spark could not start" in out.stdout and "Java 17 or newer" in out.stdout, out


def test_what_is_not_a_spark_model_is_refused(tmp_path):
    with pytest.raises(TypeError, match="must be a Spark ML model or PipelineModel.*got builtins.dict"):
        spark_framework.save(probabilities, {}, None, tmp_path)


def test_importing_the_module_imports_no_spark():
    code = ("import sys; import schooner.frameworks.pyspark, schooner.admin.deployers.pyspark; "
            "assert 'pyspark' not in sys.modules, 'pyspark imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)

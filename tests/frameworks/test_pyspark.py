"""PySpark through the local manager: an ML model, a pipeline as its version 2, an MLlib model.

Each model is trained here, in this process's one Spark session, deployed with
``schooner.admin.deployers.pyspark``, queried over HTTP, and its answers compared with the
same model's predictions in this process. Every replica starts a Spark session of its own
(seconds each), so each model version runs one replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import local_cluster
from serving import outputs, predict

from schooner.admin import ClipperConnection, ClipperException
from schooner.admin.deployers import pyspark as spark_deployer
from schooner.frameworks import pyspark as spark_framework

pytest.importorskip("pyspark")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SLO_MICROS = 30_000_000  # a replica's first Spark job can take seconds on a busy machine
RNG = np.random.default_rng(11)
X_TRAIN = RNG.normal(size=(60, 3))
Y_TRAIN = ((X_TRAIN @ [1.0, -2.0, 0.5] + RNG.normal(size=60)) > 0).astype(float)
X = RNG.normal(size=(8, 3))


@pytest.fixture(scope="session")
def spark() -> Iterator:
    """This test process's Spark session (shared with tests/unit/test_pyspark_artifact.py)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession() or spark_framework.start_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def training(spark):
    from pyspark.ml.linalg import Vectors

    rows = [(float(y), Vectors.dense(x)) for x, y in zip(X_TRAIN, Y_TRAIN)]
    return spark.createDataFrame(rows, ["label", "features"])


def probabilities(spark, model, inputs):
    """P(label = 1) for each input, through a DataFrame and the model's transform."""
    from pyspark.ml.linalg import Vectors

    frame = spark.createDataFrame([(Vectors.dense(x),) for x in inputs], ["features"])
    return [float(row.probability[1]) for row in model.transform(frame).collect()]


def labels(spark, model, inputs):
    """MLlib's batch predict over an RDD: runs in Spark's Python workers."""
    rows = spark.sparkContext.parallelize([[float(v) for v in x] for x in inputs], 1)
    return model.predict(rows).collect()


def served(conn: ClipperConnection, app: str, inputs: np.ndarray) -> list:
    return outputs(predict(conn, app, {"input_batch": inputs.tolist()}))


def test_ml_model_then_pipeline_then_rollback(cluster, spark, training, tmp_path):
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StandardScaler

    v1 = LogisticRegression(maxIter=10, regParam=0.01).fit(training)
    spark_deployer.create_endpoint(cluster, "spark-ml", "doubles", probabilities, v1,
                                   spark.sparkContext, slo_micros=SLO_MICROS)  # fmt: skip
    expected_v1 = probabilities(spark, v1, X)
    np.testing.assert_allclose(served(cluster, "spark-ml", X), expected_v1, rtol=1e-12)
    single = predict(cluster, "spark-ml", {"input": X[0].tolist()})["output"]
    assert single == pytest.approx(expected_v1[0], rel=1e-12)

    v2 = Pipeline(stages=[
        StandardScaler(inputCol="features", outputCol="scaled", withMean=True),
        LogisticRegression(featuresCol="scaled", maxIter=10, regParam=0.5),
    ]).fit(training)  # fmt: skip
    spark_deployer.deploy_pyspark_model(cluster, "spark-ml", 2, "doubles", probabilities, v2,
                                        spark.sparkContext)  # fmt: skip
    assert cluster.get_current_model_version("spark-ml") == "2"
    expected_v2 = probabilities(spark, v2, X)
    assert not np.allclose(expected_v1, expected_v2)
    np.testing.assert_allclose(served(cluster, "spark-ml", X), expected_v2, rtol=1e-12)

    cluster.set_model_version("spark-ml", 1)
    np.testing.assert_allclose(served(cluster, "spark-ml", X), expected_v1, rtol=1e-12)

    # A replica that stops (SIGTERM) stops its Spark session on the way out.
    cluster.stop_versioned_models({"spark-ml": ["2"]})
    logs = cluster.get_clipper_logs(str(tmp_path / "logs"))
    lines = [line for log in logs for line in Path(log).read_text().splitlines()
             if "[spark-ml:2]" in line]  # fmt: skip
    assert any("Spark session stopped" in line for line in lines), lines[-20:]


def test_mllib_model(cluster, spark):
    from pyspark.mllib.classification import LogisticRegressionWithLBFGS
    from pyspark.mllib.regression import LabeledPoint

    points = spark.sparkContext.parallelize([LabeledPoint(y, x) for x, y in zip(X_TRAIN, Y_TRAIN)])
    model = LogisticRegressionWithLBFGS.train(points, iterations=10)
    spark_deployer.create_endpoint(cluster, "spark-mllib", "doubles", labels, model,
                                   spark.sparkContext, slo_micros=SLO_MICROS)  # fmt: skip
    expected = labels(spark, model, X)
    assert set(expected) == {0, 1}
    assert served(cluster, "spark-mllib", X) == expected


def test_cuda_replica_is_refused_with_the_reason(spark, training, tmp_path_factory):
    """Spark runs on the CPU only: a replica configured for CUDA exits at start and says so."""
    from pyspark.ml.classification import LogisticRegression

    with local_cluster("frameworks-pyspark-cuda", home=tmp_path_factory.mktemp("home"),
                       deploy_timeout_s=120.0, grace_s=5.0, device="cuda") as conn:  # fmt: skip
        model = LogisticRegression(maxIter=2).fit(training)
        with pytest.raises(ClipperException, match=r"(?s)exited with code 2.*cpu only"):
            spark_deployer.deploy_pyspark_model(conn, "spark-cuda", 1, "doubles",
                                                probabilities, model, None)  # fmt: skip

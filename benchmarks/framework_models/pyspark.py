"""A small Spark ML multilayer perceptron (32 -> 64 -> 10), queried through a DataFrame."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import pyspark as spark_framework


def classify(spark, model, inputs):
    from pyspark.ml.linalg import Vectors

    frame = spark.createDataFrame([(Vectors.dense(x),) for x in inputs], ["features"])
    rows = model.transform(frame).select("prediction").collect()
    return [str(int(row.prediction)) for row in rows]


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession

    rng = np.random.default_rng(0)
    active = SparkSession.getActiveSession()
    spark = active or spark_framework.start_session()
    try:
        x = rng.standard_normal((200, 32))
        y = x[:, :10].argmax(axis=1)
        frame = spark.createDataFrame(
            [(float(label), Vectors.dense(row)) for row, label in zip(x, y)], ["label", "features"]
        )
        model = MultilayerPerceptronClassifier(layers=[32, 64, 10], maxIter=5, seed=0).fit(frame)
        path = spark_framework.save(classify, model, spark.sparkContext, directory)
    finally:
        if active is None:
            spark.stop()
    return path, "doubles", lambda n: rng.standard_normal((n, 32))

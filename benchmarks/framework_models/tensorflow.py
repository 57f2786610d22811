"""A small Keras 3 MLP (32 -> 64 -> 10) on TensorFlow, served as a Keras model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import tensorflow


def classify(model, inputs):
    # predict_on_batch runs Keras's compiled predict step: ~4x faster than model(inputs),
    # which runs the layers eagerly
    scores = model.predict_on_batch(inputs)
    return [str(int(i)) for i in scores.argmax(axis=1)]


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    path = tensorflow.save(classify, model, directory)
    rng = np.random.default_rng(0)
    return path, "floats", lambda n: rng.standard_normal((n, 32), dtype=np.float32)

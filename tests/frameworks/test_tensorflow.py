"""TensorFlow through the local manager: a v1 Session, a frozen graph, SavedModels and Keras.

Each model is built here, deployed with ``schooner.admin.deployers.tensorflow``, queried
over HTTP, and its answers compared with the same model's predictions in this process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import local_cluster
from serving import outputs, predict

from schooner.admin import ClipperConnection
from schooner.admin.deployers import tensorflow as tf_deployer

tf = pytest.importorskip("tensorflow")

pytestmark = [
    pytest.mark.slow,
    # Keras saves weights with np.array(variable); TensorFlow variables' __array__ lacks
    # numpy 2's `copy` keyword (keras/src/backend/tensorflow/core.py, convert_to_numpy).
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*"
    ),
]

RNG = np.random.default_rng(42)
W1 = RNG.normal(size=(4, 8)).astype(np.float32)
B1 = RNG.normal(size=8).astype(np.float32)
W2 = RNG.normal(size=(8, 3)).astype(np.float32)
B2 = RNG.normal(size=3).astype(np.float32)
X = RNG.normal(size=(6, 4))


def build_graph(as_constants: bool):
    """A 4 -> 8 -> 3 MLP as a v1 graph, input ``x:0`` and output ``y:0``."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        params = []
        for name, value in (("w1", W1), ("b1", B1), ("w2", W2), ("b2", B2)):
            init = tf.constant(value)
            params.append(init if as_constants else tf.compat.v1.get_variable(name, initializer=init))
        w1, b1, w2, b2 = params
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
        tf.identity(tf.matmul(hidden, w2) + b2, name="y")
        init_op = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init_op)
    return sess


def session_predict(sess, inputs):
    return [json.dumps(row.tolist()) for row in sess.run("y:0", feed_dict={"x:0": inputs})]


def module_predict(model, inputs):
    return [json.dumps(row.tolist()) for row in model(tf.constant(inputs, tf.float32)).numpy()]


def keras_predict(model, inputs):
    return [json.dumps(row.tolist()) for row in model(inputs, training=False).numpy()]


def keras_mlp(scale: float):
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model.layers[0].set_weights([W1 * scale, B1])
    model.layers[1].set_weights([W2, B2 * scale])
    return model


def served(conn: ClipperConnection, app: str, inputs: np.ndarray) -> np.ndarray:
    answer = predict(conn, app, {"input_batch": inputs.tolist()})
    return np.array(outputs(answer), dtype=np.float64)


def test_v1_session(cluster):
    sess = build_graph(as_constants=False)
    tf_deployer.create_endpoint(cluster, "tf-session", "doubles", session_predict, sess)
    expected = sess.run("y:0", feed_dict={"x:0": X})
    np.testing.assert_allclose(served(cluster, "tf-session", X), expected, rtol=1e-5, atol=1e-6)
    single = predict(cluster, "tf-session", {"input": X[0].tolist()})["output"]
    np.testing.assert_allclose(single, expected[0], rtol=1e-5, atol=1e-6)


def test_frozen_graph(cluster, tmp_path):
    sess = build_graph(as_constants=True)  # a frozen graph: every weight is a constant
    frozen = tmp_path / "mlp.pb"
    frozen.write_bytes(sess.graph.as_graph_def().SerializeToString())
    tf_deployer.create_endpoint(cluster, "tf-frozen", "floats", session_predict, str(frozen))
    inputs = X.astype(np.float32)
    expected = sess.run("y:0", feed_dict={"x:0": inputs})
    np.testing.assert_allclose(served(cluster, "tf-frozen", inputs), expected, rtol=1e-5, atol=1e-6)


def test_saved_model_directory(cluster, tmp_path):
    class Mlp(tf.Module):
        def __init__(self):
            super().__init__()
            self.params = [tf.Variable(v) for v in (W1, B1, W2, B2)]

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            w1, b1, w2, b2 = self.params
            return tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2) + b2

    model = Mlp()
    tf.saved_model.save(model, str(tmp_path / "saved"))
    tf_deployer.create_endpoint(cluster, "tf-saved", "floats", module_predict, tmp_path / "saved")
    inputs = X.astype(np.float32)
    expected = model(tf.constant(inputs)).numpy()
    np.testing.assert_allclose(served(cluster, "tf-saved", inputs), expected, rtol=1e-5, atol=1e-6)


def test_v1_saved_model_builder_directory(cluster, tmp_path):
    """Clipper's deploy_tensorflow_models.py, third way: a TF1 builder's SavedModel as a path,
    served to ``func(sess, inputs)`` as a Session."""
    sess = build_graph(as_constants=False)
    export_dir = tmp_path / "builder"
    with sess.graph.as_default():
        builder = tf.compat.v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(sess, [tf.compat.v1.saved_model.tag_constants.SERVING])
        builder.save()
    tf_deployer.create_endpoint(cluster, "tf-builder", "doubles", session_predict, str(export_dir))
    expected = sess.run("y:0", feed_dict={"x:0": X})
    np.testing.assert_allclose(served(cluster, "tf-builder", X), expected, rtol=1e-5, atol=1e-6)
    for row, want in zip(X, expected, strict=True):
        single = predict(cluster, "tf-builder", {"input": row.tolist()})["output"]
        np.testing.assert_allclose(single, want, rtol=1e-5, atol=1e-6)


def test_keras_new_version_and_rollback(cluster, tmp_path):
    v1, v2 = keras_mlp(1.0), keras_mlp(-0.5)
    tf_deployer.create_endpoint(cluster, "tf-keras", "doubles", keras_predict, v1)
    expected_v1, expected_v2 = v1(X).numpy(), v2(X).numpy()
    np.testing.assert_allclose(served(cluster, "tf-keras", X), expected_v1, rtol=1e-5, atol=1e-6)

    v2.save(tmp_path / "v2.keras")  # version 2 from a .keras file
    tf_deployer.deploy_tensorflow_model(
        cluster, "tf-keras", 2, "doubles", keras_predict, str(tmp_path / "v2.keras")
    )
    assert cluster.get_current_model_version("tf-keras") == "2"
    np.testing.assert_allclose(served(cluster, "tf-keras", X), expected_v2, rtol=1e-5, atol=1e-6)

    cluster.set_model_version("tf-keras", 1)
    np.testing.assert_allclose(served(cluster, "tf-keras", X), expected_v1, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu("tensorflow")
def test_keras_on_cuda(tmp_path_factory):
    """A replica configured for CUDA serves from the GPU (needs TensorFlow built with CUDA)."""
    with local_cluster("frameworks-cuda", home=tmp_path_factory.mktemp("home"),
                       deploy_timeout_s=240.0, grace_s=5.0, device="cuda") as conn:  # fmt: skip
        model = keras_mlp(1.0)

        def on_gpu(model, inputs):
            assert "GPU" in model.layers[0].kernel.value.device, model.layers[0].kernel.value.device
            return keras_predict(model, inputs)

        tf_deployer.create_endpoint(conn, "tf-cuda", "doubles", on_gpu, model)
        np.testing.assert_allclose(served(conn, "tf-cuda", X), model(X).numpy(), rtol=1e-4, atol=1e-5)

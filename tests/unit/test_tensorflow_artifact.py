"""The TensorFlow artifact in-process: save every accepted form, load it, predict, refuse."""

import json
import subprocess
import sys

import numpy as np
import pytest

from schooner.frameworks import tensorflow as tff
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest
from schooner.runtime.errors import (
    ArtifactError,
    ConfigError,
    IncompatibleArtifact,
    MissingExtra,
)

# Keras saves weights with np.array(variable); TensorFlow's variables' __array__ lacks numpy 2's
# `copy` keyword, so numpy warns (keras/src/backend/tensorflow/core.py, convert_to_numpy).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*"
)

W1 = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
B1 = np.array([0.5, -1.0, 2.0], dtype=np.float32)
X = np.random.default_rng(0).random((5, 4))
EXPECTED = X.astype(np.float32) @ W1 + B1


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def rows(outputs):
    return np.array([json.loads(o) for o in outputs])


def load(path, device="cpu"):
    fw = tff.TensorFlowFramework(open_artifact(path), device)
    fw.load()
    return fw


def session_func():
    def predict(sess, xs):
        return [json.dumps(r.tolist()) for r in sess.run("y:0", feed_dict={"x:0": xs})]

    return predict


def keras_func():
    def predict(model, xs):
        return [json.dumps(r.tolist()) for r in model(xs).numpy()]

    return predict


def make_session(tf, with_variables=True):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        if with_variables:
            w = tf.compat.v1.get_variable("w", initializer=tf.constant(W1))
            b = tf.compat.v1.get_variable("b", initializer=tf.constant(B1))
        else:
            w, b = tf.constant(W1), tf.constant(B1)
        tf.identity(tf.matmul(x, w) + b, name="y")
        init = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    return sess


def make_keras(tf):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[0].set_weights([W1, B1])
    return model


def test_session_round_trip_and_manifest(tf, tmp_path):
    sess = make_session(tf)
    path = tff.save(session_func(), sess, tmp_path / "a", pkgs_to_install=["pandas==2.2", " "])
    manifest = read_manifest(path)
    assert manifest["framework"] == "tensorflow"
    assert manifest["versions"]["tensorflow"] == tf.__version__
    assert manifest["versions"]["keras"] and manifest["versions"]["cloudpickle"]
    assert manifest["tensorflow"]["kind"] == "checkpoint" and manifest["tensorflow"]["variables"]
    assert (path / "requirements.txt").read_text() == "pandas==2.2\n"
    assert (path / "tfmodel" / "model.ckpt.meta").is_file()
    fw = load(path)
    assert isinstance(fw.model, tf.compat.v1.Session) and fw.model is not sess
    np.testing.assert_allclose(rows(fw.predict(X)), EXPECTED, rtol=1e-6)


def test_session_without_variables(tf, tmp_path):
    path = tff.save(session_func(), make_session(tf, with_variables=False), tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["variables"] is False
    np.testing.assert_allclose(rows(load(path).predict(X)), EXPECTED, rtol=1e-6)


def test_checkpoint_directory(tf, tmp_path):
    sess = make_session(tf)
    with sess.graph.as_default():
        tf.compat.v1.train.Saver().save(sess, str(tmp_path / "ckpt" / "m"), global_step=7)
    path = tff.save(session_func(), str(tmp_path / "ckpt"), tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["kind"] == "checkpoint"
    np.testing.assert_allclose(rows(load(path).predict(X)), EXPECTED, rtol=1e-6)


def test_frozen_graph(tf, tmp_path):
    graph_def = make_session(tf, with_variables=False).graph.as_graph_def()
    (tmp_path / "frozen.pb").write_bytes(graph_def.SerializeToString())
    path = tff.save(session_func(), tmp_path / "frozen.pb", tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["kind"] == "frozen_graph"
    fw = load(path)
    assert isinstance(fw.model, tf.compat.v1.Session)
    np.testing.assert_allclose(rows(fw.predict(X)), EXPECTED, rtol=1e-6)


def test_frozen_graph_that_is_not_one(tf, tmp_path):
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff not a graph")
    path = tff.save(session_func(), tmp_path / "junk.pb", tmp_path / "a")
    with pytest.raises(ArtifactError, match="not a frozen TensorFlow graph"):
        load(path)


class Affine:
    """Builds a tf.Module lazily (tf is imported by the fixture)."""

    @staticmethod
    def make(tf):
        class AffineModule(tf.Module):
            def __init__(self):
                super().__init__()
                self.w, self.b = tf.Variable(W1), tf.Variable(B1)

            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
            def __call__(self, x):
                return tf.matmul(x, self.w) + self.b

        return AffineModule()


def saved_model_func():
    def predict(model, xs):
        import tensorflow as tf

        return [json.dumps(r.tolist()) for r in model(tf.constant(xs, tf.float32)).numpy()]

    return predict


def test_saved_model_directory(tf, tmp_path):
    tf.saved_model.save(Affine.make(tf), str(tmp_path / "sm"))
    path = tff.save(saved_model_func(), tmp_path / "sm", tmp_path / "a")
    section = read_manifest(path)["tensorflow"]
    assert section["kind"] == "saved_model" and section["saved_model_api"] == "v2"
    assert section["made_with"] == {"tensorflow": tf.__version__}
    assert (path / "tfmodel" / "saved_model.pb").is_file()
    fw = load(path)
    assert not isinstance(fw.model, tf.compat.v1.Session)
    assert list(fw.model.signatures) == ["serving_default"]  # the TF2 object, as saved
    np.testing.assert_allclose(rows(fw.predict(X)), EXPECTED, rtol=1e-6)


def test_tf_module_object(tf, tmp_path):
    path = tff.save(saved_model_func(), Affine.make(tf), tmp_path / "a")
    section = read_manifest(path)["tensorflow"]
    assert section["kind"] == "saved_model" and section["saved_model_api"] == "v2"
    np.testing.assert_allclose(rows(load(path).predict(X)), EXPECTED, rtol=1e-6)


# A SavedModel written by TensorFlow 1's builder, as in Clipper's deploy_tensorflow_models.py.
V1_W = np.array([[1.5, -2.0, 0.5], [0.25, 1.0, -1.0]])
V1_B = np.array([0.1, 0.2, -0.3])
V1_X = np.random.default_rng(1).random((5, 2))
V1_EXPECTED = V1_X @ V1_W + V1_B


def make_v1_saved_model(tf, export_dir, *tag_sets):
    """A SavedModelBuilder directory with one meta graph per tag set (default: SERVING)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float64, [None, 2], name="x")
        w = tf.Variable(V1_W, name="w")
        b = tf.constant(V1_B)
        tf.identity(tf.matmul(x, w) + b, name="y")
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess, graph.as_default():
        sess.run(init)
        builder = tf.compat.v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        first, *others = tag_sets or ([tf.compat.v1.saved_model.tag_constants.SERVING],)
        builder.add_meta_graph_and_variables(sess, first)
        for tags in others:
            builder.add_meta_graph(tags)
        builder.save()
    return export_dir


def test_v1_saved_model_is_served_to_a_session(tf, tmp_path):
    export = make_v1_saved_model(tf, tmp_path / "export")
    path = tff.save(session_func(), export, tmp_path / "a")
    section = read_manifest(path)["tensorflow"]
    assert section["kind"] == "saved_model"
    assert section["saved_model_api"] == "v1" and section["tags"] == ["serve"]
    assert section["made_with"] == {"tensorflow": tf.__version__}
    fw = load(path)
    assert isinstance(fw.model, tf.compat.v1.Session)
    np.testing.assert_allclose(rows(fw.predict(V1_X)), V1_EXPECTED, rtol=1e-12)


def test_v1_saved_model_with_a_custom_tag_only(tf, tmp_path, caplog):
    export = make_v1_saved_model(tf, tmp_path / "export", ["my-tag"])
    with caplog.at_level("INFO", logger=tff.__name__):
        path = tff.save(session_func(), export, tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["tags"] == ["my-tag"]
    assert "no 'serve' tag set" in caplog.text
    np.testing.assert_allclose(rows(load(path).predict(V1_X)), V1_EXPECTED, rtol=1e-12)


def test_v1_saved_model_prefers_the_serving_meta_graph(tf, tmp_path):
    export = make_v1_saved_model(tf, tmp_path / "export", ["train"], ["serve", "gpu"], ["serve"])
    path = tff.save(session_func(), export, tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["tags"] == ["serve"]
    np.testing.assert_allclose(rows(load(path).predict(V1_X)), V1_EXPECTED, rtol=1e-12)


def _drop_api(path):
    """Make ``path`` look saved before the manifest recorded the SavedModel API."""
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    for key in ("saved_model_api", "tags"):
        manifest["tensorflow"].pop(key, None)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_saved_models_from_older_manifests_are_told_apart_by_their_file(tf, tmp_path):
    v1 = tff.save(session_func(), make_v1_saved_model(tf, tmp_path / "export"), tmp_path / "v1")
    v2 = tff.save(saved_model_func(), Affine.make(tf), tmp_path / "v2")
    _drop_api(v1)
    _drop_api(v2)
    fw = load(v1)
    assert isinstance(fw.model, tf.compat.v1.Session)
    np.testing.assert_allclose(rows(fw.predict(V1_X)), V1_EXPECTED, rtol=1e-12)
    fw = load(v2)
    assert not isinstance(fw.model, tf.compat.v1.Session)
    np.testing.assert_allclose(rows(fw.predict(X)), EXPECTED, rtol=1e-6)


def test_v1_tags_that_name_no_meta_graph(tf, tmp_path):
    path = tff.save(session_func(), make_v1_saved_model(tf, tmp_path / "export"), tmp_path / "a")
    _edit(path, "tensorflow", "tags", ["train"])
    with pytest.raises(ArtifactError, match=r"tags \['train'\] name none.*\[\['serve'\]\]"):
        load(path)


def test_damaged_saved_model(tf, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "saved_model.pb").write_bytes(b"\xff\xff not a SavedModel")
    with pytest.raises(ArtifactError, match=r"saved_model\.pb is not a readable SavedModel"):
        tff.save(session_func(), tmp_path / "bad", tmp_path / "a")
    # damaged after saving, in a manifest that records the API and in one that does not
    path = tff.save(session_func(), make_v1_saved_model(tf, tmp_path / "export"), tmp_path / "b")
    (path / "tfmodel" / "saved_model.pb").write_bytes(b"\xff\xff not a SavedModel")
    with pytest.raises(ArtifactError, match=r"saved_model\.pb is not a readable SavedModel"):
        load(path)
    _drop_api(path)
    with pytest.raises(ArtifactError, match=r"saved_model\.pb is not a readable SavedModel"):
        load(path)


def test_keras_model_and_file(tf, tmp_path):
    import keras

    model = make_keras(tf)
    path = tff.save(keras_func(), model, tmp_path / "a")
    assert read_manifest(path)["tensorflow"]["kind"] == "keras"
    fw = load(path)
    assert isinstance(fw.model, keras.Model)
    np.testing.assert_allclose(rows(fw.predict(X)), model(X).numpy(), rtol=1e-6)

    model.save(tmp_path / "m.keras")
    path = tff.save(keras_func(), str(tmp_path / "m.keras"), tmp_path / "b")
    assert read_manifest(path)["tensorflow"]["made_with"] == {"keras": keras.__version__}
    np.testing.assert_allclose(rows(load(path).predict(X)), EXPECTED, rtol=1e-6)


def test_outputs_are_turned_into_str(tf, tmp_path):
    def predict(sess, xs):
        return sess.run("y:0", feed_dict={"x:0": xs})[:, 0]  # numpy floats

    out = load(tff.save(predict, make_session(tf), tmp_path / "a")).predict(X)
    assert all(isinstance(o, str) for o in out)
    np.testing.assert_allclose([float(o) for o in out], EXPECTED[:, 0], rtol=1e-6)


def _edit(path, section, key, value):
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest[section][key] = value
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("section", "key", "made", "package"),
    [
        ("versions", "tensorflow", "2.99.0", "tensorflow"),
        ("versions", "tensorflow", "3.0.1", "tensorflow"),
        ("tensorflow", "made_with", {"keras": "3.99.0"}, "keras"),
    ],
)
def test_newer_versions_are_refused(tf, tmp_path, section, key, made, package):
    path = tff.save(keras_func(), make_keras(tf), tmp_path / "a")
    _edit(path, section, key, made)
    version = made if isinstance(made, str) else made[package]
    with pytest.raises(IncompatibleArtifact, match=rf"{package} {version}.*this container has"):
        load(path)


def test_older_versions_load(tf, tmp_path):
    path = tff.save(keras_func(), make_keras(tf), tmp_path / "a")
    _edit(path, "versions", "tensorflow", "2.15.0")
    _edit(path, "tensorflow", "made_with", {"keras": "3.0.0"})
    np.testing.assert_allclose(rows(load(path).predict(X)), EXPECTED, rtol=1e-6)


def test_cuda_without_that_gpu_is_a_config_error(tf, tmp_path):
    path = tff.save(keras_func(), make_keras(tf), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"SCHOONER_DEVICE=cuda:64"):
        load(path, "cuda:64")


def test_what_cannot_be_saved(tf, tmp_path):
    with pytest.raises(TypeError, match="tf.compat.v1.Session"):
        tff.save(keras_func(), object(), tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="neither a SavedModel"):
        tff.save(keras_func(), tmp_path / "empty", tmp_path / "b")
    with pytest.raises(ArtifactError, match="does not exist"):
        tff.save(keras_func(), tmp_path / "nowhere.pb", tmp_path / "c")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"frozen graph \(\.pb\)"):
        tff.save(keras_func(), tmp_path / "model.onnx", tmp_path / "d")


def test_missing_tensorflow_names_the_extra(tf, tmp_path, monkeypatch):
    path = tff.save(keras_func(), make_keras(tf), tmp_path / "a")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
    with pytest.raises(MissingExtra, match=r"pip install 'schooner\[tensorflow\]'") as info:
        load(path)
    assert info.value.extra == "tensorflow"
    with pytest.raises(MissingExtra, match="tensorflow"):
        tff.save(keras_func(), path, tmp_path / "b")


def test_importing_the_loader_and_deployer_imports_no_tensorflow():
    code = (
        "import sys\n"
        "import schooner.frameworks.tensorflow, schooner.admin.deployers.tensorflow\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

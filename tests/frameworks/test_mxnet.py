"""MXNet models deployed through the local manager, in the environment it builds for them.

MXNet 1.9.1 needs numpy < 1.24 and cannot be imported here, so, as a user of this environment
would, the tests build the models with the interpreter of the MXNet environment (the one
the local manager runs MXNet replicas with, built once from base_images/mxnet/), which
writes each checkpoint and the model's predictions for the test inputs; the tests deploy
the checkpoints from here and compare the answers over HTTP with those predictions.
"""

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from serving import outputs, predict

from schooner.admin.deployers import mxnet as mxnet_deployer
from schooner.frameworks.mxnet import MXNetFramework

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first use builds the env

MLP_INPUTS = np.random.default_rng(0).uniform(-1, 1, (5, 4)).round(3)
SOFTMAX_INPUTS = np.random.default_rng(1).uniform(-1, 1, (3, 6)).round(3).astype(np.float32)

# Builds three checkpoints with fixed weights and prints each model's predictions.
BUILD = """
import json, sys
import numpy as np
import mxnet as mx

out_dir, mlp_inputs, softmax_inputs = sys.argv[1], *map(json.loads, sys.argv[2:])

def mlp():  # no loss layer: Module.forward reshapes to any batch size
    data = mx.sym.Variable("data")
    hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=8, name="fc1"), act_type="relu")
    return mx.sym.FullyConnected(hidden, num_hidden=3, name="fc2")

def softmax():  # a classifier with its label input, bound for batches of 1
    data = mx.sym.Variable("data")
    hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=5, name="fc1"), act_type="tanh")
    return mx.sym.SoftmaxOutput(mx.sym.FullyConnected(hidden, num_hidden=4, name="fc2"), name="softmax")

def build(symbol, width, seed, prefix, epoch, inputs):
    shapes, _, _ = symbol.infer_shape(data=(1, width))
    rng = np.random.RandomState(seed)
    params = {name: mx.nd.array(rng.uniform(-1, 1, shape))
              for name, shape in zip(symbol.list_arguments(), shapes)
              if name not in ("data", "softmax_label")}
    mx.model.save_checkpoint(f"{out_dir}/{prefix}", epoch, symbol, params, {})
    x = np.asarray(inputs)
    labels = [a for a in symbol.list_arguments() if a.endswith("label")]
    mod = mx.mod.Module(symbol, label_names=labels)
    mod.bind(data_shapes=[("data", x.shape)], for_training=False)
    mod.set_params(params, {})
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    return mod.get_outputs()[0].asnumpy().tolist()

print(json.dumps({
    "mlp": build(mlp(), 4, 0, "mlp", 0, mlp_inputs),
    "mlp_v2": build(mlp(), 4, 1, "mlp-v2", 3, mlp_inputs),
    "softmax": build(softmax(), 6, 2, "softmax", 0, softmax_inputs),
}))
"""


def mxnet_python() -> str:
    """The interpreter the local manager runs MXNet replicas with (built once, then cached)."""
    from schooner.admin.managers.local import environments

    return environments.resolve(MXNetFramework.base_image, needs=MXNetFramework.requires).python


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(folder of the checkpoints, each model's predictions for the test inputs)."""
    folder = tmp_path_factory.mktemp("mxnet-models")
    argv = [mxnet_python(), "-c", textwrap.dedent(BUILD), str(folder),
            json.dumps(MLP_INPUTS.tolist()), json.dumps(SOFTMAX_INPUTS.tolist())]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return folder, json.loads(result.stdout.strip().splitlines()[-1])


def mlp_rows(model, inputs):
    """Any batch size: Module.forward reshapes the executor."""
    import mxnet as mx

    model.forward(mx.io.DataBatch([mx.nd.array(inputs)]), is_train=False)
    return [json.dumps(r.tolist()) for r in model.get_outputs()[0].asnumpy()]


def classify(model, inputs):
    """Clipper's advice for a network with a label input: bind batch 1, predict one by one."""
    import mxnet as mx

    probs = model.predict(mx.io.NDArrayIter(np.asarray(inputs), batch_size=1)).asnumpy()
    return [json.dumps({"label": int(p.argmax()), "probs": p.tolist()}) for p in probs]


def test_mlp_on_doubles(cluster, models):
    folder, expected = models
    mxnet_deployer.create_endpoint(cluster, "mxnet-mlp", "doubles", mlp_rows,
                                   str(folder / "mlp"), [1, 4])  # fmt: skip
    single = outputs(predict(cluster, "mxnet-mlp", {"input": MLP_INPUTS[0].tolist()}))
    np.testing.assert_allclose(single, expected["mlp"][:1], rtol=1e-5)
    batch = outputs(predict(cluster, "mxnet-mlp", {"input_batch": MLP_INPUTS.tolist()}))
    np.testing.assert_allclose(batch, expected["mlp"], rtol=1e-5)


def test_softmax_classifier_on_floats(cluster, models):
    folder, expected = models
    cluster.register_application("mxnet-softmax", "floats", "None", 3000000)
    mxnet_deployer.deploy_mxnet_model(cluster, "mxnet-softmax", 1, "floats", classify,
                                      (str(folder / "softmax"), 0), [("data", (1, 6))])  # fmt: skip
    cluster.link_model_to_app("mxnet-softmax", "mxnet-softmax")
    answers = outputs(predict(cluster, "mxnet-softmax", {"input_batch": SOFTMAX_INPUTS.tolist()}))
    probs = np.asarray(expected["softmax"])
    np.testing.assert_allclose([a["probs"] for a in answers], probs, rtol=1e-5)
    assert [a["label"] for a in answers] == probs.argmax(axis=1).tolist()


def test_second_version_then_rollback(cluster, models):
    folder, expected = models
    if "mxnet-mlp" not in cluster.get_all_apps():
        mxnet_deployer.create_endpoint(cluster, "mxnet-mlp", "doubles", mlp_rows,
                                       str(folder / "mlp"), [1, 4])  # fmt: skip
    body = {"input_batch": MLP_INPUTS.tolist()}
    # version 2: another checkpoint, at epoch 3, bound for batches of 2
    mxnet_deployer.deploy_mxnet_model(cluster, "mxnet-mlp", 2, "doubles", mlp_rows,
                                      (folder / "mlp-v2", 3), {"data": (2, 4)})  # fmt: skip
    assert cluster.get_current_model_version("mxnet-mlp") == "2"
    np.testing.assert_allclose(outputs(predict(cluster, "mxnet-mlp", body)), expected["mlp_v2"],
                               rtol=1e-5)  # fmt: skip
    assert not np.allclose(expected["mlp_v2"], expected["mlp"])
    cluster.set_model_version("mxnet-mlp", 1)
    np.testing.assert_allclose(outputs(predict(cluster, "mxnet-mlp", body)), expected["mlp"],
                               rtol=1e-5)  # fmt: skip


def test_replicas_run_in_the_mxnet_environment(cluster, models):
    """build_model chose the environment built from base_images/mxnet/requirements.txt."""
    folder, _ = models
    if "mxnet-mlp" not in cluster.get_all_apps():
        mxnet_deployer.create_endpoint(cluster, "mxnet-mlp", "doubles", mlp_rows,
                                       str(folder / "mlp"), [1, 4])  # fmt: skip
    recorded = json.loads((cluster.cm.layout.artifact_dir("mxnet-mlp", "1")
                           / "environment.json").read_text())  # fmt: skip
    assert recorded["isolated"] and recorded["python"] == mxnet_python()
    assert {"mxnet==1.9.1", "numpy==1.23.5"} <= set(recorded["requirements"])
    code = "import mxnet, numpy; print(mxnet.__version__, numpy.__version__)"
    versions = subprocess.run([recorded["python"], "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()  # fmt: skip
    assert versions == ["1.9.1", "1.23.5"]

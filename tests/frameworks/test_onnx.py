"""ONNX: PyTorch models exported to ONNX, deployed through the local manager, served by ONNX
Runtime and queried over HTTP; every answer is checked against the same torch model run in
this process."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from serving import outputs, predict  # noqa: E402

from schooner.admin import ClipperException  # noqa: E402
from schooner.admin.deployers import onnx as onnx_deployer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RTOL, ATOL = 1e-5, 1e-5


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


class TinyConvNet(torch.nn.Module):
    """8x8 one-channel images, flattened; answers class probabilities and the class."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(1, 4, kernel_size=3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x.reshape(-1, 1, 8, 8))).flatten(1)
        scores = self.fc(features)
        return scores.softmax(-1), scores.argmax(-1)


def scores(runner, inputs):
    """Clipper's calling convention: runner.run(array) -> [outputs]."""
    (logits,) = runner.run(np.asarray(inputs, dtype=np.float32))
    return [json.dumps(row.tolist()) for row in logits]


def classify(runner, inputs):
    probs, labels = runner.run(inputs)
    return [json.dumps({"label": int(k), "probs": p.tolist()}) for p, k in zip(probs, labels)]


def torch_outputs(model, x):
    with torch.inference_mode():
        return model.eval()(torch.as_tensor(np.asarray(x), dtype=torch.float32))


def check_mlp(cluster, app, model, rows):
    body = {"input": rows[0]} if len(rows) == 1 else {"input_batch": rows}
    got = np.array(outputs(predict(cluster, app, body)), dtype=np.float64)
    np.testing.assert_allclose(got, torch_outputs(model, rows).numpy(), rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def mlp_app(cluster):
    model = mlp(0)
    onnx_deployer.create_pytorch_endpoint(
        cluster, "onnx-mlp", "doubles", torch.randn(1, 4), scores, model,
        slo_micros=10_000_000,
    )  # fmt: skip
    return "onnx-mlp", model


def test_mlp_answers_equal_torch_for_one_and_several_inputs(cluster, mlp_app):
    app, model = mlp_app
    rng = np.random.default_rng(0)
    for n in (1, 2, 9):  # the exported batch axis is dynamic
        check_mlp(cluster, app, model, rng.standard_normal((n, 4)).tolist())


def test_conv_model_with_two_outputs(cluster):
    model = TinyConvNet()
    cluster.register_application("onnx-conv", "floats", "None", 10_000_000)
    onnx_deployer.deploy_pytorch_model(
        cluster, "onnx-conv", 1, "floats", torch.randn(3, 64), classify, model,
        batch_size=4,
    )  # fmt: skip
    cluster.link_model_to_app("onnx-conv", "onnx-conv")
    images = np.random.default_rng(1).random((6, 64), dtype=np.float32)
    answers = outputs(predict(cluster, "onnx-conv", {"input_batch": images.tolist()}))
    probs, labels = torch_outputs(model, images)
    assert [a["label"] for a in answers] == labels.tolist()
    np.testing.assert_allclose([a["probs"] for a in answers], probs.numpy(), rtol=RTOL, atol=ATOL)
    single = outputs(predict(cluster, "onnx-conv", {"input": images[0].tolist()}))[0]
    assert single["label"] == labels[0].item()


def test_second_version_then_rollback(cluster, mlp_app):
    app, v1 = mlp_app
    v2 = mlp(1)
    rows = np.random.default_rng(2).standard_normal((3, 4)).tolist()
    onnx_deployer.deploy_pytorch_model(cluster, app, 2, "doubles", torch.randn(2, 4), scores, v2)
    check_mlp(cluster, app, v2, rows)
    cluster.set_model_version(app, "1")
    check_mlp(cluster, app, v1, rows)
    cluster.set_model_version(app, "2")
    check_mlp(cluster, app, v2, rows)


def test_caffe2_backend_is_refused_with_the_supported_one_named(cluster):
    with pytest.raises(ClipperException) as caught:
        onnx_deployer.create_pytorch_endpoint(
            cluster, "onnx-caffe2", "doubles", torch.randn(1, 4), scores, mlp(0),
            onnx_backend="caffe2",
        )  # fmt: skip
    message = str(caught.value)
    assert "Caffe2" in message and "no longer exist" in message and '"onnxruntime"' in message
    assert "onnx-caffe2" not in cluster.get_all_apps()  # refused before anything was made


@pytest.mark.gpu("onnxruntime")
def test_cuda_replica_answers_equal_torch(cluster):
    model = mlp(3)
    manager = cluster.cm
    manager.device = "cuda:0"
    try:
        onnx_deployer.create_pytorch_endpoint(
            cluster, "onnx-cuda", "doubles", torch.randn(1, 4), scores, model,
            slo_micros=10_000_000,
        )  # fmt: skip
    finally:
        manager.device = "cpu"
    rows = np.random.default_rng(4).standard_normal((5, 4)).tolist()
    got = np.array(outputs(predict(cluster, "onnx-cuda", {"input_batch": rows})))
    np.testing.assert_allclose(got, torch_outputs(model, rows).numpy(), rtol=1e-4, atol=1e-4)

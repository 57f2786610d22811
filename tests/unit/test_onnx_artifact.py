"""The ONNX artifact in-process: export, manifest, load on ONNX Runtime, predict, and the
errors (a newer opset, a missing library, CUDA without its provider, Caffe2)."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from schooner.frameworks import onnx as onnx_fw  # noqa: E402
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest  # noqa: E402
from schooner.runtime.errors import (  # noqa: E402
    ArtifactError,
    ClipperException,
    ConfigError,
    IncompatibleArtifact,
    MissingExtra,
)

pytestmark = pytest.mark.timeout(300)


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )


class TwoInputsTwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(2, 3)

    def forward(self, x, y):
        scores = self.a(x) + self.b(y)
        return scores.softmax(-1), scores.argmax(-1)


def first_output(runner, inputs):
    return [json.dumps(row.tolist()) for row in runner.run(np.asarray(inputs))[0]]


def load(path, device="cpu"):
    fw = onnx_fw.OnnxFramework(open_artifact(path), device)
    fw.load()
    return fw


def torch_predict(model, *xs):
    with torch.inference_mode():
        out = model.eval()(*(torch.as_tensor(x, dtype=torch.float32) for x in xs))
    return out.numpy()


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    model = mlp(0)
    path = onnx_fw.save(first_output, model, torch.randn(1, 4),
                        tmp_path_factory.mktemp("onnx") / "mlp",
                        pkgs_to_install=["scikit-learn==1.5", " "])  # fmt: skip
    return model, path


def test_manifest_records_the_opset_and_versions(mlp_artifact):
    _, path = mlp_artifact
    manifest = read_manifest(path)
    assert manifest["framework"] == "onnx"
    versions = manifest["versions"]
    assert versions["torch"] == torch.__version__ and versions["onnx"] == onnx.__version__
    assert versions["onnxruntime"] == ort.__version__ and versions["cloudpickle"]
    info = manifest["onnx"]
    proto = onnx.load(str(path / onnx_fw.MODEL_FILE))
    assert info["opset"] == next(o.version for o in proto.opset_import if o.domain == "")
    assert info["ir_version"] == proto.ir_version and info["backend"] == "onnxruntime"
    assert info["inputs"] == [i.name for i in proto.graph.input]
    assert len(info["outputs"]) == 1
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == onnx_fw.BATCH_AXIS  # the dynamic batch axis
    assert (path / "requirements.txt").read_text() == "scikit-learn==1.5\n"
    assert {p.name for p in path.iterdir()} == {
        "model.onnx", "func.pkl", "schooner.json", "requirements.txt"
    }


@pytest.mark.parametrize("n", [1, 2, 7])
def test_predictions_equal_torch_for_any_batch_size(mlp_artifact, n):
    model, path = mlp_artifact
    fw = load(path)
    x = np.random.default_rng(n).standard_normal((n, 4))  # doubles, as the container gets them
    got = np.array([json.loads(o) for o in fw.predict(x)])
    np.testing.assert_allclose(got, torch_predict(model, x), rtol=1e-5, atol=1e-6)


def test_export_is_deterministic_and_keeps_the_training_mode(tmp_path):
    model = mlp(1).train()
    a = onnx_fw.save(first_output, model, torch.randn(3, 4), tmp_path / "a")
    assert model.training  # exported in eval mode, then put back
    b = onnx_fw.save(first_output, model, torch.randn(3, 4), tmp_path / "b")
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    # dropout is off in the export: the same input gives the same answer twice
    x = np.ones((2, 4))
    assert load(a).predict(x) == load(a).predict(x)


def test_runner_feeds_several_inputs_and_returns_every_output(tmp_path):
    model = TwoInputsTwoOutputs()

    def both(runner, inputs):
        x = np.asarray(inputs)
        probs, labels = runner.run([x[:, :4], x[:, 4:]])
        by_name = runner.run({runner.input_names[0]: x[:, :4], runner.input_names[1]: x[:, 4:]})
        assert np.array_equal(by_name[1], labels)
        return [json.dumps({"p": p.tolist(), "label": int(k)}) for p, k in zip(probs, labels)]

    path = onnx_fw.save(both, model, (torch.randn(2, 4), torch.randn(2, 2)), tmp_path / "two")
    assert len(read_manifest(path)["onnx"]["inputs"]) == 2
    fw = load(path)
    assert fw.runner.session.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).standard_normal((5, 6))
    got = [json.loads(o) for o in fw.predict(x)]
    with torch.inference_mode():
        probs, labels = model.eval()(torch.as_tensor(x[:, :4], dtype=torch.float32),
                                     torch.as_tensor(x[:, 4:], dtype=torch.float32))  # fmt: skip
    np.testing.assert_allclose([g["p"] for g in got], probs.numpy(), rtol=1e-5, atol=1e-6)
    assert [g["label"] for g in got] == labels.tolist()
    with pytest.raises(ValueError, match="1 values given for a model with 2 inputs"):
        fw.runner.run([x[:, :4]])


def test_a_model_without_a_dynamic_batch_cannot_be_exported(tmp_path):
    class FixedBatch(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, 2, 2).sum(-1)

    with pytest.raises(ArtifactError, match="dynamic batch axis"):
        onnx_fw.save(first_output, FixedBatch(), torch.randn(2, 4), tmp_path / "fixed")


def test_a_newer_opset_than_onnxruntime_runs_is_incompatible(mlp_artifact, tmp_path):
    import shutil

    _, original = mlp_artifact
    path = tmp_path / "future"
    shutil.copytree(original, path)
    proto = onnx.load(str(path / onnx_fw.MODEL_FILE))
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = 99
    onnx.save(proto, str(path / onnx_fw.MODEL_FILE))
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["onnx"]["opset"] = 99
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleArtifact, match=rf"opset 99 .*ONNX Runtime {ort.__version__}"):
        load(path)


def test_cuda_without_the_cuda_provider_is_a_config_error(mlp_artifact):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    _, path = mlp_artifact
    with pytest.raises(ConfigError, match=r"SCHOONER_DEVICE=cuda:1: .*no CUDAExecutionProvider"
                                          r".*onnxruntime-gpu"):  # fmt: skip
        load(path, "cuda:1")


@pytest.mark.gpu("onnxruntime")
def test_cuda_device_runs_on_the_cuda_provider(mlp_artifact):
    model, path = mlp_artifact
    fw = load(path, "cuda:0")
    assert fw.runner.session.get_providers()[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(3).standard_normal((6, 4))
    got = np.array([json.loads(o) for o in fw.predict(x)])
    np.testing.assert_allclose(got, torch_predict(model, x), rtol=1e-4, atol=1e-5)


def test_missing_libraries_name_the_extra(mlp_artifact, monkeypatch, tmp_path):
    _, path = mlp_artifact
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingExtra, match=r"onnxruntime.*pip install 'schooner\[onnx\]'"):
        load(path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra, match=r"'torch'.*schooner\[onnx\]"):
        onnx_fw.save(first_output, object(), None, tmp_path / "x")


def test_caffe2_backend_fails_clearly_before_anything_is_exported():
    from schooner.admin.deployers import onnx as deployer

    for call in (
        lambda: deployer.deploy_pytorch_model(None, "m", 1, "doubles", None, first_output, None,
                                              onnx_backend="caffe2"),
        lambda: deployer.create_pytorch_endpoint(None, "m", "doubles", None, first_output, None,
                                                 onnx_backend="caffe2"),
    ):  # fmt: skip
        with pytest.raises(ClipperException, match=r'Caffe2 .*no longer exist.*"onnxruntime"'):
            call()
    with pytest.raises(ClipperException, match=r"'tensorrt' is not supported.*\"onnxruntime\""):
        deployer.deploy_pytorch_model(None, "m", 1, "doubles", None, first_output, None,
                                      onnx_backend="tensorrt")  # fmt: skip


def test_importing_the_framework_and_deployer_imports_no_heavy_library():
    code = ("import sys, schooner.frameworks.onnx, schooner.admin.deployers.onnx; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript') "
            "if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serving_needs_no_torch(mlp_artifact):
    _, path = mlp_artifact
    code = (
        "import sys, numpy as np\n"
        "from schooner.frameworks.artifact import open_artifact\n"
        "from schooner.frameworks.onnx import OnnxFramework\n"
        f"fw = OnnxFramework(open_artifact({str(path)!r})); fw.load()\n"
        "assert len(fw.predict(np.ones((3, 4)))) == 3\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

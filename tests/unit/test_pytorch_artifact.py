"""schooner.frameworks.pytorch in-process: save and load of each model kind, the artifact
contract, the version rules, devices, and a missing torch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from schooner.frameworks import pytorch  # noqa: E402
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest  # noqa: E402
from schooner.runtime.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    IncompatibleArtifact,
    MissingExtra,
)

# The tests script and trace modules on purpose; torch 2.x deprecates TorchScript.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


class TinyNet(nn.Module):
    """A model with what the eager format must keep: a tied weight, a buffer outside the
    state dict, a plain tensor attribute reached twice, a frozen parameter, dropout (so
    eval() matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 8)
        self.decode = nn.Linear(8, 4)
        self.decode.weight = nn.Parameter(self.encode.weight.detach().t().contiguous())
        self.head = nn.Linear(4, 3)
        self.same = self.head  # a submodule reached twice
        self.offset = nn.Parameter(torch.linspace(0, 1, 3), requires_grad=False)
        self.register_buffer("shift", torch.full((3,), 0.5), persistent=False)
        self.table = {"first": torch.arange(3.0)}
        self.table["again"] = self.table["first"]
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = torch.tanh(self.decode(torch.relu(self.encode(x))))
        return self.same(self.drop(h)) + self.offset + self.shift


def rows(model, inputs):
    """The user function: one JSON list per input row."""
    return model(inputs.float())


def reference(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(x).float()).numpy()


def load(path, device="cpu"):
    fw = pytorch.PyTorchFramework(open_artifact(path), device)
    fw.load()
    return fw


def answers(fw, batch):
    return np.array([json.loads(o) for o in fw.predict(batch)])


def readonly(x):
    """A batch as the runtime hands it over: a read-only view of the received bytes."""
    return np.frombuffer(x.tobytes(), x.dtype).reshape(x.shape)


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = TinyNet()
    net.train()  # saved in training mode: the container must serve in eval mode
    return net


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(5, 4))


def test_eager_round_trip_and_manifest(tmp_path, model, x):
    path = pytorch.save(rows, model, tmp_path / "a", pkgs_to_install=["einops==0.8.0"])
    manifest = read_manifest(path)
    assert manifest["framework"] == "pytorch"
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["cloudpickle"]
    assert manifest["pytorch"] == {"format": "eager", "files": ["model.pkl", "weights.pt", "tensors.pt"]}
    assert "test_pytorch_artifact" in manifest["captured_modules"]  # TinyNet's own module
    assert (path / "requirements.txt").read_text() == "einops==0.8.0\n"
    fw = load(path)
    # filterwarnings=error: a read-only batch must not warn (shared with torch, not copied)
    np.testing.assert_allclose(answers(fw, readonly(x)), reference(model, x), rtol=1e-6, atol=1e-6)
    net = fw.model
    assert not net.training and net.same is net.head
    assert isinstance(net.offset, nn.Parameter) and not net.offset.requires_grad
    assert torch.equal(net.shift, torch.full((3,), 0.5))
    assert torch.equal(net.table["first"], torch.arange(3.0))
    assert net.table["again"] is net.table["first"]
    assert (path / "model.pkl").stat().st_size < 8000  # the structure holds no tensor data


def test_weights_are_a_plain_state_dict(tmp_path, model):
    path = pytorch.save(rows, model, tmp_path / "a")
    state = torch.load(path / "weights.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    fresh = TinyNet()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_torchscript_round_trip(tmp_path, model, x):
    model.eval()
    for kind, program in [("script", torch.jit.script(model)),
                          ("trace", torch.jit.trace(model, torch.zeros(2, 4)))]:  # fmt: skip
        path = pytorch.save(rows, program, tmp_path / kind)
        assert read_manifest(path)["pytorch"]["format"] == "torchscript"
        np.testing.assert_allclose(answers(load(path), readonly(x)), reference(model, x),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip


def test_export_round_trip_with_a_dynamic_batch(tmp_path, model, x):
    model.eval()
    program = torch.export.export(
        model, (torch.zeros(3, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    path = pytorch.save(rows, program, tmp_path / "e")
    assert read_manifest(path)["pytorch"] == {"format": "export", "files": ["model.pt2"]}
    fw = load(path)
    want = reference(model, x)
    np.testing.assert_allclose(answers(fw, readonly(x)), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(answers(fw, readonly(x[:1])), want[:1], rtol=1e-6, atol=1e-6)


def test_inputs_and_outputs_reach_func_as_documented(tmp_path):
    seen = []

    def probe(model, inputs):
        seen.append(inputs)
        assert not torch.is_grad_enabled() and torch.is_inference_mode_enabled()
        if isinstance(inputs, torch.Tensor):
            return inputs.sum(dim=1)  # a 1-D tensor: one 0-d tensor per input
        if isinstance(inputs, list) and isinstance(inputs[0], torch.Tensor):
            return [t.numpy() for t in inputs]  # numpy arrays
        return [s.upper() for s in inputs]

    fw = load(pytorch.save(probe, nn.Identity(), tmp_path / "p"))
    fw.func = probe  # this very function (the loaded one is a copy), to see what it gets
    batch = np.arange(6, dtype=np.float32).reshape(2, 3)  # writable: shared with the tensor
    assert fw.predict(batch) == ["3.0", "12.0"]
    assert seen[-1].dtype == torch.float32 and seen[-1].data_ptr() == batch.ctypes.data
    ragged = [np.array([1, 2], np.int32), np.array([3], np.int32)]
    assert fw.predict(ragged) == ["[1, 2]", "[3]"]
    assert [t.dtype for t in seen[-1]] == [torch.int32, torch.int32]
    assert fw.predict(["a", "b"]) == ["A", "B"]
    assert pytorch._texts("not a list") == "not a list"  # left for the runtime to report
    assert pytorch._texts(None) is None


def test_a_local_model_class_loads_where_its_module_cannot_be_imported(tmp_path, model, x):
    path = pytorch.save(rows, model, tmp_path / "a")
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import json, numpy as np
        from schooner.frameworks.pytorch import PyTorchFramework
        from schooner.frameworks.artifact import open_artifact
        fw = PyTorchFramework(open_artifact({str(path)!r})); fw.load()
        print(json.dumps([json.loads(o) for o in fw.predict(np.load("x.npy"))]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.array(json.loads(out.stdout)), reference(model, x),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_importing_the_module_does_not_import_torch():
    code = "import sys, schooner.frameworks.pytorch; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_other_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module, a TorchScript module .*ExportedProgram, got function"):
        pytorch.save(rows, lambda x: x, tmp_path / "a")


def _edit(path, torch_version):
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["versions"]["torch"] = torch_version
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def _shifted(major=0, minor=0):
    here_major, here_minor = map(int, torch.__version__.split(".")[:2])
    return f"{here_major + major}.{max(here_minor + minor, 0)}.0"


@pytest.mark.parametrize(
    "kind, made, ok",
    [
        ("eager", _shifted(minor=-1), True),
        ("eager", _shifted(minor=+1), False),
        ("eager", _shifted(major=-1), False),
        ("torchscript", _shifted(minor=-1), True),
        ("torchscript", _shifted(minor=+1), False),
        ("export", _shifted(minor=-1), False),
        ("export", _shifted(), True),
    ],
)
def test_torch_version_rules(tmp_path, model, kind, made, ok):
    model.eval()
    saved = {
        "eager": lambda: model,
        "torchscript": lambda: torch.jit.script(model),
        "export": lambda: torch.export.export(model, (torch.zeros(2, 4),)),
    }[kind]()
    path = pytorch.save(rows, saved, tmp_path / kind)
    _edit(path, made)
    if ok:
        load(path)
        return
    with pytest.raises(IncompatibleArtifact) as info:
        load(path)
    assert f"torch {made}" in str(info.value) and f"torch {torch.__version__}" in str(info.value)


def test_a_missing_file_or_format_is_an_artifact_error(tmp_path, model):
    path = pytorch.save(rows, model, tmp_path / "a")
    (path / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match="weights.pt is missing"):
        load(path)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["pytorch"]["format"] = "onnx"
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no PyTorch model format"):
        load(path)


def test_cuda_where_there_is_none_is_a_config_error(tmp_path, model, monkeypatch):
    path = pytorch.save(rows, model, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"SCHOONER_DEVICE=cuda:99"):
        load(path, "cuda:99")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"SCHOONER_DEVICE=cuda: .*torch\.cuda\.is_available\(\) is False"):
        load(path, "cuda")


def test_a_missing_torch_names_the_extra(tmp_path, model, monkeypatch):
    path = pytorch.save(rows, model, tmp_path / "a")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'schooner\[pytorch\]'") as info:
        load(path)
    assert info.value.extra == "pytorch" and pytorch.PyTorchFramework.extra == "pytorch"
    with pytest.raises(MissingExtra):
        pytorch.save(rows, model, tmp_path / "b")


@pytest.mark.gpu("torch")
@pytest.mark.parametrize("kind", ["eager", "torchscript", "export"])
def test_cuda_places_the_model_and_its_batches_on_the_device(tmp_path, model, x, kind):
    model.eval()
    saved = {
        "eager": lambda: model,
        "torchscript": lambda: torch.jit.script(model),
        "export": lambda: torch.export.export(
            model, (torch.zeros(3, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
        ),
    }[kind]()
    devices = []

    def on_device(model, inputs):
        devices.append(inputs.device)
        return model(inputs.float()).cpu()

    fw = load(pytorch.save(on_device, saved, tmp_path / kind), "cuda:0")
    fw.func = on_device  # this very function (the loaded one is a copy), to see what it gets
    np.testing.assert_allclose(answers(fw, readonly(x)), reference(model, x), rtol=1e-4, atol=1e-5)
    assert devices == [torch.device("cuda", 0)]
    assert all(p.device.type == "cuda" for p in fw.model.parameters())

"""PyTorch: an eager module, its TorchScript and its torch.export program, deployed through the
local manager and queried over HTTP; every answer is checked against the same model run in
this process."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from serving import outputs, predict  # noqa: E402

from schooner.admin.deployers import pytorch as pytorch_deployer  # noqa: E402
from schooner.frameworks import pytorch as pytorch_framework  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    # TorchScript is deprecated by torch 2.x; scripting a model here is on purpose
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

RTOL, ATOL = 1e-5, 1e-5
SLO = 10_000_000


class TinyNet(torch.nn.Module):
    """Defined in this (test) module, which replicas cannot import: pickled by value."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = torch.nn.Linear(4, 16)
        self.out = torch.nn.Linear(16, 3)
        self.drop = torch.nn.Dropout(0.3)  # must be off when served

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.hidden(x))))


def scores(model, inputs):
    """Clipper's calling convention: func(model, inputs); here inputs is a tensor."""
    return model(inputs.float())  # one row per input -> the JSON list of its scores


def expected(model, rows):
    with torch.inference_mode():
        return model.eval()(torch.as_tensor(np.asarray(rows), dtype=torch.float32)).numpy()


def check(cluster, app, model, rows):
    body = {"input": rows[0]} if len(rows) == 1 else {"input_batch": rows}
    got = np.array(outputs(predict(cluster, app, body)), dtype=np.float64)
    np.testing.assert_allclose(got, expected(model, rows), rtol=RTOL, atol=ATOL)


def rows(seed, n, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(dtype).tolist()


@pytest.fixture(scope="module")
def eager_app(cluster):
    model = TinyNet(0)  # left in training mode: the replica serves it in eval mode
    pytorch_deployer.create_endpoint(cluster, "torch-eager", "doubles", scores, model,
                                     slo_micros=SLO)  # fmt: skip
    return "torch-eager", model


def test_eager_module_answers_equal_torch(cluster, eager_app):
    app, model = eager_app
    for n in (1, 2, 7):
        check(cluster, app, model, rows(n, n))


def test_torchscript_module_with_floats(cluster):
    model = TinyNet(1).eval()
    cluster.register_application("torch-script", "floats", "None", SLO)
    pytorch_deployer.deploy_pytorch_model(cluster, "torch-script", 1, "floats", scores,
                                          torch.jit.script(model), batch_size=4)  # fmt: skip
    cluster.link_model_to_app("torch-script", "torch-script")
    check(cluster, "torch-script", model, rows(10, 6, np.float32))
    check(cluster, "torch-script", model, rows(11, 1, np.float32))


def test_exported_program_with_a_dynamic_batch(cluster):
    model = TinyNet(2).eval()
    program = torch.export.export(
        model, (torch.zeros(2, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    pytorch_deployer.create_endpoint(cluster, "torch-export", "floats", scores, program,
                                     slo_micros=SLO)  # fmt: skip
    check(cluster, "torch-export", model, rows(20, 5, np.float32))
    check(cluster, "torch-export", model, rows(21, 1, np.float32))


def test_second_version_then_rollback(cluster, eager_app):
    app, v1 = eager_app
    v2 = TinyNet(5)
    batch = rows(30, 3)
    pytorch_deployer.deploy_pytorch_model(cluster, app, 2, "doubles", scores, v2)
    check(cluster, app, v2, batch)
    cluster.set_model_version(app, "1")
    check(cluster, app, v1, batch)
    cluster.set_model_version(app, "2")
    check(cluster, app, v2, batch)


def test_cuda_without_a_gpu_stops_the_container_with_a_config_error(tmp_path, spawn):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    artifact = pytorch_framework.save(scores, TinyNet(0), tmp_path / "model")
    container = spawn("container-cuda", [sys.executable, "-m", "schooner.runtime"], env={
        "CLIPPER_MODEL_NAME": "torch-cuda", "CLIPPER_MODEL_VERSION": "1",
        "CLIPPER_MODEL_PATH": str(artifact), "SCHOONER_DEVICE": "cuda",
        "SCHOONER_READY_FILE": str(tmp_path / "ready"),
    })  # fmt: skip
    assert container.wait_for_exit(60) == 2  # configuration, not a silent fall back to cpu
    assert "SCHOONER_DEVICE=cuda" in container.log() and "is_available" in container.log()
    assert not (tmp_path / "ready").exists()


@pytest.mark.gpu("torch")
def test_cuda_replica_answers_equal_torch(cluster):
    model = TinyNet(3)
    manager = cluster.cm
    manager.device = "cuda:0"
    try:
        pytorch_deployer.create_endpoint(cluster, "torch-cuda", "doubles", scores, model,
                                         slo_micros=SLO)  # fmt: skip
    finally:
        manager.device = "cpu"
    batch = rows(40, 5)
    got = np.array(outputs(predict(cluster, "torch-cuda", {"input_batch": batch})))
    np.testing.assert_allclose(got, expected(model, batch), rtol=1e-4, atol=1e-5)

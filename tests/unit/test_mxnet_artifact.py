"""The MXNet artifact: saving, loading, predicting and refusing.

MXNet 1.9.1 needs numpy < 1.24, so it cannot be imported here: what needs no MXNet (the data
shapes, copying a checkpoint, MissingExtra) runs in-process, the rest in the environment
the local manager runs MXNet replicas with (built once from base_images/mxnet/), by running
a script there that prints JSON.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from schooner.frameworks import mxnet as fmx
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest
from schooner.runtime.errors import FrameworkError, MissingExtra

pytestmark = pytest.mark.timeout(600)  # the first use builds the MXNet environment

MXNET_HERE = importlib.util.find_spec("mxnet") is not None


def mxnet_python() -> str:
    """The interpreter the local manager runs MXNet replicas with (built once, then cached)."""
    from schooner.admin.managers.local import environments

    framework = fmx.MXNetFramework
    return environments.resolve(framework.base_image, needs=framework.requires).python


def run_in_mxnet(code: str, *args: object, cwd: Path) -> dict:
    """Run ``code`` with the MXNet environment's python; the JSON on its last stdout line."""
    argv = [mxnet_python(), "-c", textwrap.dedent(code), *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fake_checkpoint(directory: Path, epoch: int = 0, version: int = 10901) -> Path:
    """The two files of a checkpoint, enough for save (which copies them unread)."""
    prefix = directory / "net"
    directory.mkdir(parents=True, exist_ok=True)
    symbol = {"nodes": [], "arg_nodes": [], "heads": [], "attrs": {"mxnet_version": ["int", version]}}
    Path(f"{prefix}-symbol.json").write_text(json.dumps(symbol))
    Path(f"{prefix}-{epoch:04d}.params").write_bytes(b"params")
    return prefix


def echo(model, inputs):
    return [str(x) for x in inputs]


# --------------------------------------------------------------------------- no MXNet needed

DataDesc = namedtuple("DataDesc", "name shape")  # what mx.io.DataDesc is, less dtype/layout


@pytest.mark.parametrize("given, expected", [
    ([1, 784], [{"name": "data", "shape": [1, 784]}]),
    ([("data", (8, 4))], [{"name": "data", "shape": [8, 4]}]),
    ([["data", [1, 3, 2]]], [{"name": "data", "shape": [1, 3, 2]}]),  # Clipper's JSON form
    ({"a": (1, 2), "b": [1, 5]}, [{"name": "a", "shape": [1, 2]}, {"name": "b", "shape": [1, 5]}]),
    ([DataDesc("data", (2, 4))], [{"name": "data", "shape": [2, 4]}]),
    (DataDesc("data", (2, 4)), [{"name": "data", "shape": [2, 4]}]),
    ([{"name": "x", "shape": [1, 4], "dtype": "float64", "layout": "NC"}],
     [{"name": "x", "shape": [1, 4], "dtype": "float64", "layout": "NC"}]),
    ([np.int64(1), np.int64(4)], [{"name": "data", "shape": [1, 4]}]),
])  # fmt: skip
def test_data_shapes_in_each_of_clippers_forms(given, expected):
    assert fmx.data_shapes(given) == expected


@pytest.mark.parametrize("given, error", [
    ([], ValueError),
    ("data", TypeError),
    ([("data", (0, 4))], ValueError),
    ([("data", ())], ValueError),
    ([(3, (1, 4))], TypeError),
    ([("data", (1, 4)), ("data", (1, 2))], ValueError),
    ([object()], TypeError),
])  # fmt: skip
def test_bad_data_shapes_are_refused(given, error):
    with pytest.raises(error):
        fmx.data_shapes(given)


def test_a_checkpoint_is_copied_without_importing_mxnet(tmp_path):
    prefix = fake_checkpoint(tmp_path / "ckpt", epoch=3, version=10800)
    path = fmx.save(echo, (prefix, 3), [1, 4], tmp_path / "art", pkgs_to_install=["six==1.16.0"])
    assert {p.name for p in path.iterdir()} == {
        MANIFEST_NAME, "requirements.txt", fmx.FUNC_FILE, fmx.SYMBOL_FILE, fmx.PARAMS_FILE,
    }
    assert (path / fmx.PARAMS_FILE).read_bytes() == b"params"
    manifest = read_manifest(path)
    assert manifest["framework"] == "mxnet"
    assert manifest["versions"]["mxnet"] == "1.8.0"  # the version the symbol file records
    assert manifest["mxnet"] == {"data_shapes": [{"name": "data", "shape": [1, 4]}]}
    assert (path / "requirements.txt").read_text() == "six==1.16.0\n"
    assert "mxnet" not in sys.modules
    # a prefix alone means epoch 0
    fmx.save(echo, str(fake_checkpoint(tmp_path / "ckpt0")), [1, 4], tmp_path / "art0")


def test_a_missing_checkpoint_or_model_is_refused_clearly(tmp_path):
    prefix = fake_checkpoint(tmp_path / "ckpt", epoch=0)
    with pytest.raises(FileNotFoundError, match=r"at epoch 2: missing .*net-0002\.params"):
        fmx.save(echo, (prefix, 2), [1, 4], tmp_path / "a")
    with pytest.raises(TypeError, match="mx.mod.Module, a hybridized Gluon HybridBlock"):
        fmx.save(echo, object(), [1, 4], tmp_path / "b")


def test_version_rule_loads_older_minors_of_the_same_major():
    assert fmx._loads("1.9.1", "1.9.1") and fmx._loads("1.5.0", "1.9.1")
    assert not fmx._loads("1.10.0", "1.9.1") and not fmx._loads("2.0.0", "1.9.1")
    assert not fmx._loads("0.12.1", "1.9.1")


@pytest.mark.skipif(MXNET_HERE, reason="mxnet is importable in this environment")
def test_loading_without_mxnet_names_the_extra(tmp_path):
    path = fmx.save(echo, fake_checkpoint(tmp_path / "ckpt"), [1, 4], tmp_path / "art")
    framework = fmx.MXNetFramework(open_artifact(path))
    with pytest.raises(MissingExtra, match=r"pip install 'schooner\[mxnet\]'") as info:
        framework.load()
    assert info.value.extra == "mxnet" and info.value.framework == "mxnet"


@pytest.mark.skipif(MXNET_HERE, reason="mxnet is importable in this environment")
def test_an_mxnet_that_cannot_import_under_numpy_2_says_why(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "mxnet"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'bool'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(FrameworkError, match=r"needs numpy<1.24 .* base image 'mxnet'"):
        fmx._import_mxnet()


# --------------------------------------------------------------------------- in the MXNet env

BUILD = """
    import json, sys
    import numpy as np
    import mxnet as mx

    def mlp(with_softmax):
        data = mx.sym.Variable("data")
        hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=8, name="fc1"),
                                   act_type="relu")
        out = mx.sym.FullyConnected(hidden, num_hidden=3, name="fc2")
        return mx.sym.SoftmaxOutput(out, name="softmax") if with_softmax else out

    def module(symbol, batch):
        mod = mx.mod.Module(symbol, label_names=[a for a in symbol.list_arguments()
                                                 if a.endswith("label")])
        mod.bind(data_shapes=[("data", (batch, 4))], for_training=False)
        mx.random.seed(0)
        mod.init_params(mx.init.Uniform(0.5))
        return mod

    def forward(mod, x):
        mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
        return mod.get_outputs()[0].asnumpy()
"""


def test_module_and_gluon_models_round_trip(tmp_path):
    code = BUILD + """
    from schooner.frameworks import mxnet as fmx
    from schooner.frameworks.artifact import open_artifact, read_manifest

    def rows(model, inputs):
        return [json.dumps(r.tolist()) for r in forward(model, inputs)]

    def one_by_one(model, inputs):  # Clipper's advice for networks with a label input
        probs = model.predict(mx.io.NDArrayIter(np.asarray(inputs), batch_size=1))
        return [json.dumps(r.tolist()) for r in probs.asnumpy()]

    x = np.random.default_rng(1).random((5, 4))
    plain, soft = module(mlp(False), 5), module(mlp(True), 1)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(6, activation="tanh"), mx.gluon.nn.Dense(2))
    net.initialize(mx.init.Uniform(0.5))
    net.hybridize()
    gluon_expected = net(mx.nd.array(x)).asnumpy()
    cases = {
        "module": (rows, plain, [mx.io.DataDesc("data", (5, 4))], forward(plain, x)),
        "softmax": (one_by_one, soft, [("data", (1, 4))],
                    np.vstack([forward(soft, r[None]) for r in x])),
        "gluon": (rows, net, {"data": (1, 4)}, gluon_expected),
    }
    out = {}
    for name, (func, model, shapes, expected) in cases.items():
        path = fmx.save(func, model, shapes, sys.argv[1] + "/" + name)
        fw = fmx.MXNetFramework(open_artifact(path))
        fw.load()
        got = [json.loads(o) for o in fw.predict(x)]
        got_two = [json.loads(o) for o in fw.predict(x[:2])]  # another batch size
        out[name] = {"got": got, "got_two": got_two, "expected": expected.tolist(),
                     "manifest": read_manifest(path)}
    print(json.dumps(out))
    """
    out = run_in_mxnet(code, tmp_path, cwd=tmp_path)
    for name, case in out.items():
        np.testing.assert_allclose(case["got"], case["expected"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(case["got_two"], case["expected"][:2], rtol=1e-5, err_msg=name)
        assert case["manifest"]["versions"]["mxnet"] == "1.9.1", name
    assert out["module"]["manifest"]["mxnet"]["data_shapes"] == [
        {"name": "data", "shape": [5, 4], "dtype": "float32", "layout": "NCHW"}
    ]


def test_incompatible_version_and_absent_gpu_are_clear_errors(tmp_path):
    code = BUILD + """
    from schooner.frameworks import mxnet as fmx
    from schooner.frameworks.artifact import open_artifact
    from schooner.runtime.errors import ConfigError, IncompatibleArtifact

    path = fmx.save(lambda m, xs: list(map(str, xs)), module(mlp(False), 1), [1, 4],
                    sys.argv[1] + "/art")
    manifest_file = path / "schooner.json"

    def attempt(version, device="cpu"):
        manifest = json.loads(manifest_file.read_text())
        manifest["versions"]["mxnet"] = version
        manifest_file.write_text(json.dumps(manifest))
        try:
            fmx.MXNetFramework(open_artifact(path), device).load()
        except (IncompatibleArtifact, ConfigError) as exc:
            return [type(exc).__name__, str(exc)]
        return ["loaded", ""]

    print(json.dumps({
        "newer_minor": attempt("1.10.0"), "other_major": attempt("2.0.0"),
        "older_minor": attempt("1.8.0"),
        "cuda": attempt("1.9.1", "cuda:0") if mx.context.num_gpus() == 0 else None,
    }))
    """
    out = run_in_mxnet(code, tmp_path, cwd=tmp_path)
    for key, made in (("newer_minor", "1.10.0"), ("other_major", "2.0.0")):
        kind, message = out[key]
        assert kind == "IncompatibleArtifact", out[key]
        assert f"MXNet {made} checkpoint" in message and "MXNet 1.9.1" in message
    assert out["older_minor"][0] == "loaded"
    if out["cuda"] is not None:
        kind, message = out["cuda"]
        assert kind == "ConfigError" and "SCHOONER_DEVICE=cuda:0" in message
        assert "sees no GPU" in message and "CPU-only" in message


def test_a_function_pickled_under_numpy_2_loads_under_numpy_1(tmp_path):
    """The deploying environment has numpy 2, the MXNet one numpy 1: captured arrays load."""
    code = BUILD + """
    mod = module(mlp(False), 1)
    mod.save_checkpoint(sys.argv[1] + "/net", 0)
    print(json.dumps({"numpy": np.__version__}))
    """
    assert run_in_mxnet(code, tmp_path, cwd=tmp_path)["numpy"].startswith("1.")
    weights = np.array([1.0, -2.0, 0.5])
    scale = np.float32(3.0)

    def weighted(model, inputs):
        import mxnet as mx

        model.forward(mx.io.DataBatch([mx.nd.array(inputs)]), is_train=False)
        outputs = model.get_outputs()[0].asnumpy()
        return [json.dumps([float(r @ weights) * float(scale), r.tolist()]) for r in outputs]

    path = fmx.save(weighted, tmp_path / "net", [1, 4], tmp_path / "art")
    x = np.random.default_rng(2).random((3, 4))
    np.save(tmp_path / "x.npy", x)
    code = """
    import json, sys
    import numpy as np
    from schooner.frameworks import mxnet as fmx
    from schooner.frameworks.artifact import open_artifact
    fw = fmx.MXNetFramework(open_artifact(sys.argv[1]))
    fw.load()
    print(json.dumps([json.loads(o) for o in fw.predict(np.load(sys.argv[2]))]))
    """
    answers = run_in_mxnet(code, path, tmp_path / "x.npy", cwd=tmp_path)
    assert len(answers) == 3
    for value, row in answers:
        assert value == pytest.approx(float(np.asarray(row) @ weights) * 3.0, rel=1e-6)


@pytest.mark.gpu
def test_cuda_binds_on_the_gpu_or_says_why_not(tmp_path):
    code = BUILD + """
    from schooner.frameworks import mxnet as fmx
    from schooner.frameworks.artifact import open_artifact
    from schooner.runtime.errors import ConfigError

    def rows(model, inputs):
        return [json.dumps(r.tolist()) for r in forward(model, inputs)]

    mod = module(mlp(False), 2)
    x = np.random.default_rng(3).random((2, 4))
    path = fmx.save(rows, mod, [2, 4], sys.argv[1] + "/art")
    fw = fmx.MXNetFramework(open_artifact(path), "cuda:0")
    try:
        fw.load()
    except ConfigError as exc:
        print(json.dumps({"gpus": mx.context.num_gpus(), "error": str(exc)}))
    else:
        got = [json.loads(o) for o in fw.predict(x)]
        print(json.dumps({"gpus": mx.context.num_gpus(), "got": got,
                          "context": str(fw.model.get_outputs()[0].context),
                          "expected": forward(mod, x).tolist()}))
    """
    out = run_in_mxnet(code, tmp_path, cwd=tmp_path)
    if out["gpus"] == 0:  # the environment's mxnet is the CPU-only wheel from PyPI
        assert "CPU-only" in out["error"] and "SCHOONER_DEVICE=cuda:0" in out["error"]
    else:
        assert "gpu(0)" in out["context"]
        np.testing.assert_allclose(out["got"], out["expected"], rtol=1e-4)

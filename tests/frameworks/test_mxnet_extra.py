"""``pip install 'schooner[mxnet]'`` gives an environment that deploys and serves MXNet models.

A user who deploys MXNet models from Python installs the extra in an environment of its own
(MXNet 1.9.1 cannot live beside numpy >= 1.24). This builds exactly that environment, once,
with ``pip install -e '.[mxnet]'`` — constrained to the versions CI pins (.ci/requirements.lock
and base_images/mxnet/requirements.txt) so no upstream release changes it — and runs a user's
script in it: start a local cluster, build a Module, deploy it, query it over HTTP, stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from schooner import base_images
from schooner.admin.managers.local.environments import envs_root

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first run builds the env

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / ".ci" / "requirements.lock"

# The user's script, run with the extra's interpreter: argv = SCHOONER_HOME, three ports.
SCRIPT = """
import json, sys, urllib.request
import numpy as np
import mxnet as mx
from schooner.admin import ClipperConnection, LocalContainerManager
from schooner.admin.deployers import mxnet as mxnet_deployer

home, query, management, rpc = sys.argv[1], *map(int, sys.argv[2:])
data = mx.sym.Variable("data")
net = mx.sym.FullyConnected(mx.sym.Activation(mx.sym.FullyConnected(
    data, num_hidden=8, name="fc1"), act_type="relu"), num_hidden=2, name="fc2")
model = mx.mod.Module(net, label_names=[])
model.bind(data_shapes=[("data", (1, 3))], for_training=False)
model.init_params(mx.init.Uniform(1.0))
x = np.random.RandomState(0).uniform(-1, 1, (4, 3))
expected = model.predict(mx.io.NDArrayIter(x, batch_size=1)).asnumpy().tolist()

def predict(model, inputs):
    return [json.dumps(row.tolist()) for row in
            model.predict(mx.io.NDArrayIter(np.asarray(inputs), batch_size=1)).asnumpy()]

conn = ClipperConnection(LocalContainerManager(
    "mxnet-extra", clipper_query_port=query, clipper_management_port=management,
    clipper_rpc_port=rpc, schooner_home=home, grace_s=3.0, deploy_timeout_s=240.0))
conn.start_clipper()
try:
    mxnet_deployer.create_endpoint(conn, "mx", "doubles", predict, model, [("data", (1, 3))])
    request = urllib.request.Request(
        f"http://{conn.get_query_addr()}/mx/predict",
        data=json.dumps({"input_batch": x.tolist()}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answers = json.loads(response.read())["batch_predictions"]
    replica_python = json.loads(
        (conn.cm.layout.artifact_dir("mx", "1") / "environment.json").read_text())["python"]
finally:
    conn.stop_all()
print(json.dumps({"expected": expected, "answers": answers, "replica_python": replica_python,
                  "versions": [mx.__version__, np.__version__]}))
"""


def _constraints() -> list[str]:
    """The lock's pins, except those base_images/mxnet pins itself (numpy among them)."""
    mxnet_pins = base_images.requirements("mxnet")
    pinned = {canonicalize_name(line.split("==")[0]) for line in mxnet_pins}
    lines = LOCK.read_text().splitlines() if LOCK.is_file() else []
    kept = [line for line in lines if "==" in line and not line.startswith("#")
            and canonicalize_name(line.split("==")[0]) not in pinned]  # fmt: skip
    return [*kept, *mxnet_pins]


def _pin(constraints: list[str], name: str) -> str:
    return next((c for c in constraints if canonicalize_name(c.split("==")[0]) == name), name)


@pytest.fixture(scope="module")
def extra_python() -> str:
    """The interpreter of a venv made with ``pip install -e '.[mxnet]'`` (built once)."""
    constraints = _constraints()
    key = hashlib.sha256("\n".join([sys.version, (ROOT / "setup.cfg").read_text(),
                                    *constraints]).encode()).hexdigest()[:16]  # fmt: skip
    venv = envs_root() / f"extra-mxnet-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraint_file = venv / "constraints.txt"
    constraint_file.write_text("\n".join(constraints) + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    build_tools = [_pin(constraints, "setuptools"), _pin(constraints, "wheel")]
    for argv in (pip + build_tools,
                 pip + ["--no-build-isolation", "-c", str(constraint_file), "-e", f"{ROOT}[mxnet]"]):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=800)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    (venv / ".complete").write_text("ok\n")
    return str(python)


def test_the_mxnet_extra_imports_mxnet_and_serves_a_model(extra_python, tmp_path):
    from conftest import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCHOONER_HOME")}
    argv = [extra_python, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "home"),
            *(str(free_port()) for _ in range(3))]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["versions"] == ["1.9.1", "1.23.5"]
    # the extra's own interpreter can load MXNet models, so its replicas run in it
    assert result["replica_python"] == extra_python
    assert all(a["default"] is False for a in result["answers"]), result["answers"]
    got = [json.loads(a["output"]) if isinstance(a["output"], str) else a["output"]
           for a in result["answers"]]  # fmt: skip
    assert len(got) == 4
    for row, want in zip(got, result["expected"]):
        assert row == pytest.approx(want, rel=1e-5)

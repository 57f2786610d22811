"""An MXNet MLP (32 -> 64 -> 10) served through the Module API.

MXNet cannot be imported beside numpy 2, so the checkpoint is written by the interpreter
of the MXNet environment (the one the local manager and the benchmark run it with), then
saved as an artifact from here with the checkpoint's prefix, which needs no MXNet.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import mxnet

BUILD = """
import sys
import numpy as np
import mxnet as mx
data = mx.sym.Variable("data")
hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=64, name="fc1"), act_type="relu")
net = mx.sym.FullyConnected(hidden, num_hidden=10, name="fc2")
shapes, _, _ = net.infer_shape(data=(1, 32))
rng = np.random.RandomState(0)
params = {n: mx.nd.array(rng.standard_normal(s)) for n, s in zip(net.list_arguments(), shapes)
          if n != "data"}
mx.model.save_checkpoint(sys.argv[1], 0, net, params, {})
"""


def classify(model, inputs):
    import mxnet as mx

    model.forward(mx.io.DataBatch([mx.nd.array(inputs)]), is_train=False)
    return [str(int(i)) for i in model.get_outputs()[0].asnumpy().argmax(axis=1)]


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    from schooner.admin.managers.local import environments

    framework = mxnet.MXNetFramework
    python = environments.resolve(framework.base_image, needs=framework.requires).python
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "checkpoint" / "mlp"
    prefix.parent.mkdir(exist_ok=True)
    result = subprocess.run([python, "-c", BUILD, str(prefix)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise RuntimeError(f"building the MXNet checkpoint with {python} failed")
    path = mxnet.save(classify, str(prefix), [1, 32], directory / "artifact")
    rng = np.random.default_rng(0)
    return path, "doubles", lambda n: rng.standard_normal((n, 32))

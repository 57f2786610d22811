"""The models every system under test serves, built the same way for each of them.

``build(name)`` returns ``predict(batch) -> list[str]``, where ``batch`` is a 2-D float32
array (numpy or torch, one row per input) or a list of rows. Schooner serves it as a
closure; the floor and the peers (LitServe, Ray Serve, in their own environment) import
this module and call the very same function, so every system does the same work.

* ``noop``: answers ``"0"`` for every input.
* ``mlp``: a PyTorch MLP 256 -> 512 -> 512 -> 10 (fixed seed), answering the arg-max class.
* ``sublinear``: the MLP behind a fixed 2 ms wait per call (``time.sleep``, so the CPU is
  free meanwhile), as an accelerator's launch-and-copy round trip or a remote feature store
  would cost; its cost per call grows far slower than the batch (about 2.1 ms for 1 input,
  3 ms for 32), which is the case adaptive batching is for.

Torch runs on one thread everywhere (the server side has one core).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["FEATURES", "MODELS", "build", "body", "oip_body", "oip_binary_body"]

FEATURES = 256  # floats per input
MODELS = ("noop", "mlp", "sublinear")
SUBLINEAR_FIXED_S = 0.002

Predict = Callable[[Any], list[str]]


def body(features: int = FEATURES) -> bytes:
    """The JSON request body every system gets: one input of ``features`` floats."""
    values = ",".join(f"{(i % 17) / 17:.4f}" for i in range(features))
    return b'{"input":[%s]}' % values.encode()


def oip_body(features: int = FEATURES) -> bytes:
    """The same input as an Open Inference Protocol request: one FP32 row, JSON data."""
    values = ",".join(f"{(i % 17) / 17:.4f}" for i in range(features))
    return (b'{"inputs":[{"name":"input","shape":[1,%d],"datatype":"FP32","data":[%s]}]}'
            % (features, values.encode()))


def oip_binary_body(features: int = FEATURES) -> tuple[bytes, int]:
    """The same input with Triton's binary tensor extension: (body, JSON header length)."""
    import json
    import struct

    values = [float(v) for v in json.loads(body(features))["input"]]
    header = (b'{"inputs":[{"name":"input","shape":[1,%d],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":%d}}]}' % (features, 4 * features))
    return header + struct.pack(f"<{features}f", *values), len(header)


def build(name: str) -> Predict:
    if name == "noop":
        return _noop()
    if name == "mlp":
        return _mlp(0.0)
    if name == "sublinear":
        return _mlp(SUBLINEAR_FIXED_S)
    raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")


def _noop() -> Predict:
    def noop(batch: Any) -> list[str]:
        return ["0"] * len(batch)

    return noop


def _mlp(fixed_wait_s: float) -> Predict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    ).eval()  # fmt: skip

    def mlp(batch: Any) -> list[str]:
        torch.set_num_threads(1)  # also in a process that unpickled this closure
        if fixed_wait_s:
            time.sleep(fixed_wait_s)
        # torch.tensor copies: a batch may be a read-only view of a received frame.
        x = batch if isinstance(batch, torch.Tensor) else torch.tensor(batch, dtype=torch.float32)
        with torch.inference_mode():
            labels = net(x).argmax(dim=1).tolist()
        return [str(label) for label in labels]

    return mlp

"""MLServer (SeldonIO's reference Open Inference Protocol server) serving a benchmark model,
with its adaptive batching on; run by the MLServer environment's interpreter:

    python -m benchmarks.peers.mlserver PORT MODEL MAX_BATCH WAIT_S

It writes MLServer's settings into a temporary folder and runs ``mlserver start`` there: REST
on PORT (``/v2/models/bench/infer``), gRPC and metrics on free ports, one parallel worker
(MLServer's default), ``max_batch_size`` MAX_BATCH and ``max_batch_time`` WAIT_S. The model
(``BenchModel``) calls the very function ``benchmarks.models.build(MODEL)`` that every other
system serves, on the decoded ``[N, 256]`` FP32 input.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from typing import Any

try:  # only in the MLServer environment
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
except ImportError:  # imported elsewhere for its docstring only
    MLModel = object  # type: ignore[misc,assignment]


class BenchModel(MLModel):  # type: ignore[misc,valid-type]
    async def load(self) -> bool:
        from benchmarks import models

        self._predict = models.build(self.settings.parameters.extra["model"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0])
        answers = self._predict(batch)
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="output", shape=[len(answers)], datatype="BYTES", data=answers)
        ])  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str]) -> Any:
    port, model, max_batch, wait_s = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    folder = tempfile.mkdtemp(prefix="schooner-bench-mlserver-")
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": _free_port(),
                "metrics_port": _free_port(), "parallel_workers": 1, "debug": False}  # fmt: skip
    model_settings = {
        "name": "bench", "implementation": "benchmarks.peers.mlserver.BenchModel",
        "max_batch_size": max_batch, "max_batch_time": wait_s,
        "parameters": {"extra": {"model": model}},
    }  # fmt: skip
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump(settings, f)
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump(model_settings, f)
    mlserver = os.path.join(os.path.dirname(sys.executable), "mlserver")
    os.execv(mlserver, [mlserver, "start", folder])


if __name__ == "__main__":
    main(sys.argv[1:])

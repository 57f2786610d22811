"""NVIDIA Triton Inference Server's Python backend, through ``nvidia-pytriton`` (whose wheel
bundles a real ``tritonserver``; it runs on CPU), with Triton's dynamic batcher on; run by the
Triton environment's interpreter:

    python -m benchmarks.peers.triton PORT MODEL MAX_BATCH WAIT_S

``tritonserver`` serves HTTP on 127.0.0.1:PORT (gRPC and metrics on free loopback ports);
its Python-backend stub hands each batch to this process, which runs
``benchmarks.models.build(MODEL)`` on the ``[N, 256]`` FP32 input and answers one BYTES label
per row. ``POST /v2/models/bench/infer`` takes the Open Inference Protocol body
(``benchmarks.peers.forms``, form ``oip``). ``ModelConfig(max_batch_size=MAX_BATCH,
batcher=DynamicBatcher(max_queue_delay_microseconds=WAIT_S))``, one model instance.

The stub is a separate executable that loads ``libpython3.X.so`` from the library path: left
alone it finds the system's, not the one of the interpreter this environment was made from,
so ``LD_LIBRARY_PATH`` is set to the latter's lib folder first.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import sysconfig
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str]) -> int:
    port, model, max_batch, wait_s = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths = [libdir, *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
        os.environ["LD_LIBRARY_PATH"] = ":".join(paths)

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from benchmarks.models import FEATURES, build

    predict = build(model)

    @batch  # type: ignore[misc]
    def infer(input: Any) -> dict[str, Any]:  # "input": the tensor's name
        labels = predict(input)
        return {"output": np.array([[label.encode()] for label in labels], dtype=np.object_)}

    config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1",
                          grpc_port=_free_port(), metrics_port=_free_port(), log_verbose=0)  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through Triton's __exit__
    with Triton(config=config) as triton:
        triton.bind(
            model_name="bench", infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(FEATURES,))],
            outputs=[Tensor(name="output", dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=round(wait_s * 1e6))),
            strict=False,
        )  # fmt: skip
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

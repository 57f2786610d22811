"""BentoML serving a benchmark model with its adaptive batching on; run by the BentoML
environment's interpreter:

    python -m benchmarks.peers.bentoml PORT MODEL MAX_BATCH WAIT_S

It runs ``bentoml serve benchmarks.peers.bentoml:Bench`` (the production server, one worker)
on 127.0.0.1:PORT. ``POST /predict`` takes ``{"input": [[...]]}``: BentoML's batchable APIs
take a batch per request and concatenate requests along the first axis, so the benchmark's
256 floats come as one row (``benchmarks.peers.forms``, form ``row``), and the answer is that
batch's labels, ``["0"]``. ``@bentoml.api(batchable=True, max_batch_size=MAX_BATCH)``:
BentoML has no wait knob (its dispatcher chooses how long to wait from the latencies it
observes), so WAIT_S is not used; ``max_latency_ms`` is raised to 60 s so that its
dispatcher never sheds a request the other systems would have answered. The model and the
batch limit reach the worker processes through ``SCHOONER_BENCH_MODEL`` and
``SCHOONER_BENCH_MAX_BATCH``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

MODEL_ENV, MAX_BATCH_ENV = "SCHOONER_BENCH_MODEL", "SCHOONER_BENCH_MAX_BATCH"

if MODEL_ENV in os.environ:  # imported by BentoML's server, in the BentoML environment
    import bentoml
    import numpy as np

    @bentoml.service(workers=1, traffic={"timeout": 60})
    class Bench:
        """``benchmarks.models.build($SCHOONER_BENCH_MODEL)`` on each batch of rows."""

        def __init__(self) -> None:
            from benchmarks.models import build

            self.model = build(os.environ[MODEL_ENV])

        @bentoml.api(batchable=True, max_batch_size=int(os.environ[MAX_BATCH_ENV]),
                     max_latency_ms=60_000)  # fmt: skip
        def predict(self, input: np.ndarray) -> list[str]:  # "input": the body's key
            return self.model(input)


def main(argv: list[str]) -> Any:
    port, model, max_batch = int(argv[0]), argv[1], int(argv[2])
    os.environ.update({MODEL_ENV: model, MAX_BATCH_ENV: str(max_batch),
                       "BENTOML_DO_NOT_TRACK": "True"})  # fmt: skip
    bentoml_cli = os.path.join(os.path.dirname(sys.executable), "bentoml")
    os.execv(bentoml_cli, [bentoml_cli, "serve", "benchmarks.peers.bentoml:Bench", "--host",
                           "127.0.0.1", "--port", str(port)])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])

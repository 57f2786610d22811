"""Mosec (a Rust HTTP front end, Python workers over a Unix socket) with dynamic batching:
one worker process, run by the Mosec environment's interpreter:

    python -m benchmarks.peers.mosec PORT MODEL MAX_BATCH WAIT_S

``POST /inference`` takes ``{"input": [...]}`` and answers ``{"output": ...}`` (Mosec's
default JSON (de)serialisation); ``append_worker(num=1, max_batch_size=MAX_BATCH,
max_wait_time=WAIT_S in ms)``. Mosec takes its settings from ``MOSEC_*`` variables or its
own command line, and its workers are spawned processes that parse ``sys.argv`` again, so
everything (the model too, as ``SCHOONER_BENCH_MODEL``) is passed through the environment
and this script's arguments never reach Mosec's parser as options. Mosec's wait is whole
milliseconds and 0 means "its default (10 ms)", so WAIT_S is rounded and a wait of 0 goes
to its (deprecated) ``--wait 0``, which is all ``sys.argv`` then holds.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mosec import Server, Worker

MODEL_ENV = "SCHOONER_BENCH_MODEL"


class Bench(Worker):  # type: ignore[misc]
    """Runs ``benchmarks.models.build($SCHOONER_BENCH_MODEL)`` on each batch of inputs."""

    def __init__(self) -> None:
        super().__init__()
        from benchmarks.models import build

        self.model = build(os.environ[MODEL_ENV])

    def forward(self, data: list[dict[str, Any]]) -> list[dict[str, str]]:
        labels = self.model([item["input"] for item in data])
        return [{"output": label} for label in labels]


def main(argv: list[str]) -> int:
    port, model, max_batch, wait_s = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    wait_ms = round(wait_s * 1000)
    os.environ.update({MODEL_ENV: model, "MOSEC_PORT": str(port), "MOSEC_ADDRESS": "127.0.0.1",
                       "MOSEC_TIMEOUT": "60000", "MOSEC_LOG_LEVEL": "warning"})  # fmt: skip
    # What the spawned workers' parser sees: never PORT MODEL ...
    sys.argv = sys.argv[:1] + (["--wait", "0"] if wait_ms < 1 else [])
    server = Server()
    server.append_worker(Bench, num=1, max_batch_size=max_batch, max_wait_time=wait_ms)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

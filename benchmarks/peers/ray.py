"""Ray Serve with ``@serve.batch``: one replica, a local Ray instance started here.

    python -m benchmarks.peers.ray PORT MODEL MAX_BATCH WAIT_S

``max_ongoing_requests`` is raised from Ray's default (5) to 4x the batch size, else no
batch could ever exceed 5 inputs; Ray's dashboard and usage reporting are off.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from benchmarks.models import build


def deployment(model: str, max_batch: int, wait_s: float) -> Any:
    @serve.deployment(num_replicas=1, max_ongoing_requests=4 * max_batch,
                      ray_actor_options={"num_cpus": 1})  # fmt: skip
    class Bench:
        def __init__(self) -> None:
            self.model = build(model)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def predict(self, inputs: list[Any]) -> list[str]:
            return self.model(inputs)

        async def __call__(self, request: Request) -> dict[str, str]:
            body = await request.json()
            return {"output": await self.predict(body["input"])}

    return Bench.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment


def main(argv: list[str]) -> int:
    port, model, max_batch, wait_s = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment(model, max_batch, wait_s), route_prefix="/predict")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

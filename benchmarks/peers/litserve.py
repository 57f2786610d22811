"""LitServe with its batching on: one inference worker, one API server, its fast queue.

    python -m benchmarks.peers.litserve PORT MODEL MAX_BATCH WAIT_S
"""

import sys
from typing import Any

import litserve as ls

from benchmarks.models import build


class BenchAPI(ls.LitAPI):
    """Decode ``{"input": [...]}``, predict a batch of inputs, answer ``{"output": ...}``."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model

    def setup(self, device: str) -> None:
        self.model = build(self.model_name)

    def decode_request(self, request):  # no annotation: LitServe then passes the JSON body
        return request["input"]

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs  # a list of rows; the model takes it as it is

    def predict(self, x: list[Any]) -> list[str]:
        return self.model(x)

    def unbatch(self, output: list[str]) -> list[str]:
        return output

    def encode_response(self, output: str) -> dict[str, str]:
        return {"output": output}


def main(argv: list[str]) -> int:
    port, model, max_batch, wait_s = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    api = BenchAPI(model, max_batch_size=max_batch, batch_timeout=wait_s)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          fast_queue=True, timeout=60)  # fmt: skip
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning",
               generate_client_file=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

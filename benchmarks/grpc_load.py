"""A closed-loop gRPC load generator for the Open Inference Protocol's ``ModelInfer``.

``wrk`` speaks HTTP/1.1 only and no gRPC load tool is packaged for this machine (apt or
PyPI), so this one keeps ``--connections`` calls in flight on one grpc.aio channel per 16
of them and sends each again as soon as it is answered, as ``wrk`` does per connection. The
request is serialized once (``raw_input_contents``, as tritonclient sends it) and answers
are not decoded, so the client spends its time in gRPC itself; it still costs far more CPU
per call than ``wrk``, which is why the server's CPU per request, not the rate, is the
figure to compare with the HTTP rows.

    python -m benchmarks.grpc_load HOST:PORT MODEL --connections 64 --seconds 4

It prints one JSON object: requests, errors, duration, throughput, p50/p99 in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

__all__ = ["main", "request_bytes"]

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str, features: int) -> bytes:
    """A serialized ModelInferRequest: one FP32 row of ``features`` values, raw contents."""
    import struct

    from benchmarks import models
    from schooner.frontend import oip_grpc_pb2 as pb

    values = [float(v) for v in json.loads(models.body(features))["input"]]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, features])
    request.outputs.add(name="output")
    request.raw_input_contents.append(struct.pack(f"<{features}f", *values))
    return bytes(request.SerializeToString())


async def _run(target: str, payload: bytes, connections: int, seconds: float) -> dict[str, float]:
    import grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, connections // 16))]
    calls = [ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
             for ch in channels]  # fmt: skip
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                await call(payload, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    duration = time.perf_counter() - began
    for ch in channels:
        await ch.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6 if latencies else 0.0

    return {"requests": len(latencies), "errors": errors, "duration_s": duration,
            "throughput_per_s": len(latencies) / duration, "p50_us": pct(0.5), "p99_us": pct(0.99)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_load")
    parser.add_argument("target", help="HOST:PORT of the gRPC service")
    parser.add_argument("model")
    parser.add_argument("--connections", type=int, default=16, help="calls in flight")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--features", type=int, default=256)
    args = parser.parse_args(argv)
    payload = request_bytes(args.model, args.features)
    result = asyncio.run(_run(args.target, payload, args.connections, args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Open Inference Protocol paths next to Clipper's, and next to MLServer, in one run.

One Schooner (frontend + one container, the local socket between them, as the local manager
runs it) serves each model (``benchmarks.models``: ``noop`` and the PyTorch ``mlp``), and
the same 256-float input reaches it four ways:

* ``clipper``: ``POST /bench/predict`` ``{"input": [...]}`` (the C fast path's body);
* ``oip-json``: ``POST /v2/models/bench/infer`` with a ``[1, 256]`` FP32 tensor in JSON;
* ``oip-binary``: the same with Triton's binary tensor extension (what tritonclient sends);
* ``oip-grpc``: ``ModelInfer`` over gRPC with raw contents (``benchmarks.grpc_load``);

and ``mlserver`` (MLServer, the reference OIP server, in its own environment: see the
README) serves the same function with its adaptive batching on, the same max batch and one
worker, queried with the ``oip-json`` body. HTTP load is ``wrk`` (one thread, load cpu);
gRPC load is a Python client on the load cpu, which saturates long before the server: read
its row for the server's CPU per request, not for its rate.

    python -m benchmarks oip                     # everything (about 4 minutes)
    python -m benchmarks oip --smoke             # Schooner's four paths, short runs (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import models
from benchmarks.e2e import Cell, Loader, load_python, load_wrk, measure, wrk_script
from benchmarks.harness import (
    add_common_args,
    free_port,
    header,
    markdown_table,
    pinned,
    placement_from,
    python_has,
    repo_root,
    write_json,
)  # fmt: skip
from benchmarks.systems import APP, start_peer, start_schooner

__all__ = ["main", "PATHS"]

PATHS = ("clipper", "oip-json", "oip-binary", "oip-grpc")


def default_mlserver_python() -> str:
    return str(Path("~/.cache/schooner/bench-peers/mlserver-venv/bin/python").expanduser())


def load_grpc(target: str, connections: int, seconds: float, cpu: int | None,
              _unused: Path) -> dict[str, float]:  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.grpc_load", target, APP,
           "--connections", str(connections), "--seconds", str(seconds)]  # fmt: skip
    out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, cwd=repo_root(),
                         timeout=seconds + 60)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"grpc_load failed:\n{out.stderr[-2000:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return {"requests": raw["requests"], "requests_per_s": raw["throughput_per_s"],
            "p50_us": raw["p50_us"], "p99_us": raw["p99_us"], "errors": raw["errors"]}  # fmt: skip


def table(cells: list[Cell]) -> str:
    clipper = {(c.model, c.concurrency): c for c in cells if c.system == "clipper"}
    rows = []
    for c in cells:
        base = clipper.get((c.model, c.concurrency))
        cpu = (f"{c.cpu_us_per_request / base.cpu_us_per_request:.2f}"
               if base and c.system != "clipper" else "")  # fmt: skip
        rate = f"{c.requests_per_s / base.requests_per_s:.2f}" if base and c.system != "clipper" else ""
        rows.append([c.model, c.concurrency, c.system, f"{c.requests_per_s:,.0f}", rate,
                     f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}", f"{c.cpu_us_per_request:,.0f}", cpu,
                     c.errors])  # fmt: skip
    return markdown_table(["model", "conns", "path", "req/s", "req/s vs clipper", "p50 ms",
                           "p99 ms", "server CPU µs/req", "CPU vs clipper", "errors"], rows,
                          "rrlrrrrrrr")  # fmt: skip


def verdicts(cells: list[Cell]) -> list[str]:
    get = {(c.model, c.system, c.concurrency): c for c in cells}
    out = []
    for model in ("noop", "mlp"):
        clip, oip = get.get((model, "clipper", 64)), get.get((model, "oip-json", 64))
        if clip and oip:
            r = oip.cpu_us_per_request / clip.cpu_us_per_request
            out.append(f"{model}, 64 connections: OIP JSON costs {r:.2f}x Clipper's path's server "
                       f"CPU per request (target <= 1.3: {'met' if r <= 1.3 else 'MISSED'})")  # fmt: skip
        ml = get.get((model, "mlserver", 64))
        if oip and ml:
            r = oip.requests_per_s / ml.requests_per_s
            out.append(f"{model}, 64 connections: Schooner's OIP JSON {r:.1f}x MLServer's req/s "
                       f"(target >= 10: {'met' if r >= 10 else 'MISSED'})")  # fmt: skip
    return out


def mlserver_versions(python: str) -> str:
    probe = "from importlib import metadata as m; print('mlserver', m.version('mlserver'))"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() or "unknown version"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks oip",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser)
    parser.add_argument("--models", default="noop,mlp")
    parser.add_argument("--paths", default=",".join((*PATHS, "mlserver")))
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=1.0, help="MLServer's max_batch_time")
    parser.add_argument("--slo-ms", type=int, default=1000)
    parser.add_argument("--mlserver-python", default=default_mlserver_python())
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    wrk = shutil.which("wrk") is not None
    if args.smoke:
        args.seconds, args.repeats = 1.0, 1
        paths = [p for p in paths if p != "mlserver"]
    elif not wrk:
        parser.error("full runs need wrk (apt-get install -y wrk); the Python loader is for --smoke")
    skipped = []
    if "mlserver" in paths and not python_has(args.mlserver_python, "mlserver"):
        paths.remove("mlserver")
        skipped.append(f"mlserver (not installed in {args.mlserver_python})")
    placement = placement_from(args)
    placement.pin_self()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="schooner-oip-") as tmp_name:
        tmp = Path(tmp_name)
        binary, header_length = models.oip_binary_body()
        bodies = {
            "clipper": (models.body(), {"Content-Type": "application/json"}),
            "oip-json": (models.oip_body(), {"Content-Type": "application/json"}),
            "oip-binary": (binary, {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(header_length)}),
        }  # fmt: skip
        loaders: dict[str, tuple[Loader, Path]]
        if wrk:
            loaders = {name: (load_wrk, wrk_script(tmp, name, body, headers))
                       for name, (body, headers) in bodies.items()}  # fmt: skip
        else:  # smoke runs without wrk: Clipper's JSON body through the Python loader only
            (tmp / "clipper.json").write_bytes(models.body())
            loaders = {"clipper": (load_python, tmp / "clipper.json")}
            paths = [p for p in paths if p in ("clipper", "oip-grpc")]
        if "oip-json" in loaders:  # MLServer gets the OIP body (only with wrk: see above)
            loaders["mlserver"] = loaders["oip-json"]
        from schooner.frameworks import closure

        for model in args.models.split(","):
            artifact = closure.save(models.build(model), tmp / f"{model}-artifact")
            grpc_port = free_port()
            running = start_schooner(model, artifact, tmp, placement.server_cpu,
                                     batch_size=args.max_batch, slo_micros=args.slo_ms * 1000,
                                     grpc_port=grpc_port)  # fmt: skip
            base = running.url.rsplit(f"/{APP}/predict", 1)[0]
            urls = {"clipper": running.url, "oip-json": f"{base}/v2/models/{APP}/infer",
                    "oip-binary": f"{base}/v2/models/{APP}/infer",
                    "oip-grpc": f"127.0.0.1:{grpc_port}"}  # fmt: skip
            try:
                for path in [p for p in PATHS if p in paths]:
                    loader, arg = (load_grpc, Path()) if path == "oip-grpc" else loaders[path]
                    cells += measure(dataclasses.replace(running, name=path, url=urls[path]),
                                     model, concurrencies, args.seconds, args.repeats,
                                     placement, loader, arg, warmup=not args.smoke)  # fmt: skip
            finally:
                running.stop()
            if "mlserver" in paths:
                peer = start_peer("mlserver", args.mlserver_python, model, tmp,
                                  placement.server_cpu, max_batch=args.max_batch,
                                  wait_s=args.batch_wait_ms / 1000)  # fmt: skip
                peer = dataclasses.replace(peer, name="mlserver")
                try:
                    loader, arg = loaders["mlserver"]
                    cells += measure(peer, model, concurrencies, args.seconds, args.repeats,
                                     placement, loader, arg, warmup=not args.smoke)  # fmt: skip
                finally:
                    peer.stop()
    detail = (f"256-float input; HTTP load: {'wrk' if wrk else 'python'} (1 thread), gRPC load: "
              f"benchmarks.grpc_load; {args.seconds:g} s per run, median of {args.repeats}; "
              f"max batch {args.max_batch}")  # fmt: skip
    print(header("Open Inference Protocol: REST JSON, REST binary and gRPC next to Clipper's "
                 "path and MLServer", placement, detail, "grpcio", "protobuf"))  # fmt: skip
    if "mlserver" in paths:
        print(f"# peer: {mlserver_versions(args.mlserver_python)} (in {args.mlserver_python}), "
              f"max_batch_time {args.batch_wait_ms:g} ms, 1 parallel worker")  # fmt: skip
    for line in skipped:
        print(f"# skipped: {line}")
    print(table(cells))
    for line in verdicts(cells):
        print(f"- {line}")
    write_json(args.json, {"suite": "oip", "cells": cells, "skipped": skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())

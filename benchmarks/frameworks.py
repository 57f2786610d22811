"""Frameworks: a small model's throughput through the container next to the same model
called in-process, measured in one run.

For each framework with a module in ``benchmarks/framework_models/`` (``make_artifact``
builds a small model's artifact), this:

1. picks the interpreter that the local manager would run the replica with (for MXNet an
   isolated environment, built once from ``base_images/mxnet/requirements.txt``);
2. in-process: that interpreter loads the artifact with the framework's loader and calls
   ``predict`` on ready-made batches in a loop (the floor for this model);
3. container: that interpreter runs ``python -m schooner.runtime`` against a ROUTER in this
   process, which sends the same batches as packed requests, one in flight.

    python -m benchmarks.frameworks                       # every framework available here
    python -m benchmarks.frameworks --only pytorch,onnx --batches 1,32
    python -m benchmarks.frameworks --smoke               # a few requests each (CI)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from benchmarks import framework_models
from benchmarks.harness import machine
from benchmarks.harness import pinned as _pinned
from benchmarks.harness import repo_root as _root
from benchmarks.hot_path import handshake
from schooner.frameworks.artifact import open_artifact
from schooner.frameworks.registry import resolve
from schooner.runtime import wire


@dataclass
class Row:
    framework: str
    batch: int
    in_process_inputs_per_s: float
    container_inputs_per_s: float
    python: str


# --------------------------------------------------------------------------- inputs on disk


def save_batch(batch, path: Path) -> None:
    if isinstance(batch, np.ndarray):
        np.save(path.with_suffix(".npy"), batch)
    else:
        path.with_suffix(".json").write_text(json.dumps(list(batch)))


def load_batch(path: Path):
    if path.with_suffix(".npy").exists():
        return np.load(path.with_suffix(".npy"))
    return json.loads(path.with_suffix(".json").read_text())


def request_frames(batch, input_type: wire.InputType) -> list[bytes]:
    if input_type == wire.InputType.STRINGS:
        items = [s.encode() for s in batch]
    else:
        arr = np.ascontiguousarray(batch, dtype=input_type.dtype)
        items = [row.tobytes() for row in arr]
    return [bytes(f) for f in wire.encode_packed_request(
        1, input_type, [len(i) for i in items], b"".join(items))]  # fmt: skip


# --------------------------------------------------------------------------- in-process


def in_process(artifact: str, batch_files: list[str], seconds: float, repeats: int) -> list[float]:
    """Load the artifact once and call predict in a loop on each batch; inputs per second
    (median of ``repeats`` runs) for each batch."""
    art = open_artifact(artifact)
    framework = resolve(art.framework)(art, "cpu")
    framework.load()
    rates = []
    for batch_file in batch_files:
        batch = load_batch(Path(batch_file))
        framework.predict(batch)  # warm-up
        runs = []
        for _ in range(repeats):
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                assert len(framework.predict(batch)) == len(batch)
                count += 1
            runs.append(count * len(batch) / elapsed)
        rates.append(statistics.median(runs))
    return rates


def measure_in_process(python: str, artifact: Path, batch_files: list[Path], seconds: float,
                       repeats: int, cpu: int | None) -> list[float]:  # fmt: skip
    cmd = _pinned([python, "-m", "benchmarks.frameworks", "--in-process", str(artifact),
                   str(seconds), str(repeats), *map(str, batch_files)], cpu)  # fmt: skip
    out = subprocess.run(cmd, cwd=_root(), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{out.stderr[-3000:]}")
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


# --------------------------------------------------------------------------- container


def measure_container(python: str, artifact: Path, input_type: wire.InputType, batches: list,
                      seconds: float, repeats: int, cpu: int | None) -> list[float]:  # fmt: skip
    """One container process; for each batch, inputs per second (median of ``repeats``)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    env = dict(os.environ, CLIPPER_MODEL_NAME="bench", CLIPPER_MODEL_VERSION="1",
               CLIPPER_PORT=str(port), CLIPPER_INPUT_TYPE=input_type.clipper_name,
               CLIPPER_MODEL_PATH=str(artifact), SCHOONER_READY_FILE="none",
               SCHOONER_LOG_LEVEL="WARNING")  # fmt: skip
    proc = subprocess.Popen(_pinned([python, "-m", "schooner.runtime"], cpu), env=env, cwd=_root())
    try:
        identity = handshake(router, "schooner", timeout_s=300)
        rates = []
        for batch in batches:
            frames = [identity, *request_frames(batch, input_type)]
            router.send_multipart(frames)  # warm-up, and check the answer
            _, *reply = router.recv_multipart()
            response = wire.decode_from_container(reply)
            assert isinstance(response, wire.PredictResponse), response
            assert not any(response.error_flags()), response.texts()[:1]
            runs = []
            for _ in range(repeats):
                count, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds:
                    router.send_multipart(frames, copy=False)
                    router.recv_multipart(copy=False)
                    count += 1
                runs.append(count * len(batch) / elapsed)
            rates.append(statistics.median(runs))
        return rates
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        router.close(linger=0)


# --------------------------------------------------------------------------- driver


def available_models(only: set[str] | None) -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(framework_models.__path__)]
    return [n for n in sorted(names) if only is None or n in only]


def run_framework(name: str, batches: list[int], seconds: float, repeats: int, tmp: Path,
                  server_cpu: int | None) -> list[Row]:  # fmt: skip
    from schooner.admin.managers.local import (
        environments,  # admin side only: never in a model's environment
    )

    module = importlib.import_module(f"benchmarks.framework_models.{name}")
    artifact, input_type_name, make_batch = module.make_artifact(tmp / name)
    input_type = wire.InputType.parse(input_type_name)
    framework = resolve(open_artifact(artifact).framework)
    requirements = (Path(artifact) / "requirements.txt").read_text().split()
    env = environments.resolve(framework.base_image, requirements, needs=framework.requires)
    sample = [make_batch(n) for n in batches]
    files = []
    for n, batch in zip(batches, sample):
        files.append(tmp / f"{name}-batch-{n}")
        save_batch(batch, files[-1])
    inproc = measure_in_process(env.python, artifact, files, seconds, repeats, server_cpu)
    served = measure_container(env.python, artifact, input_type, sample, seconds, repeats,
                               server_cpu)  # fmt: skip
    return [Row(name, n, a, b, env.python) for n, a, b in zip(batches, inproc, served)]


def table(rows: list[Row]) -> str:
    lines = ["| framework | batch | in-process inputs/s | container inputs/s | container / in-process |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.framework} | {r.batch} | {r.in_process_inputs_per_s:,.0f} | "
                     f"{r.container_inputs_per_s:,.0f} | "
                     f"{r.container_inputs_per_s / r.in_process_inputs_per_s:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated frameworks (default: every one)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per cell (median)")
    parser.add_argument("--smoke", action="store_true", help="short runs (CI)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--driver-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", help="write raw results to this file")
    parser.add_argument("--in-process", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        artifact, seconds, repeats, *batch_files = args.in_process
        print(*in_process(artifact, batch_files, float(seconds), int(repeats)))
        return 0
    if args.smoke:
        args.seconds, args.repeats = 0.3, 1
    server_cpu = None if args.no_pin else args.server_cpu
    if server_cpu is not None and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {args.driver_cpu})
    only = set(args.only.split(",")) if args.only else None
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in available_models(only):
            rows.extend(run_framework(name, batches, args.seconds, args.repeats, Path(tmp),
                                      server_cpu))  # fmt: skip
    pinned = "not pinned" if server_cpu is None else (
        f"model process on cpu {args.server_cpu}, driver on cpu {args.driver_cpu}")  # fmt: skip
    print(f"# frameworks: container (packed RPC, 1 in flight) vs in-process predict; {machine()}")
    print(f"# {args.seconds:g} s per cell, median of {args.repeats}; {pinned}; "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

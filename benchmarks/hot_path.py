"""Hot path: a Schooner container driven directly over RPC v3, next to a raw pyzmq echo.

The driver binds a ROUTER (as a frontend does) and sends prediction requests to one
server process, keeping ``inflight`` requests outstanding; it only receives replies, so
the driver's own cost is the same whatever the server is. Servers, measured in one run:

* ``echo``      — a raw pyzmq DEALER that sends every message straight back (the floor);
* ``schooner``  — the container (``python -m schooner.runtime``) with a no-op closure.

Each row is run with plain v3 framing (one frame per input and per output) and with
Schooner's negotiated packed framing (a whole batch in a constant number of frames), at
batch sizes 1, 8 and 64 (100 doubles per input), one and 8 requests in flight. A second
table sends one 600 KB float32 tensor per request: the container (``SCHOONER_ZERO_COPY=1``,
so it reads the tensor where ZeroMQ received it) against the echo, which sends the same
bytes straight back without copying them; it reports GB/s of input. The server is pinned
to one core and the driver to another (``--server-cpu``/``--load-cpu``).

    python -m benchmarks hotpath                 # full run, prints the tables
    python -m benchmarks hotpath --smoke         # a few hundred requests (CI)
    python -m benchmarks hotpath --json out.json # raw results too
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from benchmarks.harness import (
    add_common_args,
    header,
    markdown_table,
    pinned,
    placement_from,
    repo_root,
    write_json,
)  # fmt: skip
from schooner.frameworks import closure
from schooner.runtime import wire

FEATURES = 100  # doubles per input
TENSOR_BYTES = 600 * 1024  # the large-input rows: one float32 tensor of this size


def noop(inputs):  # the model: answers every input with a constant
    return ["0"] * len(inputs)


# --------------------------------------------------------------------------- servers


def echo_server(port: int) -> None:
    """Raw pyzmq: receive a message, send the same frames back."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart([b"", b"hello"])
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 1:
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    ctx.term()


def start_echo(port: int, cpu: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.hot_path", "--echo-server", str(port)]
    return subprocess.Popen(pinned(cmd, cpu), cwd=repo_root())


def start_container(port: int, artifact: Path, cpu: int | None,
                    input_type: wire.InputType = wire.InputType.DOUBLES,
                    zero_copy: bool = False) -> subprocess.Popen:  # fmt: skip
    env = dict(
        os.environ,
        CLIPPER_MODEL_NAME="noop",
        CLIPPER_MODEL_VERSION="1",
        CLIPPER_PORT=str(port),
        CLIPPER_INPUT_TYPE=input_type.clipper_name,
        CLIPPER_MODEL_PATH=str(artifact),
        SCHOONER_READY_FILE="none",
        SCHOONER_ZERO_COPY="1" if zero_copy else "0",
        SCHOONER_LOG_LEVEL="WARNING",
    )
    cmd = [sys.executable, "-m", "schooner.runtime"]
    return subprocess.Popen(pinned(cmd, cpu), env=env, cwd=repo_root())


@dataclass(frozen=True)
class Payload:
    """What one request carries: ``batch`` inputs of ``features`` values of ``input_type``."""

    batch: int
    features: int = FEATURES
    input_type: wire.InputType = wire.InputType.DOUBLES

    @property
    def input_bytes(self) -> int:
        return self.batch * self.features * self.input_type.dtype.itemsize  # type: ignore[union-attr]

    @property
    def tensor(self) -> bool:
        return self.input_type != wire.InputType.DOUBLES


def tensor_payload() -> Payload:
    return Payload(1, TENSOR_BYTES // 4, wire.InputType.FLOATS)


# --------------------------------------------------------------------------- driver


@dataclass
class Row:
    server: str
    framing: str
    batch: int
    inflight: int
    batches_per_s: float
    inputs_per_s: float
    runs: list[float]
    input_bytes: int = 0
    gb_per_s: float = 0.0


def handshake(router: zmq.Socket, server: str, timeout_s: float = 30) -> bytes:
    """Wait for the server to say hello; for the container, do the v3 registration."""
    if not router.poll(int(timeout_s * 1000)):
        raise RuntimeError(f"{server} server did not connect within {timeout_s:g} s")
    identity, *frames = router.recv_multipart()
    if server == "schooner":
        router.send_multipart([identity, *wire.encode_heartbeat_reply(
            wire.HeartbeatType.REQUEST_CONTAINER_METADATA)])  # fmt: skip
        while True:
            identity, *frames = router.recv_multipart()
            if isinstance(wire.decode_from_container(frames), wire.NewContainer):
                break
    return identity


def request_frames(framing: str, payload: Payload, msg_id: int) -> list[bytes]:
    dtype = payload.input_type.dtype
    x = np.random.default_rng(0).random((payload.batch, payload.features)).astype(dtype)
    if framing == "packed":
        return [bytes(f) for f in wire.encode_packed_request(
            msg_id, payload.input_type, [x[0].nbytes] * payload.batch, x.tobytes())]  # fmt: skip
    return [bytes(f) for f in wire.encode_predict_request(
        msg_id, payload.input_type, [row.tobytes() for row in x])]  # fmt: skip


def drive(router: zmq.Socket, identity: bytes, frames: list[bytes], inflight: int,
          count: int) -> float:  # fmt: skip
    """Send ``count`` requests keeping ``inflight`` outstanding; return elapsed seconds."""
    msg = [identity, *frames]
    send, recv = router.send_multipart, router.recv_multipart
    start = time.perf_counter()
    sent = 0
    for _ in range(min(inflight, count)):
        send(msg, copy=False)
        sent += 1
    for _ in range(count):
        recv(copy=False)
        if sent < count:
            send(msg, copy=False)
            sent += 1
    return time.perf_counter() - start


def check_answer(router: zmq.Socket, identity: bytes, framing: str, payload: Payload) -> None:
    router.send_multipart([identity, *request_frames(framing, payload, 1)])
    _, *frames = router.recv_multipart()
    response = wire.decode_from_container(frames)
    assert isinstance(response, wire.PredictResponse), response
    assert response.packed == (framing == "packed") and response.texts() == ["0"] * payload.batch


def measure(server: str, framing: str, payload: Payload, inflight: int, count: int,
            repeats: int, artifact: Path, server_cpu: int | None) -> Row:  # fmt: skip
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = (start_echo(port, server_cpu) if server == "echo"
            else start_container(port, artifact, server_cpu, payload.input_type,
                                 zero_copy=payload.tensor))  # fmt: skip
    identity = b""
    try:
        identity = handshake(router, server)
        if server == "schooner":
            check_answer(router, identity, framing, payload)
        frames = request_frames(framing, payload, 1)
        drive(router, identity, frames, inflight, max(count // 10, 10))  # warm-up
        runs = [count / drive(router, identity, frames, inflight, count) for _ in range(repeats)]
    finally:
        if server == "echo" and identity:
            router.send_multipart([identity, b"stop"])
        proc.terminate()
        proc.wait(timeout=10)
        router.close(linger=0)
    rate = statistics.median(runs)
    size = payload.input_bytes
    return Row(server, framing, payload.batch, inflight, rate, rate * payload.batch, runs,
               size, rate * size / 1e9)  # fmt: skip


# --------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    echo = {(r.framing, r.batch, r.inflight): r for r in rows if r.server == "echo"}
    plain = {(r.batch, r.inflight): r for r in rows if r.server == "schooner" and r.framing == "plain"}
    out = []
    for r in rows:
        base = echo.get((r.framing, r.batch, r.inflight))
        ratio = f"{r.batches_per_s / base.batches_per_s:.2f}" if base and r.server != "echo" else ""
        p = plain.get((r.batch, r.inflight))
        vs_plain = (f"{r.inputs_per_s / p.inputs_per_s:.2f}x"
                    if p and r.server == "schooner" and r.framing == "packed" else "")  # fmt: skip
        out.append([r.server, r.framing, r.batch, r.inflight, f"{r.batches_per_s:,.0f}",
                    f"{r.inputs_per_s:,.0f}", ratio, vs_plain])  # fmt: skip
    return markdown_table(["server", "framing", "batch", "in flight", "batches/s", "inputs/s",
                           "vs echo (same frames)", "vs plain v3"], out, "llrrrrrr")  # fmt: skip


def tensor_table(rows: list[Row]) -> str:
    echo = {(r.framing, r.inflight): r for r in rows if r.server == "echo"}
    out = []
    for r in rows:
        base = echo.get((r.framing, r.inflight))
        ratio = f"{r.gb_per_s / base.gb_per_s:.2f}" if base and r.server != "echo" else ""
        out.append([r.server, r.framing, r.inflight, f"{r.input_bytes / 1024:,.0f}",
                    f"{r.batches_per_s:,.0f}", f"{r.gb_per_s:.2f}", ratio])  # fmt: skip
    return markdown_table(["server", "framing", "in flight", "input KB", "requests/s",
                           "input GB/s", "vs zero-copy echo"], out, "llrrrrr")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks hotpath",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser, repeats=3)
    parser.add_argument("--count", type=int, default=10000, help="requests per run")
    parser.add_argument("--tensor-count", type=int, default=2000, help="600 KB requests per run")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--inflight", default="1,8")
    parser.add_argument("--no-tensor", action="store_true", help="skip the 600 KB rows")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.smoke:
        args.count, args.tensor_count, args.repeats = 300, 100, 1
    placement = placement_from(args)
    placement.pin_self()
    server_cpu = placement.server_cpu
    rows: list[Row] = []
    tensor_rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = closure.save(noop, Path(tmp) / "noop")
        for batch in map(int, args.batches.split(",")):
            for inflight in map(int, args.inflight.split(",")):
                for framing in ("plain", "packed"):
                    for server in ("echo", "schooner"):
                        rows.append(measure(server, framing, Payload(batch), inflight,
                                            args.count, args.repeats, artifact, server_cpu))  # fmt: skip
        if not args.no_tensor:
            for inflight in map(int, args.inflight.split(",")):
                for framing in ("plain", "packed"):
                    for server in ("echo", "schooner"):
                        tensor_rows.append(measure(server, framing, tensor_payload(), inflight,
                                                   args.tensor_count, args.repeats, artifact,
                                                   server_cpu))  # fmt: skip
    detail = (f"{FEATURES} doubles per input, no-op closure; {args.count} requests per run "
              f"({args.tensor_count} of 600 KB), median of {args.repeats}")  # fmt: skip
    print(header("hot path: the container over RPC v3 vs a raw pyzmq echo", placement, detail))
    print(table(rows))
    if tensor_rows:
        print()
        print("# one 600 KB float32 tensor per request; the container with SCHOONER_ZERO_COPY=1")
        print(tensor_table(tensor_rows))
        best = {r.framing: r for r in tensor_rows if r.server == "schooner" and r.inflight == 1}
        echo = {r.framing: r for r in tensor_rows if r.server == "echo" and r.inflight == 1}
        for framing, r in best.items():
            if framing in echo:
                ratio = r.gb_per_s / echo[framing].gb_per_s
                print(f"- 600 KB input, {framing}, 1 in flight: {ratio:.2f}x the zero-copy echo "
                      f"(target >= 0.7: {'met' if ratio >= 0.7 else 'MISSED'})")  # fmt: skip
    write_json(args.json, rows + tensor_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hot path: a Schooner container driven directly over RPC v3, next to a raw pyzmq echo.

The driver binds a ROUTER (as a frontend does) and sends prediction requests to one
server process, keeping ``inflight`` requests outstanding; it only receives replies, so
the driver's own cost is the same whatever the server is. Servers, measured in one run:

* ``echo``      — a raw pyzmq DEALER that sends every message straight back (the floor);
* ``schooner``  — the container (``python -m schooner.runtime``) with a no-op closure.

Each row is run with plain v3 framing (one frame per input and per output) and with
Schooner's negotiated packed framing (a whole batch in a constant number of frames). The
server is pinned to one core and the driver to another (``--server-cpu``/``--driver-cpu``).

    python -m benchmarks.hot_path                 # full run, prints the table
    python -m benchmarks.hot_path --smoke         # a few hundred requests (CI)
    python -m benchmarks.hot_path --json out.json # raw results too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from schooner.frameworks import closure
from schooner.runtime import wire

FEATURES = 100  # doubles per input


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
    return subprocess.Popen(_pinned(cmd, cpu), cwd=_root())


def start_container(port: int, artifact: Path, cpu: int | None) -> subprocess.Popen:
    env = dict(
        os.environ,
        CLIPPER_MODEL_NAME="noop",
        CLIPPER_MODEL_VERSION="1",
        CLIPPER_PORT=str(port),
        CLIPPER_INPUT_TYPE="doubles",
        CLIPPER_MODEL_PATH=str(artifact),
        SCHOONER_READY_FILE="none",
        SCHOONER_LOG_LEVEL="WARNING",
    )
    cmd = [sys.executable, "-m", "schooner.runtime"]
    return subprocess.Popen(_pinned(cmd, cpu), env=env, cwd=_root())


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or not _has_taskset():
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def _has_taskset() -> bool:
    return subprocess.run(["which", "taskset"], capture_output=True).returncode == 0


def _root() -> str:
    return str(Path(__file__).resolve().parent.parent)


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


def request_frames(framing: str, batch: int, msg_id: int) -> list[bytes]:
    x = np.random.default_rng(0).random((batch, FEATURES))
    if framing == "packed":
        return [bytes(f) for f in wire.encode_packed_request(
            msg_id, wire.InputType.DOUBLES, [FEATURES * 8] * batch, x.tobytes())]  # fmt: skip
    return [bytes(f) for f in wire.encode_predict_request(
        msg_id, wire.InputType.DOUBLES, [row.tobytes() for row in x])]  # fmt: skip


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


def check_answer(router: zmq.Socket, identity: bytes, framing: str, batch: int) -> None:
    router.send_multipart([identity, *request_frames(framing, batch, 1)])
    _, *frames = router.recv_multipart()
    response = wire.decode_from_container(frames)
    assert isinstance(response, wire.PredictResponse), response
    assert response.packed == (framing == "packed") and response.texts() == ["0"] * batch


def measure(server: str, framing: str, batch: int, inflight: int, count: int, repeats: int,
            artifact: Path, server_cpu: int | None) -> Row:  # fmt: skip
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = (start_echo(port, server_cpu) if server == "echo"
            else start_container(port, artifact, server_cpu))  # fmt: skip
    identity = b""
    try:
        identity = handshake(router, server)
        if server == "schooner":
            check_answer(router, identity, framing, batch)
        frames = request_frames(framing, batch, 1)
        drive(router, identity, frames, inflight, max(count // 10, 10))  # warm-up
        runs = [count / drive(router, identity, frames, inflight, count) for _ in range(repeats)]
    finally:
        if server == "echo" and identity:
            router.send_multipart([identity, b"stop"])
        proc.terminate()
        proc.wait(timeout=10)
        router.close(linger=0)
    rate = statistics.median(runs)
    return Row(server, framing, batch, inflight, rate, rate * batch, runs)


# --------------------------------------------------------------------------- report


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {model}; Python {platform.python_version()}, "
            f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, numpy {np.__version__}")  # fmt: skip


def table(rows: list[Row]) -> str:
    echo = {(r.framing, r.batch, r.inflight): r for r in rows if r.server == "echo"}
    plain = {(r.batch, r.inflight): r for r in rows if r.server == "schooner" and r.framing == "plain"}
    lines = [
        "| server | framing | batch | in flight | batches/s | inputs/s | vs echo (same frames) | vs plain v3 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = echo.get((r.framing, r.batch, r.inflight))
        ratio = f"{r.batches_per_s / base.batches_per_s:.2f}" if base and r.server != "echo" else ""
        p = plain.get((r.batch, r.inflight))
        vs_plain = (f"{r.inputs_per_s / p.inputs_per_s:.2f}x"
                    if p and r.server == "schooner" and r.framing == "packed" else "")  # fmt: skip
        lines.append(f"| {r.server} | {r.framing} | {r.batch} | {r.inflight} | "
                     f"{r.batches_per_s:,.0f} | {r.inputs_per_s:,.0f} | {ratio} | {vs_plain} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred requests (CI)")
    parser.add_argument("--count", type=int, default=20000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (median)")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--inflight", default="1,8")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--driver-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    parser.add_argument("--json", help="write raw results to this file")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.smoke:
        args.count, args.repeats = 300, 1
    server_cpu = None if args.no_pin else args.server_cpu
    if not args.no_pin and hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {args.driver_cpu})
    pinned = "not pinned" if server_cpu is None else f"server on cpu {args.server_cpu}, driver on cpu {args.driver_cpu}"
    with tempfile.TemporaryDirectory() as tmp:
        artifact = closure.save(noop, Path(tmp) / "noop")
        rows = []
        for batch in map(int, args.batches.split(",")):
            for inflight in map(int, args.inflight.split(",")):
                for framing in ("plain", "packed"):
                    for server in ("echo", "schooner"):
                        rows.append(measure(server, framing, batch, inflight, args.count,
                                            args.repeats, artifact, server_cpu))  # fmt: skip
    print(f"# hot path: {FEATURES} doubles per input, no-op closure; {machine()}")
    print(f"# {args.count} requests per run, median of {args.repeats}; {pinned}; "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

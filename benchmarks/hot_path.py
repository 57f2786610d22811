"""Hot path: a Schooner container driven directly over RPC v3, next to a raw pyzmq echo.

The driver binds a ROUTER (as a frontend does) and sends prediction requests to one
server process, keeping ``inflight`` requests outstanding; it only receives replies, so
the driver's own cost is the same whatever the server is. Servers, measured in one run:

* ``echo``      — a raw pyzmq DEALER that sends every message straight back (the floor);
* ``schooner``  — the container (``python -m schooner.runtime``) with a no-op closure;
* ``floor``     — plain-path rows only: the floor of any container written in Python, a
  process that registers as a container and then only receives bytes and sends the same
  bytes back (``socket_floor_server``: one ``recv_into`` and one ``sendall`` a read; its
  answer to a request is the request itself, which the ZMTP driver, checking answers by
  their bytes, accepts);
* ``clipper``   — opt-in (``--clipper-rpc DIR``): Clipper's own Python closure container,
  ``containers/python/rpc.py`` from ucbrise/clipper, which the user fetches into ``DIR``
  (nothing of Clipper is in this repository), serving the same no-op closure.

Each row is run with plain v3 framing (one frame per input and per output) and with
Schooner's negotiated packed framing (a whole batch in a constant number of frames), at
batch sizes 1, 8 and 64 (100 doubles per input), one and 8 requests in flight. A second
table sends one 600 KB float32 tensor per request: the container (its ZMTP channel receives
a large frame in place, into a buffer of the frame's size, and predicts on a view of it)
against the echo, which sends the same bytes straight back without copying them; it reports
GB/s of input. The server is pinned to one core and the driver to another
(``--server-cpu``/``--load-cpu``).

The plain-path table (with ``--clipper-rpc DIR``) is the path a Clipper frontend drives:
plain v3, a frame per input, batch 1 with 1 in flight and batch 64 with 4 in flight, for the
echo, the Python socket floor, Schooner's container and Clipper's, measured pinned and floating (nothing pinned). It
reports Schooner's rate over Clipper's and each server's CPU time per input frame (the server
process's user + system time, all its threads, over the timed runs, divided by the inputs).
Its driver (``--driver``, default ``zmtp``) speaks ZMTP itself (``benchmarks.zmtp_driver``):
a request is one pre-encoded write and an answer is recognised by its bytes, so the rows
measure the servers; through pyzmq (``--driver pyzmq``, the other tables' driver) the
driver's own cost per frame held Schooner's batch-64 row at ~60% of its container's capacity.

Clipper's container is started the way its ``python_closure_container.py`` starts one
(``CLIPPER_*`` variables, a ``func.pkl`` closure answered with ``[str(p) for p in preds]``),
with ``DIR/python_closure_container.py`` itself when it is there. To run its Python 2/3 file
on today's Python and pyzmq without editing it, the harness applies two shims at run time:
``clipper_admin.metrics`` (imported at the top of rpc.py, part of Clipper's admin package) is
a stand-in module, since metrics are off; and the server is started as ``RPCService.start``
would, but with ``collect_metrics=False`` and without writing ``/model_is_ready.check`` or
spawning Clipper's metrics side-process. Its print per message stays (to /dev/null): that
is its hot path.

    python -m benchmarks hotpath                 # full run, prints the tables
    python -m benchmarks hotpath --smoke         # a few hundred requests (CI)
    python -m benchmarks hotpath --json out.json # raw results too
    python -m benchmarks hotpath --clipper-rpc ~/.cache/schooner/clipper --plain-path-only
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks.harness import (
    Placement,
    add_common_args,
    header,
    markdown_table,
    pinned,
    placement_from,
    repo_root,
    write_json,
)  # fmt: skip
from benchmarks.zmtp_driver import RawRouter
from schooner.frameworks import closure
from schooner.runtime import wire
from schooner.runtime.transport import ZmtpChannel

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


def socket_floor_server(port: int) -> None:
    """Register as a container (ZMTP handshake, NewContainer), then echo bytes: the least a
    Python process can do per request on this path (no framing, decoding or model)."""
    channel = ZmtpChannel("127.0.0.1", port, 30.0)
    channel.send(wire.encode_heartbeat())
    while not isinstance(wire.decode_from_frontend(channel.recv()), wire.HeartbeatReply):
        pass  # until the driver asks who we are
    channel.send(wire.encode_new_container("noop", "1", wire.InputType.DOUBLES))
    sock = channel._sock  # the connection itself from here on (nothing is left buffered)
    buf = memoryview(bytearray(1 << 20))
    recv_into, sendall = sock.recv_into, sock.sendall
    try:
        while n := recv_into(buf):
            sendall(buf[:n])
    except OSError:  # the driver went away, or 30 s of silence
        pass
    channel.close()


def start_socket_floor(port: int, cpu: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.hot_path", "--socket-floor-server", str(port)]
    return subprocess.Popen(pinned(cmd, cpu), cwd=repo_root())


def start_echo(port: int, cpu: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.hot_path", "--echo-server", str(port)]
    return subprocess.Popen(pinned(cmd, cpu), cwd=repo_root())


def start_container(port: int, artifact: Path, cpu: int | None,
                    input_type: wire.InputType = wire.InputType.DOUBLES,
                    zero_copy: bool = False, busy_poll_us: int = 0,
                    extra_env: Mapping[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
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
        SCHOONER_BUSY_POLL_US=str(busy_poll_us),
        **(extra_env or {}),
    )
    cmd = [sys.executable, "-m", "schooner.runtime"]
    return subprocess.Popen(pinned(cmd, cpu), env=env, cwd=repo_root())


# --------------------------------------------------------------------------- Clipper's container

CLIPPER_RPC = "rpc.py"  # the file the user fetches from ucbrise/clipper, containers/python/
CLIPPER_CLOSURE = "python_closure_container.py"  # optional, same folder


def clipper_rpc_dir(value: str) -> Path:
    """``--clipper-rpc DIR``: a folder holding Clipper's rpc.py (argparse type)."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: not a folder")
    if not (folder / CLIPPER_RPC).is_file():
        raise argparse.ArgumentTypeError(
            f"{value} holds no {CLIPPER_RPC}: fetch containers/python/{CLIPPER_RPC} (and "
            f"{CLIPPER_CLOSURE}) from ucbrise/clipper into it"
        )
    return folder.resolve()


def save_clipper_model(func, directory: Path) -> Path:  # type: ignore[no-untyped-def]
    """A closure model as Clipper's closure container reads one: ``DIR/func.pkl``."""
    import cloudpickle

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "func.pkl").write_bytes(cloudpickle.dumps(func, protocol=pickle.DEFAULT_PROTOCOL))
    return directory


def _clipper_metrics_shim() -> None:
    """rpc.py imports ``clipper_admin.metrics`` at the top (Clipper's admin package, which
    also pulls in Docker and Kubernetes clients); with metrics off nothing of it is called,
    so a stand-in module satisfies the import. A real one, if installed, is used instead."""
    try:
        import clipper_admin.metrics  # type: ignore[import-not-found]  # noqa: F401
        return
    except ImportError:
        pass

    def unused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("Clipper metrics are off in this benchmark")

    package = types.ModuleType("clipper_admin")
    package.__path__ = []
    metrics = types.ModuleType("clipper_admin.metrics")
    metrics.report_metric = metrics.add_metric = unused  # type: ignore[attr-defined]
    package.metrics = metrics  # type: ignore[attr-defined]
    sys.modules["clipper_admin"], sys.modules["clipper_admin.metrics"] = package, metrics


def clipper_server(port: int, rpc_dir: Path, model_dir: Path) -> None:
    """Clipper's closure container, started as its ``RPCService.start`` does, minus the
    ready file and the metrics side-process (see the module docstring)."""
    _clipper_metrics_shim()
    sys.path.insert(0, str(rpc_dir))
    import rpc  # type: ignore[import-not-found]  # Clipper's, from rpc_dir

    input_type = "doubles"
    if (rpc_dir / CLIPPER_CLOSURE).is_file():
        from python_closure_container import PythonContainer  # type: ignore[import-not-found]

        model = PythonContainer(str(model_dir), input_type)
    else:  # what python_closure_container.PythonContainer does, for doubles
        with open(model_dir / "func.pkl", "rb") as f:
            import cloudpickle

            func = cloudpickle.load(f)

        class _Closure(rpc.ModelContainerBase):  # type: ignore[misc, name-defined]
            def predict_doubles(self, inputs):  # type: ignore[no-untyped-def]
                return [str(p) for p in func(inputs)]

        model = _Closure()
    server = rpc.Server(zmq.Context(), "127.0.0.1", port)
    server.model_name, server.model_version = "noop", "1"
    server.model_input_type = rpc.string_to_input_type(input_type)
    server.model = model
    server.run(collect_metrics=False)


def start_clipper(port: int, rpc_dir: Path, model_dir: Path, cpu: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.hot_path", "--clipper-server", str(port),
           "--clipper-rpc", str(rpc_dir), "--clipper-model", str(model_dir)]  # fmt: skip
    # Its print per message goes nowhere (it is still made: that is its hot path).
    return subprocess.Popen(pinned(cmd, cpu), cwd=repo_root(), stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has run, all its threads together (Linux: each thread's
    ``schedstat``, in ns; 0 where there is no ``/proc``)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                pass  # a thread that just ended
    except OSError:
        return 0.0
    return total / 1e9


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
    cpu_us_per_input: float = 0.0  # server CPU time per input frame over the timed runs
    placement: str = "pinned"


def handshake(router: zmq.Socket, server: str, timeout_s: float = 30) -> bytes:
    """Wait for the server to say hello; for the container, do the v3 registration."""
    if not router.poll(int(timeout_s * 1000)):
        raise RuntimeError(f"{server} server did not connect within {timeout_s:g} s")
    identity, *frames = router.recv_multipart()
    if server in ("schooner", "schooner-poll", "clipper", "floor"):
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


_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


def drive(router: zmq.Socket, identity: bytes, frames: list[bytes], inflight: int,
          count: int, copy: bool = True) -> float:  # fmt: skip
    """Send ``count`` requests keeping ``inflight`` outstanding; return elapsed seconds.

    Frames go through the compiled socket's per-frame send/recv, not pyzmq's Python
    ``send_multipart``/``recv_multipart`` (enum arithmetic per frame), so that the driver
    is not what limits a plain v3 row of 64 frames. ``copy=False`` receives without a copy
    (the 600 KB rows)."""
    base = zmq.backend.Socket
    send_frame, recv_frame = base.send.__get__(router), base.recv.__get__(router)
    more = partial(base.get.__get__(router), _RCVMORE)
    msg = [identity, *frames]
    head, last = msg[:-1], msg[-1]

    def send() -> None:
        for frame in head:
            send_frame(frame, _SNDMORE, True)
        send_frame(last, 0, len(last) < 65536)

    start = time.perf_counter()
    sent = 0
    for _ in range(min(inflight, count)):
        send()
        sent += 1
    for _ in range(count):
        recv_frame(0, copy)
        while more():
            recv_frame(0, copy)
        if sent < count:
            send()
            sent += 1
    return time.perf_counter() - start


def check_answer(router: zmq.Socket, identity: bytes, framing: str, payload: Payload) -> None:
    router.send_multipart([identity, *request_frames(framing, payload, 1)])
    _, *frames = router.recv_multipart()
    response = wire.decode_from_container(frames)
    assert isinstance(response, wire.PredictResponse), response
    assert response.packed == (framing == "packed") and response.texts() == ["0"] * payload.batch


@dataclass(frozen=True)
class Clipper:
    """Where Clipper's container comes from: the fetched rpc.py and the model it serves."""

    rpc_dir: Path
    model_dir: Path


def measure(server: str, framing: str, payload: Payload, inflight: int, count: int,
            repeats: int, artifact: Path, server_cpu: int | None,
            clipper: Clipper | None = None, driver: str = "pyzmq",
            busy_poll_us: int = 0, extra_env: Mapping[str, str] | None = None) -> Row:  # fmt: skip
    """One row. ``driver``: ``pyzmq`` (a ROUTER, frame by frame) or ``zmtp`` (``RawRouter``:
    ZMTP spoken by the driver itself, a request as one pre-encoded write). Server
    ``schooner-poll``: Schooner's container with SCHOONER_BUSY_POLL_US=``busy_poll_us``;
    ``extra_env``: more of the container's environment (``benchmarks ab``: its PYTHONPATH)."""
    router: Any
    if driver == "zmtp":
        router = RawRouter()
        port = router.port
    else:
        router = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
    if server == "echo":
        proc = start_echo(port, server_cpu)
    elif server == "floor":
        proc = start_socket_floor(port, server_cpu)
    elif server == "clipper":
        if clipper is None:
            raise ValueError("the clipper server needs --clipper-rpc")
        proc = start_clipper(port, clipper.rpc_dir, clipper.model_dir, server_cpu)
    else:
        proc = start_container(port, artifact, server_cpu, payload.input_type,
                               zero_copy=payload.tensor,
                               busy_poll_us=busy_poll_us if server == "schooner-poll" else 0,
                               extra_env=extra_env)  # fmt: skip
    identity = b""
    try:
        identity = handshake(router, server)
        if server not in ("echo", "floor"):  # (their answers are the requests)
            check_answer(router, identity, framing, payload)
        frames = request_frames(framing, payload, 1)
        copy = not payload.tensor

        def run(n: int) -> float:
            if driver == "zmtp":
                return float(router.drive(frames, inflight, n))
            return drive(router, identity, frames, inflight, n, copy)

        run(max(count // 10, 10))  # warm-up
        cpu_before = cpu_seconds(proc.pid)
        runs = [count / run(count) for _ in range(repeats)]
        cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        if server == "echo" and identity:
            router.send_multipart([identity, b"stop"])
        proc.terminate()
        proc.wait(timeout=10)
        router.close(linger=0)
    rate = statistics.median(runs)
    size = payload.input_bytes
    per_input = cpu / (count * repeats * payload.batch) * 1e6
    return Row(server, framing, payload.batch, inflight, rate, rate * payload.batch, runs,
               size, rate * size / 1e9, per_input,
               "pinned" if server_cpu is not None else "floating")  # fmt: skip


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


PLAIN_PATH = ((1, 1), (64, 4))  # (batch, in flight): the plain-path rows
PLAIN_TARGET = 1.5  # Schooner's container over Clipper's, batches/s, on both rows


def plain_path_table(rows: list[Row]) -> tuple[str, list[str]]:
    """The plain-path rows side by side, and one target line per row with Clipper in it
    (Schooner's default container; a busy-polling one, when measured, gets its own lines)."""
    cells: dict[tuple[str, int, int], dict[str, Row]] = {}
    for r in rows:
        cells.setdefault((r.placement, r.batch, r.inflight), {})[r.server] = r
    polling = any(r.server == "schooner-poll" for r in rows)
    floored = any(r.server == "floor" for r in rows)
    out, verdicts = [], []
    for (placement, batch, inflight), by in cells.items():
        echo, ours, theirs = by.get("echo"), by.get("schooner"), by.get("clipper")
        poll, floor = by.get("schooner-poll"), by.get("floor")

        def rate(r: Row | None) -> str:
            return f"{r.batches_per_s:,.0f}" if r else "—"

        def cpu(r: Row | None) -> str:
            return f"{r.cpu_us_per_input:.1f}" if r and r.cpu_us_per_input else "—"

        def ratio(a: Row | None, b: Row | None) -> float | None:
            return a.batches_per_s / b.batches_per_s if a and b else None

        vs_clipper, vs_echo, poll_vs_clipper = ratio(ours, theirs), ratio(ours, echo), ratio(poll, theirs)
        vs_floor = ratio(ours, floor)
        out.append([placement, batch, inflight, rate(echo), rate(ours), rate(theirs),
                    f"{vs_clipper:.2f}x" if vs_clipper else "—",
                    f"{vs_echo:.2f}" if vs_echo else "—", cpu(echo), cpu(ours), cpu(theirs)]
                   + ([rate(floor), f"{vs_floor:.2f}" if vs_floor else "—", cpu(floor)]
                      if floored else [])
                   + ([rate(poll), f"{poll_vs_clipper:.2f}x" if poll_vs_clipper else "—", cpu(poll)]
                      if polling else []))  # fmt: skip
        for label, value in (("Schooner", vs_clipper), ("Schooner busy-polling (opt-in)", poll_vs_clipper)):
            if value is not None:
                verdict = "met" if value >= PLAIN_TARGET else "MISSED"
                verdicts.append(f"- plain v3, batch {batch}, {inflight} in flight, {placement}: "
                                f"{label} {value:.2f}x Clipper's container "
                                f"(target >= {PLAIN_TARGET}: {verdict})")  # fmt: skip
    headers = ["placement", "batch", "in flight", "echo batches/s", "Schooner batches/s",
               "Clipper batches/s", "Schooner / Clipper", "Schooner / echo",
               "echo µs CPU/input", "Schooner µs CPU/input", "Clipper µs CPU/input"]  # fmt: skip
    if floored:
        headers += ["Python floor batches/s", "Schooner / floor", "floor µs CPU/input"]
    if polling:
        headers += ["busy-polling batches/s", "busy-polling / Clipper", "busy-polling µs CPU/input"]
    return markdown_table(headers, out, "lrr" + "r" * (len(headers) - 3)), verdicts


def _set_affinity(cpus: set[int] | None) -> None:
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def measure_plain_path(args: argparse.Namespace, placement: Placement, artifact: Path,
                       clipper: Clipper | None, every_cpu: set[int] | None) -> list[Row]:  # fmt: skip
    """The plain-path rows: pinned as the arguments say (when pinning is possible), then
    floating (driver and servers free on ``every_cpu``, the cpus this process started on)."""
    servers = (["echo", "floor", "schooner"] + (["schooner-poll"] if args.busy_poll_us else [])
               + (["clipper"] if clipper else []))  # fmt: skip
    rows: list[Row] = []
    placements = ([placement.server_cpu] if placement.server_cpu is not None else []) + [None]
    for server_cpu in placements:
        if server_cpu is None:
            _set_affinity(every_cpu)
        else:
            placement.pin_self()
        for batch, inflight in PLAIN_PATH:
            count = max(args.count // max(batch // 8, 1), 50)  # batch 64: 1/8 of the requests
            for server in servers:
                rows.append(measure(server, "plain", Payload(batch), inflight, count,
                                    args.repeats, artifact, server_cpu, clipper,
                                    args.driver, args.busy_poll_us))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks hotpath",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser, repeats=3)
    parser.add_argument("--count", type=int, default=10000, help="requests per run")
    parser.add_argument("--tensor-count", type=int, default=2000, help="600 KB requests per run")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--inflight", default="1,8")
    parser.add_argument("--no-tensor", action="store_true", help="skip the 600 KB rows")
    parser.add_argument("--clipper-rpc", type=clipper_rpc_dir, metavar="DIR",
                        help="a folder holding Clipper's containers/python/rpc.py (and "
                             "python_closure_container.py), fetched from ucbrise/clipper: adds "
                             "Clipper's own container to the plain-path rows")  # fmt: skip
    parser.add_argument("--plain-path-only", action="store_true",
                        help="only the plain-path rows (batch 1 / 1 in flight, batch 64 / 4 in "
                             "flight; pinned and floating)")  # fmt: skip
    parser.add_argument("--driver", choices=("zmtp", "pyzmq"), default="zmtp",
                        help="the plain-path rows' driver: zmtp (speaks ZMTP itself, a request "
                             "as one write: what the servers cost, not the driver; default) or "
                             "pyzmq (a ROUTER, frame by frame, as before)")  # fmt: skip
    parser.add_argument("--busy-poll-us", type=int, default=0, metavar="US",
                        help="add a plain-path column for Schooner's container with "
                             "SCHOONER_BUSY_POLL_US=US (opt-in: the target lines stay on the "
                             "default container)")  # fmt: skip
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--socket-floor-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clipper-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clipper-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.socket_floor_server:
        socket_floor_server(args.socket_floor_server)
        return 0
    if args.clipper_server:
        if args.clipper_rpc is None or args.clipper_model is None:
            parser.error("--clipper-server needs --clipper-rpc and --clipper-model")
        clipper_server(args.clipper_server, args.clipper_rpc, args.clipper_model)
        return 0
    if args.smoke:
        args.count, args.tensor_count, args.repeats = 300, 100, 1
    every_cpu = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    placement = placement_from(args)
    placement.pin_self()
    server_cpu = placement.server_cpu
    rows: list[Row] = []
    tensor_rows: list[Row] = []
    plain_rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = closure.save(noop, Path(tmp) / "noop")
        clipper = (Clipper(args.clipper_rpc, save_clipper_model(noop, Path(tmp) / "clipper-noop"))
                   if args.clipper_rpc else None)  # fmt: skip
        for batch in [] if args.plain_path_only else map(int, args.batches.split(",")):
            for inflight in map(int, args.inflight.split(",")):
                for framing in ("plain", "packed"):
                    for server in ("echo", "schooner"):
                        rows.append(measure(server, framing, Payload(batch), inflight,
                                            args.count, args.repeats, artifact, server_cpu))  # fmt: skip
        if not (args.no_tensor or args.plain_path_only):
            for inflight in map(int, args.inflight.split(",")):
                for framing in ("plain", "packed"):
                    for server in ("echo", "schooner"):
                        tensor_rows.append(measure(server, framing, tensor_payload(), inflight,
                                                   args.tensor_count, args.repeats, artifact,
                                                   server_cpu))  # fmt: skip
        if clipper or args.plain_path_only:
            plain_rows = measure_plain_path(args, placement, artifact, clipper, every_cpu)
    detail = (f"{FEATURES} doubles per input, no-op closure; {args.count} requests per run "
              f"({args.tensor_count} of 600 KB), median of {args.repeats}")  # fmt: skip
    print(header("hot path: the container over RPC v3 vs a raw pyzmq echo", placement, detail))
    if rows:
        print(table(rows))
    if tensor_rows:
        print()
        print("# one 600 KB float32 tensor per request, received in place")
        print(tensor_table(tensor_rows))
        best = {r.framing: r for r in tensor_rows if r.server == "schooner" and r.inflight == 1}
        echo = {r.framing: r for r in tensor_rows if r.server == "echo" and r.inflight == 1}
        for framing, r in best.items():
            if framing in echo:
                ratio = r.gb_per_s / echo[framing].gb_per_s
                print(f"- 600 KB input, {framing}, 1 in flight: {ratio:.2f}x the zero-copy echo "
                      f"(target >= 0.7: {'met' if ratio >= 0.7 else 'MISSED'})")  # fmt: skip
    if plain_rows:
        print()
        print("# the plain v3 path (a frame per input), as a Clipper frontend drives it; batch 64 "
              "runs 1/8 of the requests; CPU: the server process, all threads, per input frame; "
              f"driver: {args.driver}"
              + (f"; busy-polling: SCHOONER_BUSY_POLL_US={args.busy_poll_us}"
                 if args.busy_poll_us else "")
              + ("" if clipper else "; Clipper's container not measured (no --clipper-rpc)"))
        text, verdicts = plain_path_table(plain_rows)
        print(text)
        for line in verdicts:
            print(line)
    write_json(args.json, rows + tensor_rows + plain_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

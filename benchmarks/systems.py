"""The systems under test, started as real processes on the server cpu and stopped again.

* ``schooner``: the frontend (``python -m schooner.frontend``) and one container
  (``python -m schooner.runtime``) serving the model as a closure, each pinned to the
  server cpu; the app, model and link are registered through the management API, exactly
  as the admin does it. ``batch_size`` is the model's (``-1`` adaptive, ``N`` at most N per
  batch, no waiting for a batch to fill) and the container's max batch size follows it,
  as the local manager sets it.
* ``floor``: ``benchmarks.floor``, a bare asyncio protocol.
* the peers (``PEERS``): ``benchmarks.peers.<name>`` run by the interpreter of that peer's
  own environment (``PEER_SPECS``: which folder under the peers' home, which form of the
  body, which URL, which batching knobs; ``benchmarks/peers/setup.sh`` makes them). A peer
  is started only once it answers the benchmark input with the very label
  ``benchmarks.models`` computes here (``benchmarks.peers.forms``).

Each ``Running`` knows the process trees to charge server CPU time to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.harness import (
    free_port,
    pinned,
    post_json,
    repo_root,
    stop,
    tree_pids,
    wait_for_http,
)  # fmt: skip
from benchmarks.peers import forms

__all__ = ["Running", "start_schooner", "start_floor", "start_peer", "PEERS", "PEER_SPECS",
           "PeerSpec", "peers_home", "default_peer_python"]  # fmt: skip

APP = "bench"


@dataclass(frozen=True)
class PeerSpec:
    """How one peer is installed, asked and configured."""

    env: str  # its environment's folder under the peers' home
    module: str  # what its interpreter must import for it to count as installed
    path: str  # the URL path it serves
    form: str  # the body's form (``benchmarks.peers.forms``)
    packages: tuple[str, ...]  # distributions whose versions the table's header prints
    knobs: str  # its batching, in its own words: {B} max batch, {W} wait, {B4} 4x{B}


PEER_SPECS: dict[str, PeerSpec] = {
    "litserve": PeerSpec("venv", "litserve", "/predict", "clipper", ("litserve", "torch", "uvicorn"),
                         "LitAPI(max_batch_size={B}, batch_timeout={W}), 1 worker, fast_queue"),
    "ray": PeerSpec("venv", "ray.serve", "/predict", "clipper", ("ray", "torch"),
                    "@serve.batch(max_batch_size={B}, batch_wait_timeout_s={W}), 1 replica, "
                    "max_ongoing_requests={B4}"),
    "mosec": PeerSpec("mosec-venv", "mosec", "/inference", "clipper", ("mosec", "torch"),
                      "append_worker(num=1, max_batch_size={B}, max_wait_time={W})"),
    "mlserver": PeerSpec("mlserver-venv", "mlserver", f"/v2/models/{APP}/infer", "oip",
                         ("mlserver", "torch", "uvloop"),
                         "max_batch_size={B}, max_batch_time={W}, parallel_workers=1"),
    "bentoml": PeerSpec("bentoml-venv", "bentoml", "/predict", "row", ("bentoml", "torch"),
                        "@bentoml.api(batchable=True, max_batch_size={B}), workers=1 "
                        "(no wait knob: its dispatcher picks the wait)"),
    "triton": PeerSpec("triton-venv", "pytriton", f"/v2/models/{APP}/infer", "oip",
                       ("nvidia-pytriton", "torch"),
                       "ModelConfig(max_batch_size={B}, DynamicBatcher(max_queue_delay={W})), "
                       "1 instance, Python backend"),
}  # fmt: skip
PEERS = tuple(PEER_SPECS)


def peers_home() -> Path:
    """Where the peers' environments live: ``$SCHOONER_BENCH_PEERS`` or
    ``~/.cache/schooner/bench-peers``."""
    return Path(os.environ.get("SCHOONER_BENCH_PEERS", "~/.cache/schooner/bench-peers")).expanduser()


def default_peer_python(peer: str = "litserve") -> str:
    """The interpreter of ``peer``'s own environment."""
    return str(peers_home() / PEER_SPECS[peer].env / "bin" / "python")


@dataclass
class Running:
    """A started system: where to send requests, and its processes."""

    name: str
    url: str
    procs: list[subprocess.Popen[Any]]
    logs: list[Path] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """Stop every process, the last started first; kill whatever of their trees is left."""
        leftovers = [pid for root in self.pids for pid in tree_pids(root)]
        for proc in reversed(self.procs):
            stop(proc)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in self.logs:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(out)


def _popen(cmd: list[str], cpu: int | None, log: Path, env: dict[str, str] | None = None,
           new_session: bool = False) -> subprocess.Popen[Any]:  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(pinned(cmd, cpu), cwd=repo_root(), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=new_session)  # fmt: skip


@contextlib.contextmanager
def _stopped_on_failure(running: Running) -> Iterator[None]:
    """Stop ``running`` if the block raises; a RuntimeError (a server that exited or never
    answered) is raised again with the end of the servers' logs."""
    try:
        yield
    except RuntimeError as exc:
        running.stop()
        raise RuntimeError(f"{exc}\n{running.log_tail()}") from exc
    except BaseException:
        running.stop()
        raise


def _answering(running: Running, timeout_s: float) -> Running:
    """``running`` once it answers a real (not default) prediction; stopped if it does not."""
    with _stopped_on_failure(running):
        _wait_for_answer(running, timeout_s)
    return running


def _wait_for_answer(running: Running, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    body = json.loads(models.body())
    while True:
        try:
            answer = wait_for_http(running.url, max(deadline - time.monotonic(), 1), body=body)
        except RuntimeError as exc:
            raise RuntimeError(f"{running.name} did not answer: {exc}\n{running.log_tail()}") from None
        if not (isinstance(answer, dict) and answer.get("default")):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{running.name} answers only with its default: {answer}\n"
                               f"{running.log_tail()}")  # fmt: skip
        time.sleep(0.1)


def start_schooner(model: str, artifact: Path, tmp: Path, cpu: int | None, *, batch_size: int,
                   slo_micros: int, timeout_s: float = 60.0, transport: str = "local",
                   grpc_port: int | None = None,
                   env: dict[str, str] | None = None) -> Running:  # fmt: skip
    """Frontend + one container serving ``artifact`` (a closure of ``model``).

    ``transport`` is how they talk, as the local manager sets it up: ``local`` (the
    frontend's Unix socket, the default for replicas on the frontend's machine) or ``zmq``
    (RPC v3 over ZeroMQ, as a container on another machine, or Clipper's, would).
    ``grpc_port``: serve the Open Inference Protocol over gRPC there too. ``env``: more
    environment for both processes (``benchmarks ab``: the PYTHONPATH of another revision)."""
    query, mgmt, rpc = free_port(), free_port(), free_port()
    if transport not in ("local", "zmq"):
        raise ValueError(f"transport must be 'local' or 'zmq', not {transport!r}")
    run_dir = tmp / f"schooner-{model}-{batch_size}-{query}"
    run_dir.mkdir(parents=True)
    logs = [run_dir / "frontend.log", run_dir / "container.log"]
    local_socket = f"@schooner-bench-{rpc}" if transport == "local" else None
    frontend = _popen([sys.executable, "-m", "schooner.frontend", "--query-host", "127.0.0.1",
                       "--query-port", str(query), "--management-port", str(mgmt),
                       "--rpc-host", "127.0.0.1", "--rpc-port", str(rpc),
                       "--state-db", str(run_dir / "state.db"), "--log-level", "WARNING",
                       *(["--rpc-socket", local_socket] if local_socket else []),
                       *(["--grpc-port", str(grpc_port)] if grpc_port else [])],
                      cpu, logs[0], dict(os.environ, **env) if env else None)  # fmt: skip
    name = "schooner" if transport == "local" else f"schooner-{transport}"
    running = Running(name, f"http://127.0.0.1:{query}/{APP}/predict", [frontend], logs)
    with _stopped_on_failure(running):
        admin = f"http://127.0.0.1:{mgmt}/admin"
        wait_for_http(f"{admin}/ping", timeout_s, frontend)
        # the management API's token, written by the frontend beside its state database
        token = (run_dir / "admin.token").read_text().strip()
        post_json(f"{admin}/add_app", {"name": APP, "input_type": "floats",
                                       "default_output": "null", "latency_slo_micros": slo_micros},
                  token=token)  # fmt: skip
        post_json(f"{admin}/add_model", {
            "model_name": APP, "model_version": "1", "labels": [], "input_type": "floats",
            "container_name": "", "model_data_path": str(artifact), "batch_size": batch_size},
            token=token)  # fmt: skip
        post_json(f"{admin}/add_model_links", {"app_name": APP, "model_names": [APP]},
                  token=token)
        container_env = dict(
            os.environ, **(env or {}), CLIPPER_MODEL_NAME=APP, CLIPPER_MODEL_VERSION="1",
            CLIPPER_IP="127.0.0.1", CLIPPER_PORT=str(rpc), CLIPPER_INPUT_TYPE="floats",
            CLIPPER_MODEL_PATH=str(artifact), SCHOONER_READY_FILE="none",
            SCHOONER_MAX_BATCH_SIZE=str(max(batch_size, 0)), SCHOONER_LOG_LEVEL="WARNING")  # fmt: skip
        if local_socket:
            container_env["SCHOONER_RPC_SOCKET"] = local_socket
        running.procs.append(_popen([sys.executable, "-m", "schooner.runtime"], cpu, logs[1],
                                    container_env))  # fmt: skip
    return _answering(running, timeout_s)


def start_floor(model: str, tmp: Path, cpu: int | None, timeout_s: float = 60.0) -> Running:
    port = free_port()
    log = tmp / f"floor-{model}-{port}.log"
    proc = _popen([sys.executable, "-m", "benchmarks.floor", str(port), model], cpu, log)
    return _answering(Running("floor", f"http://127.0.0.1:{port}/predict", [proc], [log]), timeout_s)


def start_peer(kind: str, python: str, model: str, tmp: Path, cpu: int | None, *,
               max_batch: int, wait_s: float, timeout_s: float = 240.0) -> Running:  # fmt: skip
    """``kind`` (one of ``PEERS``) in its own environment (``python``), one worker, batching on,
    returned once it answers the benchmark input in its form (``PEER_SPECS``) with the label
    ``benchmarks.models`` gives here. A peer that exits, never answers or answers wrong is
    stopped and raises ``RuntimeError``, whose first line is the reason."""
    spec = PEER_SPECS[kind]
    port = free_port()
    log = tmp / f"{kind}-{model}-{port}.log"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", BENTOML_DO_NOT_TRACK="True",
               BENTOML_HOME=str(tmp / "bentoml-home"), PYTHONPATH=repo_root())  # fmt: skip
    proc = _popen([python, "-m", f"benchmarks.peers.{kind}", str(port), model, str(max_batch),
                   str(wait_s)], cpu, log, env, new_session=True)  # fmt: skip
    running = Running(kind, f"http://127.0.0.1:{port}{spec.path}", [proc], [log])
    try:
        _wait_for_label(running, spec.form, _expected(model), timeout_s)
    except BaseException:
        running.stop()
        raise
    return running


@functools.cache
def _expected(model: str) -> str:
    return forms.expected(model)


def _wait_for_label(running: Running, form: str, expected: str, timeout_s: float) -> None:
    try:
        reply = wait_for_http(running.url, timeout_s, running.procs[0],
                              body=json.loads(forms.body(form)))  # fmt: skip
        label = forms.answer(form, reply)
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(f"{exc}{_last_line(running)}\n{running.log_tail()}") from None
    if label != expected:
        raise RuntimeError(f"answered {label!r}, not {expected!r}\n{running.log_tail()}")


def _last_line(running: Running) -> str:
    """The last line of the peer's log that looks like an error, as ``; log: ...``."""
    try:
        lines = [x.strip() for x in running.logs[0].read_text(errors="replace").splitlines()]
    except (OSError, IndexError):
        return ""
    marked = [x for x in lines if any(w in x for w in ("Error", "error", "Exception", "failed"))]
    last = (marked or [x for x in lines if x] or [""])[-1]
    return f"; log: {last[:200]}" if last else ""

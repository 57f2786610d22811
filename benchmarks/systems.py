"""The systems under test, started as real processes on the server cpu and stopped again.

* ``schooner``: the frontend (``python -m schooner.frontend``) and one container
  (``python -m schooner.runtime``) serving the model as a closure, each pinned to the
  server cpu; the app, model and link are registered through the management API, exactly
  as the admin does it. ``batch_size`` is the model's (``-1`` adaptive, ``N`` at most N per
  batch, no waiting for a batch to fill) and the container's max batch size follows it,
  as the local manager sets it.
* ``floor``: ``benchmarks.floor``, a bare asyncio protocol.
* ``litserve`` and ``ray``: ``benchmarks.peers.*`` run by the peers' own interpreter
  (``--peer-python``; see the README for how that environment is made).

Each ``Running`` knows the process trees to charge server CPU time to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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

__all__ = ["Running", "start_schooner", "start_floor", "start_peer", "PEERS", "default_peer_python"]

PEERS = ("litserve", "ray")
APP = "bench"


def default_peer_python() -> str:
    home = Path(os.environ.get("SCHOONER_BENCH_PEERS", "~/.cache/schooner/bench-peers"))
    return str(home.expanduser() / "venv" / "bin" / "python")


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


def _answering(running: Running, timeout_s: float) -> Running:
    """``running`` once it answers a real (not default) prediction; stopped if it does not."""
    try:
        _wait_for_answer(running, timeout_s)
    except BaseException:
        running.stop()
        raise
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
                   grpc_port: int | None = None) -> Running:  # fmt: skip
    """Frontend + one container serving ``artifact`` (a closure of ``model``).

    ``transport`` is how they talk, as the local manager sets it up: ``local`` (the
    frontend's Unix socket, the default for replicas on the frontend's machine) or ``zmq``
    (RPC v3 over ZeroMQ, as a container on another machine, or Clipper's, would).
    ``grpc_port``: serve the Open Inference Protocol over gRPC there too."""
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
                      cpu, logs[0])  # fmt: skip
    name = "schooner" if transport == "local" else f"schooner-{transport}"
    running = Running(name, f"http://127.0.0.1:{query}/{APP}/predict", [frontend], logs)
    try:
        admin = f"http://127.0.0.1:{mgmt}/admin"
        wait_for_http(f"{admin}/ping", timeout_s, frontend)
        post_json(f"{admin}/add_app", {"name": APP, "input_type": "floats",
                                       "default_output": "null", "latency_slo_micros": slo_micros})  # fmt: skip
        post_json(f"{admin}/add_model", {
            "model_name": APP, "model_version": "1", "labels": [], "input_type": "floats",
            "container_name": "", "model_data_path": str(artifact), "batch_size": batch_size})  # fmt: skip
        post_json(f"{admin}/add_model_links", {"app_name": APP, "model_names": [APP]})
        env = dict(os.environ, CLIPPER_MODEL_NAME=APP, CLIPPER_MODEL_VERSION="1",
                   CLIPPER_IP="127.0.0.1", CLIPPER_PORT=str(rpc), CLIPPER_INPUT_TYPE="floats",
                   CLIPPER_MODEL_PATH=str(artifact), SCHOONER_READY_FILE="none",
                   SCHOONER_MAX_BATCH_SIZE=str(max(batch_size, 0)), SCHOONER_LOG_LEVEL="WARNING")  # fmt: skip
        if local_socket:
            env["SCHOONER_RPC_SOCKET"] = local_socket
        running.procs.append(_popen([sys.executable, "-m", "schooner.runtime"], cpu, logs[1], env))
    except BaseException:
        running.stop()
        raise
    return _answering(running, timeout_s)


def start_floor(model: str, tmp: Path, cpu: int | None, timeout_s: float = 60.0) -> Running:
    port = free_port()
    log = tmp / f"floor-{model}-{port}.log"
    proc = _popen([sys.executable, "-m", "benchmarks.floor", str(port), model], cpu, log)
    return _answering(Running("floor", f"http://127.0.0.1:{port}/predict", [proc], [log]), timeout_s)


def start_peer(kind: str, python: str, model: str, tmp: Path, cpu: int | None, *,
               max_batch: int, wait_s: float, timeout_s: float = 180.0) -> Running:  # fmt: skip
    """LitServe, Ray Serve or MLServer in its own environment, one worker, batching on."""
    port = free_port()
    log = tmp / f"{kind}-{model}-{port}.log"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=repo_root())
    proc = _popen([python, "-m", f"benchmarks.peers.{kind}", str(port), model, str(max_batch),
                   str(wait_s)], cpu, log, env, new_session=True)  # fmt: skip
    if kind == "mlserver":  # the Open Inference Protocol, not Clipper's body
        running = Running(kind, f"http://127.0.0.1:{port}/v2/models/{APP}/infer", [proc], [log])
        try:
            wait_for_http(running.url, timeout_s, proc, body=json.loads(models.oip_body()))
        except BaseException:
            running.stop()
            raise
        return running
    return _answering(Running(kind, f"http://127.0.0.1:{port}/predict", [proc], [log]), timeout_s)

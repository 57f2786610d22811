"""One frontend as N worker processes on one machine (``schooner-frontend --workers N``).

A parent process (``run_workers``) forks the workers and supervises them: a worker that
exits is started again (after a pause that grows while it keeps failing, up to
``MAX_BACKOFF_S``); SIGTERM or SIGINT stops them all (SIGTERM, then SIGKILL after
``STOP_GRACE_S``). A worker that cannot start the first time (a port taken) stops the
frontend with exit code 1. What the workers share, and how:

* **The query port**: every worker binds it with SO_REUSEPORT; the kernel spreads new
  connections over them.
* **The state**: the SQLite state file in WAL mode, through
  ``shared_state.SqliteSharedStateStore`` (an operation log; each worker polls it every
  5 ms). Query ids are reserved in the same file, so they are unique across workers.
* **The management API**: worker 0 serves it (and the gRPC port, when configured). A change
  made there is answered only once every live worker has applied it
  (``ChangesReachEveryWorker``, at most ``SYNC_TIMEOUT_S``), so a query sent right after
  ``register_application`` + ``link_model_to_app`` finds the app on any worker. Replicas a
  manager announces as starting (``expect_replicas``, not state) go to the others as a
  notice in the same log.
* **Replicas**: worker ``i`` has its own RPC endpoint (``runtime.config.worker_rpc_port``
  and ``worker_rpc_socket``); a replica given every worker's (SCHOONER_FRONTEND_ENDPOINTS)
  serves all of them and coalesces their batches (``runtime.frontends``).
* **Metrics**: each worker publishes its registry's text every ``PUBLISH_S`` to
  ``<state file>.metrics/worker-<i>.prom``; the worker answering ``GET /metrics`` merges
  its own live registry with the others' latest snapshots (``WorkerMetrics``): samples with
  the same name and labels are summed for counters and histograms, and a gauge is the
  largest worker's value (connected replicas: every replica serves every worker, so one
  worker's count is the frontend's, where a sum would count each replica once per worker);
  the others' values are at most ``PUBLISH_S`` old.
  ``schooner_frontend_worker_predictions_total{worker}`` says what each worker answered.

``--workers 0`` runs ``default_workers()``: half the cores this process may run on
(``os.sched_getaffinity``), the other half left to the replicas and the load, at least 1
and at most ``MAX_WORKERS``. That is the local manager's default (it gives every replica
every worker's endpoint); the command line's default is 1, because a replica that names one
RPC address (started by hand, by Docker or Kubernetes) would serve worker 0 only, and the
queries the kernel hands the other workers would wait for a replica that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import operator
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from schooner.frontend import credentials, http
from schooner.frontend.metrics import FrontendMetrics
from schooner.runtime.config import (
    MAX_FRONTEND_WORKERS,
    default_frontend_workers,
    worker_endpoints,
)

if TYPE_CHECKING:
    from schooner.frontend.server import FrontendConfig
    from schooner.frontend.shared_state import SqliteSharedStateStore

__all__ = ["default_workers", "resolve_workers", "run_workers", "WorkerMetrics",
           "ChangesReachEveryWorker", "MAX_WORKERS", "metrics_folder"]  # fmt: skip

log = logging.getLogger(__name__)

MAX_WORKERS = MAX_FRONTEND_WORKERS
PUBLISH_S = 1.0  # how often a worker publishes its metrics for the others
EXPECT_PATH = "/admin/expect_replicas"  # the one management call that changes no state
SYNC_TIMEOUT_S = 2.0  # the longest a management answer waits for the other workers
STOP_GRACE_S = 10.0
MAX_BACKOFF_S = 5.0
HEALTHY_S = 30.0  # a worker up this long has its restart pause reset
_PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """Half the cores this process may run on (at least 1, at most MAX_WORKERS)."""
    return default_frontend_workers(0)


def resolve_workers(workers: int) -> int:
    return default_frontend_workers(workers)


def metrics_folder(state_db: str) -> Path:
    return Path(state_db + ".metrics")


# ----------------------------------------------------------------------- the parent


def run_workers(config: FrontendConfig, run_one: Callable[[FrontendConfig], int]) -> int:
    """Run ``config.workers`` workers (``run_one`` is a worker's whole life) until SIGTERM
    or SIGINT; returns the exit code."""
    workers = resolve_workers(config.workers)
    # What every worker must agree on is settled here once: the admin token (made in its
    # file if missing) and a query port picked by the kernel for port 0.
    token = credentials.admin_token(config.admin_token, config.admin_token_file)
    holder = None
    port = config.query_port
    if port == 0:
        holder = socket.socket(socket.AF_INET6 if ":" in config.query_host else socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((config.query_host, 0))  # bound, never listening: it holds the number
        port = holder.getsockname()[1]
    base = dataclasses.replace(config, admin_token=token, query_port=port)
    folder = metrics_folder(config.state_db)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("worker-*"):  # an earlier run's: counted as workers of this one
        stale.unlink(missing_ok=True)
    context = multiprocessing.get_context("fork")
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: dict[int, Any] = {}
    started: dict[int, float] = {}
    failures: dict[int, int] = dict.fromkeys(range(workers), 0)
    due: dict[int, float] = {}

    def start(index: int) -> None:
        cfg = dataclasses.replace(base, worker_index=index)
        proc = context.Process(target=_worker_main, args=(cfg, run_one),
                               name=f"schooner-frontend-worker-{index}")  # fmt: skip
        proc.start()
        procs[index], started[index] = proc, time.monotonic()
        log.info("worker %d started (pid %d)", index, proc.pid)

    endpoints = worker_endpoints(workers, config.rpc_host, config.rpc_port, config.rpc_socket)
    log.info("frontend: %d workers on query port %d; each replica must serve every worker: "
             "SCHOONER_FRONTEND_ENDPOINTS=%s", workers, port, ",".join(endpoints))  # fmt: skip
    for index in range(workers):
        start(index)
    code = 0
    first_run = set(range(workers))
    try:
        while not stopping:
            sentinels = [p.sentinel for p in procs.values()]
            timeout = min([max(0.0, t - time.monotonic()) for t in due.values()], default=0.5)
            multiprocessing.connection.wait(sentinels, timeout=min(timeout, 0.5))
            now = time.monotonic()
            for index, proc in list(procs.items()):
                if proc.is_alive():
                    if index in first_run and now - started[index] > 2.0:
                        first_run.discard(index)
                    continue
                proc.join()
                del procs[index]
                if index in first_run and proc.exitcode == 1:
                    log.error("worker %d could not start (exit code 1): stopping", index)
                    stopping, code = True, 1
                    break
                first_run.discard(index)
                failures[index] = 0 if now - started[index] > HEALTHY_S else failures[index] + 1
                pause = min(MAX_BACKOFF_S, 0.1 * 2 ** failures[index]) if failures[index] else 0
                log.warning("worker %d (pid %d) exited with %s; restarting it in %.1f s",
                            index, proc.pid, proc.exitcode, pause)  # fmt: skip
                due[index] = now + pause
            for index, when in list(due.items()):
                if not stopping and when <= time.monotonic():
                    del due[index]
                    start(index)
    finally:
        _stop_all(list(procs.values()))
        if holder is not None:
            holder.close()
    log.info("frontend stopped (%d workers)", workers)
    return code


def _stop_all(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _worker_main(config: FrontendConfig, run_one: Callable[[FrontendConfig], int]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        os._exit(0)
    os._exit(run_one(config))


# ----------------------------------------------------------------------- metrics


class WorkerMetrics(FrontendMetrics):
    """A worker's metrics; ``render`` is every worker's, merged (module docstring)."""

    def __init__(self, index: int, folder: Path) -> None:
        super().__init__()
        self.index = index
        self.folder = folder

    def _own(self) -> bytes:
        return FrontendMetrics.render(self)

    def publish(self) -> None:
        """Write this worker's text where the others read it (atomically)."""
        path = self.folder / f"worker-{self.index}.prom"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(self._own())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot publish this worker's metrics to %s: %s", path, exc)

    def render(self) -> bytes:
        texts = {self.index: self._own().decode()}
        for path in sorted(self.folder.glob("worker-*.prom")):
            index = path.stem.removeprefix("worker-")
            if index.isdigit() and int(index) != self.index:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    texts[int(index)] = path.read_text()
        return merge(texts).encode()


def merge(texts: dict[int, str]) -> str:
    """The exposition texts of several workers as one: samples with the same name and
    labels summed, or for a gauge the largest (``_created`` samples dropped), plus each
    worker's answered queries."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    answered: dict[int, float] = {}
    for index, text in texts.items():
        answered[index] = 0.0
        try:
            parsed = list(text_string_to_metric_families(text))
        except Exception as exc:  # a snapshot cut short: leave that worker out this time
            log.debug("worker %d's metrics do not parse: %s", index, exc)
            continue
        for family in parsed:
            doc, kind, samples = families.setdefault(family.name,
                                                     (family.documentation, family.type, {}))  # fmt: skip
            combine = max if kind == "gauge" else operator.add
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                samples[key] = sample.value if seen is None else combine(seen, sample.value)
                if sample.name == "schooner_frontend_predictions_total":
                    answered[index] += sample.value
    lines: list[str] = []
    for name, (doc, kind, samples) in families.items():
        lines.append(f"# HELP {name} {_escape_doc(doc)}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            lines.append(f"{sample_name}{_labels(labels)} {_number(value)}")
    name = "schooner_frontend_worker_predictions"
    lines.append(f"# HELP {name} Queries answered, per frontend worker")
    lines.append(f"# TYPE {name} counter")
    for index, value in sorted(answered.items()):
        lines.append(f'{name}_total{{worker="{index}"}} {_number(value)}')
    return "\n".join(lines) + "\n"


def _escape_doc(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# ----------------------------------------------------------------------- management


class ChangesReachEveryWorker(http.Router):
    """The management port's router: an answer to a request that changed the state waits
    until every live worker has applied the change (at most SYNC_TIMEOUT_S)."""

    def __init__(self, state: SqliteSharedStateStore) -> None:
        super().__init__()
        self._state = state

    def dispatch(self, request: http.Request, reply: http.Reply) -> None:
        state = self._state
        before = state.applied

        def answer(*args: Any, **kwargs: Any) -> None:
            position = state.applied
            if request.path == EXPECT_PATH and args and args[0] == 200:
                position = self._announce_expected(request.body)
            if position == before or not state.lagging(position):
                reply(*args, **kwargs)
            else:
                asyncio.ensure_future(self._answer_when_applied(position, reply, args, kwargs))

        super().dispatch(request, answer)

    def _announce_expected(self, body: bytes) -> int:
        """Replicas announced starting (already applied here): tell the other workers."""
        import json

        fields = json.loads(body)  # the handler has parsed and checked it
        return self._state.announce({
            "kind": "expect_replicas", "model_name": str(fields["model_name"]),
            "model_version": str(fields["model_version"]), "seconds": float(fields["seconds"]),
            "at": time.time()})  # fmt: skip

    async def _answer_when_applied(self, position: int, reply: http.Reply,
                                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:  # fmt: skip
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        try:
            while True:
                lagging = self._state.lagging(position)
                if not lagging:
                    break
                if time.monotonic() > deadline:
                    log.warning("workers %s have not applied change %d after %.0f s; answering",
                                lagging, position, SYNC_TIMEOUT_S)  # fmt: skip
                    break
                await asyncio.sleep(0.002)
        except Exception:
            log.exception("waiting for the workers failed; answering")
        reply(*args, **kwargs)

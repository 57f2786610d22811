"""A frontend that uses every core: ``schooner-frontend --workers N`` for each N asked.

For each worker count one Schooner is started (the frontend with ``--workers N`` and one
container of the ``noop`` closure model, over the frontend's local Unix socket: with N above
1 the container is given every worker's socket, SCHOONER_FRONTEND_ENDPOINTS, as the local
manager does), then ``wrk`` (one thread) sends it the 256-float body at ``--connections``
keep-alive connections. Per worker count: requests/s, p50/p99 latency, server CPU per
request (the frontend's process tree, its workers included, and the container's), and the
mean batch size the model saw (``schooner_container_batch_size`` from the container's own
``/metrics``: its predict calls, after coalescing the workers' batches) next to the mean
batch the frontend sent (``schooner_frontend_batch_size``, every worker's).

Nothing is pinned: the workers, the container and the load share the machine's cores. On a
2-core machine the load generator (and the container) share the two cores with the
workers, so a second worker has no core of its own there: read the rows for how batching
and CPU per request hold up, not for how far throughput scales.

    python -m benchmarks workers                              # 1,2 workers, 64 conns, 4 s, median of 3
    python -m benchmarks workers --frontend-workers 1,2,4 --connections 64
    python -m benchmarks workers --smoke                      # 1,2 workers, 16 conns, 1 s (CI)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.e2e import load_python, load_wrk, wrk_script
from benchmarks.harness import (
    Placement,
    free_port,
    header,
    markdown_table,
    median,
    post_json,
    repo_root,
    stop,
    tree_cpu_seconds,
    wait_for_http,
    write_json,
)  # fmt: skip

__all__ = ["main"]

APP = "bench"


@dataclass
class Row:
    workers: int
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    model_batch: float  # mean inputs per predict call, as the container saw them
    frontend_batch: float  # mean queries per batch the frontend workers sent
    errors: int
    runs: list[dict[str, float]]


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 all free (worker i binds p+i)."""
    import socket

    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {n} consecutive free ports")


class Server:
    """Frontend (``--workers N``) + one noop container, registered like the admin does."""

    def __init__(self, tmp: Path, workers: int, artifact: Path, timeout_s: float = 60.0) -> None:
        self.dir = tmp / f"workers-{workers}"
        self.dir.mkdir()
        query, mgmt, metrics = free_port(), free_port(), free_port()
        rpc = _free_ports(workers)
        socket = f"@schooner-bench-workers-{rpc}"
        self.query_url = f"http://127.0.0.1:{query}"
        self.url = f"{self.query_url}/{APP}/predict"
        self.container_metrics = f"http://127.0.0.1:{metrics}/metrics"
        self.logs = [self.dir / "frontend.log", self.dir / "container.log"]
        self.procs: list[subprocess.Popen[Any]] = []
        self.procs.append(self._popen([
            sys.executable, "-m", "schooner.frontend", "--workers", str(workers),
            "--query-host", "127.0.0.1", "--query-port", str(query),
            "--management-port", str(mgmt), "--rpc-host", "127.0.0.1", "--rpc-port", str(rpc),
            "--rpc-socket", socket, "--state-db", str(self.dir / "state.db"),
            "--log-level", "WARNING"], self.logs[0]))  # fmt: skip
        try:
            admin = f"http://127.0.0.1:{mgmt}/admin"
            wait_for_http(f"{admin}/ping", timeout_s, self.procs[0])
            token = (self.dir / "admin.token").read_text().strip()
            post_json(f"{admin}/add_app", {"name": APP, "input_type": "floats",
                                           "default_output": "null",
                                           "latency_slo_micros": 1_000_000}, token=token)  # fmt: skip
            post_json(f"{admin}/add_model", {
                "model_name": APP, "model_version": "1", "labels": [], "input_type": "floats",
                "container_name": "", "model_data_path": str(artifact), "batch_size": -1},
                token=token)  # fmt: skip
            post_json(f"{admin}/add_model_links", {"app_name": APP, "model_names": [APP]},
                      token=token)  # fmt: skip
            from schooner.runtime.config import worker_endpoints

            env = dict(os.environ, CLIPPER_MODEL_NAME=APP, CLIPPER_MODEL_VERSION="1",
                       CLIPPER_INPUT_TYPE="floats", CLIPPER_MODEL_PATH=str(artifact),
                       SCHOONER_READY_FILE="none", SCHOONER_LOG_LEVEL="WARNING",
                       SCHOONER_METRICS_PORT=str(metrics))  # fmt: skip
            if workers > 1:
                env["SCHOONER_FRONTEND_ENDPOINTS"] = ",".join(
                    worker_endpoints(workers, "127.0.0.1", rpc, socket))
            else:
                env["SCHOONER_RPC_SOCKET"] = socket
            self.procs.append(self._popen([sys.executable, "-m", "schooner.runtime"],
                                          self.logs[1], env))  # fmt: skip
            self._wait_until_every_worker_answers(workers, timeout_s)
        except BaseException:
            self.stop()
            sys.stderr.write(self.log_tail() + "\n")
            raise

    def _popen(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip

    def _wait_until_every_worker_answers(self, workers: int, timeout_s: float) -> None:
        """Until 8 * N fresh connections in a row are answered by the model (not a default):
        the container has a session with every worker."""
        import json

        body = models.body()
        deadline = time.monotonic() + timeout_s
        while True:
            good = 0
            for _ in range(8 * workers):
                request = urllib.request.Request(self.url, data=body, method="POST", headers={
                    "Content-Type": "application/json", "Connection": "close"})  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        good += not json.loads(response.read()).get("default")
                except OSError:
                    pass
            if good == 8 * workers:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{workers} workers: the model does not answer on every "
                                   f"worker\n{self.log_tail()}")  # fmt: skip
            time.sleep(0.2)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def batches(self) -> tuple[float, float, float, float]:
        """(container sum, count, frontend sum, count) of the batch-size histograms."""
        def read(url: str, name: str) -> tuple[float, float]:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            total = sum(float(v) for v in re.findall(rf"^{name}_sum(?:{{[^}}]*}})? (\S+)$",
                                                     text, re.M))  # fmt: skip
            count = sum(float(v) for v in re.findall(rf"^{name}_count(?:{{[^}}]*}})? (\S+)$",
                                                     text, re.M))  # fmt: skip
            return total, count

        c = read(self.container_metrics, "schooner_container_batch_size")
        f = read(f"{self.query_url}/metrics", "schooner_frontend_batch_size")
        return (*c, *f)

    def log_tail(self) -> str:
        return "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace")
                                                    .splitlines()[-20:])
                         for log in self.logs if log.exists())  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def measure(server: Server, connections: int, seconds: float, loader: str,
            script: Path, body: Path) -> dict[str, float]:  # fmt: skip
    """One run: the load's numbers, server CPU per request, mean batch sizes."""
    time.sleep(1.2)  # the workers publish their metrics every second: let the last settle
    before_batches = server.batches()
    before_cpu = tree_cpu_seconds(server.pids)
    if loader == "wrk":
        run = load_wrk(server.url, connections, seconds, None, script)
    else:
        run = load_python(server.url, connections, seconds, None, body)
    cpu = tree_cpu_seconds(server.pids) - before_cpu
    time.sleep(1.2)
    after = server.batches()
    delta = [a - b for a, b in zip(after, before_batches)]
    run["cpu_us_per_request"] = cpu / max(run["requests"], 1) * 1e6
    run["model_batch"] = delta[0] / delta[1] if delta[1] else 0.0
    run["frontend_batch"] = delta[2] / delta[3] if delta[3] else 0.0
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers",
                                     description=(__doc__ or "").split("\n\n")[0])  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="a short run (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--frontend-workers", default="1,2", help="worker counts to run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--loader", choices=["wrk", "python"], default=None,
                        help="wrk (the default where installed) or the Python closed loop")
    parser.add_argument("--json", help="write the raw results to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.repeats, args.connections = 1.0, 1, 16
    try:
        counts = [int(n) for n in args.frontend_workers.split(",")]
    except ValueError:
        parser.error("--frontend-workers takes worker counts separated by commas, e.g. 1,2")
    if not counts or any(n < 1 for n in counts):
        parser.error("--frontend-workers: each count is at least 1")
    loader = args.loader or ("wrk" if shutil.which("wrk") else "python")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="schooner-workers-") as tmp_name:
        tmp = Path(tmp_name)
        from schooner.frameworks.closure import save

        artifact = Path(save(models.build("noop"), tmp / "noop"))
        body = tmp / "body.json"
        body.write_bytes(models.body())
        script = wrk_script(tmp, "post", models.body(), {"Content-Type": "application/json"})
        for n in counts:
            server = Server(tmp, n, artifact)
            try:
                measure(server, args.connections, 1.0, loader, script, body)  # warm-up
                runs = [measure(server, args.connections, args.seconds, loader, script, body)
                        for _ in range(args.repeats)]  # fmt: skip
            except BaseException:
                sys.stderr.write(server.log_tail() + "\n")
                raise
            finally:
                server.stop()
            rows.append(Row(
                n, args.connections, median([r["requests_per_s"] for r in runs]),
                median([r["p50_us"] for r in runs]) / 1e3, median([r["p99_us"] for r in runs]) / 1e3,
                median([r["cpu_us_per_request"] for r in runs]),
                median([r["model_batch"] for r in runs]), median([r["frontend_batch"] for r in runs]),
                int(sum(r["errors"] for r in runs)), runs,
            ))  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(header(
        "Frontend workers (noop model, 256 floats, one container coalescing the workers' batches)",
        Placement(None, None),
        f"load: {'wrk (1 thread)' if loader == 'wrk' else 'closed loop in Python'} at "
        f"{args.connections} connections, {args.seconds:g} s per run, median of {args.repeats}; "
        f"nothing pinned: the workers, the container and the load generator share these "
        f"{cores} cores",
    ))  # fmt: skip
    print(markdown_table(
        ["workers", "conns", "req/s", "p50 ms", "p99 ms", "server CPU µs/req",
         "model batch (mean)", "frontend batch (mean)", "errors"],
        [[r.workers, r.connections, f"{r.requests_per_s:,.0f}", f"{r.p50_ms:.2f}",
          f"{r.p99_ms:.2f}", f"{r.cpu_us_per_request:.1f}", f"{r.model_batch:.1f}",
          f"{r.frontend_batch:.1f}", r.errors] for r in rows], "rrrrrrrrr"))  # fmt: skip
    base = rows[0]
    for r in rows[1:]:
        print(f"- {r.workers} workers: {r.requests_per_s / base.requests_per_s:.2f}x the "
              f"req/s of {base.workers}, the model's mean batch {r.model_batch:.1f} against "
              f"{base.model_batch:.1f}")  # fmt: skip
    write_json(args.json, rows)
    return 0

"""End to end over HTTP: Schooner next to the floor and to real peers, measured with ``wrk``.

Each system serves the same model (``benchmarks.models``: ``noop`` and the PyTorch ``mlp``)
behind ``POST`` with a 256-float JSON input, on the server cpu; ``wrk`` (one thread, on the
load cpu) keeps 1, 16 and 64 connections busy. Systems:

* ``floor``: a bare asyncio protocol on uvloop (``benchmarks.floor``); with the MLP it runs
  the model inline on each request, unbatched;
* ``schooner``: frontend + one container, the model deployed with ``batch_size`` =
  ``--max-batch`` (Schooner never waits for a batch to fill), talking over the frontend's
  local Unix socket as the local manager sets them up; ``schooner-zmq``: the same over
  RPC v3 on ZeroMQ (Clipper's transport, as for a container on another machine);
* ``litserve`` (``LitAPI(max_batch_size, batch_timeout)``, one worker, fast queue) and ``ray``
  (``@serve.batch(max_batch_size, batch_wait_timeout_s)``, one replica): the same max batch
  size and the same wait budget (``--batch-wait-ms``, default 0 like Schooner's), in their
  own environment (``--peer-python``).

Every cell is the median of ``--repeats`` runs of ``--seconds`` each, after a one-second
warm-up; server CPU time per request is the utime + stime of the system's process trees
during the run, divided by the requests answered.

    python -m benchmarks e2e                       # everything (about 7 minutes)
    python -m benchmarks e2e --systems floor,schooner --models noop
    python -m benchmarks e2e --smoke               # floor and Schooner, short runs (CI)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import models
from benchmarks.harness import (
    Placement,
    add_common_args,
    header,
    markdown_table,
    median,
    pinned,
    placement_from,
    python_has,
    repo_root,
    tree_cpu_seconds,
    write_json,
)  # fmt: skip
from benchmarks.systems import (
    PEERS,
    Running,
    default_peer_python,
    start_floor,
    start_peer,
    start_schooner,
)

__all__ = ["main", "measure", "wrk_script", "load_wrk", "load_python", "Cell"]

SYSTEMS = ("floor", "schooner", "schooner-zmq", *PEERS)
Loader = Callable[[str, int, float, "int | None", Path], dict[str, float]]


@dataclass
class Cell:
    model: str
    system: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    runs: list[dict[str, float]]


# --------------------------------------------------------------------------- load


def wrk_script(tmp: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk script that POSTs ``body`` (read from a file, so it may be binary) with
    ``headers`` and prints one ``WRK_JSON`` summary line."""
    body_file = tmp / f"{name}.body"
    body_file.write_bytes(body)
    lines = [f'local f = io.open("{body_file}", "rb")', 'wrk.body = f:read("*a")', "f:close()",
             'wrk.method = "POST"']  # fmt: skip
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format("WRK_JSON {\\"requests\\":%d,\\"duration_us\\":%d,'
        '\\"errors\\":%d,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f}\\n",',
        "    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,",
        "    latency:percentile(50), latency:percentile(99)))",
        "end",
    ]
    script = tmp / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def _wrk_script(tmp: Path) -> Path:
    return wrk_script(tmp, "post", models.body(), {"Content-Type": "application/json"})


def load_wrk(url: str, connections: int, seconds: float, cpu: int | None, script: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), url]  # fmt: skip
    out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    raw = json.loads(line[len("WRK_JSON "):])
    return {"requests": raw["requests"], "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_us": raw["p50_us"], "p99_us": raw["p99_us"], "errors": raw["errors"]}  # fmt: skip


def load_python(url: str, connections: int, seconds: float, cpu: int | None, body: Path) -> dict[str, float]:
    """The closed-loop fallback (``benchmarks.loadgen closed``), for smoke runs without wrk."""
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "closed", url, str(body),
           "--connections", str(connections), "--seconds", str(seconds), "--warmup", "0"]  # fmt: skip
    out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, cwd=repo_root(),
                         timeout=seconds + 60)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{out.stderr[-2000:]}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return {"requests": raw["requests"], "requests_per_s": raw["throughput_per_s"],
            "p50_us": raw["p50_us"] or float("inf"), "p99_us": raw["p99_us"] or float("inf"),
            "errors": raw["errors"] + raw["defaulted"]}  # fmt: skip


# --------------------------------------------------------------------------- one system


def measure(running: Running, model: str, concurrencies: list[int], seconds: float,
            repeats: int, placement: Placement, loader: Loader, loader_arg: Path,
            warmup: bool = True) -> list[Cell]:  # fmt: skip
    """Cells of ``running.name`` at each concurrency: ``loader`` against ``running.url``,
    server CPU charged to ``running``'s process trees."""
    cells = []
    for c in concurrencies:
        if warmup:
            loader(running.url, c, 1.0, placement.load_cpu, loader_arg)
        runs = []
        for _ in range(repeats):
            before = tree_cpu_seconds(running.pids)
            run = loader(running.url, c, seconds, placement.load_cpu, loader_arg)
            run["cpu_us_per_request"] = (tree_cpu_seconds(running.pids) - before) / max(run["requests"], 1) * 1e6
            runs.append(run)
        cells.append(Cell(model, running.name, c, median([r["requests_per_s"] for r in runs]),
                          median([r["p50_us"] for r in runs]) / 1e3,
                          median([r["p99_us"] for r in runs]) / 1e3,
                          median([r["cpu_us_per_request"] for r in runs]),
                          int(sum(r["errors"] for r in runs)), runs))  # fmt: skip
    return cells


def start(system: str, model: str, artifact: Path, tmp: Path, placement: Placement,
          args: argparse.Namespace) -> Running:  # fmt: skip
    cpu = placement.server_cpu
    if system == "floor":
        return start_floor(model, tmp, cpu)
    if system in ("schooner", "schooner-zmq"):
        transport = "zmq" if system == "schooner-zmq" else "local"
        return start_schooner(model, artifact, tmp, cpu, batch_size=args.max_batch, transport=transport,
                              slo_micros=args.slo_ms * 1000)  # fmt: skip
    return start_peer(system, args.peer_python, model, tmp, cpu, max_batch=args.max_batch,
                      wait_s=args.batch_wait_ms / 1000)  # fmt: skip


def idle_cpu(running: Running, seconds: float = 1.0) -> float:
    """The fraction of a core the system's processes use while nothing is asked of them."""
    before = tree_cpu_seconds(running.pids)
    time.sleep(seconds)
    return (tree_cpu_seconds(running.pids) - before) / seconds


def peer_versions(python: str) -> str:
    probe = ("from importlib import metadata as m; "
             "print(', '.join(f'{n} {m.version(n)}' for n in ('litserve', 'ray', 'torch', 'uvicorn')))")  # fmt: skip
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() or "unknown versions"


# --------------------------------------------------------------------------- report


def table(cells: list[Cell]) -> str:
    floor = {(c.model, c.concurrency): c for c in cells if c.system == "floor"}
    rows = []
    for c in cells:
        base = floor.get((c.model, c.concurrency))
        ratio = f"{c.requests_per_s / base.requests_per_s:.2f}" if base and c.system != "floor" else ""
        busy = c.cpu_us_per_request * c.requests_per_s / 1e6
        rows.append([c.model, c.concurrency, c.system, f"{c.requests_per_s:,.0f}", ratio,
                     f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}", f"{c.cpu_us_per_request:,.0f}",
                     f"{busy:.0%}", c.errors])  # fmt: skip
    return markdown_table(["model", "concurrency", "system", "req/s", "vs floor", "p50 ms",
                           "p99 ms", "server CPU µs/req", "server CPU busy", "errors"], rows,
                          "rrlrrrrrrr")  # fmt: skip


def verdicts(cells: list[Cell]) -> list[str]:
    """The issue's targets, computed from this run's cells."""
    get = {(c.model, c.system, c.concurrency): c for c in cells}
    out = []
    s64, f64 = get.get(("noop", "schooner", 64)), get.get(("noop", "floor", 64))
    if s64 and f64:
        r = s64.requests_per_s / f64.requests_per_s
        out.append(f"noop, 64 connections: Schooner {r:.2f}x the floor's req/s "
                   f"(target >= 0.25: {'met' if r >= 0.25 else 'MISSED'})")  # fmt: skip
        for peer in PEERS:
            p = get.get(("noop", peer, 64))
            if p:
                out.append(f"noop, 64 connections: Schooner {s64.requests_per_s / p.requests_per_s:.1f}x {peer}")
    s1, f1 = get.get(("noop", "schooner", 1)), get.get(("noop", "floor", 1))
    if s1 and f1:
        r = s1.p50_ms / f1.p50_ms
        out.append(f"noop, 1 connection: Schooner's p50 {r:.1f}x the floor's "
                   f"(target <= 4: {'met' if r <= 4 else 'MISSED'})")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks e2e",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--models", default="noop,mlp")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--max-batch", type=int, default=64, help="every system's batch limit")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0, help="peers' batch wait")
    parser.add_argument("--slo-ms", type=int, default=1000, help="Schooner app's latency SLO")
    parser.add_argument("--peer-python", default=default_peer_python())
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto",
                        help="wrk, or the closed-loop Python fallback (smoke runs only)")  # fmt: skip
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    if args.smoke:
        args.seconds, args.repeats = 1.0, 1
        systems = [s for s in systems if s not in PEERS]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    loader_name = args.loader
    if loader_name == "auto":
        loader_name = "wrk" if shutil.which("wrk") else "python"
    if loader_name == "python" and not args.smoke:
        parser.error("full runs need wrk (apt-get install -y wrk); the Python loader is for --smoke")
    skipped = []
    for peer in [s for s in systems if s in PEERS]:
        if not python_has(args.peer_python, "litserve" if peer == "litserve" else "ray.serve"):
            skipped.append(peer)
    systems = [s for s in systems if s not in skipped]
    placement = placement_from(args)
    placement.pin_self()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells: list[Cell] = []
    idle: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="schooner-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        body = tmp / "body.json"
        body.write_bytes(models.body())
        loader: Loader = load_wrk if loader_name == "wrk" else load_python
        loader_arg = _wrk_script(tmp) if loader_name == "wrk" else body
        from schooner.frameworks import closure

        for model in args.models.split(","):
            artifact = closure.save(models.build(model), tmp / f"{model}-artifact")
            for system in systems:
                running = start(system, model, artifact, tmp, placement, args)
                try:
                    idle[f"{system}/{model}"] = idle_cpu(running)
                    cells += measure(running, model, concurrencies, args.seconds, args.repeats,
                                     placement, loader, loader_arg, warmup=not args.smoke)  # fmt: skip
                finally:
                    running.stop()
    detail = (f"256-float JSON input; load: {loader_name} (1 thread); {args.seconds:g} s per run, "
              f"median of {args.repeats}; max batch {args.max_batch}, batch wait "
              f"{args.batch_wait_ms:g} ms")  # fmt: skip
    print(header("end to end: Schooner vs the floor and peers", placement, detail, "torch", "uvloop"))
    peers = [s for s in systems if s in PEERS]
    if peers:
        print(f"# peers: {peer_versions(args.peer_python)} (in {args.peer_python})")
    if skipped:
        print(f"# peers not installed in {args.peer_python}, skipped: {', '.join(skipped)}")
    print("# idle server CPU, % of a core: "
          + ", ".join(f"{k} {v:.0%}" for k, v in idle.items()))  # fmt: skip
    print(table(cells))
    for line in verdicts(cells):
        print(f"- {line}")
    write_json(args.json, {"suite": "e2e", "loader": loader_name, "cells": cells,
                           "skipped": skipped, "idle_cpu": idle})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

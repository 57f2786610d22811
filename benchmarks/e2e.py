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
  ``schooner-oip``: the local pair asked on its Open Inference Protocol path with the body
  MLServer and Triton get (their verdicts compare with it where it ran, else with
  Clipper's path, and say which);
* the peers, each in its own environment (``benchmarks/peers/setup.sh``, or
  ``--peers-setup``), each with one worker, batching on, at most ``--max-batch`` (32) inputs
  per batch and ``--batch-wait-ms`` (5 ms) of waiting for a batch to fill where the peer
  has that knob (Schooner never waits): ``litserve`` (``LitAPI(max_batch_size,
  batch_timeout)``, fast queue), ``ray`` (``@serve.batch``, one replica), ``mosec``
  (``append_worker(max_batch_size, max_wait_time)``), ``mlserver`` (adaptive batching,
  ``max_batch_size``/``max_batch_time``, the Open Inference Protocol body), ``bentoml``
  (``@bentoml.api(batchable=True, max_batch_size)``; no wait knob) and ``triton`` (Triton's
  Python backend through ``nvidia-pytriton``, ``DynamicBatcher(max_queue_delay)``, the OIP
  body). ``benchmarks.peers.forms`` says each body and answer; a peer is measured only
  after it answered the benchmark input with the label computed here. A peer that fails
  to start gets a row saying why; one not installed, a row saying so.

Every cell is the median of ``--repeats`` runs of ``--seconds`` each, after a one-second
warm-up; server CPU time per request is the utime + stime of the system's process trees
during the run, divided by the requests answered.

    python -m benchmarks e2e                       # everything (about 20 minutes)
    python -m benchmarks e2e --peers-setup         # make the peers' environments, then stop
    python -m benchmarks e2e --systems floor,schooner --models noop
    python -m benchmarks e2e --smoke               # floor and Schooner, short runs (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
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
    post_json,
    python_has,
    repo_root,
    tree_cpu_seconds,
    write_json,
)  # fmt: skip
from benchmarks.peers import forms
from benchmarks.systems import (
    APP,
    PEER_SPECS,
    PEERS,
    Running,
    peers_home,
    start_floor,
    start_peer,
    start_schooner,
)

__all__ = ["main", "measure", "wrk_script", "load_wrk", "load_python", "Cell", "Absent",
           "peer_pythons"]  # fmt: skip

SYSTEMS = ("floor", "schooner", "schooner-zmq", "schooner-oip", *PEERS)
SMOKE_SYSTEMS = ("floor", "schooner", "schooner-zmq")  # --smoke: no peers (CI)
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


@dataclass
class Absent:
    """A system with no cells for a model, and why (not installed, failed to start)."""

    model: str
    system: str
    reason: str


# --------------------------------------------------------------------------- load


# wrk's ``done`` hook, printing the one ``WRK_JSON`` line every wrk script here ends with.
WRK_DONE_LUA = [
    "done = function(summary, latency, requests)",
    "  local e = summary.errors",
    '  io.write(string.format("WRK_JSON {\\"requests\\":%d,\\"duration_us\\":%d,'
    '\\"errors\\":%d,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f}\\n",',
    "    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,",
    "    latency:percentile(50), latency:percentile(99)))",
    "end",
]


def wrk_script(tmp: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk script that POSTs ``body`` (read from a file, so it may be binary) with
    ``headers`` and prints one ``WRK_JSON`` summary line."""
    body_file = tmp / f"{name}.body"
    body_file.write_bytes(body)
    lines = [f'local f = io.open("{body_file}", "rb")', 'wrk.body = f:read("*a")', "f:close()",
             'wrk.method = "POST"']  # fmt: skip
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines += WRK_DONE_LUA
    script = tmp / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def _wrk_script(tmp: Path, form: str = "clipper") -> Path:
    return wrk_script(tmp, f"post-{form}", forms.body(form), {"Content-Type": "application/json"})


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
    if system in ("schooner", "schooner-zmq", "schooner-oip"):
        transport = "zmq" if system == "schooner-zmq" else "local"
        running = start_schooner(model, artifact, tmp, cpu, batch_size=args.max_batch,
                                 transport=transport, slo_micros=args.slo_ms * 1000)  # fmt: skip
        return _on_oip(running, model) if system == "schooner-oip" else running
    return start_peer(system, args.peer_pythons[system], model, tmp, cpu,
                      max_batch=args.max_batch, wait_s=args.batch_wait_ms / 1000)  # fmt: skip


def _on_oip(running: Running, model: str) -> Running:
    """The same Schooner asked on its Open Inference Protocol path (``POST
    /v2/models/bench/infer``, the body MLServer and Triton get), once it answers there."""
    base = running.url.rsplit(f"/{APP}/predict", 1)[0]
    oip = dataclasses.replace(running, name="schooner-oip", url=f"{base}/v2/models/{APP}/infer")
    try:
        label = forms.answer("oip", post_json(oip.url, json.loads(forms.body("oip"))))
        if label != forms.expected(model):
            raise RuntimeError(f"schooner-oip answered {label!r}, not {forms.expected(model)!r}")
    except BaseException:
        running.stop()
        raise
    return oip


def idle_cpu(running: Running, seconds: float = 1.0) -> float:
    """The fraction of a core the system's processes use while nothing is asked of them."""
    before = tree_cpu_seconds(running.pids)
    time.sleep(seconds)
    return (tree_cpu_seconds(running.pids) - before) / seconds


def peer_versions(python: str, packages: tuple[str, ...]) -> str:
    """``name version, ...`` of ``packages`` as installed for ``python``."""
    probe = ("import sys; from importlib import metadata as m\n"
             "for n in sys.argv[1:]:\n"
             "    try: print(n, m.version(n))\n"
             "    except m.PackageNotFoundError: print(n, 'missing')")  # fmt: skip
    out = subprocess.run([python, "-c", probe, *packages], capture_output=True, text=True)
    return ", ".join(out.stdout.split("\n")[:-1]) or "unknown versions"


def peer_pythons(spec: str, home: Path) -> dict[str, str]:
    """Each peer's interpreter: its environment under ``home``, unless ``spec`` (a comma list
    of ``PEER=PYTHON``; a bare ``PYTHON`` means LitServe's and Ray Serve's) says otherwise."""
    out = {peer: str(home / PEER_SPECS[peer].env / "bin" / "python") for peer in PEERS}
    for item in filter(None, spec.split(",")):
        peer, _, python = item.rpartition("=")
        for name in (peer,) if peer else ("litserve", "ray"):
            if name not in PEER_SPECS:
                raise ValueError(f"--peer-python: unknown peer {name!r}; one of {', '.join(PEERS)}")
            out[name] = python
    return out


def server_metadata(running: Running) -> str:
    """``name version`` from an Open Inference Protocol server's ``GET /v2`` (Triton's bundled
    server has no distribution of its own to ask), or ``""``."""
    base = running.url.split("/v2/", 1)[0]
    try:
        with urllib.request.urlopen(f"{base}/v2", timeout=5) as response:
            meta = json.loads(response.read())
        return f"{meta['name']} {meta['version']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, fit for a table cell."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace("|", "/")[:300]


def setup_peers(peers: list[str], home: Path) -> int:
    """Run ``benchmarks/peers/setup.sh`` for ``peers`` (their environments under ``home``)."""
    names = sorted({PEER_SPECS[p].env for p in peers})
    script = Path(repo_root()) / "benchmarks" / "peers" / "setup.sh"
    env = {"SCHOONER_BENCH_PEERS": str(home)}
    wanted = [{"venv": "litserve"}.get(n, n.removesuffix("-venv")) for n in names]
    return subprocess.run(["bash", str(script), *wanted], env={**os.environ, **env}).returncode


# --------------------------------------------------------------------------- report


def table(cells: list[Cell], absent: Sequence[Absent] = ()) -> str:
    """The cells, then a row for each system that has none for a model, saying why."""
    floor = {(c.model, c.concurrency): c for c in cells if c.system == "floor"}
    rows: list[list[object]] = []
    for c in cells:
        base = floor.get((c.model, c.concurrency))
        ratio = f"{c.requests_per_s / base.requests_per_s:.2f}" if base and c.system != "floor" else ""
        busy = c.cpu_us_per_request * c.requests_per_s / 1e6
        rows.append([c.model, c.concurrency, c.system, f"{c.requests_per_s:,.0f}", ratio,
                     f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}", f"{c.cpu_us_per_request:,.0f}",
                     f"{busy:.0%}", c.errors])  # fmt: skip
    for a in absent:
        rows.append([a.model, "", a.system, a.reason, "", "", "", "", "", ""])
    return markdown_table(["model", "concurrency", "system", "req/s", "vs floor", "p50 ms",
                           "p99 ms", "server CPU µs/req", "server CPU busy", "errors"], rows,
                          "rrlrrrrrrr")  # fmt: skip


def form_of(system: str) -> str:
    """The body ``system`` is asked with (``benchmarks.peers.forms``)."""
    if system in PEER_SPECS:
        return PEER_SPECS[system].form
    return "oip" if system == "schooner-oip" else "clipper"


def verdicts(cells: list[Cell]) -> list[str]:
    """The issue's targets, computed from this run's cells."""
    get = {(c.model, c.system, c.concurrency): c for c in cells}
    out = []
    s64, f64 = get.get(("noop", "schooner", 64)), get.get(("noop", "floor", 64))
    if s64 and f64:
        r = s64.requests_per_s / f64.requests_per_s
        out.append(f"noop, 64 connections: Schooner {r:.2f}x the floor's req/s "
                   f"(target >= 0.25: {'met' if r >= 0.25 else 'MISSED'})")  # fmt: skip
    for model in ("noop", "mlp"):
        for peer in PEERS:
            # OIP peers against Schooner's OIP path where it ran, else Clipper's (and say so).
            oip = form_of(peer) == "oip" and (model, "schooner-oip", 64) in get
            s = get.get((model, "schooner-oip" if oip else "schooner", 64))
            p = get.get((model, peer, 64))
            if not (s and p):
                continue
            who = ("Schooner's OIP path" if oip else
                   "Schooner (Clipper's path)" if form_of(peer) == "oip" else "Schooner")  # fmt: skip
            r = s.requests_per_s / p.requests_per_s
            target = f" (target >= 3: {'met' if r >= 3 else 'MISSED'})" if peer == "mosec" else ""
            out.append(f"{model}, 64 connections: {who} {r:.1f}x {peer}'s req/s{target}; {peer} "
                       f"spends {p.cpu_us_per_request / s.cpu_us_per_request:.1f}x as much server "
                       f"CPU per request")  # fmt: skip
    s1, f1 = get.get(("noop", "schooner", 1)), get.get(("noop", "floor", 1))
    if s1 and f1:
        r = s1.p50_ms / f1.p50_ms
        out.append(f"noop, 1 connection: Schooner's p50 {r:.1f}x the floor's "
                   f"(target <= 3: {'met' if r <= 3 else 'MISSED'})")  # fmt: skip
    s64 = get.get(("noop", "schooner", 64))
    if s64 and s64.cpu_us_per_request:
        us = s64.cpu_us_per_request
        out.append(f"noop, 64 connections: Schooner's server CPU {us:.1f} µs per request "
                   f"(target <= 25: {'met' if us <= 25 else 'MISSED'})")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks e2e",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {', '.join(SYSTEMS)}")
    parser.add_argument("--models", default="noop,mlp")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="every system's batch limit (Schooner's batch_size too)")  # fmt: skip
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a peer waits for a batch to fill, where it has the knob")  # fmt: skip
    parser.add_argument("--slo-ms", type=int, default=1000, help="Schooner app's latency SLO")
    parser.add_argument("--peers-home", type=Path, default=peers_home(),
                        help="the peers' environments (default $SCHOONER_BENCH_PEERS or "
                             "~/.cache/schooner/bench-peers)")  # fmt: skip
    parser.add_argument("--peer-python", default="",
                        help="PEER=PYTHON,...: another interpreter for a peer (a bare PYTHON: "
                             "LitServe's and Ray Serve's)")  # fmt: skip
    parser.add_argument("--peers-setup", action="store_true",
                        help="make the environments of the peers in --systems "
                             "(benchmarks/peers/setup.sh) and stop")  # fmt: skip
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto",
                        help="wrk, or the closed-loop Python fallback (smoke runs only)")  # fmt: skip
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.peers_setup:
        if not set(systems) & set(PEERS):
            parser.error(f"--peers-setup: no peer in --systems (peers: {', '.join(PEERS)})")
        return setup_peers([s for s in systems if s in PEERS], args.peers_home)
    try:
        args.peer_pythons = peer_pythons(args.peer_python, args.peers_home)
    except ValueError as exc:
        parser.error(str(exc))
    if args.smoke:
        args.seconds, args.repeats = 1.0, 1
        systems = [s for s in systems if s in SMOKE_SYSTEMS]
    loader_name = args.loader
    if loader_name == "auto":
        loader_name = "wrk" if shutil.which("wrk") else "python"
    if loader_name == "python" and not args.smoke:
        parser.error("full runs need wrk (apt-get install -y wrk); the Python loader is for --smoke")
    missing = {p: args.peer_pythons[p] for p in systems if p in PEERS
               and not python_has(args.peer_pythons[p], PEER_SPECS[p].module)}  # fmt: skip
    placement = placement_from(args)
    placement.pin_self()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells: list[Cell] = []
    absent: list[Absent] = []
    idle: dict[str, float] = {}
    served: dict[str, str] = {}  # what an OIP peer's GET /v2 says it is
    with tempfile.TemporaryDirectory(prefix="schooner-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        loader: Loader = load_wrk if loader_name == "wrk" else load_python
        loader_args = {}
        for form in forms.FORMS:
            if loader_name == "wrk":
                loader_args[form] = _wrk_script(tmp, form)
            else:
                loader_args[form] = tmp / f"body-{form}.json"
                loader_args[form].write_bytes(forms.body(form))
        from schooner.frameworks import closure

        for model in args.models.split(","):
            artifact = closure.save(models.build(model), tmp / f"{model}-artifact")
            for system in systems:
                if system in missing:
                    absent.append(Absent(model, system, f"not installed (no "
                                         f"{PEER_SPECS[system].module} in {missing[system]})"))  # fmt: skip
                    continue
                form = form_of(system)
                try:
                    running = start(system, model, artifact, tmp, placement, args)
                except RuntimeError as exc:
                    if system not in PEERS:
                        raise
                    print(f"{system} ({model}) failed to start: {exc}", file=sys.stderr)
                    absent.append(Absent(model, system, f"failed to start: {one_line(exc)}"))
                    continue
                if form == "oip":
                    served[system] = server_metadata(running) or served.get(system, "")
                try:
                    idle[f"{system}/{model}"] = idle_cpu(running)
                    cells += measure(running, model, concurrencies, args.seconds, args.repeats,
                                     placement, loader, loader_args[form], warmup=not args.smoke)  # fmt: skip
                except RuntimeError as exc:
                    if system not in PEERS:
                        raise
                    print(f"{system} ({model}) failed while measured: {exc}\n{running.log_tail()}",
                          file=sys.stderr)  # fmt: skip
                    absent.append(Absent(model, system, f"failed while measured: {one_line(exc)}"))
                finally:
                    running.stop()
    detail = (f"256-float JSON input; load: {loader_name} (1 thread); {args.seconds:g} s per run, "
              f"median of {args.repeats}; max batch {args.max_batch}, peers' batch wait "
              f"{args.batch_wait_ms:g} ms")  # fmt: skip
    print(header("end to end: Schooner vs the floor and peers", placement, detail, "torch", "uvloop"))
    described: dict[str, dict[str, str]] = {}
    for peer in [s for s in systems if s in PEERS and s not in missing]:
        spec, python = PEER_SPECS[peer], args.peer_pythons[peer]
        described[peer] = {
            "versions": peer_versions(python, spec.packages), "serving": served.get(peer, ""),
            "batching": spec.knobs.format(B=args.max_batch, B4=4 * args.max_batch,
                                          W=f"{args.batch_wait_ms:g} ms"),
            "form": spec.form, "python": python}  # fmt: skip
        d = described[peer]
        server = f" (serving: {d['serving']})" if d["serving"] else ""
        print(f"# {peer}: {d['versions']}{server}; {d['batching']}; {d['form']} body "
              f"(in {python})")  # fmt: skip
    print("# idle server CPU, % of a core: "
          + ", ".join(f"{k} {v:.0%}" for k, v in idle.items()))  # fmt: skip
    print(table(cells, absent))
    for line in verdicts(cells):
        print(f"- {line}")
    write_json(args.json, {"suite": "e2e", "loader": loader_name, "cells": cells,
                           "absent": absent, "idle_cpu": idle, "peers": described,
                           "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

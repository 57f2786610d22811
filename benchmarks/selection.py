"""Model selection and the prediction cache: what a split, a shadow and the cache cost per query.

One Schooner (frontend + three containers of the ``noop`` model over the local socket, as
the local manager runs them) serves one app, and the same closed-loop load (one input of
256 floats per request, ``--connections`` keep-alive connections) is sent to it under each
setting of the app, in turn:

* ``fixed``: no selection (the linked model's current version: today's path);
* ``split 90/10``: ``set_traffic_split`` between two versions;
* ``shadow 100%``: every query mirrored to a third version (its answers compared);
* ``cache hit``: ``set_prediction_cache``, every request the same input (answered from it);
* ``cache miss``: the same cache, every request a new input (a lookup, a model call, a put).

Per setting: requests/s, p50/p99 latency, and server CPU per request, of the frontend alone
(what the selection layer itself costs) and of every process (a shadow doubles model work).
The load is ``wrk`` (one thread; a Lua ``request()`` makes the new inputs of ``cache miss``)
on the load cpu, or, for ``--smoke`` without wrk, a closed loop in this process (asyncio),
which saturates first: read its rows for CPU per request. The server side runs on the
server cpu. Default outputs are counted from the frontend's ``/metrics``.

    python -m benchmarks selection              # 1 and 64 connections, 4 s, median of 3
    python -m benchmarks selection --smoke      # 16 connections, 1 s, once (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.e2e import WRK_DONE_LUA
from benchmarks.harness import (
    add_common_args,
    free_port,
    header,
    markdown_table,
    median,
    pinned,
    placement_from,
    post_json,
    repo_root,
    stop,
    tree_cpu_seconds,
    wait_for_http,
    write_json,
)  # fmt: skip

__all__ = ["main", "SCENARIOS"]

APP = "bench"
SCENARIOS = ("fixed", "split 90/10", "shadow 100%", "cache hit", "cache miss")


@dataclass
class Row:
    scenario: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    frontend_cpu_us: float
    total_cpu_us: float
    errors: int
    defaults: int
    shadow_sent: int = 0
    shadow_skipped: int = 0


# --------------------------------------------------------------------------- load


async def _closed_loop(host: str, port: int, path: str, make_body: Callable[[], bytes],
                       connections: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    """``connections`` keep-alive connections, each sending its next request when answered."""
    latencies: list[float] = []
    counts = {"errors": 0, "defaults": 0}
    deadline = time.perf_counter() + seconds
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                body = make_body()
                start = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if b" 200 " not in status:
                    counts["errors"] += 1
                elif b'"default":true' in answer:
                    counts["defaults"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {"requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_s": pct(0.50), "p99_s": pct(0.99), **counts}  # fmt: skip


_RUNS = iter(range(1, 1 << 30))  # so that no two runs of "cache miss" send the same input


def _wrk_lua(tmp: Path, distinct: bool) -> Path:
    """A wrk script POSTing the benchmark's body (``distinct``: a new first value each time,
    never one an earlier run sent) and printing one ``WRK_JSON`` line, as
    ``benchmarks.e2e.load_wrk`` reads it."""
    fixed = models.body()
    rest = fixed[len(b'{"input":[') :]
    body_file = tmp / ("rest.body" if distinct else "fixed.body")
    body_file.write_bytes(rest if distinct else fixed)
    make = ("'{\"input\":[' .. counter .. '.0,' .. body" if distinct else "body")
    lines = [
        f'local f = io.open("{body_file}", "rb")', "local body = f:read('*a')", "f:close()",
        f"counter = {next(_RUNS) * 100_000}",  # float32 holds integers exactly to 2**24
        "request = function()",
        "  counter = counter + 1",
        f"  return wrk.format('POST', nil, {{['Content-Type'] = 'application/json'}}, {make})",
        "end",
        *WRK_DONE_LUA,
    ]  # fmt: skip
    script = tmp / ("miss.lua" if distinct else "fixed.lua")
    script.write_text("\n".join(lines) + "\n")
    return script


def _bodies(distinct: bool) -> Callable[[], bytes]:
    fixed = models.body()
    if not distinct:
        return lambda: fixed
    rest = fixed[len(b'{"input":[') :]
    counter = iter(range(next(_RUNS) * 100_000, 1 << 24))
    return lambda: b'{"input":[%d.0,' % next(counter) + rest


# --------------------------------------------------------------------------- the server


class Server:
    """Frontend + three versions of the noop model; ``admin(op, body)`` changes the app."""

    def __init__(self, tmp: Path, cpu: int | None) -> None:
        from schooner.frameworks import closure

        self.query, mgmt, rpc = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[Any]] = []
        self.logs: list[Path] = []
        socket_name = f"@schooner-bench-selection-{rpc}"
        self._tmp = tmp
        self.frontend = self._spawn("frontend", [
            sys.executable, "-m", "schooner.frontend", "--query-host", "127.0.0.1",
            "--query-port", str(self.query), "--management-port", str(mgmt), "--rpc-host",
            "127.0.0.1", "--rpc-port", str(rpc), "--state-db", str(tmp / "state.db"),
            "--log-level", "WARNING", "--rpc-socket", socket_name], cpu)  # fmt: skip
        self._admin = f"http://127.0.0.1:{mgmt}/admin"
        wait_for_http(f"{self._admin}/ping", 60, self.frontend)
        self._token = (tmp / "admin.token").read_text().strip()
        self.admin("add_app", {"name": APP, "input_type": "floats", "default_output": "null",
                               "latency_slo_micros": 1_000_000})  # fmt: skip
        artifact = closure.save(models.build("noop"), tmp / "noop-artifact")
        for version in ("1", "2", "3"):
            self.admin("add_model", {"model_name": "m", "model_version": version, "labels": [],
                                     "input_type": "floats", "container_name": "",
                                     "model_data_path": str(artifact), "batch_size": 64})  # fmt: skip
            env = dict(os.environ, CLIPPER_MODEL_NAME="m", CLIPPER_MODEL_VERSION=version,
                       CLIPPER_IP="127.0.0.1", CLIPPER_PORT=str(rpc), CLIPPER_INPUT_TYPE="floats",
                       CLIPPER_MODEL_PATH=str(artifact), SCHOONER_READY_FILE="none",
                       SCHOONER_MAX_BATCH_SIZE="64", SCHOONER_LOG_LEVEL="WARNING",
                       SCHOONER_RPC_SOCKET=socket_name)  # fmt: skip
            self._spawn(f"container-{version}", [sys.executable, "-m", "schooner.runtime"], cpu, env)
        self.admin("add_model_links", {"app_name": APP, "model_names": ["m"]})
        self.admin("set_model_version", {"model_name": "m", "model_version": "1"})
        self.url = f"http://127.0.0.1:{self.query}/{APP}/predict"
        deadline = time.monotonic() + 60
        while len(self.admin("get_all_containers", {})) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the three replicas did not connect\n" + self.log_tail())
            time.sleep(0.1)

    def _spawn(self, name: str, cmd: list[str], cpu: int | None,
               env: dict[str, str] | None = None) -> subprocess.Popen[Any]:  # fmt: skip
        log = self._tmp / f"{name}.log"
        self.logs.append(log)
        with open(log, "ab") as out:
            proc = subprocess.Popen(pinned(cmd, cpu), cwd=repo_root(), env=env, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        self.procs.append(proc)
        return proc

    def admin(self, op: str, body: dict[str, Any]) -> Any:
        return post_json(f"{self._admin}/{op}", body, token=self._token)

    def configure(self, scenario: str) -> None:
        """The app as ``scenario`` has it, from the one before."""
        self.admin("set_prediction_cache", {"name": APP, "size_mb": 0})
        self.admin("set_shadow", {"name": APP, "model": None})
        self.admin("set_selection_policy", {"name": APP, "policy": "fixed"})
        if scenario == "split 90/10":
            self.admin("set_traffic_split", {"name": APP, "split": {"m:1": 90, "m:2": 10}})
        elif scenario == "shadow 100%":
            self.admin("set_shadow", {"name": APP, "model": "m:3", "fraction": 1.0})
        elif scenario.startswith("cache"):
            self.admin("set_prediction_cache", {"name": APP, "size_mb": 64})

    def log_tail(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in self.logs
                         if p.exists())  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def _counts(server: Server) -> tuple[float, float, float]:
    """From the frontend's /metrics: the app's default outputs, its shadow copies compared
    and those skipped (not sent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.query}/metrics", timeout=10) as r:
        text = r.read().decode()

    def total(prefix: str, skipped: bool | None = None) -> float:
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith(prefix) and (skipped is None
                                                   or ('"skipped"' in line) == skipped))  # fmt: skip

    shadow = f'schooner_frontend_shadow_comparisons_total{{app="{APP}"'
    return (total(f'schooner_frontend_default_outputs_total{{app="{APP}"'),
            total(shadow, False), total(shadow, True))  # fmt: skip


def run_one(server: Server, scenario: str, connections: int, seconds: float,
            wrk: Path | None, load_cpu: int | None) -> dict[str, Any]:  # fmt: skip
    distinct = scenario == "cache miss"
    pids = [p.pid for p in server.procs]
    defaults, compared, skipped = _counts(server)
    front_before, all_before = tree_cpu_seconds([server.frontend.pid]), tree_cpu_seconds(pids)
    if wrk is not None:
        from benchmarks.e2e import load_wrk

        raw = load_wrk(server.url, connections, seconds, load_cpu, _wrk_lua(wrk, distinct))
        result: dict[str, Any] = {"requests": raw["requests"],
                                  "requests_per_s": raw["requests_per_s"],
                                  "p50_s": raw["p50_us"] / 1e6, "p99_s": raw["p99_us"] / 1e6,
                                  "errors": int(raw["errors"])}  # fmt: skip
    else:
        result = asyncio.run(_closed_loop("127.0.0.1", server.query, f"/{APP}/predict",
                                          _bodies(distinct), connections, seconds))  # fmt: skip
    n = max(result["requests"], 1)
    after = _counts(server)
    result["defaults"] = int(after[0] - defaults)
    result["shadow_sent"] = int(after[1] - compared)  # copies answered and compared
    result["shadow_skipped"] = int(after[2] - skipped)
    result["frontend_cpu_us"] = (tree_cpu_seconds([server.frontend.pid]) - front_before) / n * 1e6
    result["total_cpu_us"] = (tree_cpu_seconds(pids) - all_before) / n * 1e6
    return result


def verdicts(rows: list[Row]) -> list[str]:
    by = {(r.scenario, r.connections): r for r in rows}
    out = []
    for c in sorted({r.connections for r in rows}):
        fixed, hit, miss = by.get(("fixed", c)), by.get(("cache hit", c)), by.get(("cache miss", c))
        if hit and miss:
            out.append(f"{c} connections: a cache hit answers {hit.requests_per_s / miss.requests_per_s:.2f}x "
                       f"the req/s of a miss (p50 {hit.p50_ms:.2f} vs {miss.p50_ms:.2f} ms; frontend "
                       f"CPU {hit.frontend_cpu_us:.0f} vs {miss.frontend_cpu_us:.0f} µs/query)")  # fmt: skip
        for name in ("split 90/10", "shadow 100%"):
            row = by.get((name, c))
            if fixed and row:
                out.append(f"{c} connections: {name} costs {row.frontend_cpu_us - fixed.frontend_cpu_us:+.0f} µs "
                           f"of frontend CPU per query ({row.total_cpu_us - fixed.total_cpu_us:+.0f} µs "
                           f"all processes) next to fixed")  # fmt: skip
    return out


# --------------------------------------------------------------------------- in process


class _Instant:
    """A stand-in dispatcher that answers every query at once with "0": what is left of a
    request's cost is the frontend's own Python (parse, route, cache, reply)."""

    queues: dict[Any, Any] = {}

    def submit(self, queries: Any, key: Any, slo: int) -> None:
        for q in queries:
            self.answer(q, "0")

    def answer(self, q: Any, output: str) -> None:
        if not q.done:
            q.done, q.output = True, output
            q.on_done(q)

    def answer_default(self, q: Any, reason: str, explanation: str) -> None:
        if not q.done:
            q.done, q.reason, q.explanation = True, reason, explanation
            q.on_done(q)

    def cancel(self, queries: Any) -> None:
        pass


def in_process(scenarios: list[str], requests: int, repeats: int) -> dict[str, float]:
    """µs per request of ``QueryApi.predict`` under each setting (the best of ``repeats``
    runs of ``requests``), against ``_Instant``: the selection layer's own cost."""
    from schooner.frontend.http import Request
    from schooner.frontend.metrics import FrontendMetrics
    from schooner.frontend.query_api import QueryApi
    from schooner.frontend.selection import normalize
    from schooner.frontend.state import App, Model, StateStore
    from schooner.runtime.wire import InputType

    settings: dict[str, dict[str, Any]] = {
        "fixed": {}, "split 90/10": {"policy": "split", "models": {"m:1": 90, "m:2": 10}},
        "shadow 100%": {"shadow": {"model": "m:3"}}, "cache hit": {"cache_mb": 64},
        "cache miss": {"cache_mb": 64},
    }  # fmt: skip
    out = {}
    for scenario in scenarios:
        state = StateStore.open(":memory:")
        state.add_app(App(APP, InputType.FLOATS, "null", 1_000_000))
        for version in ("1", "2", "3"):
            state.add_model(Model("m", version, InputType.FLOATS))
        state.link(APP, "m")
        state.set_model_version("m", "1")
        state.set_selection(APP, normalize(settings[scenario]))
        api = QueryApi(state, _Instant(), FrontendMetrics(), lambda: True)  # type: ignore[arg-type]
        make = _bodies(distinct=scenario == "cache miss")

        def reply(*args: Any) -> None:
            pass

        def run(n: int, api: QueryApi = api, make: Callable[[], bytes] = make) -> float:
            bodies = [make() for _ in range(n)]
            start = time.perf_counter()
            for body in bodies:
                request = Request("POST", f"/{APP}/predict", "", body)
                request.param = APP
                api.predict(request, reply)
            return (time.perf_counter() - start) / n * 1e6

        run(requests // 4)  # warm-up (and the cache's one entry for hits)
        out[scenario] = min(run(requests) for _ in range(repeats))
        state.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks selection",
                                     description=(__doc__ or "").split("\n\n")[0])  # fmt: skip
    add_common_args(parser)
    parser.add_argument("--connections", default="1,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="per run")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--loader", choices=["wrk", "python"], default=None,
                        help="wrk (the default where installed) or the in-process closed loop")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.repeats, args.connections = 1.0, 1, "16"
    loader = args.loader or ("wrk" if shutil.which("wrk") else "python")
    scenarios = args.scenarios.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; one of {', '.join(SCENARIOS)}")
    placement = placement_from(args)
    placement.pin_self()
    connections = [int(c) for c in args.connections.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="schooner-selection-") as tmp:
        server = Server(Path(tmp), placement.server_cpu)
        wrk = Path(tmp) if loader == "wrk" else None
        try:
            for scenario in scenarios:
                server.configure(scenario)
                for c in connections:
                    run_one(server, scenario, c, 1.0, wrk, placement.load_cpu)  # warm-up
                    runs = [run_one(server, scenario, c, args.seconds, wrk, placement.load_cpu)
                            for _ in range(args.repeats)]  # fmt: skip
                    rows.append(Row(
                        scenario, c, median([r["requests_per_s"] for r in runs]),
                        median([r["p50_s"] for r in runs]) * 1e3,
                        median([r["p99_s"] for r in runs]) * 1e3,
                        median([r["frontend_cpu_us"] for r in runs]),
                        median([r["total_cpu_us"] for r in runs]),
                        sum(r["errors"] for r in runs), sum(r["defaults"] for r in runs),
                        sum(r["shadow_sent"] for r in runs), sum(r["shadow_skipped"] for r in runs),
                    ))  # fmt: skip
        except BaseException:
            sys.stderr.write(server.log_tail() + "\n")
            raise
        finally:
            server.stop()
    handler = in_process(scenarios, 2000 if args.smoke else 20000, 3 if args.smoke else 7)
    print(header("Model selection and the prediction cache (noop model, 256 floats)", placement,
                 f"load: {'wrk (1 thread)' if loader == 'wrk' else 'closed loop in Python'}, "
                 f"{args.seconds:g} s per run, median of {args.repeats}"))  # fmt: skip
    print(markdown_table(
        ["setting", "conns", "req/s", "p50 ms", "p99 ms", "frontend CPU µs/req",
         "all CPU µs/req", "errors", "defaults"],
        [[r.scenario, r.connections, f"{r.requests_per_s:,.0f}", f"{r.p50_ms:.2f}",
          f"{r.p99_ms:.2f}", f"{r.frontend_cpu_us:.0f}", f"{r.total_cpu_us:.0f}", r.errors,
          r.defaults] for r in rows], "lrrrrrrrr"))  # fmt: skip
    for line in verdicts(rows):
        print(f"- {line}")
    for r in rows:
        if r.shadow_sent + r.shadow_skipped:
            share = r.shadow_sent / (r.shadow_sent + r.shadow_skipped)
            print(f"- {r.scenario}, {r.connections} connections: {share:.0%} of the queries were "
                  f"mirrored ({r.shadow_sent:,} compared, {r.shadow_skipped:,} skipped: the "
                  "shadow was behind, or the primary overloaded)")  # fmt: skip
    print("\nIn process: µs of the frontend's Python per request (QueryApi.predict with a "
          "dispatcher that answers at once; best of the runs)\n")
    print(markdown_table(["setting", "µs/request", "vs fixed"],
                         [[name, f"{us:.1f}", f"{us - handler['fixed']:+.1f}" if "fixed" in handler else ""]
                          for name, us in handler.items()], "lrr"))  # fmt: skip
    write_json(args.json, [vars(r) for r in rows]
               + [{"scenario": name, "in_process_us": us} for name, us in handler.items()])
    return 0 if not any(r.errors for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks reliability``: how Schooner holds up under overload and failures.

One local cluster (the embedded default: supervisor, frontend, replicas as processes),
deployed as a user would (``deploy_python_closure``), with two apps:

* ``slow``: a model that sleeps ``--service-ms`` per batch, batches of one (its capacity is
  known: ``1000 / service-ms`` queries per second per replica), SLO ``--slo-ms``;
* ``fast``: a no-op model (adaptive batches), which the largest requests are sent to, and
  ``probe``: another one, on its own replica, whose queries measure how long the frontend's
  event loop is held by them (not how long they wait behind those of ``fast``).

Scenarios, each printed as a table row:

* **overload at 2x and 10x** of ``slow``'s capacity, open loop (requests are sent on
  schedule whatever the answers do): goodput (real answers within the SLO per second, and
  as a share of capacity), how fast shed queries are answered (p50/p99), the frontend's RSS
  before/during/after, and how long the first query after the load waits (in service times);
* **replica kill -9** and **frontend kill -9** under load (0.5x): failed requests (no HTTP
  answer), default answers, time from the kill to the first real answer again;
* **hung replica**: one of two replicas SIGSTOPped for 3 s under load (0.5x), then resumed;
* **largest-request stall**: the longest a small ``probe`` query waited while the largest
  legal ``input_batch`` and a 64 MB URL arrived on other connections.

Not pinned (the cluster's processes are started by its supervisor); the load generator is
this process. ``--smoke`` shortens every scenario (what CI runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Placement, free_port, header, markdown_table, rss_bytes, write_json

__all__ = ["main"]


# --------------------------------------------------------------------------- the load


@dataclass
class Outcome:
    """What an open-loop run saw. Latencies in seconds, from each request's scheduled time."""

    sent: int = 0
    real: list[float] = field(default_factory=list)  # (latency) of real answers
    real_at: list[float] = field(default_factory=list)  # when each real answer arrived
    defaults: Counter[str] = field(default_factory=Counter)  # reason (first words) -> count
    shed_latency: list[float] = field(default_factory=list)
    failed: int = 0  # no HTTP answer (connection refused/reset) or not 200/503
    refused_503: int = 0


def _reason(explanation: str) -> str:
    if explanation.startswith("overloaded"):
        return "shed"
    if "SLO" in explanation and "missed" in explanation:
        return "slo_missed"
    if "no replica" in explanation:
        return "no_replica"
    if "was lost" in explanation:
        return "replica_lost"
    return explanation[:40]


async def _request(host: str, port: int, raw: bytes, timeout: float) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, body
    finally:
        writer.close()


class Pool:
    """Keep-alive connections to one host, at most one request on each at a time."""

    def __init__(self, host: str, port: int, size: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.sem = asyncio.Semaphore(size)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        async with self.sem:
            conn = self.idle.pop() if self.idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout
                    )
                reader, writer = conn
                writer.write(raw)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await asyncio.wait_for(reader.readexactly(length), self.timeout)
            except BaseException:
                if conn is not None:
                    conn[1].close()
                raise
            self.idle.append(conn)
            return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def predict_request(app: str, body: bytes) -> bytes:
    return (
        b"POST /%s/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (app.encode(), len(body), body)
    )


async def open_loop(port: int, app: str, rate: float, seconds: float, *, connections: int = 256,
                    timeout: float = 30.0, during: Any = None) -> Outcome:  # fmt: skip
    """Send ``rate`` requests/s for ``seconds`` (each on schedule); ``during(t0)``, if given,
    runs alongside (a kill, a stop)."""
    out = Outcome()
    pool = Pool("127.0.0.1", port, connections, timeout)
    raw = predict_request(app, b'{"input": [1.0, 2.0]}')
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []

    async def one(scheduled: float) -> None:
        try:
            status, body = await pool.send(raw)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            out.failed += 1
            return
        now = loop.time()
        if status == 503:
            out.refused_503 += 1
            out.shed_latency.append(now - scheduled)
            return
        if status != 200:
            out.failed += 1
            return
        answer = json.loads(body)
        if answer.get("default"):
            reason = _reason(str(answer.get("default_explanation", "")))
            out.defaults[reason] += 1
            if reason == "shed":
                out.shed_latency.append(now - scheduled)
        else:
            out.real.append(now - scheduled)
            out.real_at.append(now - t0)

    side = asyncio.ensure_future(during(t0)) if during is not None else None
    i = 0
    while True:
        due = t0 + i / rate
        if due - t0 >= seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
        out.sent += 1
        i += 1
    await asyncio.gather(*tasks)
    if side is not None:
        await side
    pool.close()  # the clients leave
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- the cluster


def sleeper(seconds: float) -> Any:
    def model(xs: Any) -> list[str]:
        import time

        time.sleep(seconds)
        return [str(float(sum(x))) for x in xs]

    return model


def noop(xs: Any) -> list[str]:
    return ["0"] * len(xs)


class Cluster:
    def __init__(self, home: Path, service_s: float, slo_ms: float) -> None:
        from schooner.admin import ClipperConnection, LocalContainerManager

        self.manager = LocalContainerManager(
            cluster_name="reliability", clipper_query_port=free_port(),
            clipper_management_port=free_port(), clipper_rpc_port=free_port(),
            schooner_home=home, query_host="127.0.0.1", grace_s=3.0,
        )  # fmt: skip
        self.conn = ClipperConnection(self.manager)
        self.service_s = service_s
        self.slo_ms = slo_ms

    def start(self) -> None:
        from schooner.admin.deployers import python as python_deployer

        self.conn.start_clipper()
        slo = int(self.slo_ms * 1000)
        python_deployer.create_endpoint(self.conn, "slow", "doubles", sleeper(self.service_s),
                                        slo_micros=slo, batch_size=1)  # fmt: skip
        python_deployer.create_endpoint(self.conn, "fast", "doubles", noop, slo_micros=slo)
        python_deployer.create_endpoint(self.conn, "probe", "doubles", noop, slo_micros=slo)

    @property
    def port(self) -> int:
        return self.manager.settings.query_port

    def status(self) -> dict[str, Any]:
        return self.manager.status()

    def frontend_pid(self) -> int:
        return int(self.status()["frontend"]["pid"])

    def replica_pids(self, model: str) -> list[int]:
        return [int(r["pid"]) for r in self.status()["replicas"]
                if r.get("model_name") == model and r.get("pid")]  # fmt: skip

    def stop(self) -> None:
        self.conn.stop_all()


async def first_real_answer(port: int, app: str, since: float, timeout: float = 60.0) -> float:
    """Seconds from ``since`` (loop time) until a query of ``app`` gets a real answer."""
    loop = asyncio.get_running_loop()
    raw = predict_request(app, b'{"input": [1.0, 2.0]}')
    while loop.time() - since < timeout:
        try:
            status, body = await _request("127.0.0.1", port, raw, 10.0)
            if status == 200 and not json.loads(body).get("default"):
                return loop.time() - since
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        await asyncio.sleep(0.01)
    return float("inf")


# --------------------------------------------------------------------------- scenarios


async def overload(cluster: Cluster, factor: float, seconds: float) -> dict[str, Any]:
    capacity = 1.0 / cluster.service_s
    pid = cluster.frontend_pid()
    rss_before = rss_bytes(pid)
    peak = [rss_before]

    async def sample(t0: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() - t0 < seconds:
            peak[0] = max(peak[0], rss_bytes(pid))
            await asyncio.sleep(0.1)

    out = await open_loop(cluster.port, "slow", capacity * factor, seconds, during=sample)
    loop = asyncio.get_running_loop()
    start = loop.time()
    after_s = await first_real_answer(cluster.port, "slow", start)
    await asyncio.sleep(1.0)
    slo = cluster.slo_ms / 1e3
    in_slo = sum(1 for latency in out.real if latency <= slo)
    others = out.defaults.total() - out.defaults["shed"]
    return {
        "scenario": f"overload {factor:g}x", "offered/s": round(out.sent / seconds, 1),
        "capacity/s": round(capacity, 1), "goodput/s": round(in_slo / seconds, 1),
        "goodput/capacity": f"{in_slo / seconds / capacity:.0%}",
        "shed": out.defaults["shed"] + out.refused_503, "other defaults": others,
        "failed": out.failed,
        "shed p50/p99 ms": f"{pct(out.shed_latency, .5) * 1e3:.1f}/{pct(out.shed_latency, .99) * 1e3:.1f}",
        "real p50/p99 ms": f"{pct(out.real, .5) * 1e3:.0f}/{pct(out.real, .99) * 1e3:.0f}",
        "RSS MB before/peak/after": f"{rss_before / 2**20:.0f}/{peak[0] / 2**20:.0f}/"
                                    f"{rss_bytes(pid) / 2**20:.0f}",
        "first query after": f"{after_s * 1e3:.0f} ms ({after_s / cluster.service_s:.1f} service times)",
    }  # fmt: skip


async def kill(cluster: Cluster, what: str, seconds: float) -> dict[str, Any]:
    capacity = 1.0 / cluster.service_s
    killed_at: list[float] = []

    async def strike(t0: float) -> None:
        await asyncio.sleep(seconds / 3)
        pid = cluster.frontend_pid() if what == "frontend" else cluster.replica_pids("slow")[0]
        os.kill(pid, signal.SIGKILL)
        killed_at.append(asyncio.get_running_loop().time() - t0)

    out = await open_loop(cluster.port, "slow", capacity * 0.5, seconds, during=strike,
                          timeout=10.0)  # fmt: skip
    after = [t for t in out.real_at if t > killed_at[0]]
    gap = (after[0] - killed_at[0]) if after else float("inf")
    return {
        "scenario": f"{what} kill -9 at 0.5x", "sent": out.sent, "failed": out.failed,
        "defaults": dict(out.defaults), "real answers": len(out.real),
        "kill to first real answer": f"{gap * 1e3:.0f} ms",
    }  # fmt: skip


async def hung(cluster: Cluster, seconds: float) -> dict[str, Any]:
    pids = cluster.replica_pids("slow")
    capacity = len(pids) / cluster.service_s

    async def freeze(t0: float) -> None:
        await asyncio.sleep(seconds / 3)
        os.kill(pids[0], signal.SIGSTOP)
        await asyncio.sleep(3.0)
        os.kill(pids[0], signal.SIGCONT)

    out = await open_loop(cluster.port, "slow", capacity * 0.5, seconds, during=freeze)
    return {
        "scenario": f"replica SIGSTOP 3 s ({len(pids)} replicas, 0.5x)", "sent": out.sent,
        "failed": out.failed, "defaults": dict(out.defaults), "real answers": len(out.real),
    }  # fmt: skip


class _Probe(threading.Thread):
    """Small queries one after another on a keep-alive connection, from a thread of its own
    (blocking sockets: the driver's own event loop, busy sending a large request, must not
    be what the probe measures)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.waits: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        raw = predict_request("probe", b'{"input": [1.0]}')  # its own model and replica
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            reader = sock.makefile("rb")
            while not self.stopped.is_set():
                t = time.perf_counter()
                sock.sendall(raw)
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                reader.read(length)
                self.waits.append(time.perf_counter() - t)


def _send_blocking(port: int, raw: bytes) -> tuple[int, bytes]:
    """One request on a blocking socket (from a worker thread: the GIL is released while the
    kernel takes the bytes); the answer is read even if the server stopped reading first."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # the server answered and stopped reading: its answer is still there
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return 0, data
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        except OSError:
            return 0, data
        return int(head.split(b" ", 2)[1]), body


async def stall(cluster: Cluster, inputs: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rows = []
    big = b'{"input_batch": [%s]}' % b",".join([b"[1.0]"] * inputs)
    url = b"/fast/predict?" + b"x" * (64 * 2**20)
    huge_url = b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % url
    for name, raw in (
        (f"input_batch of {inputs} inputs ({len(big) / 2**20:.1f} MB)", predict_request("fast", big)),
        ("64 MB URL", huge_url),
    ):  # fmt: skip
        probe = _Probe(cluster.port)
        probe.start()
        await asyncio.sleep(0.3)
        t = loop.time()
        status, body = await loop.run_in_executor(None, _send_blocking, cluster.port, raw)
        took = loop.time() - t
        await asyncio.sleep(0.3)
        probe.stopped.set()
        probe.join(30)
        rows.append({
            "scenario": f"largest request: {name}", "status": status,
            "its time": f"{took * 1e3:.0f} ms", "answer bytes": len(body),
            "probe max wait": f"{max(probe.waits) * 1e3:.1f} ms",
            "probe queries": len(probe.waits),
        })  # fmt: skip
    return {"rows": rows}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks reliability",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="short scenarios (CI)")
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--slo-ms", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each overload scenario")
    parser.add_argument("--json", help="write the raw results to this file")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.smoke else args.seconds
    from schooner.frontend.inputs import MAX_INPUTS_PER_REQUEST as MAX_INPUTS

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="schooner-reliability-") as tmp:
        cluster = Cluster(Path(tmp), args.service_ms / 1e3, args.slo_ms)
        try:
            cluster.start()

            async def run() -> None:
                for factor in (2.0, 10.0):
                    results.append(await overload(cluster, factor, seconds))
                results.extend((await stall(cluster, MAX_INPUTS))["rows"])
                results.append(await kill(cluster, "replica", max(seconds, 4.0)))
                await first_real_answer(cluster.port, "slow", asyncio.get_running_loop().time())
                results.append(await kill(cluster, "frontend", max(seconds, 6.0)))
                await first_real_answer(cluster.port, "slow", asyncio.get_running_loop().time())
                cluster.conn.set_num_replicas("slow", 2)
                results.append(await hung(cluster, max(seconds, 6.0)))

            asyncio.run(run())
        finally:
            cluster.stop()
    print(header("Reliability: overload, failures, hostile sizes", Placement(None, None),
                 f"model sleeps {args.service_ms:g} ms per batch of 1, SLO {args.slo_ms:g} ms, "
                 f"open-loop load from this process, {seconds:g} s per overload run"))  # fmt: skip
    for keys in _groups(results):
        print(markdown_table(keys, [[r.get(k, "") for k in keys] for r in results
                                    if list(r) == keys]))  # fmt: skip
        print()
    write_json(args.json, results)
    return 0


def _groups(results: list[dict[str, Any]]) -> list[list[str]]:
    seen: list[list[str]] = []
    for r in results:
        keys = list(r)
        if keys not in seen:
            seen.append(keys)
    return seen

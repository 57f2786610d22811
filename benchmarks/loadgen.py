"""An open-loop HTTP load generator (and a closed-loop one for smoke runs without ``wrk``).

Why it exists: the adaptive-batching suite needs load at a fixed *rate* that does not slow
down when the server does. ``wrk`` is closed-loop (each connection waits for its answer
before sending again), and neither ``wrk2`` nor another open-loop tool with latency
percentiles is packaged in this machine's apt or on PyPI (``httperf --rate`` opens a TCP
connection per request and reports no percentiles; ``hey -q`` is closed-loop per worker).

How it avoids coordinated omission: request ``i`` is *scheduled* at ``t0 + i / rate``,
whatever happened before. It goes out on an idle keep-alive connection at that moment (at
most one request per connection, up to ``--connections``); when none is idle it waits in a
backlog until one is. Its latency is measured **from its scheduled time**, so time spent
waiting for a connection, or for this process to get round to sending, counts against the
server, never for it. Requests still unanswered when the run ends count as infinitely slow;
an answer with ``"default": true`` (Schooner's SLO-missed answer) counts as a miss too.

Precision: the scheduler sleeps until the next send is due (the event loop's timers have
millisecond resolution), then sends everything due. A send may so leave up to about a
millisecond late, and that lateness counts against the server: the percentiles are, if
anything, pessimistic by that much. It sleeps rather than spins so that, on a machine where
other work shares the load cpu, the scheduler still wakes it promptly. The caller pins it
to the load cpu.

    python -m benchmarks.loadgen open URL BODY_FILE --rate 2000 --seconds 3 [--warmup 0.5]
    python -m benchmarks.loadgen closed URL BODY_FILE --connections 16 --seconds 3

It prints one JSON object: offered rate, answered, errors, misses (default answers and
unanswered requests), throughput (answers per second in the window), p50/p90/p99/max in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["main"]

_DEFAULTED = b'"default":true'


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self, on_answer: Callable[[_Conn, int, bool], None]) -> None:
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False
        self.started = 0.0  # the scheduled (open loop) or actual (closed loop) send time
        self.counted = True  # whether this request's latency is recorded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.on_answer(self, 0, False)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buf
            return
        head = buf[:end]
        at = head.lower().find(b"content-length:")
        length = 0
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15 : eol if eol > 0 else len(head)])
        if len(buf) < end + 4 + length:
            self.buffer = buf
            return
        status = int(head[9:12])
        defaulted = _DEFAULTED in buf[end + 4 : end + 4 + length]
        self.buffer = buf[end + 4 + length :]
        self.busy = False
        self.on_answer(self, status, defaulted)


class _Run:
    def __init__(self, request: bytes, window: tuple[float, float]) -> None:
        self.request = request
        self.window = window  # (start, end) of the measured window, on perf_counter
        self.latencies: list[float] = []
        self.errors = 0
        self.defaulted = 0
        self.answered = 0
        self.outstanding = 0
        self.idle: deque[_Conn] = deque()
        self.backlog: deque[float] = deque()
        self.closed_loop = False
        self.stop_at = 0.0

    def send(self, conn: _Conn, scheduled: float) -> None:
        conn.busy = True
        conn.started = scheduled
        conn.counted = self.window[0] <= scheduled < self.window[1]
        self.outstanding += 1
        assert conn.transport is not None
        conn.transport.write(self.request)

    def on_answer(self, conn: _Conn, status: int, defaulted: bool) -> None:
        now = time.perf_counter()
        self.outstanding -= 1
        if conn.counted:
            if status != 200:
                self.errors += 1
                self.latencies.append(math.inf)
            elif defaulted:
                self.defaulted += 1
                self.latencies.append(math.inf)
            else:
                self.answered += 1
                self.latencies.append(now - conn.started)
        if conn.transport is None:
            return
        if self.closed_loop:
            if now < self.stop_at:
                self.send(conn, now)
        elif self.backlog:
            self.send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)


async def _connect(host: str, port: int, n: int, run: _Run) -> list[_Conn]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(n):
        _, proto = await loop.create_connection(lambda: _Conn(run.on_answer), host, port)
        conns.append(proto)
    return conns


async def open_loop(host: str, port: int, request: bytes, rate: float, seconds: float,
                    warmup: float, connections: int, grace: float) -> dict[str, object]:  # fmt: skip
    run = _Run(request, (0.0, 0.0))
    conns = await _connect(host, port, connections, run)
    run.idle.extend(conns)
    t0 = time.perf_counter() + 0.05
    run.window = (t0 + warmup, t0 + warmup + seconds)
    total = int((warmup + seconds) * rate)
    interval = 1.0 / rate
    i = 0
    while i < total:
        now = time.perf_counter()
        due = t0 + i * interval
        while i < total and due <= now:
            if run.idle:
                run.send(run.idle.popleft(), due)
            else:
                run.backlog.append(due)
            i += 1
            due = t0 + i * interval
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
    deadline = time.perf_counter() + grace
    while (run.outstanding or run.backlog) and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    missing = sum(1 for s in run.backlog if run.window[0] <= s < run.window[1])
    missing += sum(1 for c in conns if c.busy and c.counted)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return _summary(run, seconds, missing, offered=rate)


async def closed_loop(host: str, port: int, request: bytes, connections: int, seconds: float,
                      warmup: float) -> dict[str, object]:  # fmt: skip
    run = _Run(request, (0.0, 0.0))
    run.closed_loop = True
    conns = await _connect(host, port, connections, run)
    t0 = time.perf_counter()
    run.window = (t0 + warmup, t0 + warmup + seconds)
    run.stop_at = run.window[1]
    for c in conns:
        run.send(c, time.perf_counter())
    await asyncio.sleep(warmup + seconds)
    deadline = time.perf_counter() + 10
    while run.outstanding and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return _summary(run, seconds, 0, offered=None)


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.inf
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _summary(run: _Run, seconds: float, missing: int, offered: float | None) -> dict[str, object]:
    lat = sorted(run.latencies + [math.inf] * missing)

    def us(v: float) -> float | None:
        return None if math.isinf(v) else round(v * 1e6, 1)

    return {
        "offered_per_s": offered,
        "requests": len(lat),
        "answered": run.answered,
        "errors": run.errors,
        "defaulted": run.defaulted,
        "unanswered": missing,
        "throughput_per_s": run.answered / seconds,
        "p50_us": us(_percentile(lat, 50)),
        "p90_us": us(_percentile(lat, 90)),
        "p99_us": us(_percentile(lat, 99)),
        "max_us": us(lat[-1]) if lat else None,
    }


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    return host, port, request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["open", "closed"])
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second (open)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=0.5, help="sent but not measured")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--grace", type=float, default=2.0, help="wait for stragglers (open)")
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as f:
        host, port, request = build_request(args.url, f.read())
    if args.mode == "open":
        coro = open_loop(host, port, request, args.rate, args.seconds, args.warmup,
                         args.connections, args.grace)  # fmt: skip
    else:
        coro = closed_loop(host, port, request, args.connections, args.seconds, args.warmup)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

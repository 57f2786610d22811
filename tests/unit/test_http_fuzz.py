"""Fuzzing the real HTTP server (httptools + HttpProtocol) over real sockets.

Every input gets well-formed responses only, at most one per request it holds, then the
connection closes once the client stops sending; and the server keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schooner.frontend import http
from schooner.frontend.http import Reply, Request, Router

LIMITS = http.HttpLimits(
    max_body_bytes=2000, max_url_bytes=300, max_header_bytes=1000, max_headers=12,
    header_timeout_s=5.0, body_timeout_s=5.0, idle_timeout_s=5.0,
)  # fmt: skip
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


class Server:
    """An HTTP server on its own event loop in a thread, for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                router = Router()

                def echo(request: Request, reply: Reply) -> None:
                    reply(200, b"echo:" + request.body[:50], b"text/plain")

                router.add("POST", "/echo", echo)
                router.add("GET", "/health", lambda request, reply: reply(200, b"ok"))
                router.add_pattern("POST", "predict", lambda request, reply: reply(200, b"{}"))
                self.server = await http.serve(router, "127.0.0.1", 0, limits=LIMITS)
                self.port = self.server.sockets[0].getsockname()[1]
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes (10 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: what it sent is still read below
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def parse_responses(raw: bytes, heads: list[bool] | None = None) -> list[int]:
    """The statuses of a stream of responses; fails on anything not well-formed.
    ``heads``: whether each request was a HEAD (None: unknown); the answer to one has no
    body, seen where the next response (or the end) follows its head at once."""
    statuses: list[int] = []
    pos = 0
    while pos < len(raw):
        m = _STATUS.match(raw, pos)
        assert m is not None, raw[pos : pos + 200]
        end = raw.find(b"\r\n\r\n", pos)
        assert end > 0, raw[pos:]
        headers = dict(
            line.split(b": ", 1) for line in raw[m.end() : end].split(b"\r\n") if line
        )
        status = int(m.group(1))
        pos = end + 4
        if status == 100:
            continue  # the interim answer to Expect: 100-continue
        length = int(headers[b"Content-Length"])
        # an answer to HEAD has no body (but one to a HEAD too malformed to parse has)
        maybe_head = heads is None or (len(statuses) < len(heads) and heads[len(statuses)])
        if maybe_head and (raw.startswith(b"HTTP/1.1 ", pos) or pos == len(raw)):
            length = 0
        assert len(raw) - pos >= length, "a truncated body"
        pos += length
        statuses.append(status)
        if headers.get(b"Connection") == b"close":
            assert pos == len(raw), "bytes after a Connection: close response"
    return statuses


def still_serving(port: int) -> None:
    raw = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_responses(raw) == [200]


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                 min_size=1, max_size=20)  # fmt: skip
_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
_names = st.sampled_from([
    "Host", "Content-Type", "Accept", "Connection", "Upgrade", "Expect", "Content-Length",
    "Inference-Header-Content-Length", "Transfer-Encoding", "Authorization",
]) | _token  # fmt: skip
_header_values = _value | st.sampled_from([
    "close", "keep-alive", "upgrade", "websocket", "100-continue", "chunked", "0", "-1",
    "99999999999999999999", "h2c",
])  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, plausible or not, that holds no second request (no CR or LF inside a
    line; a body only with its exact Content-Length, and no other framing header)."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS",
                                   "CONNECT", "PATCH", "PRI", "FOO"]) | _token)  # fmt: skip
    path = draw(st.sampled_from(["/echo", "/health", "/shop/predict", "/", "*", "/v2"])
                | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                          min_size=1, max_size=400))  # fmt: skip
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "http/1.1"]))
    headers = draw(st.lists(st.tuples(_names, _header_values), max_size=16))
    headers = [(n, v) for n, v in headers
               if n.lower() not in ("content-length", "transfer-encoding")]  # fmt: skip
    body = draw(st.binary(max_size=3000))
    head = f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@FUZZ
@given(request=requests())
def test_every_request_gets_at_most_one_well_formed_answer(server: Server, request: bytes) -> None:
    raw = exchange(server.port, request)
    assert len(parse_responses(raw, [request.startswith(b"HEAD ")])) <= 1


@FUZZ
@given(pieces=st.lists(requests(), min_size=2, max_size=5))
def test_pipelined_requests_get_well_formed_answers_in_order(
    server: Server, pieces: list[bytes]
) -> None:
    raw = exchange(server.port, b"".join(pieces))
    assert len(parse_responses(raw, [p.startswith(b"HEAD ") for p in pieces])) <= len(pieces)


@FUZZ
@given(garbage=st.binary(max_size=4000),
       prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST /echo HTTP/1.1\r\n"
                                    b"Content-Length: 5\r\n\r\n"]))  # fmt: skip
def test_arbitrary_bytes_get_only_well_formed_answers(
    server: Server, garbage: bytes, prefix: bytes
) -> None:
    parse_responses(exchange(server.port, prefix + garbage))


def test_the_server_still_serves_after_the_fuzzing(server: Server) -> None:
    still_serving(server.port)

"""The HTTP layer's two parsers on the same bytes: httptools (callbacks) and the C shortcut
for whole plain keep-alive requests (``_fastpath.scan_request``, used by
``HttpProtocol.data_received`` while httptools holds no part of a request).

httptools defines what a request means and words every error; wherever the shortcut
answers, a connection must behave exactly as with httptools alone (the same answers, byte
for byte, whatever the chunking), and wherever it is not sure it must say None. Its tests
skip, saying why, where the extension is not built.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schooner.frontend import http
from schooner.frontend.http import HttpLimits, Reply, Request, Router

fastpath = pytest.importorskip(
    "schooner.frontend._fastpath", reason="the C extension is not built (no C compiler at install)"
)
scan = fastpath.scan_request

LIMITS = HttpLimits(max_body_bytes=2000, max_url_bytes=300, max_header_bytes=1000, max_headers=12)


def scan_with(data: bytes, offset: int = 0, limits: HttpLimits = LIMITS) -> tuple | None:
    return scan(data, offset, limits.max_url_bytes, limits.max_headers, limits.max_header_bytes,
                limits.max_body_bytes)  # fmt: skip


# ------------------------------------------------------------------ what it recognises


def test_a_plain_request_is_read_whole_with_what_the_http_layer_needs() -> None:
    data = (b"POST /app/predict?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json"
            b"\r\ncontent-length: 5\r\nAUTHORIZATION: Bearer abc\r\n"
            b"Inference-Header-Content-Length: 3\r\n\r\nhelloGET /next HTTP/1.1\r\n\r\n")  # fmt: skip
    first = scan_with(data)
    assert first is not None
    end, method, path, query, body, binary_header, authorization = first
    assert (method, path, query, body) == ("POST", "/app/predict", "x=1&y=%20", b"hello")
    assert (binary_header, authorization) == (b"3", b"Bearer abc")
    assert data[end:].startswith(b"GET /next")
    assert scan_with(data, end) == (len(data), "GET", "/next", "", b"", None, None)


@pytest.mark.parametrize(
    "value, expected", [(b"12", 12), (b"0", 0), (b"x1", -1), (b"123456789012", -1)]
)
def test_the_binary_header_length_is_read_as_the_callbacks_read_it(value: bytes, expected: int) -> None:
    data = b"POST /v2 HTTP/1.1\r\nInference-Header-Content-Length: %s\r\n\r\n" % value
    found = scan_with(data)
    assert found is not None and found[5] == value
    assert http.binary_header_length(found[5]) == expected


REFUSED = {
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "connection close": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "connection upgrade": b"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    "two lengths": b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "length not digits": b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
    "length with space": b"POST / HTTP/1.1\r\nContent-Length: 1 \r\n\r\nx",
    "body still arriving": b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc",
    "head still arriving": b"GET / HTTP/1.1\r\nHost: h\r\n",
    "line still arriving": b"GET / HTTP/1.",
    "folded header": b"GET / HTTP/1.1\r\nX-A: b\r\n  c\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: h\n\n",
    "LF in a value": b"GET / HTTP/1.1\r\nX-A: b\nc\r\n\r\n",
    "lowercase method": b"get / HTTP/1.1\r\n\r\n",
    "unknown method": b"BREW / HTTP/1.1\r\n\r\n",
    "CONNECT": b"CONNECT h:443 HTTP/1.1\r\n\r\n",
    "absolute target": b"GET http://h/ HTTP/1.1\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\n\r\n",
    "non-ASCII target": b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    "control in target": b"GET /a\x01 HTTP/1.1\r\n\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n: h\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nX-A: \x00\r\n\r\n",
    "two authorizations": b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
    "URL over the limit": b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 13 + b"\r\n",
    "headers over the limit": b"GET / HTTP/1.1\r\nX-A: " + b"b" * 1000 + b"\r\n\r\n",
    "body over the limit": b"POST / HTTP/1.1\r\nContent-Length: 2001\r\n\r\n" + b"x" * 2001,
    "empty": b"",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_it_does_not_recognise_is_left_to_httptools(name: str) -> None:
    assert scan_with(REFUSED[name]) is None


def test_exactly_at_the_limits_is_recognised() -> None:
    data = (b"POST /" + b"a" * 299 + b" HTTP/1.1\r\n" + b"X-A: b\r\n" * 11
            + b"X-B: " + b"c" * (1000 - 11 * 4 - 3) + b"\r\nContent-Length: 2000\r\n\r\n"
            + b"x" * 2000)  # fmt: skip
    assert scan_with(data) is None  # 13 headers with Content-Length
    data = (b"POST /" + b"a" * 299 + b" HTTP/1.1\r\n" + b"X-A: b\r\n" * 10
            + b"X-B: " + b"c" * (1000 - 10 * 4 - 3 - 14 - 4) + b"\r\nContent-Length: 2000\r\n\r\n"
            + b"x" * 2000)  # fmt: skip
    found = scan_with(data)
    assert found is not None and found[0] == len(data) and len(found[4]) == 2000


def test_offsets_outside_the_data_are_refused() -> None:
    data = b"GET / HTTP/1.1\r\n\r\n"
    assert scan_with(data, len(data)) is None and scan_with(data, -1) is None


# ------------------------------------------------------------------ one connection, both ways


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _echo(request: Request, reply: Reply) -> None:
    text = (f"{request.method} {request.path} ?{request.query} {request.header_length} "
            f"{request.authorization!r} {request.param} ").encode()  # fmt: skip
    reply(200, text + request.body, b"text/plain")


def _router() -> Router:
    router = Router()
    router.add("POST", "/echo", _echo)
    router.add("GET", "/echo", _echo)
    router.add("HEAD", "/echo", _echo)
    router.add_pattern("POST", "predict", _echo)
    router.add_prefix("/v2", _echo)
    return router


def serve(
    chunks: list[bytes], shortcut: bool, limits: HttpLimits = LIMITS, python: bool = False
) -> tuple[bytes, bool]:
    """What one connection answers to ``chunks``, with or without the shortcut, on the C
    core or (``python``) the Python one."""
    saved = http._scan_request
    http._scan_request = saved if shortcut else None
    kind = http._PyHttpProtocol if python else http.HttpProtocol
    try:
        protocol = kind(http._Listener(_router(), limits, (), "test"))
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
        return b"".join(transport.out), transport.closed
    finally:
        http._scan_request = saved


def both(chunks: list[bytes], limits: HttpLimits = LIMITS) -> bytes:
    """The answer with the shortcut, checked to be the answer without it, on both cores."""
    with_shortcut = serve(chunks, True, limits)
    assert with_shortcut == serve(chunks, False, limits)
    assert with_shortcut == serve(chunks, True, limits, python=True)
    assert with_shortcut == serve(chunks, False, limits, python=True)
    return with_shortcut[0]


PLAIN = b"POST /app/predict HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"


def test_pipelined_requests_and_a_partial_one_answer_the_same() -> None:
    data = PLAIN * 3 + b"GET /echo?a=b HTTP/1.1\r\nAuthorization: x\r\n\r\n" + PLAIN[:20]
    out = both([data, PLAIN[20:], PLAIN])
    assert out.count(b"HTTP/1.1 200 OK") == 6


def test_a_request_httptools_parses_then_plain_ones_answer_the_same() -> None:
    chunked = (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")  # fmt: skip
    out = both([PLAIN + chunked + PLAIN, PLAIN])
    assert out.count(b"HTTP/1.1 200 OK") == 4 and b"abc" in out


@pytest.mark.parametrize("name", list(REFUSED))
def test_after_plain_requests_every_refused_kind_answers_the_same(name: str) -> None:
    both([PLAIN + REFUSED[name] + PLAIN])
    both([PLAIN, REFUSED[name], PLAIN])


def test_max_keepalive_requests_closes_at_the_same_request() -> None:
    limits = HttpLimits(max_keepalive_requests=2)
    out = both([PLAIN * 3], limits)
    assert out.count(b"HTTP/1.1 200") == 2 and b"Connection: close" in out


PARTS = st.sampled_from([
    PLAIN,
    b"GET /echo HTTP/1.1\r\n\r\n",
    b"HEAD /echo HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /echo?q=%41 HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer t\r\n\r\nhi",
    b"POST /v2/models/m/infer HTTP/1.1\r\nInference-Header-Content-Length: 2\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"GET /nowhere HTTP/1.1\r\n\r\n",
    b"PUT /echo HTTP/1.1\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"GET /echo HTTP/1.0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 3000\r\n\r\n",
    b"GET /" + b"u" * 400 + b" HTTP/1.1\r\n\r\n",
    b"\r\n",
    b"GARBAGE\r\n\r\n",
])  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(PARTS, min_size=1, max_size=6), st.lists(st.integers(0, 2000), max_size=5))
def test_any_stream_of_requests_in_any_chunks_answers_the_same(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if b > a]
    both(chunks)

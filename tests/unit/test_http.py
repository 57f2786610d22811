"""The HTTP/1.1 server over real sockets: keep-alive, pipelining in order, limits, garbage.

Every test runs on both request paths of a connection: the C core (``_fastpath.ConnCore``,
where the extension is built) and the Python one (``_PyCore``, used without a compiler)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from schooner.frontend import http
from schooner.frontend.http import Reply, Request, Router

MAX_BODY = 1000


@pytest.fixture(autouse=True, params=["core", "python"])
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The connection class ``http.serve`` makes: HttpProtocol, or the Python-core one."""
    if request.param == "python":
        monkeypatch.setattr(http, "HttpProtocol", http._PyHttpProtocol)
    yield request.param


def make_router(loop_box: list[asyncio.AbstractEventLoop]) -> Router:
    router = Router()

    def echo(request: Request, reply: Reply) -> None:
        reply(200, b"echo:" + request.body, b"text/plain")

    def slow(request: Request, reply: Reply) -> None:
        # Answers after the requests pipelined behind it were answered.
        loop_box[0].call_later(0.05, reply, 200, b"slow")

    def predict(request: Request, reply: Reply) -> None:
        reply(200, f"app={request.param}".encode())

    def boom(request: Request, reply: Reply) -> None:
        raise RuntimeError("handler bug")

    router.add("POST", "/echo", echo)
    router.add("GET", "/slow", slow)
    router.add("GET", "/boom", boom)
    router.add_pattern("POST", "predict", predict)
    return router


Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_with_server(session: Session, limits: http.HttpLimits | None = None) -> None:
    async def main() -> None:
        loop_box = [asyncio.get_running_loop()]
        server = await http.serve(make_router(loop_box), "127.0.0.1", 0, max_body_bytes=MAX_BODY,
                                  limits=limits)  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.wait_for(session(reader, writer), 5)
        finally:
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(3):
            writer.write(post("/echo", f"n{i}".encode()))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, f"echo:n{i}".encode())
            assert headers["content-type"] == "text/plain"
            assert "connection" not in headers

    run_with_server(session)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + post("/echo", b"second")
            + post("/shop/predict", b"{}")
        )  # fmt: skip
        answers = [await read_response(reader) for _ in range(3)]
        assert [a[2] for a in answers] == [b"slow", b"echo:second", b"app=shop"]

    run_with_server(session)


def test_body_over_the_limit_is_413_and_closes() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"x" * (MAX_BODY + 1)))
        status, headers, body = await read_response(reader)
        assert status == 413 and headers["connection"] == "close"
        assert b"cause" in body
        assert await reader.read() == b""

    run_with_server(session)


def test_chunked_body_over_the_limit_is_413() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 600
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"258\r\n" + chunk + b"\r\n" + b"258\r\n" + chunk + b"\r\n0\r\n\r\n"
        )  # fmt: skip
        status, _, _ = await read_response(reader)
        assert status == 413

    run_with_server(session)


def test_garbage_is_400_and_closes_after_earlier_answers() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"ok") + b"\x00\x01 NOT HTTP\r\n\r\n")
        first = await read_response(reader)
        assert first[0] == 200
        status, headers, body = await read_response(reader)
        assert status == 400 and headers["connection"] == "close" and b"malformed" in body
        assert await reader.read() == b""

    run_with_server(session)


def test_routing_errors_and_handler_failures() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 404
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 405
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 500
        writer.write(b"GET /shop/predict HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 405
        writer.write(post("/a/b/predict", b""))
        assert (await read_response(reader))[0] == 404  # only /<name>/predict matches

    run_with_server(session)


def test_http_1_0_closes_after_the_response() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        status, headers, body = await read_response(reader)
        assert (status, body, headers["connection"]) == (200, b"echo:hi", "close")
        assert await reader.read() == b""

    run_with_server(session)


# ------------------------------------------------------------------------- limits (issue 10)

SMALL = http.HttpLimits(max_url_bytes=100, max_header_bytes=300, max_headers=5)


def test_a_url_over_the_limit_is_414_and_the_error_quotes_no_more_than_a_prefix() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /" + b"z" * 95 + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # 96 bytes: fits
        status, _, body = await read_response(reader)
        assert status == 404 and body.count(b"z") == 95
        writer.write(b"GET /" + b"z" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 414 and headers["connection"] == "close" and b"z" not in body
        assert await reader.read() == b""

    run_with_server(session, SMALL)


def test_a_404_quotes_at_most_a_bounded_prefix_of_the_path() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 404 and len(body) < http.QUOTE_CHARS + 200
        assert b"5001 characters" in body

    run_with_server(session)


def test_headers_over_the_byte_or_count_limit_are_431() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"a", "X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n"))  # 5 headers: fits
        assert (await read_response(reader))[0] == 200
        writer.write(post("/echo", b"a", "X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\n"))
        status, headers, body = await read_response(reader)
        assert status == 431 and b"more than 5 request headers" in body
        assert await reader.read() == b""

    run_with_server(session, SMALL)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"a", f"X-Big: {'v' * 300}\r\n"))
        status, _, body = await read_response(reader)
        assert status == 431 and b"larger than 300 bytes" in body and b"vvv" not in body

    run_with_server(big, SMALL)


def test_a_huge_header_sent_in_pieces_is_cut_off_early() -> None:
    """httptools keeps an unfinished header value itself: the chunk count bounds it."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        answer = asyncio.ensure_future(read_response(reader))
        while not answer.done() and sent < 64 * 1024 * 1024:
            try:
                writer.write(b"v" * 65536)
                await writer.drain()
            except ConnectionError:
                break
            sent += 65536
            await asyncio.sleep(0)
        status, headers, _ = await answer
        assert status == 431 and headers["connection"] == "close"
        # cut off within a few chunks of the limit, not after the 64 MiB
        assert sent < 64 * 1024 * 1024

    run_with_server(session, SMALL)


def test_an_upgrade_request_gets_exactly_one_response_then_close() -> None:
    for request in (
        b"GET /slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHI",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
        b"Content-Length: 2\r\n\r\nhi",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ):

        async def session(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = request
        ) -> None:
            writer.write(request)
            status, headers, body = await read_response(reader)
            assert status == 400 and headers["connection"] == "close"
            assert b"upgrades" in body
            assert await reader.read() == b""  # nothing more: one answer, then the close

        run_with_server(session)


def test_an_upgrade_after_pipelined_requests_is_answered_after_them() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /slow HTTP/1.1\r\nHost: x\r\nUpgrade: a\r\nConnection: upgrade\r\n\r\n")
        assert (await read_response(reader))[:1] == (200,)
        assert (await read_response(reader))[0] == 400
        assert await reader.read() == b""

    run_with_server(session)


def test_head_is_answered_without_a_body() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404") and b"Content-Length: " in head
        status, _, body = await read_response(reader)  # the next response starts right away
        assert status == 404 and b"no route" in body

    run_with_server(session)


QUICK = http.HttpLimits(header_timeout_s=0.3, body_timeout_s=0.3, idle_timeout_s=0.3)


def test_slow_headers_get_408_and_are_closed() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        status, headers, body = await read_response(reader)
        assert status == 408 and headers["connection"] == "close" and b"headers" in body
        assert await reader.read() == b""

    run_with_server(session, QUICK)


def test_a_body_shorter_than_its_content_length_gets_408() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
        status, headers, body = await read_response(reader)
        assert status == 408 and headers["connection"] == "close" and b"body" in body
        assert await reader.read() == b""

    run_with_server(session, QUICK)


def test_idle_keep_alive_connections_and_silent_peers_are_closed_without_a_response() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"1"))
        assert (await read_response(reader))[0] == 200
        assert await reader.read() == b""  # idle after its answer: closed, nothing written

    run_with_server(session, QUICK)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.read() == b""  # connected and sent nothing

    run_with_server(silent, QUICK)


def test_a_request_waiting_for_its_answer_is_not_idle() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"late")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        router = Router()
        # answered after several idle timeouts have passed
        router.add("GET", "/later", lambda request, reply: loop.call_later(1.2, reply, 200, b"late"))
        server = await http.serve(router, "127.0.0.1", 0, limits=QUICK)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        await asyncio.wait_for(session(reader, writer), 10)
        writer.close()
        server.close()

    asyncio.run(main())


def test_max_keepalive_requests_closes_after_the_nth_answer() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post("/echo", b"1") + post("/echo", b"2") + post("/echo", b"3"))
        first = await read_response(reader)
        second = await read_response(reader)
        assert "connection" not in first[1] and second[1]["connection"] == "close"
        assert second[2] == b"echo:2"
        assert await reader.read() == b""  # the third is not answered on this connection

    run_with_server(session, http.HttpLimits(max_keepalive_requests=2))


def test_the_connection_limit_keeps_a_reserve_for_health_checks() -> None:
    async def main() -> None:
        router = Router()
        router.add("GET", "/health", lambda request, reply: reply(200, b"ok"))
        router.add("POST", "/echo", lambda request, reply: reply(200, request.body))
        limits = http.HttpLimits(max_connections=3, reserve_connections=2)
        server = await http.serve(router, "127.0.0.1", 0, limits=limits, reserved={"/health"})
        address = server.sockets[0].getsockname()[:2]
        held = [await asyncio.open_connection(*address) for _ in range(3)]
        for reader, writer in held:  # the three within the limit are served as usual
            writer.write(post("/echo", b"x"))
            assert (await read_response(reader))[0] == 200
        # past the limit: the reserve answers one health check per connection
        r1, w1 = await asyncio.open_connection(*address)
        r2, w2 = await asyncio.open_connection(*address)
        w1.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(r1)
        assert (status, body, headers["connection"]) == (200, b"ok", "close")
        w2.write(post("/echo", b"x"))
        assert (await read_response(r2))[0] == 503
        assert await r1.read() == b"" and await r2.read() == b""
        # with the reserve full, a connection is refused with 503 at once
        extra = [await asyncio.open_connection(*address) for _ in range(2)]
        r3, w3 = await asyncio.open_connection(*address)
        status, headers, _ = await read_response(r3)
        assert status == 503 and headers["connection"] == "close"
        assert await r3.read() == b""
        # a held connection closes: there is room again
        for _, writer in [*held[:1], *extra]:
            writer.close()
        await asyncio.sleep(0.2)
        r4, w4 = await asyncio.open_connection(*address)
        w4.write(post("/echo", b"again"))
        assert (await read_response(r4))[:1] == (200,)
        for writer in (w1, w2, w3, w4, *(w for _, w in held[1:])):
            writer.close()
        server.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_peer_that_reads_no_responses_is_dropped() -> None:
    async def main() -> None:
        router = Router()
        big = b"x" * (8 << 20)
        router.add("GET", "/big", lambda request, reply: reply(200, big, b"text/plain"))
        server = await http.serve(router, "127.0.0.1", 0, limits=QUICK)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        for _ in range(8):  # 64 MiB of answers: more than the socket buffers hold
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        # read nothing; the server gives up on the peer and aborts the connection
        deadline = asyncio.get_running_loop().time() + 15
        got = 0
        await asyncio.sleep(1.5)
        try:
            while asyncio.get_running_loop().time() < deadline:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < 64 << 20  # it stopped sending: not every answer arrived
        writer.close()
        server.close()

    asyncio.run(main())


def test_the_router_remembers_what_it_routed_within_bounds_and_forgets_on_a_new_route() -> None:
    from schooner.frontend.http import Request, Router

    router = Router()
    seen: list[tuple[str, str | None]] = []
    answers: list[int] = []
    router.add_pattern("POST", "predict", lambda req, reply: seen.append(("app", req.param)))

    def ask(method: str, path: str) -> None:
        router.dispatch(Request(method, path, "", b""), lambda status, *rest: answers.append(status))

    ask("POST", "/a/predict")
    ask("POST", "/a/predict")  # from memory: the same handler and name
    assert seen == [("app", "a"), ("app", "a")]
    router.add("POST", "/a/predict", lambda req, reply: seen.append(("exact", req.param)))
    ask("POST", "/a/predict")  # a new route is seen at once
    assert seen[-1] == ("exact", None)
    ask("GET", "/a/predict")
    ask("POST", "/a/b/predict")
    assert answers == [405, 404]
    for i in range(Router.MAX_REMEMBERED + 10):  # many names: memory stays bounded
        ask("POST", f"/app{i}/predict")
    ask("POST", "/" + "x" * 300 + "/predict")  # too long to remember, still routed
    assert seen[-1] == ("app", "x" * 300)
    assert 0 < len(router._remembered) <= Router.MAX_REMEMBERED
    assert all(len(path) <= Router.REMEMBER_CHARS for _, path in router._remembered)

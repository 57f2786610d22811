"""The HTTP/1.1 server over real sockets: keep-alive, pipelining in order, limits, garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from schooner.frontend import http
from schooner.frontend.http import Reply, Request, Router

MAX_BODY = 1000


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


def run_with_server(session: Session) -> None:
    async def main() -> None:
        loop_box = [asyncio.get_running_loop()]
        server = await http.serve(make_router(loop_box), "127.0.0.1", 0, max_body_bytes=MAX_BODY)
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

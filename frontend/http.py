"""A lean HTTP/1.1 server: asyncio.Protocol + httptools, nothing in between.

Why not a framework: the query path is benchmarked against a bare asyncio responder, so
each request costs one parser callback sequence, one handler call and one
``transport.write`` of pre-built header bytes plus the body.

What it does: keep-alive; pipelined requests answered in order (a handler may answer
later, e.g. when the model replies, and earlier answers wait for their turn); bodies up to
``max_body_bytes`` (larger: 413 and close); a malformed request gets 400 and the
connection is closed. Routing is exact ``(method, path)`` pairs plus one pattern,
``/<name>/<suffix>``, for ``POST /<app>/predict``.

A handler is ``handler(request, reply)`` and must call ``reply(status, body)`` exactly
once, now or later (``reply(status, body, content_type, headers)``: ``headers`` are extra
header lines, CRLF-terminated bytes). It runs on the event loop, so it must not block.
Besides exact paths and the pattern, a prefix route (``/v2/...``) takes every path below it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from http import HTTPStatus

import httptools
import orjson

__all__ = ["Request", "Reply", "Handler", "Router", "HttpProtocol", "json_error", "serve"]

log = logging.getLogger(__name__)

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

# Pipelined requests a connection may have outstanding before we stop reading from it.
MAX_PIPELINE = 256


class Request:
    """One parsed request. ``param`` is the ``<name>`` of a pattern route, else None."""

    __slots__ = ("method", "path", "query", "body", "param", "header_length")

    def __init__(
        self, method: str, path: str, query: str, body: bytes, header_length: int | None = None
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.param: str | None = None
        # ``Inference-Header-Content-Length`` (Triton's binary tensor extension), if sent
        self.header_length = header_length


# reply(status: int, body: bytes, content_type: bytes = JSON, headers: bytes = b"")
Reply = Callable[..., None]
Handler = Callable[[Request, Reply], None]


def json_error(status: int, error: str, cause: str) -> tuple[int, bytes]:
    """The ``{"error", "cause"}`` body every API answers failures with."""
    return status, orjson.dumps({"error": error, "cause": cause})


_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
_HEAD_CACHE: dict[tuple[int, bytes, bool], bytes] = {}


def _head(status: int, content_type: bytes, close: bool) -> bytes:
    """Status line and fixed headers up to ``Content-Length: `` (cached per combination)."""
    key = (status, content_type, close)
    head = _HEAD_CACHE.get(key)
    if head is None:
        reason = _REASONS.get(status, b"Unknown")
        head = (
            b"HTTP/1.1 %d %s\r\nServer: schooner\r\nContent-Type: %s\r\n%sContent-Length: "
            % (status, reason, content_type, b"Connection: close\r\n" if close else b"")
        )
        _HEAD_CACHE[key] = head
    return head


def render(
    status: int, body: bytes, content_type: bytes = JSON, close: bool = False, headers: bytes = b""
) -> bytes:
    """A complete response as one bytes object (``headers``: extra CRLF-terminated lines)."""
    return b"%s%d\r\n%s\r\n%s" % (_head(status, content_type, close), len(body), headers, body)


class Router:
    """Exact ``(method, path)`` routes, and ``(method, suffix)`` routes for ``/<name>/<suffix>``."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._pattern: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._paths: set[str] = set()
        self._suffixes: set[str] = set()

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._exact[(method, path)] = handler
        self._paths.add(path)

    def add_pattern(self, method: str, suffix: str, handler: Handler) -> None:
        """Route ``METHOD /<name>/<suffix>``; the handler finds ``<name>`` in ``request.param``."""
        self._pattern[(method, suffix)] = handler
        self._suffixes.add(suffix)

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Route every method and path under ``prefix`` (``"/v2"``: ``/v2`` and ``/v2/...``)
        to ``handler``, which answers 404/405 for what it does not serve itself."""
        self._prefixes.append((prefix, handler))

    def dispatch(self, request: Request, reply: Reply) -> None:
        path = request.path
        for prefix, prefixed in self._prefixes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                prefixed(request, reply)
                return
        handler = self._exact.get((request.method, path))
        known = path in self._paths
        if handler is None:
            cut = path.rfind("/")
            if cut > 1 and path.count("/", 0, cut) == 1:
                suffix = path[cut + 1 :]
                handler = self._pattern.get((request.method, suffix))
                known = known or suffix in self._suffixes
                if handler is not None:
                    request.param = path[1:cut]
        if handler is None:
            if known:
                reply(*json_error(405, "method not allowed", f"{request.method} {path}"))
            else:
                reply(*json_error(404, "not found", f"no route for {path}"))
            return
        handler(request, reply)


class _Slot:
    """A pipelined request's place in line; ``data`` is set when its answer is ready."""

    __slots__ = ("data", "close")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False


class HttpProtocol(asyncio.Protocol):
    """One client connection. Created by the server for every accepted socket."""

    __slots__ = (
        "_router", "_max_body", "_parser", "_transport", "_url", "_body", "_body_len",
        "_slots", "_broken", "_paused", "_too_large", "_expect", "_header_length",
    )  # fmt: skip

    def __init__(self, router: Router, max_body_bytes: int) -> None:
        self._router = router
        self._max_body = max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_len = 0
        self._slots: deque[_Slot] = deque()
        self._broken = False  # a request could not be parsed: read nothing more
        self._paused = False
        self._too_large = False
        self._expect = False
        self._header_length: int | None = None

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken = True
        self._slots.clear()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self._too_large:
                self._fail(413, f"the request body is larger than {self._max_body} bytes")
            else:
                self._fail(400, f"malformed HTTP request: {exc}")

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_len = 0
        self._header_length = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                if int(value) > self._max_body:
                    self._too_large = True
            except ValueError:
                pass  # httptools itself rejects a malformed Content-Length
        elif len(name) == 6 and name.lower() == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif len(name) == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = int(value) if value.isdigit() and len(value) < 12 else -1
        if self._too_large:
            raise httptools.HttpParserError("body too large")

    def on_headers_complete(self) -> None:
        # curl sends "Expect: 100-continue" before bodies over 1 KiB and waits for this.
        if self._expect and not self._slots and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._expect = False

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._too_large = True
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        q = url.find(b"?")
        if q >= 0:
            path, query = url[:q].decode("latin-1"), url[q + 1 :].decode("latin-1")
        else:
            path, query = url.decode("latin-1"), ""
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            parser.get_method().decode("ascii"), path, query, body, self._header_length
        )
        slot = _Slot()
        slot.close = not parser.should_keep_alive()
        self._slots.append(slot)
        if len(self._slots) > MAX_PIPELINE and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

        def reply(status: int, body: bytes, content_type: bytes = JSON, headers: bytes = b"") -> None:
            if slot.data is not None or self._transport is None:
                return
            slot.data = render(status, body, content_type, slot.close, headers)
            self._flush()

        try:
            self._router.dispatch(request, reply)
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            reply(*json_error(500, "internal error", "the server failed to handle the request"))

    # ----------------------------------------------------------------- writing

    def _flush(self) -> None:
        """Write every answered response at the head of the line, in request order."""
        slots = self._slots
        transport = self._transport
        if transport is None:
            return
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            transport.write(slot.data)  # type: ignore[arg-type]
            if slot.close:
                self._close()
                return
        if self._paused and len(slots) <= MAX_PIPELINE // 2:
            self._paused = False
            transport.resume_reading()

    def _fail(self, status: int, cause: str) -> None:
        """Answer a request we could not parse, after the ones before it, then close."""
        slot = _Slot()
        slot.close = True
        _, body = json_error(status, HTTPStatus(status).phrase.lower(), cause)
        slot.data = render(status, body, JSON, True)
        self._slots.append(slot)
        self._broken = True
        self._flush()

    def _close(self) -> None:
        self._broken = True
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


async def serve(
    router: Router, host: str, port: int, *, max_body_bytes: int, backlog: int = 1024
) -> asyncio.Server:
    """Bind and start serving; the caller closes the returned server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(router, max_body_bytes),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
    )

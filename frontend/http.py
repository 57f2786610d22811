"""A lean HTTP/1.1 server: asyncio.Protocol + httptools, nothing in between.

Why not a framework: the query path is benchmarked against a bare asyncio responder, so
each request costs one parse, one handler call and one ``transport.write`` of pre-built
header bytes plus the body. A connection's request path is its core, in C where the
extension is built (``_fastpath.ConnCore``, the base of ``HttpProtocol``; ``_PyCore`` is
the same in Python and defines it): a whole plain keep-alive HTTP/1.1 request that arrived
at a request boundary is scanned in one call (``scan_request``), httptools' callbacks
parse everything else (and define every error), and both end in ``_complete``, which
gives the request its place in line and calls its handler. A request is one object
(``Request``, also C): what the handler reads, its place in line, and its reply.

What it does: keep-alive; pipelined requests answered in order (a handler may answer
later, e.g. when the model replies, and earlier answers wait for their turn); bodies up to
``max_body_bytes`` (larger: 413 and close); a malformed request gets 400 and the
connection is closed. Routing is exact ``(method, path)`` pairs plus one pattern,
``/<name>/<suffix>``, for ``POST /<app>/predict``.

A handler is ``handler(request, reply)`` and must call ``reply(status, body)`` exactly
once, now or later (``reply(status, body, content_type, headers)``: ``headers`` are extra
header lines, CRLF-terminated bytes). It runs on the event loop, so it must not block.
Besides exact paths and the pattern, a prefix route (``/v2/...``) takes every path below it.

Limits (``HttpLimits``; every one a ``FrontendConfig`` field and a ``schooner-frontend`` flag).
Everything a peer sends is bounded, and no timer runs per request: each listener sweeps its
connections once per ``sweep`` interval (1 s, shorter when a timeout is shorter) and counters
are checked in the parser callbacks that run anyway.

====================== ========= =========================================================
field                  default   over it
====================== ========= =========================================================
max_body_bytes         16 MiB    413, close
max_url_bytes          8 KiB     414, close
max_header_bytes       64 KiB    431, close (names + values of all headers of a request)
max_headers            100       431, close
header_timeout_s       10 s      408, close: the request line and headers must all arrive
                                 within this time of the request's first byte (slowloris)
body_timeout_s         60 s      408, close: the body must all arrive within this time of
                                 the end of the headers (a Content-Length larger than the
                                 body)
idle_timeout_s         60 s      closed (no response): a keep-alive connection with no
                                 request in progress; also a peer that reads none of the
                                 responses it is sent (the write buffer stays full) for
                                 this long
max_keepalive_requests 0         the N-th request of a connection is answered with
                                 ``Connection: close`` (0: no limit)
max_connections        0         open connections of the listener (0: no limit); past it,
                                 up to ``reserve_connections`` more are accepted, answer one
                                 request each and only for the ``reserved`` paths (health
                                 checks; others get 503); past that, a connection gets 503
                                 and is closed at once
reserve_connections    32        see ``max_connections``
====================== ========= =========================================================

Error bodies and log lines quote at most ``QUOTE_CHARS`` characters of a path or value
(``clip``). Connections dropped by a timeout or a limit are counted and logged in one line
per sweep, not one per peer. After a request or a response over ``TRIM_AFTER_BYTES``, the
next sweep gives freed memory back to the system (glibc's ``malloc_trim``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import math
import resource
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
import orjson

try:  # the connection's common case in C (frontend/_fastpath.c); else _PyCore, _PyRequest
    from schooner.frontend import _fastpath as _c
except ImportError:  # built without a C compiler
    _c = None
# The C shortcut for whole plain requests; None: httptools parses every byte (connections
# made while it is None keep to httptools, which the tests use to compare the two)
_scan_request = None if _c is None else _c.scan_request

__all__ = [
    "Request", "Reply", "Handler", "Router", "HttpProtocol", "HttpLimits", "json_error", "clip",
    "binary_header_length",
    "serve", "raise_fd_limit", "add_arguments", "from_arguments",
]  # fmt: skip

log = logging.getLogger(__name__)

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

# Pipelined requests a connection may have outstanding before we stop reading from it.
MAX_PIPELINE = 256
QUOTE_CHARS = 200  # the most of a peer's path or value an error body or log line repeats
TRIM_AFTER_BYTES = 1 << 20  # a request or response this large: give memory back after it
SWEEP_S = 1.0  # the longest interval between two sweeps of a listener's connections
LINGER_BYTES = 1 << 20  # read and dropped after the last answer, before a reset instead
READ_CHUNK = 256 * 1024  # the most asyncio and uvloop hand to one data_received


@dataclass(frozen=True)
class HttpLimits:
    """What one listener allows a peer (the table in the module docstring)."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_keepalive_requests: int = 0
    max_connections: int = 0
    reserve_connections: int = 32

    def problems(self, flag: Callable[[str], str] = lambda name: name) -> list[str]:
        """What is wrong with these limits, each naming the setting through ``flag``."""
        out = []
        for name in ("max_url_bytes", "max_header_bytes", "max_headers"):
            if getattr(self, name) < 1:
                out.append(f"{flag(name)} must be at least 1")
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                out.append(f"{flag(name)} must be positive")
        for name in ("max_keepalive_requests", "max_connections", "reserve_connections"):
            if getattr(self, name) < 0:
                out.append(f"{flag(name)} must be 0 or more")
        return out


_FLAGS = {  # HttpLimits field -> (flag, type, help)
    "max_url_bytes": ("--max-url-bytes", int, "longer request URLs get 414"),
    "max_header_bytes": ("--max-header-bytes", int, "larger request headers get 431"),
    "max_headers": ("--max-headers", int, "more request headers get 431"),
    "header_timeout_s": ("--header-timeout", float,
                         "seconds for a request's line and headers to arrive (else 408)"),
    "body_timeout_s": ("--body-timeout", float,
                       "seconds for a request's body to arrive after its headers (else 408)"),
    "idle_timeout_s": ("--idle-timeout", float,
                       "seconds a keep-alive connection may wait for its next request"),
    "max_keepalive_requests": ("--max-keepalive-requests", int,
                               "requests per connection, then Connection: close (0: no limit)"),
    "max_connections": ("--max-connections", int,
                        "open connections of the query port (0: the open-file limit less a "
                        "reserve for the other ports and files)"),
    "reserve_connections": ("--reserve-connections", int,
                            "connections past --max-connections that may still ask the health "
                            "checks (one request each)"),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``HttpLimits`` flags of ``schooner-frontend`` (and the management port's budget)."""
    group = parser.add_argument_group("HTTP limits (both ports; README 'Limits')")
    defaults = HttpLimits()
    for name, (flag, kind, text) in _FLAGS.items():
        group.add_argument(flag, type=kind, default=getattr(defaults, name),
                           help=f"{text} (default {getattr(defaults, name)})")  # fmt: skip
    group.add_argument("--management-max-connections", type=int, default=256,
                       help="open connections of the management port (default 256)")  # fmt: skip


def from_arguments(args: argparse.Namespace, problems: list[str]) -> dict[str, Any]:
    """``FrontendConfig`` fields from the flags of ``add_arguments``; adds to ``problems``."""
    limits = HttpLimits(**{name: getattr(args, flag[2:].replace("-", "_"))
                           for name, (flag, _, _) in _FLAGS.items()})  # fmt: skip
    problems.extend(limits.problems(lambda name: _FLAGS[name][0]))
    if args.management_max_connections < 1:
        problems.append("--management-max-connections must be at least 1")
    return {"http_limits": limits, "management_max_connections": args.management_max_connections}


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked), for quoting a peer in errors and logs."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, target)
    return soft


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


class _PyRequest:
    """One parsed request, its place in its connection's line for the answer and, called as
    ``reply(status, body, content_type=JSON, headers=b"")``, that answer: the first call
    renders the response and writes what is answered at the head of the line; later calls,
    and calls after the connection closed, do nothing. ``param`` is the ``<name>`` of a
    pattern route, else None.

    ``Request`` is ``_fastpath.Request`` (the same in C) where the extension is built; a
    request made by hand (no connection) answers nowhere."""

    __slots__ = ("method", "path", "query", "body", "param", "header_length", "_cancel",
                 "authorization", "_answer", "_close", "_head", "_big", "_conn")  # fmt: skip

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
        self._answer: bytes | None = None  # the response, once answered
        self._cancel: Callable[[], None] | None = None
        self.authorization: bytes | None = None  # the Authorization header, if sent
        self._close = False  # the connection closes after this answer
        self._head = False  # a HEAD request: the answer has a Content-Length but no body
        self._big = False  # a large request: give memory back once it is answered
        self._conn: _PyCore | None = None

    @property
    def cancel(self) -> Callable[[], None] | None:
        """Set by a handler that answers later: called if the client goes away first. Once
        the request is answered it stays None (a cancel set after the answer would hold the
        request's queries, which hold this reply, in a cycle)."""
        return self._cancel

    @cancel.setter
    def cancel(self, value: Callable[[], None] | None) -> None:
        self._cancel = value if self._answer is None else None

    def __call__(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: bytes = b""
    ) -> None:
        conn = self._conn
        if self._answer is not None or conn is None or conn._transport is None:
            return
        if self._big or len(body) > TRIM_AFTER_BYTES:
            conn._listener.trim = True
        data = render(status, body, content_type, self._close, headers)
        self._answer = data[: len(data) - len(body)] if self._head else data
        self.cancel = None  # (its cancel holds its queries, which hold this reply)
        conn._flush()


if TYPE_CHECKING:
    Request = _PyRequest
else:
    Request = _PyRequest if _c is None else _c.Request


# reply(status: int, body: bytes, content_type: bytes = JSON, headers: bytes = b"")
Reply = Callable[..., None]
Handler = Callable[[Request, Reply], None]


def binary_header_length(value: bytes) -> int:
    """``Inference-Header-Content-Length``'s value as a request carries it: the number, or
    -1 when it is not one of up to 11 digits (the OIP then refuses the request)."""
    return int(value) if value.isdigit() and len(value) < 12 else -1


def json_error(status: int, error: str, cause: str) -> tuple[int, bytes]:
    """The ``{"error", "cause"}`` body every API answers failures with."""
    return status, orjson.dumps({"error": error, "cause": cause})


_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
_HEAD_CACHE: dict[tuple[int, bytes, bool], bytes] = {}


def _new_head(status: int, content_type: bytes, close: bool) -> bytes:
    """Status line and fixed headers up to ``Content-Length: ``, made once per combination
    and kept in ``_HEAD_CACHE`` (which ``render`` reads first)."""
    reason = _REASONS.get(status, b"Unknown")
    head = _HEAD_CACHE[(status, content_type, close)] = (
        b"HTTP/1.1 %d %s\r\nServer: schooner\r\nContent-Type: %s\r\n%sContent-Length: "
        % (status, reason, content_type, b"Connection: close\r\n" if close else b"")
    )
    return head


def render(
    status: int, body: bytes, content_type: bytes = JSON, close: bool = False, headers: bytes = b""
) -> bytes:
    """A complete response as one bytes object (``headers``: extra CRLF-terminated lines)."""
    head = _HEAD_CACHE.get((status, content_type, close)) or _new_head(status, content_type, close)
    return b"%s%d\r\n%s\r\n%s" % (head, len(body), headers, body)


class Router:
    """Exact ``(method, path)`` routes, and ``(method, suffix)`` routes for ``/<name>/<suffix>``."""

    # Routed (method, path) pairs remembered, so that a client asking the same path again
    # (every query of an app) costs one dict lookup: paths up to REMEMBER_CHARS long, at most
    # MAX_REMEMBERED of them (then forgotten all at once).
    MAX_REMEMBERED = 1024
    REMEMBER_CHARS = 256

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._pattern: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._paths: set[str] = set()
        self._suffixes: set[str] = set()
        # (method, path) -> (handler, param) of paths that found a handler
        self._remembered: dict[tuple[str, str], tuple[Handler, str | None]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._exact[(method, path)] = handler
        self._paths.add(path)
        self._remembered.clear()

    def add_pattern(self, method: str, suffix: str, handler: Handler) -> None:
        """Route ``METHOD /<name>/<suffix>``; the handler finds ``<name>`` in ``request.param``."""
        self._pattern[(method, suffix)] = handler
        self._suffixes.add(suffix)
        self._remembered.clear()

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Route every method and path under ``prefix`` (``"/v2"``: ``/v2`` and ``/v2/...``)
        to ``handler``, which answers 404/405 for what it does not serve itself."""
        self._prefixes.append((prefix, handler))
        self._remembered.clear()

    def dispatch(self, request: Request, reply: Reply) -> None:
        key = (request.method, request.path)
        found = self._remembered.get(key)
        if found is None:
            found = self._resolve(request.method, request.path)
            if found is None:
                path = request.path
                if path in self._paths or self._suffix(path) in self._suffixes:
                    reply(*json_error(405, "method not allowed", f"{request.method} {clip(path)}"))
                else:
                    reply(*json_error(404, "not found", f"no route for {clip(path)}"))
                return
            if len(request.path) <= self.REMEMBER_CHARS:
                if len(self._remembered) >= self.MAX_REMEMBERED:
                    self._remembered.clear()
                self._remembered[key] = found
        handler, request.param = found
        handler(request, reply)

    @staticmethod
    def _suffix(path: str) -> str | None:
        """The ``<suffix>`` of ``/<name>/<suffix>``, else None."""
        cut = path.rfind("/")
        if cut > 1 and path.count("/", 0, cut) == 1:
            return path[cut + 1 :]
        return None

    def _resolve(self, method: str, path: str) -> tuple[Handler, str | None] | None:
        """The handler of ``method path`` and the ``<name>`` of a pattern route, or None."""
        for prefix, prefixed in self._prefixes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return prefixed, None
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler, None
        suffix = self._suffix(path)
        if suffix is not None:
            handler = self._pattern.get((method, suffix))
            if handler is not None:
                return handler, path[1 : len(path) - len(suffix) - 1]
        return None


class _ReservedRouter(Router):
    """What a connection past ``max_connections`` may ask: the reserved paths (health
    checks), with GET; anything else is 503."""

    def __init__(self, router: Router, paths: Collection[str]) -> None:
        super().__init__()
        self._router = router
        self._reserved = frozenset(paths)

    def dispatch(self, request: Request, reply: Reply) -> None:
        if request.method == "GET" and request.path in self._reserved:
            self._router.dispatch(request, reply)
        else:
            reply(*_FULL_ERROR)


_FULL_ERROR = json_error(
    503, "service unavailable", "the server is at its connection limit; try again later"
)
_FULL = render(503, _FULL_ERROR[1], JSON, True)

# The methods' names as str, without decoding them per request (others are decoded).
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}

# What a connection is doing, for the sweep (``HttpProtocol._phase``).
_IDLE, _HEAD, _BODY = 0, 1, 2


class _Listener:
    """The connections of one listening socket, their limits, and the sweep that times
    them out. ``tick`` counts sweeps; a connection notes the tick when it changes phase,
    so the request path never reads a clock or arms a timer."""

    def __init__(
        self, router: Router, limits: HttpLimits, reserved: Collection[str], name: str
    ) -> None:
        self.router = router
        self.reserved_router = _ReservedRouter(router, reserved)
        self.limits = limits
        self.name = name
        self.conns: set[_HttpEvents] = set()
        self.overflow = 0  # of ``conns``: those past max_connections (one request each)
        self.tick = 0
        self.trim = False  # a large request or response since the last sweep
        self.dropped: dict[str, int] = {}
        timeouts = (limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s)
        self.interval = max(0.05, min(SWEEP_S, min(timeouts) / 4))
        # ages in ticks; +1: a mark may be set just before a tick
        self.head_ticks, self.body_ticks, self.idle_ticks = (
            math.ceil(t / self.interval) + 1 for t in timeouts
        )
        # bytes of chunks that end inside a head (httptools keeps an unfinished one): the
        # callbacks count exactly; this bounds what they do not see yet. A chunk may also
        # hold the requests before (an event loop reads at most READ_CHUNK at once).
        head = limits.max_url_bytes + limits.max_header_bytes
        self.head_guard = head + 8192 + READ_CHUNK
        self.server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        self._loop, self.server = loop, server
        loop.call_later(self.interval, self.sweep)

    def count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def sweep(self) -> None:
        """Time out what has waited too long; runs every ``interval`` while the listener
        serves or has connections."""
        tick = self.tick = self.tick + 1
        for conn in list(self.conns):
            try:
                conn.expire(tick, self)
            except Exception:  # never let one connection stop the sweep
                log.exception("%s: the connection sweep failed for one connection", self.name)
        if self.dropped:
            what = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
            log.info("%s: closed connections: %s", self.name, what)
            self.dropped.clear()
        if self.trim:
            self.trim = False
            if _TRIM is not None:
                _TRIM(0)
        server, loop = self.server, self._loop
        if loop is not None and (self.conns or (server is not None and server.is_serving())):
            loop.call_later(self.interval, self.sweep)


# The request path's fields of a connection: the core's (``_fastpath.ConnCore`` in C, or
# ``_PyCore``); the other fields are HttpProtocol's own.
_CORE_FIELDS = (
    "_listener", "_router", "_routes", "_transport", "_slots", "_broken", "_inside", "_paused",
    "_write_paused", "_scan", "_phase", "_left", "_max_url", "_max_headers",
    "_max_header_bytes", "_max_body",
)  # fmt: skip


# HttpProtocol's own fields
_OWN_FIELDS = (
    "_parser", "_url", "_body", "_body_len", "_reject", "_expect", "_header_length", "_mark",
    "_seen", "_headers_left", "_header_bytes_left", "_overflow", "_head_bytes",
    "_write_mark", "_write_size", "_authorization", "_linger",
)  # fmt: skip


class _PyCore:
    """The request path of one connection, as ``_fastpath.ConnCore`` does it in C (used
    without a C compiler; the tests run both): whole plain requests scanned in one call
    each (``_scan_request``) and everything else handed to ``_feed`` (httptools); a request
    routed and given its place in line (``_complete``); answers written in request order
    (``_flush``)."""

    __slots__ = _CORE_FIELDS

    _listener: _Listener
    _router: Router
    _routes: dict[tuple[str, str], tuple[Handler, str | None]] | None
    _transport: asyncio.Transport | None
    _slots: deque[Request]
    _broken: bool
    _inside: bool
    _paused: bool
    _write_paused: bool
    _scan: bool
    _phase: int
    _left: int
    _max_url: int
    _max_headers: int
    _max_header_bytes: int
    _max_body: int

    # the connection's other methods (``_HttpEvents``), which the core calls
    _feed: Callable[[bytes], None]
    _close: Callable[[], None]
    _handler_failed: Callable[[Request, Exception], None]

    def data_received(self, data: bytes) -> None:
        if self._scan and not self._broken and not self._inside:
            # Whole plain requests, each in one C call; httptools takes what is left
            offset, size = 0, len(data)
            while True:
                found = _scan_request(data, offset, self._max_url, self._max_headers,  # type: ignore[misc]
                                      self._max_header_bytes, self._max_body)  # fmt: skip
                if found is None:
                    break
                offset, method, path, query, body, binary_header, authorization = found
                self._phase = _IDLE
                self._left -= 1
                header_length = (
                    None if binary_header is None else binary_header_length(binary_header)
                )
                self._complete(method, path, query, body, True, header_length, authorization)
                if offset == size or self._broken:
                    return
            if offset:
                data = data[offset:]
        self._feed(data)

    def _complete(
        self, method: str, path: str, query: str, body: bytes, keep_alive: bool,
        header_length: int | None, authorization: bytes | None,
    ) -> None:  # fmt: skip
        """Route one whole request (parsed by httptools or ``_scan_request``) and give it
        its place in line for the answer."""
        request = _PyRequest(method, path, query, body, header_length)
        request.authorization = authorization
        request._conn = self
        request._big = len(body) > TRIM_AFTER_BYTES
        request._head = method == "HEAD"
        request._close = self._left == 0 or not keep_alive
        self._slots.append(request)
        if len(self._slots) > MAX_PIPELINE and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        try:  # (the C core looks the router's remembered routes up itself: ``_routes``)
            self._router.dispatch(request, request)
        except Exception as exc:
            self._handler_failed(request, exc)

    def _flush(self) -> None:
        """Write every answered response at the head of the line, in request order."""
        slots = self._slots
        transport = self._transport
        if transport is None:
            return
        while slots and slots[0]._answer is not None:
            request = slots.popleft()
            transport.write(request._answer)  # type: ignore[arg-type]
            if request._close:
                self._close()
                return
        if self._paused and len(slots) <= MAX_PIPELINE // 2:
            self._paused = False
            if not self._write_paused:
                transport.resume_reading()


if _c is not None:
    _c.http_setup(_HEAD_CACHE, _new_head, JSON, b"", MAX_PIPELINE, TRIM_AFTER_BYTES)

if TYPE_CHECKING:
    _Core = _PyCore
else:
    _Core = _PyCore if _c is None else _c.ConnCore


if TYPE_CHECKING:

    class _EventsBase(_PyCore):  # what the methods below see: a whole connection
        __slots__ = _OWN_FIELDS

else:
    _EventsBase = object


class _HttpEvents(_EventsBase):
    """Everything of a connection but its request path (``_PyCore``/``ConnCore``): the
    transport's events, httptools' callbacks, the sweep, failures and closing."""

    __slots__ = ()

    # ----------------------------------------------------------------- set-up

    def __init__(self, listener: _Listener) -> None:
        limits = listener.limits
        self._listener = listener
        self._router = listener.router
        self._routes = listener.router._remembered if type(listener.router) is Router else None
        self._max_body = limits.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_len = 0
        self._slots = deque()
        self._scan = _scan_request is not None
        self._broken = False  # a request could not be parsed: read nothing more
        self._paused = False  # reading paused: too many pipelined requests outstanding
        self._reject: tuple[int, str] | None = None  # why a parser callback refused
        self._expect = False
        self._header_length: int | None = None
        self._authorization: bytes | None = None
        # the first request must start within header_timeout_s of the connection
        self._phase = _HEAD
        self._mark = listener.tick  # the sweep's tick when it saw ``_seen`` change
        self._seen = 0
        self._left = limits.max_keepalive_requests or -1  # requests before Connection: close
        self._max_headers = limits.max_headers
        self._max_header_bytes = limits.max_header_bytes
        self._max_url = limits.max_url_bytes
        self._headers_left = limits.max_headers  # of the request being parsed
        self._header_bytes_left = limits.max_header_bytes
        self._head_bytes = 0  # bytes of chunks that ended inside this head
        self._overflow = False
        self._write_paused = False
        self._write_mark = 0
        self._write_size = 0
        self._linger: asyncio.Transport | None = None  # half-closed: reading to the end
        self._inside = False  # httptools holds part of a request (between begin and complete)

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        limit = listener.limits.max_connections
        if limit and len(listener.conns) - listener.overflow >= limit:
            if listener.overflow >= listener.limits.reserve_connections:
                self._broken = True
                listener.count("refused at the connection limit (503)")
                transport.write(_FULL)  # type: ignore[attr-defined]
                transport.close()
                return
            listener.overflow += 1
            self._overflow = True
            self._router = listener.reserved_router
            self._routes = None  # every request through the reserve's own dispatch
            self._left = 1
        listener.conns.add(self)
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken = True
        self._transport = self._linger = None
        self._body = []  # the protocol and its parser are a cycle, freed only by the GC
        slots, self._slots = self._slots, deque()
        for request in slots:  # requests still waiting for an answer nobody will read
            cancel = request.cancel
            if request._answer is None and cancel is not None:
                request.cancel = None  # (it holds the request's queries, which hold the request)
                try:
                    cancel()
                except Exception:
                    log.exception("cancelling a request of a closed connection failed")
        listener = self._listener
        if self in listener.conns:
            listener.conns.discard(self)
            if self._overflow:
                listener.overflow -= 1

    def pause_writing(self) -> None:
        """The peer is not reading as fast as we answer: read nothing more until it does."""
        self._write_paused = True
        self._write_mark = self._listener.tick
        self._write_size = 0
        if self._transport is not None and not self._paused:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._paused and not self._broken:
            self._transport.resume_reading()

    def _feed(self, data: bytes) -> None:
        """Bytes the core did not take: httptools parses them (or, half-closed, drops them)."""
        if self._broken:
            if self._linger is not None:  # half-closed: drop what comes, up to a bound
                self._head_bytes += len(data)
                if self._head_bytes > LINGER_BYTES:
                    self._abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # on_message_complete answered the request that asked for it
        except httptools.HttpParserError as exc:
            if self._reject is not None:
                self._fail(*self._reject)
            elif not self._broken:
                self._fail(400, f"malformed HTTP request: {clip(str(exc))}")
        else:
            # A head still unfinished: httptools keeps it, so bound it here too (the
            # callbacks count exactly, but only what httptools hands over).
            if self._phase == _HEAD:
                self._head_bytes += len(data)
                if self._head_bytes > self._listener.head_guard:
                    self._fail(431, "the request head is larger than "
                                    f"{self._listener.head_guard} bytes")  # fmt: skip

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._inside = True
        self._url = b""
        self._body_len = 0
        self._header_length = None
        self._authorization = None
        self._headers_left = self._max_headers
        self._header_bytes_left = self._max_header_bytes
        self._head_bytes = 0
        self._phase = _HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            self._reject = (414, f"the URL is longer than {self._max_url} bytes")
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_left -= 1
        self._header_bytes_left -= len(name) + len(value)
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                too_large = int(value) > self._max_body
            except ValueError:
                too_large = False  # httptools itself rejects a malformed Content-Length
            if too_large:
                self._reject = (413, f"the request body is larger than {self._max_body} bytes")
                raise httptools.HttpParserError("body too large")
        elif len(name) == 6 and name.lower() == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif len(name) == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = binary_header_length(value)
        elif len(name) == 13 and name.lower() == b"authorization":
            self._authorization = value
        if (self._headers_left | self._header_bytes_left) < 0:  # either is negative
            if self._headers_left < 0:
                self._reject = (431, f"more than {self._max_headers} request headers")
            else:
                self._reject = (431, f"the request headers are larger than "
                                     f"{self._max_header_bytes} bytes")  # fmt: skip
            raise httptools.HttpParserError("request refused")

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        # curl sends "Expect: 100-continue" before bodies over 1 KiB and waits for this.
        if self._expect and not self._slots and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._expect = False

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._reject = (413, f"the request body is larger than {self._max_body} bytes")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        self._inside = False
        self._phase = _IDLE
        self._left -= 1
        if self._broken:  # closing (an earlier answer said so): nothing more is answered
            return
        if parser.should_upgrade():
            # httptools stops here and hands the rest over as another protocol's bytes:
            # one answer, then close (HttpParserUpgrade follows this callback)
            self._fail(400, "protocol upgrades (Upgrade, CONNECT) are not supported")
            return
        url = self._url
        q = url.find(b"?")
        if q >= 0:
            path, query = url[:q].decode("latin-1"), url[q + 1 :].decode("latin-1")
        else:
            path, query = url.decode("latin-1"), ""
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []  # here, not at the next request: a closed connection keeps none
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        self._complete(method, path, query, body, parser.should_keep_alive(),
                       self._header_length, self._authorization)  # fmt: skip

    def _handler_failed(self, request: Request, exc: Exception) -> None:
        """A handler raised: logged, and a 500 if it had not answered."""
        log.error("handler for %s %s failed", request.method, clip(request.path), exc_info=exc)
        request(*json_error(500, "internal error", "the server failed to handle the request"))

    # ----------------------------------------------------------------- the sweep

    def expire(self, tick: int, listener: _Listener) -> None:
        """Close this connection if it waited too long in its phase (``listener.sweep``)."""
        transport = self._transport
        if transport is None:
            if self._linger is not None and tick - self._mark >= listener.head_ticks:
                listener.count("lingering after the last answer")
                self._abort()
            return
        if self._write_paused:
            size = transport.get_write_buffer_size()
            if size != self._write_size:  # the peer reads, slowly: that is progress
                self._write_size, self._write_mark = size, tick
            elif tick - self._write_mark >= listener.idle_ticks:
                listener.count("not reading their responses")
                self._abort()
            return
        # The request path only notes phases and counts requests; a change since the last
        # sweep restarts the clock here
        seen = self._left * 4 + self._phase
        if seen != self._seen:
            self._seen, self._mark = seen, tick
        age = tick - self._mark
        if self._broken:  # answered and closing, behind answers still to come
            if age >= listener.body_ticks:
                listener.count("stalled while closing")
                self._abort()
        elif self._phase == _HEAD:
            if age >= listener.head_ticks:
                limit = listener.limits.header_timeout_s
                if self._parser_started():
                    listener.count("header timeout (408)")
                    self._fail(408, f"the request headers did not arrive within {limit:g} s")
                else:
                    listener.count("sent no request")
                    self._close()
        elif self._phase == _BODY:
            if age >= listener.body_ticks:
                limit = listener.limits.body_timeout_s
                listener.count("body timeout (408)")
                self._fail(408, f"the request body did not arrive within {limit:g} s")
        elif self._slots:
            self._mark = tick  # answers still to come: idle counts from the last one
        elif age >= listener.idle_ticks:
            listener.count("idle")
            self._close()

    def _parser_started(self) -> bool:
        """Whether any byte of the current request arrived (else it is a silent peer)."""
        return bool(self._url) or self._headers_left < self._max_headers or self._head_bytes > 0

    # ----------------------------------------------------------------- writing

    def _fail(self, status: int, cause: str) -> None:
        """Answer a request we could not parse, after the ones before it, then close."""
        slot = Request("", "", "", b"")
        slot._close = True
        _, body = json_error(status, HTTPStatus(status).phrase.lower(), cause)
        slot._answer = render(status, body, JSON, True)
        self._slots.append(slot)
        self._broken = True
        self._mark = self._listener.tick
        self._flush()

    def _close(self) -> None:
        """Write nothing more. A close with unread input would reset the connection and
        could destroy the last answer before the peer reads it, so close only our side
        and read (and drop) what still comes until the peer closes too; after
        ``LINGER_BYTES`` or ``header_timeout_s`` the connection is reset."""
        self._broken = True
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if transport.can_write_eof():
            self._linger = transport
            self._mark = self._listener.tick
            self._head_bytes = 0  # now counts the bytes dropped
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()

    def _abort(self) -> None:
        self._broken = True
        transport = self._transport or self._linger
        self._transport = self._linger = None
        if transport is not None:
            transport.abort()


class HttpProtocol(_HttpEvents, _Core, asyncio.Protocol):
    """One client connection. Created by the server for every accepted socket."""

    __slots__ = _OWN_FIELDS


class _PyHttpProtocol(_HttpEvents, _PyCore, asyncio.Protocol):
    """``HttpProtocol`` on the Python core: what runs without a C compiler (the tests run
    both)."""

    __slots__ = _OWN_FIELDS


async def serve(
    router: Router,
    host: str,
    port: int,
    *,
    max_body_bytes: int | None = None,
    limits: HttpLimits | None = None,
    reserved: Collection[str] = (),
    name: str = "http",
    backlog: int = 1024,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Bind and start serving; the caller closes the returned server.

    ``limits``: what a peer may send and keep open (``max_body_bytes`` overrides its
    field); ``reserved``: the GET paths a connection past ``max_connections`` may still
    ask (health checks); ``name``: the listener in log lines; ``reuse_port``: bind with
    SO_REUSEPORT (Linux), so that the workers of one frontend share the port."""
    limits = limits or HttpLimits()
    if max_body_bytes is not None:
        limits = replace(limits, max_body_bytes=max_body_bytes)
    listener = _Listener(router, limits, reserved, name)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(listener),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
    listener.start(loop, server)
    return server

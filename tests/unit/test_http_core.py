"""A connection's request path, C core (``_fastpath.ConnCore`` and ``Request``) against the
Python one (``_PyCore``, ``_PyRequest``): the same bytes out for every form of a reply, one
answer per request, and no request kept alive by its own cancel once answered or dropped."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from schooner.frontend import http
from schooner.frontend.http import Reply, Request, Router

CORES = ["python"] + ([] if http._c is None else ["c"])


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False
        self.paused = 0

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1

    def get_write_buffer_size(self) -> int:
        return 0


def connect(core: str, router: Router, limits: http.HttpLimits | None = None
            ) -> tuple[http.HttpProtocol, Transport]:  # fmt: skip
    kind = http._PyHttpProtocol if core == "python" else http.HttpProtocol
    protocol = kind(http._Listener(router, limits or http.HttpLimits(), (), "test"))
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def request(method: str, path: str, body: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (
        method.encode(), path.encode(), len(body), body)  # fmt: skip


# The reply forms handlers use: positional, by keyword, extra headers, unknown statuses.
FORMS = {
    "/plain": lambda r: r(200, b'{"a":1}'),
    "/type": lambda r: r(404, b"nope", b"text/plain"),
    "/kw": lambda r: r(503, b"x", content_type=b"text/plain", headers=b"Retry-After: 2\r\n"),
    "/headers": lambda r: r(201, b"", http.JSON, b"X-A: 1\r\nX-B: 2\r\n"),
    "/unknown": lambda r: r(299, b"odd"),
    "/memoryview": lambda r: r(200, memoryview(b"view"), headers=bytearray(b"X: y\r\n")),
    "/twice": lambda r: (r(200, b"first"), r(500, b"second")),
}


def forms_router() -> Router:
    router = Router()
    for path, form in FORMS.items():
        for method in ("GET", "HEAD", "POST"):
            router.add(method, path, lambda req, reply, form=form: form(reply))
    router.add_pattern("POST", "predict", lambda req, reply: reply(200, req.param.encode()))
    return router


def answers(core: str, data: bytes, limits: http.HttpLimits | None = None) -> bytes:
    protocol, transport = connect(core, forms_router(), limits)
    protocol.data_received(data)
    return b"".join(transport.out)


def expected(status: int, body: bytes, content_type: bytes = http.JSON, headers: bytes = b"",
             close: bool = False, head: bool = False) -> bytes:  # fmt: skip
    data = http.render(status, body, content_type, close, headers)
    return data[: len(data) - len(body)] if head else data


@pytest.mark.parametrize("core", CORES)
def test_every_form_of_a_reply_renders_as_http_render_does(core: str) -> None:
    stream = b"".join(request(m, p) for p in FORMS for m in ("GET", "HEAD"))
    want = b"".join([
        expected(200, b'{"a":1}'), expected(200, b'{"a":1}', head=True),
        expected(404, b"nope", b"text/plain"), expected(404, b"nope", b"text/plain", head=True),
        expected(503, b"x", b"text/plain", b"Retry-After: 2\r\n"),
        expected(503, b"x", b"text/plain", b"Retry-After: 2\r\n", head=True),
        expected(201, b"", headers=b"X-A: 1\r\nX-B: 2\r\n"),
        expected(201, b"", headers=b"X-A: 1\r\nX-B: 2\r\n", head=True),
        expected(299, b"odd"), expected(299, b"odd", head=True),
        expected(200, b"view", headers=b"X: y\r\n"),
        expected(200, b"view", headers=b"X: y\r\n", head=True),
        expected(200, b"first"), expected(200, b"first", head=True),
    ])  # fmt: skip
    assert answers(core, stream) == want
    assert b"Unknown" in want  # 299 has no reason phrase of its own


@pytest.mark.parametrize("core", CORES)
def test_the_last_request_of_a_connection_is_answered_with_close(core: str) -> None:
    limits = http.HttpLimits(max_keepalive_requests=2)
    out = answers(core, request("GET", "/plain") * 3, limits)
    assert out == expected(200, b'{"a":1}') + expected(200, b'{"a":1}', close=True)


@pytest.mark.parametrize("core", CORES)
def test_a_remembered_pattern_route_still_names_its_app(core: str) -> None:
    out = answers(core, request("POST", "/one/predict") + request("POST", "/two/predict")
                  + request("POST", "/one/predict"))  # fmt: skip
    assert out == expected(200, b"one") + expected(200, b"two") + expected(200, b"one")


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("call", [
    lambda r: r(200), lambda r: r(200, b"", b"t", b"", b"extra"),
    lambda r: r(200, b"", colour=b"red"), lambda r: r(200, b"", b"t", content_type=b"t"),
])  # fmt: skip
def test_a_reply_with_wrong_arguments_raises_and_the_handler_gets_a_500(core: str, call) -> None:
    router = Router()
    router.add("GET", "/bad", lambda req, reply: call(reply))
    protocol, transport = connect(core, router)
    protocol.data_received(request("GET", "/bad"))
    assert b"".join(transport.out).startswith(b"HTTP/1.1 500 ")


@pytest.mark.parametrize("core", CORES)
def test_a_request_made_by_hand_answers_nowhere(core: str) -> None:
    kind = http._PyRequest if core == "python" else Request
    req = kind("POST", "/a/predict", "", b"{}")
    assert (req.method, req.path, req.query, req.body, req.header_length) == (
        "POST", "/a/predict", "", b"{}", None)  # fmt: skip
    assert req(200, b"ignored") is None
    assert req._answer is None


def live_requests() -> int:
    return sum(type(o) in (Request, http._PyRequest) for o in gc.get_objects())


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("core", CORES)
def test_answered_and_dropped_requests_are_freed_without_the_collector(
    core: str, no_gc: None
) -> None:
    """A handler that answers later sets ``cancel`` to something holding the request (as
    the query API's does, through its queries): answering or losing the connection must
    break that cycle, or every request would wait for the cyclic collector."""
    held: list[Reply] = []
    cancelled: list[str] = []

    def later(req: Request, reply: Reply) -> None:
        req.cancel = lambda: cancelled.append(req.path)
        held.append(reply)

    router = Router()
    router.add("GET", "/later", later)
    before = live_requests()
    protocol, transport = connect(core, router)
    protocol.data_received(request("GET", "/later") * 3)
    assert live_requests() == before + 3
    held.pop(0)(200, b"one")
    held.clear()  # the handler's own references go; the line keeps the two unanswered
    assert len(transport.out) == 1
    assert live_requests() == before + 2
    protocol.connection_lost(None)
    assert cancelled == ["/later", "/later"]
    assert live_requests() == before


@pytest.mark.parametrize("core", CORES)
def test_a_cancel_set_after_the_answer_is_dropped(core: str, no_gc: None) -> None:
    """A request answered at once (shed) still gets its cancel set after its handler's
    reply (the query API sets it after submitting): it must not keep the request alive."""

    def at_once(req: Request, reply: Reply) -> None:
        reply(503, b"shed")
        req.cancel = lambda: print(req)

    router = Router()
    router.add("GET", "/now", at_once)
    before = live_requests()
    protocol, transport = connect(core, router)
    protocol.data_received(request("GET", "/now") * 2)
    assert len(transport.out) == 2
    assert live_requests() == before

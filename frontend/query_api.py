"""Clipper's query REST API: ``POST /<app>/predict``, plus health, readiness and metrics.

``predict`` runs on the event loop for every request: parse the JSON body, convert each
input to wire bytes, pick the model version, hand the queries to the dispatcher and return.
Where the C extension is built, its route (``_fastpath.PredictRoute``) takes the common
request -- one input of the app's type for the linked model's current version -- straight
to ``_submit_one``, and hands everything else to ``predict``, which defines the path.
The HTTP reply is written when the last query of the request is answered (by a replica, or
with the app's default output by the deadline sweep).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from schooner.frontend.dispatch import NO_MODEL, SHED, Dispatcher, Query
from schooner.frontend.http import JSON, Reply, Request, clip, json_error
from schooner.frontend.http import Router as HttpRouter
from schooner.frontend.inputs import (
    CONVERTERS,
    CONVERTERS_WITHOUT_BOOLEANS,
    FAST_CODES,
    MAX_INPUTS_PER_REQUEST,
    BadInput,
    fast_single_input,
    may_hold_booleans,
    surely_too_many,
)
from schooner.frontend.metrics import CONTENT_TYPE, FrontendMetrics
from schooner.frontend.selection import ROUTED, Router
from schooner.frontend.state import App, StateError, StateStore

try:  # the query path's common case in C (frontend/_fastpath.c)
    from schooner.frontend import _fastpath
except ImportError:  # built without a C compiler
    _fastpath = None  # type: ignore[assignment]

__all__ = ["QueryApi"]

log = logging.getLogger(__name__)

# An input_batch larger than this is converted this many inputs at a time, the event loop
# answering other requests between slices (10,000 inputs: ~20 ms of conversion in one go).
SLICE_INPUTS = 1000

_OK = b'{"ok":true}'
_NOT_READY = b'{"ok":false}'


def _as_json(text: str) -> object:
    """Clipper's rule: an output that parses as JSON is embedded as JSON, else as a string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


# Outputs a model gives again and again (a class, a score, "0") are serialized once: the JSON
# of each output of up to OUTPUT_JSON_CHARS characters is remembered, at most
# OUTPUT_JSON_ENTRIES of them, then all are forgotten at once (so at most ~0.5 MB is kept,
# whatever the outputs are; a model whose outputs never repeat only refills it).
OUTPUT_JSON_CHARS = 64
OUTPUT_JSON_ENTRIES = 4096
_OUTPUT_JSON: dict[str, bytes] = {}


def output_json(text: str) -> bytes:
    """``text`` as the JSON an answer embeds (``_as_json``'s rule), serialized."""
    found = _OUTPUT_JSON.get(text)
    if found is not None:
        return found
    data = orjson.dumps(_as_json(text))
    if len(text) <= OUTPUT_JSON_CHARS:
        if len(_OUTPUT_JSON) >= OUTPUT_JSON_ENTRIES:
            _OUTPUT_JSON.clear()
        _OUTPUT_JSON[text] = data
    return data


class QueryApi:
    """Handlers of the query port. ``routes`` fills a router with them."""

    def __init__(
        self,
        state: StateStore,
        dispatcher: Dispatcher,
        metrics: FrontendMetrics,
        is_ready: Callable[[], bool],
        max_inputs: int = MAX_INPUTS_PER_REQUEST,
    ) -> None:
        self.max_inputs = max_inputs  # inputs per request, here and in the OIP (else 413)
        self._state = state
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._is_ready = is_ready
        self._ids = QueryIds(state)
        self._routers: dict[str, Router] = {}  # apps with a selection (selection.Router)
        self.rng = random.Random()

    def routes(self, router: HttpRouter) -> HttpRouter:
        # predict's common request straight to _submit_one, in C where built
        predict = self.predict if _fastpath is None else _fastpath.PredictRoute(self, FAST_CODES)
        router.add_pattern("POST", "predict", predict)
        router.add_pattern("POST", "update", self.update)
        router.add("GET", "/health", self.health)
        router.add("GET", "/ready", self.ready)
        router.add("GET", "/metrics", self.metrics)
        return router

    # ----------------------------------------------------------------- health

    def health(self, request: Request, reply: Reply) -> None:
        reply(200, _OK)

    def ready(self, request: Request, reply: Reply) -> None:
        if self._is_ready():
            reply(200, _OK)
        else:
            reply(503, _NOT_READY)

    def metrics(self, request: Request, reply: Reply) -> None:
        reply(200, self._metrics.render(), CONTENT_TYPE)

    # ----------------------------------------------------------------- predict

    def _reject(self, reply: Reply, status: int, error: str, cause: str) -> None:
        self._metrics.rejected(status)
        reply(*json_error(status, error, cause))

    def _too_many(self, n: int | None = None) -> str:
        held = f"'input_batch' holds {n} inputs; " if n is not None else ""
        return f"{held}a request may hold at most {self.max_inputs} (--max-inputs-per-request)"

    def _app(self, request: Request, reply: Reply) -> App | None:
        """The app of ``/<app>/...``, or None after answering 404."""
        app = self._state.apps.get(request.param or "")
        if app is None:
            cause = f"no application named {clip(request.param or '')!r}"
            self._reject(reply, 404, "unknown application", cause)
        return app

    def _json_object(self, request: Request, reply: Reply) -> dict[str, Any] | None:
        """The body as a JSON object, or None after answering 400."""
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            self._reject(reply, 400, "invalid JSON", f"the body is not valid JSON: {exc}")
            return None
        if type(body) is not dict:
            self._reject(reply, 400, "invalid request", "the body must be a JSON object")
            return None
        return body

    def predict(self, request: Request, reply: Reply) -> None:
        app = self._app(request, reply)
        if app is None:
            return
        if fast_single_input is not None:
            # The common body, {"input": [numbers]}, in one C pass; None: anything else.
            code = FAST_CODES.get(app.input_type)
            data = fast_single_input(request.body, code) if code else None
            if data is not None:
                key = self._model_version(app, None)
                if key is None or key is ROUTED:
                    self._submit(request, app, [data], False, key, reply)
                else:
                    self._submit_one(request, app, data, key, reply)
                return
        if surely_too_many(request.body, app.input_type, self.max_inputs):
            self._reject(reply, 413, "too many inputs", self._too_many())
            return
        body = self._json_object(request, reply)
        if body is None:
            return
        table = CONVERTERS if may_hold_booleans(request.body) else CONVERTERS_WITHOUT_BOOLEANS
        convert = table[app.input_type]
        try:
            if "input" in body:
                if "input_batch" in body:
                    raise BadInput("give either 'input' or 'input_batch', not both")
                inputs = [convert(body["input"])]
                batch = False
            elif "input_batch" in body:
                values = body["input_batch"]
                if type(values) is not list or not values:
                    raise BadInput("'input_batch' must be a non-empty JSON array of inputs")
                if len(values) > self.max_inputs:
                    self._reject(reply, 413, "too many inputs", self._too_many(len(values)))
                    return
                if len(values) > SLICE_INPUTS:
                    self._convert_in_slices(request, reply, app, body, values, convert)
                    return
                inputs = _convert_batch(values, convert, 0, [])
                batch = len(inputs) > 1
            else:
                raise BadInput("the body needs an 'input' or an 'input_batch' field")
            key = self._model_version(app, body.get("version"))
        except BadInput as exc:
            self._reject(reply, 400, "invalid input", str(exc))
            return
        self._submit_body(request, reply, app, body, inputs, batch, key)

    def _convert_in_slices(
        self, request: Request, reply: Reply, app: App, body: dict[str, Any],
        values: list[Any], convert: Callable[[object], bytes], inputs: list[bytes] | None = None,
    ) -> None:  # fmt: skip
        """An ``input_batch`` of more than ``SLICE_INPUTS`` inputs: converted that many at a
        time, the event loop answering other requests in between, then submitted whole.
        (Each slice is a fresh call_soon of this method: no closure, no cycle to keep the
        inputs alive after the answer.)"""
        loop = asyncio.get_running_loop()
        if inputs is None:  # the first call, from predict: start on the next turn
            loop.call_soon(self._convert_in_slices, request, reply, app, body, values, convert, [])
            return
        try:
            _convert_batch(values, convert, len(inputs), inputs, SLICE_INPUTS)
            if len(inputs) < len(values):
                loop.call_soon(self._convert_in_slices, request, reply, app, body, values,
                               convert, inputs)  # fmt: skip
                return
            key = self._model_version(app, body.get("version"))
        except BadInput as exc:
            self._reject(reply, 400, "invalid input", str(exc))
            return
        try:
            self._submit_body(request, reply, app, body, inputs, True, key)
        except Exception:  # not inside the HTTP layer's guard any more
            log.exception("input_batch of app %r failed", app.name)
            reply(*json_error(500, "internal error", "the server failed to handle the request"))

    def _submit_body(
        self, request: Request, reply: Reply, app: App, body: dict[str, Any],
        inputs: list[bytes], batch: bool, key: Any,
    ) -> None:  # fmt: skip
        sticky = None
        if key is ROUTED and app.selection is not None and app.selection["sticky_field"]:
            sticky = body.get(app.selection["sticky_field"])
        self._submit(request, app, inputs, batch, key, reply, sticky)

    def _submit(
        self, request: Request, app: App, inputs: list[bytes], batch: bool,
        key: tuple[str, str] | None, reply: Reply, sticky: object = None,
    ) -> None:  # fmt: skip
        """Queue the request's inputs (or answer them with the default when no model is
        there to ask); if the client goes away first, its queries are dropped."""
        overload = self._overload_reply if app.on_overload == "503" else None
        if batch:
            group = _BatchReply(app, len(inputs), reply, overload)
            queries = self.make_queries(app, inputs, group.add)
            group.first_id = queries[0].id  # ids of one request are consecutive
        else:
            queries = self.make_queries(app, inputs, _single_reply(app, reply, overload))
        self.dispatch(app, queries, key, sticky)
        self.cancel_on_disconnect(request, queries)

    def _submit_one(
        self, request: Request, app: App, data: bytes, key: tuple[str, str], reply: Reply
    ) -> None:
        """``_submit`` of the commonest request, one input for one model version: the steps
        of ``make_queries`` and ``dispatch`` in one call, then ``cancel_on_disconnect``."""
        now = time.monotonic()  # before the id: taking one may write a new block to the state
        slo = app.latency_slo_micros
        overload = self._overload_reply if app.on_overload == "503" else None
        queries = [Query(self._ids.take(1), app.name, data, now, slo,
                         _single_reply(app, reply, overload))]  # fmt: skip
        self._dispatcher.submit(queries, key, slo)
        self.cancel_on_disconnect(request, queries)

    def cancel_on_disconnect(self, request: Request, queries: list[Query]) -> None:
        """If the client of ``request`` goes away before ``queries`` are answered, those
        still unanswered are dropped wherever they wait (``Dispatcher.cancel``, which skips
        the answered ones), here and in the OIP."""
        request.cancel = lambda: self._dispatcher.cancel(queries)

    def cancel(self, queries: list[Query]) -> None:
        """Drop ``queries``, unanswered: their client has gone (a gRPC call cancelled)."""
        self._dispatcher.cancel(queries)

    def _overload_reply(self, q: Query, reply: Reply) -> None:
        """503 with Retry-After, for an app that asked for it instead of default outputs."""
        retry = self._dispatcher.retry_after(q.model.key) if q.model is not None else 1
        self._metrics.rejected(503)
        reply(
            *json_error(503, "overloaded", q.explanation or "overloaded"), JSON,
            b"Retry-After: %d\r\n" % retry,
        )  # fmt: skip

    def make_queries(
        self, app: App, inputs: list[bytes], on_done: Callable[[Query], None]
    ) -> list[Query]:
        """One query per input, with consecutive ids; ``on_done`` is called once for each.

        With :meth:`dispatch`, the one path into the dispatcher for every request API
        (Clipper's here, the Open Inference Protocol's in ``schooner.frontend.oip``)."""
        now = time.monotonic()
        first = self._ids.take(len(inputs))
        slo = app.latency_slo_micros
        name = app.name
        if len(inputs) == 1:  # most requests: no comprehension to set up
            return [Query(first, name, inputs[0], now, slo, on_done)]
        return [
            Query(first + i, name, data, now, slo, on_done) for i, data in enumerate(inputs)
        ]

    def dispatch(
        self, app: App, queries: list[Query], key: tuple[str, str] | None, sticky: object = None
    ) -> None:
        """Hand ``queries`` to model version ``key``, or answer them with the app's default
        output at once when it has no model to ask (``key`` None); ``ROUTED``: the app's
        selection decides (``sticky``: the request's sticky key, if it has one)."""
        if key is ROUTED:
            self.router(app).dispatch(queries, app.latency_slo_micros, sticky)
            return
        if key is None:
            explanation = (
                f"no model is linked to app {app.name!r}"
                if app.linked_model is None
                else f"model {app.linked_model!r} linked to app {app.name!r} has no version"
            )
            for q in queries:
                self._dispatcher.answer_default(q, NO_MODEL, explanation)
            return
        self._dispatcher.submit(queries, key, app.latency_slo_micros)

    def model_version(self, app: App, version: object) -> tuple[str, str] | None:
        """The model version a query of ``app`` goes to (``version`` pins one); None when the
        app has none to offer; BadInput for a version the linked model does not have."""
        return self._model_version(app, version)

    def _model_version(self, app: App, version: object) -> tuple[str, str] | None:
        """The model version a query goes to, or None when the app has none to offer;
        ``ROUTED`` when the app's selection chooses (a pinned version bypasses it)."""
        if version is None and app.selection is not None:
            return ROUTED
        model = app.linked_model
        if model is None:
            return None
        if version is None:
            current = self._state.current.get(model)
            return None if current is None else (model, current)
        if type(version) is int:
            version = str(version)
        if type(version) is not str:
            raise BadInput("'version' must be a string")
        if (model, version) not in self._state.models:
            raise BadInput(f"model {model!r} has no version {clip(version)!r}")
        return (model, version)


    # ----------------------------------------------------------------- selection

    def router(self, app: App) -> Router:
        """The app's ``selection.Router``, made again when its selection changed (a new
        split, policy, shadow or cache: the cache starts empty, a policy from its saved
        state)."""
        router = self._routers.get(app.name)
        selection = app.selection
        assert selection is not None
        if router is None or router.selection is not selection:
            if router is not None and router.selection == selection:
                router.selection = selection  # the same settings, reloaded
                return router
            state = self._state
            name = app.name
            for gone in [n for n in self._routers if n not in state.apps]:
                del self._routers[gone]  # routers of deleted apps

            def save(text: str) -> None:
                try:
                    state.save_policy_state(name, text)
                except StateError:
                    pass  # the app went meanwhile, or a shared store refused: learn on

            router = self._routers[name] = Router(
                name, selection, lambda model: state.current.get(model), self._dispatcher,
                self._metrics,
                policy_state=state.policy_state.get(name), save_state=save, rng=self.rng,
                linked=lambda: state.apps[name].linked_model if name in state.apps else None,
            )  # fmt: skip
        return router

    def serves(self, app: App, key: tuple[str, str] | None) -> bool:
        """A replica of ``key`` (of some model of a routed app) is connected."""
        if key is ROUTED:
            keys = self.router(app).keys()
        else:
            keys = [key]
        queues = self._dispatcher.queues
        return any(k is not None and k in queues and queues[k].replicas for k in keys)

    def update(self, request: Request, reply: Reply) -> None:
        """Clipper's feedback: ``POST /<app>/update {"input": ..., "label": ...}`` scores the
        answer the app's selection policy gave for that input (``selection.Router.feedback``)."""
        app = self._app(request, reply)
        if app is None:
            return
        body = self._json_object(request, reply)
        if body is None:
            return
        if "input" not in body or "label" not in body:
            self._reject(reply, 400, "invalid request", "the body must be a JSON object with "
                         "'input' and 'label'")  # fmt: skip
            return
        try:
            data = CONVERTERS[app.input_type](body["input"])
        except BadInput as exc:
            self._reject(reply, 400, "invalid input", str(exc))
            return
        if app.selection is None:
            self._metrics.feedback(app.name, "no_policy")
            result: dict[str, object] = {"scored": False, "cause": f"app {app.name!r} has no "
                                         "learning policy"}  # fmt: skip
        else:
            result = self.router(app).feedback(data, body["label"])
        reply(200, orjson.dumps(result))


class QueryIds:
    """Query ids unique over the life of the frontend's state (restarts included): blocks of
    ``BLOCK`` ids are reserved in the state store, one write per block."""

    BLOCK = 1 << 20

    __slots__ = ("_state", "_next", "_end")

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._next = self._end = 0

    def take(self, n: int) -> int:
        """The first of ``n`` consecutive fresh ids."""
        first = self._next
        if first + n > self._end:
            first = self._state.reserve_query_ids(max(n, self.BLOCK))
            self._end = first + max(n, self.BLOCK)
        self._next = first + n
        return first


def _convert_batch(values: list[Any], convert: Callable[[object], bytes], start: int,
                   into: list[bytes], count: int | None = None) -> list[bytes]:  # fmt: skip
    """Append the wire bytes of ``values[start:start + count]`` (all, by default) to ``into``."""
    end = len(values) if count is None else min(len(values), start + count)
    for i in range(start, end):
        try:
            into.append(convert(values[i]))
        except BadInput as exc:
            raise BadInput(f"input_batch[{i}]: {exc}") from None
    return into


def _answer_json(app: App, q: Query) -> bytes:
    """One answer's JSON object: ``query_id``, ``output`` and ``default`` (and, for the
    default output, ``default_explanation``). A model's answer is formatted in one step
    around its output's remembered JSON (``output_json``)."""
    if q.explanation is None:
        return b'{"query_id":%d,"output":%b,"default":false}' % (q.id, output_json(q.output or ""))
    return orjson.dumps({
        "query_id": q.id,
        "output": _as_json(app.default_output),
        "default": True,
        "default_explanation": q.explanation,
    })  # fmt: skip


# How an app that answers overload with 503 replies to a shed request: (query, reply).
OverloadReply = Callable[[Query, Reply], None]


def _py_single_reply(
    app: App, reply: Reply, overload: OverloadReply | None
) -> Callable[[Query], None]:
    """The ``on_done`` of a one-input request: its answer, or the app's 503 when it was shed."""

    def done(q: Query) -> None:
        if overload is not None and q.reason == SHED:
            overload(q, reply)
        else:
            reply(200, _answer_json(app, q))

    return done


if _fastpath is None:
    _single_reply = _py_single_reply
else:  # the same in C, for the C Query: no interpreter frame per answer
    _fastpath.query_setup(_OUTPUT_JSON, output_json, _answer_json, SHED)
    _single_reply = _fastpath.SingleAnswer


class _BatchReply:
    """Collects the answers of an ``input_batch`` request; replies when all are in."""

    __slots__ = ("app", "results", "left", "reply", "first_id", "overload")

    def __init__(self, app: App, n: int, reply: Reply, overload: OverloadReply | None) -> None:
        self.app = app
        self.results: list[orjson.Fragment | None] = [None] * n
        self.left = n
        self.reply = reply
        self.first_id = 0
        self.overload = overload

    def add(self, q: Query) -> None:
        if self.left < 0:
            return  # answered already, with 503
        if self.overload is not None and q.reason == SHED:
            # a request is admitted or shed whole: its first shed query answers for all
            self.left = -1
            self.overload(q, self.reply)
            return
        self.results[q.id - self.first_id] = orjson.Fragment(_answer_json(self.app, q))
        self.left -= 1
        if self.left == 0:
            self.reply(200, orjson.dumps({"batch_predictions": self.results}))

"""The Open Inference Protocol v2 (KServe's "v2 protocol", Triton's HTTP API) on the query port.

A v2 "model" is a Schooner app; ``versions/{v}`` pins the linked model's version, as the
``version`` field of Clipper's API does. The first dimension of an input tensor is the batch:
each row becomes one query, through the same queues, batching, SLO and default outputs as
``POST /<app>/predict`` (both go through ``QueryApi.make_queries`` and ``dispatch``).

    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         {"live": true}, {"ready": true}
    GET  /v2/models/{app}[/versions/{v}]           model metadata
    GET  /v2/models/{app}[/versions/{v}]/ready     a replica of that version is connected
    POST /v2/models/{app}[/versions/{v}]/infer     inference

Inputs: one tensor (the app takes one input per query), with JSON ``data`` (flat or nested,
row-major) or, with Triton's binary tensor extension, raw bytes after the JSON header
(``Inference-Header-Content-Length``; ``parameters.binary_data_size`` per input). Each
datatype either maps onto the app's input type without loss (``ACCEPTED``) or is refused with
400 naming what the app takes.

Outputs: ``output`` is a typed tensor when every row's answer is a number (INT64 when all are
integers, else FP64: shape ``[N]``) or a list of numbers of one length (``[N, k]``), and BYTES
(``[N]``, the answers' text) otherwise. Rows answered with the app's default output carry it
there, and two more outputs say which and why: ``default`` (BOOL ``[N]``) and
``default_explanation`` (BYTES ``[N]``, empty for served rows). OIP parameters are scalars
(KServe's clients validate that), so the response's ``parameters`` only count them:
``{"defaults": k}``. ``outputs`` in the request selects among the three and asks for binary
data per output (``parameters.binary_data``), as ``parameters.binary_data_output`` does for
all. Errors are ``{"error": "..."}`` with 400 (bad request), 404 (no such app or version),
405, or 413 (more rows than ``--max-inputs-per-request``, 10,000 by default).

A client that goes away before its answer (a closed connection; over gRPC, a cancelled call
or a passed deadline) has its unanswered queries dropped wherever they wait, as on Clipper's
path: no replica works for it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from schooner.frontend.dispatch import Dispatcher, Query
from schooner.frontend.http import Reply, Request, Router, clip
from schooner.frontend.inputs import (
    FAST_CODES,
    MAX_INPUTS_PER_REQUEST,
    BadInput,
    may_hold_booleans,
)
from schooner.frontend.query_api import QueryApi, _as_json
from schooner.frontend.state import App, StateStore
from schooner.runtime.wire import InputType

try:  # the optional C shortcut (frontend/_fastpath.c); the same results when it answers
    from schooner.frontend._fastpath import parse_array_at
except ImportError:  # built without a C compiler: every body takes the general path
    parse_array_at = None

__all__ = [
    "OipApi", "OipError", "ACCEPTED", "DATATYPES", "SERVER_NAME", "EXTENSIONS", "OUTPUTS",
    "binary_rows", "check_tensor", "output_tensors", "to_binary",
]  # fmt: skip

SERVER_NAME = "schooner"
EXTENSIONS = ["binary_tensor_data", "model_repository_versions", "schooner_default_outputs"]
OCTET_STREAM = b"application/octet-stream"
OUTPUT, DEFAULT, EXPLANATION = "output", "default", "default_explanation"
OUTPUTS = (OUTPUT, DEFAULT, EXPLANATION)

#: OIP datatype -> numpy dtype (little endian, as the binary extension defines); BYTES: None
DATATYPES: dict[str, np.dtype[Any] | None] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": None,
}  # fmt: skip

#: the datatypes each input type takes: exactly representable in it (the numeric ones), or
#: range-checked per value (``_CHECKED``); the first is the one the app's metadata names
ACCEPTED: dict[InputType, tuple[str, ...]] = {
    InputType.DOUBLES: ("FP64", "FP32", "FP16", "INT8", "INT16", "INT32", "UINT8", "UINT16",
                        "UINT32"),
    InputType.FLOATS: ("FP32", "FP16", "INT8", "INT16", "UINT8", "UINT16"),
    InputType.INTS: ("INT32", "INT8", "INT16", "UINT8", "UINT16", "BOOL", "INT64", "UINT32",
                     "UINT64"),
    InputType.STRINGS: ("BYTES",),
    InputType.BYTES: ("BYTES", "UINT8", "INT8"),
}  # fmt: skip
_CHECKED = frozenset({"INT64", "UINT32", "UINT64"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # into int32: every value must fit
_WIRE_DTYPE: dict[InputType, np.dtype[Any]] = {
    InputType.DOUBLES: np.dtype("<f8"), InputType.FLOATS: np.dtype("<f4"),
    InputType.INTS: np.dtype("<i4"),
}  # fmt: skip
_STRUCT_CODE = {"FP64": "d", "FP32": "f"}  # JSON numbers straight to wire bytes
_WIRE_NAME = {InputType.DOUBLES: "FP64", InputType.FLOATS: "FP32", InputType.INTS: "INT32",
              InputType.STRINGS: "", InputType.BYTES: ""}  # fmt: skip
_INT_RANGES = {name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
               for name, dt in DATATYPES.items() if dt is not None and dt.kind in "iu"}  # fmt: skip
# Bounds on what one request may ask for (a peer controls all of it).
MAX_ROWS = MAX_INPUTS_PER_REQUEST  # the default; OipApi takes QueryApi.max_inputs
MAX_VALUES = 1 << 24
MAX_NAME = 256


class OipError(Exception):
    """A request the protocol answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(reply: Reply, status: int, message: str) -> None:
    reply(status, orjson.dumps({"error": message}))


class OipApi:
    """The ``/v2`` handlers of the query port. ``routes`` adds them to a router."""

    def __init__(
        self,
        state: StateStore,
        dispatcher: Dispatcher,
        queries: QueryApi,
        is_ready: Callable[[], bool],
        version: str,
    ) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self._queries = queries
        self._is_ready = is_ready
        self._server = orjson.dumps(
            {"name": SERVER_NAME, "version": version, "extensions": EXTENSIONS}
        )

    def routes(self, router: Router) -> Router:
        router.add_prefix("/v2", self.handle)
        return router

    # ----------------------------------------------------------------- routing

    def handle(self, request: Request, reply: Reply) -> None:
        path = request.path
        if request.method == "POST" and path.startswith("/v2/models/") and path.endswith("/infer"):
            app = self._state.apps.get(path[11:-6])
            if app is not None and self._one_row(app, request, reply):
                return
        parts = path.split("/")[2:]  # "/v2/models/x/infer" -> ["models", "x", "infer"]
        try:
            self._route(request, reply, parts)
        except OipError as exc:
            _error(reply, exc.status, str(exc))

    def _route(self, request: Request, reply: Reply, parts: list[str]) -> None:
        method = request.method
        if parts in ([], [""]):
            _only(method, "GET")
            reply(200, self._server)
        elif parts == ["health", "live"]:
            _only(method, "GET")
            reply(200, b'{"live":true}')
        elif parts == ["health", "ready"]:
            _only(method, "GET")
            ready = self.ready()
            reply(200 if ready else 503, b'{"ready":true}' if ready else b'{"ready":false}')
        elif len(parts) >= 2 and parts[0] == "models":
            app = self.app(parts[1])
            rest = parts[2:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            key = self.key(app, version)
            if rest == []:
                _only(method, "GET")
                reply(200, orjson.dumps(self.metadata(app, version)))
            elif rest == ["ready"]:
                _only(method, "GET")
                ready = self.serves(app, key)
                reply(200 if ready else 400, orjson.dumps({"name": app.name, "ready": ready}))
            elif rest == ["infer"]:
                _only(method, "POST")
                self._infer(request, reply, app, key, version)
            else:
                raise OipError(404, f"no route for {request.path[:200]}")
        else:
            raise OipError(404, f"no route for {request.path[:200]}")

    def ready(self) -> bool:
        return self._is_ready()

    @property
    def max_inputs(self) -> int:
        """Rows one request may hold (REST and gRPC): the query API's inputs per request."""
        return self._queries.max_inputs

    def app(self, name: str) -> App:
        app = self._state.apps.get(name)
        if app is None:
            raise OipError(404, f"unknown model {name[:MAX_NAME]!r}: no application of that name")
        return app

    def key(self, app: App, version: str | None) -> tuple[str, str] | None:
        try:
            return self._queries.model_version(app, version)
        except BadInput as exc:
            raise OipError(404, str(exc)) from None

    def serves(self, app: App, key: tuple[str, str] | None) -> bool:
        """A replica the app's queries can go to is connected (any member, for a routed app)."""
        return key is not None and self._queries.serves(app, key)

    def replicas(self, key: tuple[str, str]) -> list[Any]:
        mq = self._dispatcher.queues.get(key)
        return mq.replicas if mq is not None else []

    # ----------------------------------------------------------------- metadata

    def metadata(self, app: App, version: str | None) -> dict[str, Any]:
        """The app as a v2 model. ``output`` is declared BYTES, the one type every answer fits
        (a model answers text; answers that are numbers arrive as INT64/FP64 tensors)."""
        model = app.linked_model
        versions = [m.version for m in self._state.models.values() if m.name == model]
        numeric = app.input_type in _WIRE_DTYPE
        return {
            "name": app.name,
            "versions": sorted(versions),
            "platform": "schooner",
            "inputs": [{"name": "input", "datatype": ACCEPTED[app.input_type][0],
                        "shape": [-1, -1] if numeric else [-1]}],  # fmt: skip
            "outputs": [
                {"name": OUTPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": DEFAULT, "datatype": "BOOL", "shape": [-1]},
                {"name": EXPLANATION, "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"accepted_datatypes": ",".join(ACCEPTED[app.input_type]),
                           "model_version": version or "", "linked_model": model or ""},  # fmt: skip
        }

    # ----------------------------------------------------------------- inference

    def _infer(
        self, request: Request, reply: Reply, app: App, key: tuple[str, str] | None,
        version: str | None,
    ) -> None:
        header, binary = _split(request)
        fast = _fast_data(app, header) if not binary else None
        body = _parse(fast[1] if fast is not None else header)
        limit = self._queries.max_inputs
        rows = _rows(app, body, binary, may_hold_booleans(header), fast[0] if fast else None,
                     limit)  # fmt: skip
        if rows is None:  # the shortcut did not fit this request: the general path decides
            body = _parse(header)
            rows = _rows(app, body, binary, may_hold_booleans(header), None, limit)
        assert rows is not None
        outputs = _requested_outputs(body)
        request_id = body.get("id")
        if request_id is not None and type(request_id) is not str:
            raise OipError(400, "'id' must be a string")

        def respond(queries: list[Query]) -> None:
            _reply_rest(reply, app, queries, outputs, request_id, version)

        sticky = None
        field = app.selection["sticky_field"] if app.selection is not None else None
        parameters = body.get("parameters") if field else None
        if field and type(parameters) is dict:
            sticky = parameters.get(field)  # the request's key of the app's traffic split
        queries = self.submit(app, rows, key, respond, sticky)
        self._queries.cancel_on_disconnect(request, queries)

    def _one_row(self, app: App, request: Request, reply: Reply) -> bool:
        """The commonest request: one row of the app's own datatype (``{"inputs": [{"name": ...,
        "shape": [1, k], "datatype": ..., "data": [k numbers]}]}``, or the same with its k
        values as binary data), to the current version, queued with a minimum of Python.
        False (nothing done) for anything else, which ``_infer`` then takes. What it answers
        is what ``_infer`` answers (tests/unit/test_oip_shortcuts.py)."""
        wire = _WIRE_DTYPE.get(app.input_type)
        if wire is None:
            return False
        length, body = request.header_length, request.body
        if length is None:
            fast = _fast_data(app, body)
            if fast is None:
                return False
            packed, header = fast
        elif 0 < length < len(body):
            packed, header = body[length:], body[:length]
        else:
            return False
        try:
            doc = orjson.loads(header)
        except orjson.JSONDecodeError:
            return False
        if type(doc) is not dict or len(doc) != 1:
            return False
        inputs = doc.get("inputs")
        if type(inputs) is not list or len(inputs) != 1:
            return False
        tensor = inputs[0]
        if type(tensor) is not dict or tensor.get("datatype") != _WIRE_NAME[app.input_type]:
            return False
        if length is None:
            if tensor.get("data", 0) is not None or "parameters" in tensor:
                return False
        elif "data" in tensor or tensor.get("parameters") != {"binary_data_size": len(packed)}:
            return False
        shape = tensor.get("shape")
        if (type(shape) is not list or len(shape) != 2 or shape[0] != 1 or type(shape[0]) is not int
                or type(shape[1]) is not int or len(packed) != shape[1] * wire.itemsize
                or not 0 < shape[1] <= MAX_VALUES):  # fmt: skip
            return False
        queries = self._queries.make_queries(
            app, [packed], lambda q: _reply_rest(reply, app, [q], _ALL_JSON, None, None)
        )
        self._queries.dispatch(app, queries, self._queries.model_version(app, None))
        self._queries.cancel_on_disconnect(request, queries)
        return True

    def submit(
        self, app: App, rows: list[bytes], key: tuple[str, str] | None,
        respond: Callable[[list[Query]], None], sticky: object = None,
    ) -> list[Query]:
        """Queue one query per row; ``respond(queries)`` once every row is answered.
        The REST and the gRPC handlers both come here (``sticky``: the request's key of a
        traffic split, from its ``parameters``). Returns the queries, for the caller to
        cancel if its client goes away first."""
        collector = _Rows(len(rows), respond)
        queries = self._queries.make_queries(app, rows, collector.add)
        collector.first_id = queries[0].id
        self._queries.dispatch(app, queries, key, sticky)
        return queries

    def cancel(self, queries: list[Query]) -> None:
        """Drop unanswered ``queries``: their client has gone."""
        self._queries.cancel(queries)


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise OipError(405, f"method {method} not allowed here; use {allowed}")


def _parse(header: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise OipError(400, f"the inference request is not valid JSON: {exc}") from None
    if type(body) is not dict:
        raise OipError(400, "the inference request must be a JSON object")
    return body


def _fast_data(app: App, header: bytes) -> tuple[bytes, bytes] | None:
    """The common JSON request's one flat ``"data"`` array of numbers parsed in C straight to
    the app's wire bytes, and the header with that array replaced by ``null`` for orjson.
    None when the shortcut does not apply (then the general path parses everything)."""
    code = FAST_CODES.get(app.input_type)
    if code is None or parse_array_at is None:
        return None
    at = header.find(b'"data"')
    if at < 0 or header.find(b'"data"', at + 6) >= 0:
        return None
    start = at + 6
    while start < len(header) and header[start] in b" \t\r\n:":
        start += 1
    found = parse_array_at(header, start, code)
    if found is None:
        return None
    packed, end = found
    return packed, b"%snull%s" % (header[:start], header[end:])


def _split(request: Request) -> tuple[bytes, memoryview]:
    """(the JSON header, the binary tensor data after it)."""
    length = request.header_length
    body = request.body
    if length is None:
        return body, memoryview(b"")
    if length < 0 or length > len(body):
        raise OipError(400, f"Inference-Header-Content-Length must be a number of bytes "
                            f"within the body ({len(body)} bytes)")  # fmt: skip
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


# --------------------------------------------------------------------------- inputs


def _rows(app: App, body: dict[str, Any], binary: memoryview, booleans: bool,
          packed: bytes | None, max_rows: int = MAX_ROWS) -> list[bytes] | None:  # fmt: skip
    """The wire bytes of each row of the request's one input tensor. ``packed``: its data,
    already converted by ``_fast_data``; None returned when that does not fit the tensor."""
    inputs = body.get("inputs")
    if type(inputs) is not list or not inputs:
        raise OipError(400, "'inputs' must be a non-empty array of tensors")
    if len(inputs) != 1:
        raise OipError(400, f"app {app.name!r} takes one input tensor per request, got "
                            f"{len(inputs)}")  # fmt: skip
    tensor = inputs[0]
    if type(tensor) is not dict:
        raise OipError(400, "each input must be a JSON object")
    datatype = str(tensor.get("datatype"))
    n, width = check_tensor(app, datatype, tensor.get("shape"), max_rows)
    parameters = tensor.get("parameters") or {}
    if type(parameters) is not dict:
        raise OipError(400, "'parameters' must be an object")
    size = parameters.get("binary_data_size")
    try:
        if size is not None:
            if type(size) is not int or size < 0 or size > len(binary):
                raise OipError(400, f"binary_data_size {clip(repr(size))} does not fit the "
                                    f"{len(binary)} bytes after the JSON header")  # fmt: skip
            if size != len(binary):
                raise OipError(400, f"{len(binary) - size} bytes after the input's binary data")
            return binary_rows(app, datatype, n, width, binary)
        if packed is not None:
            wire = _WIRE_DTYPE.get(app.input_type)
            if tensor.get("data", 0) is not None or wire is None or DATATYPES[datatype] != wire:
                return None  # the array was not this tensor's data, or needs a conversion
            step = width * wire.itemsize
            if len(packed) != n * step or not step:
                raise BadInput(f"shape {[n, *([width] if width != 1 else [])]} needs "
                               f"{n * width} values, 'data' has {len(packed) // wire.itemsize}")
            return [packed[i * step:(i + 1) * step] for i in range(n)]
        if len(binary):
            raise OipError(400, "binary data after the JSON header, but the input has no "
                                "binary_data_size parameter")  # fmt: skip
        if "data" not in tensor:
            raise OipError(400, "the input has neither 'data' nor binary_data_size")
        return _json_rows(app, datatype, n, width, tensor["data"], booleans)
    except BadInput as exc:
        raise OipError(400, str(exc)) from None


def check_tensor(app: App, datatype: object, shape: object,
                 max_rows: int = MAX_ROWS) -> tuple[int, int]:  # fmt: skip
    """(rows, values per row) of an input tensor of ``app``; OipError if it cannot be one
    (413 for more than ``max_rows`` rows: the frontend's --max-inputs-per-request)."""
    if datatype not in DATATYPES:
        raise OipError(400, f"unknown datatype {str(datatype)[:32]!r}; the protocol's are "
                            f"{', '.join(DATATYPES)}")  # fmt: skip
    accepted = ACCEPTED[app.input_type]
    if datatype not in accepted:
        raise OipError(400, f"app {app.name!r} takes {app.input_type.clipper_name}: send "
                            f"{' or '.join(accepted)}, not {datatype}")  # fmt: skip
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise OipError(400, "'shape' must be a non-empty array of non-negative integers")
    n = shape[0]
    if n == 0:
        raise OipError(400, "the first dimension (the batch) must be at least 1")
    if n > max_rows:
        raise OipError(413, f"at most {max_rows} rows (inputs) per request, got {n}")
    width = math.prod(shape[1:])
    if width > MAX_VALUES:
        raise OipError(400, f"at most {MAX_VALUES} values per row, got {width}")
    return n, width


def _flatten(data: object, limit: int) -> list[Any]:
    """Row-major values of a flat or nested JSON array (at most ``limit`` of them)."""
    if type(data) is not list:
        raise BadInput("'data' must be a JSON array")
    if not data or type(data[0]) is not list:
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if type(value) is list:
                stack.append(iter(value))
                break
            flat.append(value)
            if len(flat) > limit:
                raise BadInput(f"'data' holds more than the {limit} values its shape says")
        else:
            stack.pop()
    return flat


def _json_rows(app: App, datatype: str, n: int, width: int, data: object,
               booleans: bool) -> list[bytes]:  # fmt: skip
    if datatype == "BYTES":
        values = _flatten(data, n)
        if len(values) != n or width != 1:
            raise BadInput(f"a BYTES input holds one element per row: shape [{n}] or [{n}, 1] "
                           f"with {n} strings, got {len(values)}")  # fmt: skip
        if not all(type(v) is str for v in values):
            raise BadInput("BYTES data must be JSON strings")
        return [v.encode("utf-8") for v in values]
    total = n * width
    values = _flatten(data, total)
    if len(values) != total:
        raise BadInput(f"shape {[n, *([width] if width != 1 else [])]} needs {total} values, "
                       f"'data' has {len(values)}")  # fmt: skip
    if width == 0:
        raise BadInput("each row needs at least one value")
    code = _STRUCT_CODE.get(datatype)
    if code is not None and not booleans and _WIRE_DTYPE.get(app.input_type) == DATATYPES[datatype]:
        try:  # the common case: struct rejects strings, nulls and out-of-range values itself
            packed = struct.pack(f"<{total}{code}", *values)
        except (struct.error, OverflowError, TypeError):
            packed = None
        if packed is not None:
            step = len(packed) // n
            return [packed[i * step:(i + 1) * step] for i in range(n)]
    array = _checked_array(values, datatype)
    return _numeric_rows(app, datatype, array.reshape(n, width))


def _checked_array(values: list[Any], datatype: str) -> np.ndarray[Any, Any]:
    """``values`` as an array of ``datatype``, each value checked for its type and range."""
    dtype = DATATYPES[datatype]
    assert dtype is not None
    if datatype == "BOOL":
        if not all(type(v) is bool for v in values):
            raise BadInput("BOOL data must be JSON true/false")
    elif dtype.kind in "iu":
        if not all(type(v) is int for v in values):
            raise BadInput(f"{datatype} data must be JSON integers")
        low, high = _INT_RANGES[datatype]
        if min(values) < low or max(values) > high:
            raise BadInput(f"a value is outside the {datatype} range [{low}, {high}]")
    else:
        if not all(type(v) in (int, float) for v in values):
            raise BadInput(f"{datatype} data must be JSON numbers")
    try:
        with np.errstate(over="raise"):  # a float beyond FP32's or FP16's range
            return np.array(values, dtype=dtype)
    except (OverflowError, FloatingPointError):
        raise BadInput(f"a value does not fit {datatype}") from None


def binary_rows(app: App, datatype: str, n: int, width: int, raw: memoryview) -> list[bytes]:
    if datatype == "BYTES":  # each element: u32 little-endian length, then the bytes
        rows, at = [], 0
        for _ in range(n):
            if at + 4 > len(raw):
                raise BadInput("BYTES binary data ends inside an element's length")
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + size > len(raw):
                raise BadInput("BYTES binary data ends inside an element")
            rows.append(bytes(raw[at:at + size]))
            at += size
        if at != len(raw) or width != 1:
            raise BadInput(f"BYTES binary data must hold exactly {n} elements, one per row")
        if app.input_type is InputType.STRINGS:
            try:
                for row in rows:
                    row.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput("an element is not UTF-8 text (the app takes strings)") from None
        return rows
    dtype = DATATYPES[datatype]
    assert dtype is not None
    if len(raw) != n * width * dtype.itemsize:
        raise BadInput(f"shape [{n}, ...] of {datatype} needs {n * width * dtype.itemsize} "
                       f"bytes of binary data, got {len(raw)}")  # fmt: skip
    if width == 0:
        raise BadInput("each row needs at least one value")
    if _WIRE_DTYPE.get(app.input_type) == dtype or app.input_type is InputType.BYTES:
        step = width * dtype.itemsize
        data = bytes(raw)
        return [data[i * step:(i + 1) * step] for i in range(n)]
    return _numeric_rows(app, datatype, np.frombuffer(raw, dtype=dtype).reshape(n, width))


def _numeric_rows(app: App, datatype: str, array: np.ndarray[Any, Any]) -> list[bytes]:
    if app.input_type is InputType.BYTES:  # UINT8/INT8 -> the bytes themselves
        return [row.tobytes() for row in array]
    wire = _WIRE_DTYPE[app.input_type]
    if datatype in _CHECKED:
        low, high = _INT_RANGES["INT32"]
        if array.size and (array.min() < low or array.max() > high):
            raise BadInput(f"a {datatype} value is outside the int32 range the app takes")
    converted = array.astype(wire)
    data = converted.tobytes()
    step = converted.shape[1] * wire.itemsize
    return [data[i * step:(i + 1) * step] for i in range(converted.shape[0])]


def _requested_outputs(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The outputs to return, each with whether to send it as binary data."""
    parameters = body.get("parameters") or {}
    if type(parameters) is not dict:
        raise OipError(400, "'parameters' must be an object")
    all_binary = parameters.get("binary_data_output") is True
    asked = body.get("outputs")
    if asked is None:
        return [(name, all_binary) for name in OUTPUTS]
    if type(asked) is not list or len(asked) > len(OUTPUTS):
        raise OipError(400, f"'outputs' must be an array naming some of {', '.join(OUTPUTS)}")
    chosen = []
    for item in asked:
        name = item.get("name") if type(item) is dict else None
        if name not in OUTPUTS:
            raise OipError(400, f"unknown output {str(name)[:MAX_NAME]!r}; this model has "
                                f"{', '.join(OUTPUTS)}")  # fmt: skip
        params = item.get("parameters") or {}
        binary = params.get("binary_data", all_binary) if type(params) is dict else all_binary
        chosen.append((name, binary is True))
    return chosen


# --------------------------------------------------------------------------- outputs


class _Rows:
    """Collects the answers of one request's rows; calls ``respond`` when all are in."""

    __slots__ = ("queries", "left", "respond", "first_id")

    def __init__(self, n: int, respond: Callable[[list[Query]], None]) -> None:
        self.queries: list[Query] = [None] * n  # type: ignore[list-item]
        self.left = n
        self.respond = respond
        self.first_id = 0

    def add(self, q: Query) -> None:
        self.queries[q.id - self.first_id] = q
        self.left -= 1
        if self.left == 0:
            self.respond(self.queries)


Tensor = tuple[str, str, list[int], list[Any]]  # name, datatype, shape, row-major data


def output_tensors(app: App, queries: Sequence[Query], names: Sequence[str]) -> list[Tensor]:
    """The requested output tensors of answered ``queries`` (see the module docstring)."""
    tensors = []
    n = len(queries)
    for name in names:
        if name == OUTPUT:
            default = _as_json(app.default_output)
            answers = [default if q.explanation is not None else _as_json(q.output or "")
                       for q in queries]  # fmt: skip
            tensors.append((name, *_output_tensor(answers, queries, app.default_output)))
        elif name == DEFAULT:
            tensors.append((name, "BOOL", [n], [q.explanation is not None for q in queries]))
        else:
            tensors.append((name, "BYTES", [n], [q.explanation or "" for q in queries]))
    return tensors


_ALL_JSON = [(name, False) for name in OUTPUTS]
_ONE_ROW_PREFIX: dict[str, bytes] = {}
_ONE_ROW_SUFFIX = (b'{"name":"default","datatype":"BOOL","shape":[1],"data":[false]},'
                   b'{"name":"default_explanation","datatype":"BYTES","shape":[1],"data":[""]}],'
                   b'"parameters":{"defaults":0}}')  # fmt: skip


def _one_served_number(app: App, q: Query) -> bytes | None:
    """The whole response of the commonest request (one row, every output as JSON, no id or
    version) answered with a number, from a template: what ``_reply_rest`` writes for it."""
    try:
        value = orjson.loads(q.output or "")
    except orjson.JSONDecodeError:
        return None
    kind = type(value)
    if kind is int and _INT64_MIN <= value <= _INT64_MAX:
        datatype = b"INT64"
    elif kind is float and math.isfinite(value):
        datatype = b"FP64"
    else:
        return None
    prefix = _ONE_ROW_PREFIX.get(app.name)
    if prefix is None:
        if len(_ONE_ROW_PREFIX) > 4096:
            _ONE_ROW_PREFIX.clear()
        prefix = _ONE_ROW_PREFIX[app.name] = (
            b'{"model_name":%s,"outputs":[{"name":"output","datatype":"' % orjson.dumps(app.name)
        )
    return b'%s%s","shape":[1],"data":[%s]},%s' % (prefix, datatype, orjson.dumps(value),
                                                     _ONE_ROW_SUFFIX)  # fmt: skip


def _reply_rest(reply: Reply, app: App, queries: list[Query], outputs: list[tuple[str, bool]],
                request_id: str | None, version: str | None) -> None:  # fmt: skip
    if (len(queries) == 1 and queries[0].explanation is None and request_id is None
            and version is None and outputs == _ALL_JSON):  # fmt: skip
        template = _one_served_number(app, queries[0])
        if template is not None:
            reply(200, template)
            return
    tensors = output_tensors(app, queries, [name for name, _ in outputs])
    rendered, chunks = [], []
    for (name, datatype, shape, data), (_, binary) in zip(tensors, outputs):
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = to_binary(datatype, data)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = data
        rendered.append(tensor)
    body: dict[str, Any] = {"model_name": app.name, "outputs": rendered}
    if version is not None:
        body["model_version"] = version
    if request_id is not None:
        body["id"] = request_id
    body["parameters"] = {"defaults": sum(q.explanation is not None for q in queries)}
    header = orjson.dumps(body)
    if not chunks:
        reply(200, header)
        return
    reply(200, b"".join([header, *chunks]), OCTET_STREAM,
          b"Inference-Header-Content-Length: %d\r\n" % len(header))  # fmt: skip


def _output_tensor(answers: list[Any], queries: Sequence[Query],
                   default_text: str) -> tuple[str, list[int], list[Any]]:  # fmt: skip
    """A typed tensor when every answer is a number or a list of numbers of one length."""
    n = len(answers)

    def number(v: object) -> bool:
        if type(v) is int:
            return _INT64_MIN <= v <= _INT64_MAX  # type: ignore[operator]
        return type(v) is float and math.isfinite(v)  # type: ignore[arg-type]

    if all(number(a) for a in answers):
        return ("INT64" if all(type(a) is int for a in answers) else "FP64"), [n], answers
    if all(type(a) is list and a and all(number(v) for v in a) for a in answers):
        widths = {len(a) for a in answers}
        if len(widths) == 1:
            flat = [v for a in answers for v in a]
            kind = "INT64" if all(type(v) is int for v in flat) else "FP64"
            return kind, [n, widths.pop()], flat
    texts = [default_text if q.explanation is not None else (q.output or "") for q in queries]
    return "BYTES", [n], [_text(t) for t in texts]


def _text(output: str) -> str:
    """A JSON string answer as its value (``"cat"`` -> ``cat``), anything else as sent."""
    value = _as_json(output)
    return value if type(value) is str else output


def to_binary(datatype: str, data: list[Any]) -> bytes:
    """``data`` in the binary tensor layout (BYTES: a u32 length before each element)."""
    if datatype == "BYTES":
        parts = []
        for item in data:
            raw = item if type(item) is bytes else item.encode("utf-8")
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    dtype = DATATYPES[datatype]
    assert dtype is not None
    return np.asarray(data, dtype=dtype).tobytes()


"""The Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` on a port of its
own (``--grpc-port``), for ``tritonclient.grpc`` and KServe's gRPC clients.

The messages come from frontend/oip_grpc.proto, compiled when the package is built; the
server is grpc.aio on the frontend's own event loop, so a request reaches the dispatcher
with no thread hand-over, exactly as a REST one does, through ``OipApi.submit``. Nothing
here is imported, and no gRPC server runs, unless a gRPC port is configured: the REST path
pays nothing for it.

Tensors: ``raw_input_contents`` (what tritonclient sends) or typed ``contents``; outputs are
always sent as ``raw_output_contents``, as Triton does. The three outputs, their datatypes
and the ``defaults`` parameter are those of the REST API (``schooner.frontend.oip``).
Errors map onto gRPC codes: 400 INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED,
503 UNAVAILABLE.

Bounds, the HTTP side's where gRPC has one: a request message at most ``max_message_bytes``
(the frontend's --max-body-bytes), metadata at most ``max_metadata_bytes``
(--max-header-bytes), a connection idle for ``idle_timeout_s`` (--idle-timeout) is closed,
``MAX_STREAMS`` concurrent calls per connection (HTTP's pipelining bound), and at most
--max-inputs-per-request rows per request (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from schooner.frontend.dispatch import Query
from schooner.frontend.oip import (
    DATATYPES,
    EXTENSIONS,
    OUTPUTS,
    SERVER_NAME,
    OipApi,
    OipError,
    binary_rows,
    check_tensor,
    output_tensors,
    to_binary,
)
from schooner.frontend.state import App, StateStore
from schooner.runtime.errors import MissingExtra

__all__ = ["GrpcServer", "MAX_MESSAGE_BYTES"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a response message (and a request's, by default)
MAX_STREAMS = 256  # concurrent calls on one connection (schooner.frontend.http.MAX_PIPELINE)

# datatype -> the InferTensorContents field that holds it
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def _modules() -> tuple[Any, Any]:
    try:
        import grpc
        from grpc import aio
    except ImportError as exc:
        raise MissingExtra("gRPC frontend", "grpc", "grpcio") from exc
    try:
        from schooner.frontend import oip_grpc_pb2
    except ImportError as exc:
        raise MissingExtra("gRPC frontend", "grpc", "grpcio-tools (at build time; then "
                           "reinstall schooner)") from exc  # fmt: skip
    return (grpc, aio), oip_grpc_pb2


class GrpcServer:
    """The gRPC service on ``host:port``; ``await start()``, ``await stop()``."""

    def __init__(self, oip: OipApi, state: StateStore, version: str, host: str,
                 port: int, *, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_metadata_bytes: int = 64 * 1024, idle_timeout_s: float = 60.0) -> None:  # fmt: skip
        (self._grpc, self._aio), self._pb = _modules()
        self._oip = oip
        self._state = state
        self._version = version
        self._address = f"{host}:{port}"
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", max_metadata_bytes),
            ("grpc.max_concurrent_streams", MAX_STREAMS),
            ("grpc.max_connection_idle_ms", int(idle_timeout_s * 1000)),
        ]
        self._server: Any = None
        self.port = 0

    async def start(self) -> int:
        grpc, pb = self._grpc, self._pb
        server = self._aio.server(options=self._options)
        methods = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=message.FromString,
                response_serializer=lambda response: response.SerializeToString(),
            )  # fmt: skip
            for name, (handler, message) in methods.items()
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {self._address}")
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    # ----------------------------------------------------------------- handlers

    async def _abort(self, context: Any, exc: OipError) -> None:
        codes = self._grpc.StatusCode
        code = {400: codes.INVALID_ARGUMENT, 404: codes.NOT_FOUND, 405: codes.UNIMPLEMENTED,
                413: codes.RESOURCE_EXHAUSTED, 503: codes.UNAVAILABLE,
                }.get(exc.status, codes.INTERNAL)  # fmt: skip
        await context.abort(code, str(exc))

    async def server_live(self, request: Any, context: Any) -> Any:
        return self._pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return self._pb.ServerReadyResponse(ready=self._oip.ready())

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return self._pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version,
                                               extensions=EXTENSIONS)  # fmt: skip

    async def model_ready(self, request: Any, context: Any) -> Any:
        try:
            app = self._oip.app(request.name)
            key = self._oip.key(app, request.version or None)
        except OipError as exc:
            await self._abort(context, exc)
        return self._pb.ModelReadyResponse(ready=self._oip.serves(app, key))

    async def model_metadata(self, request: Any, context: Any) -> Any:
        try:
            app = self._oip.app(request.name)
            self._oip.key(app, request.version or None)
        except OipError as exc:
            await self._abort(context, exc)
        meta = self._oip.metadata(app, request.version or None)
        tensor = self._pb.ModelMetadataResponse.TensorMetadata
        return self._pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )  # fmt: skip

    async def model_infer(self, request: Any, context: Any) -> Any:
        version = request.model_version or None
        try:
            app = self._oip.app(request.model_name)
            key = self._oip.key(app, version)
            rows = self._rows(app, request)
            names = [o.name for o in request.outputs] or list(OUTPUTS)
            unknown = [n for n in names if n not in OUTPUTS]
            if unknown:
                raise OipError(400, f"unknown output {unknown[0][:256]!r}; this model has "
                                    f"{', '.join(OUTPUTS)}")  # fmt: skip
        except OipError as exc:
            await self._abort(context, exc)
        answered: asyncio.Future[list[Query]] = asyncio.get_running_loop().create_future()

        def respond(queries: list[Query]) -> None:
            if not answered.done():
                answered.set_result(queries)

        queries = self._oip.submit(app, rows, key, respond, _sticky(app, request))
        try:
            queries = await answered
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            self._oip.cancel(queries)
            raise
        return self._response(app, request, version, names, queries)

    # ----------------------------------------------------------------- tensors

    def _rows(self, app: App, request: Any) -> list[bytes]:
        if len(request.inputs) != 1:
            raise OipError(400, f"app {app.name!r} takes one input tensor per request, got "
                                f"{len(request.inputs)}")  # fmt: skip
        tensor = request.inputs[0]
        datatype = tensor.datatype
        n, width = check_tensor(app, datatype, list(tensor.shape), self._oip.max_inputs)
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise OipError(400, "one raw_input_contents entry per input")
            raw = memoryview(request.raw_input_contents[0])
        else:
            raw = memoryview(self._contents_to_raw(datatype, tensor.contents))
        try:
            return binary_rows(app, datatype, n, width, raw)
        except ValueError as exc:  # BadInput
            raise OipError(400, str(exc)) from None

    @staticmethod
    def _contents_to_raw(datatype: str, contents: Any) -> bytes:
        field = _CONTENTS.get(datatype)
        if field is None:
            raise OipError(400, f"{datatype} data can only be sent as raw_input_contents")
        values = list(getattr(contents, field))
        if datatype == "BYTES":
            return to_binary("BYTES", values)
        dtype = DATATYPES[datatype]
        try:
            return np.asarray(values, dtype=dtype).tobytes()
        except OverflowError as exc:
            raise OipError(400, f"a value does not fit {datatype}: {exc}") from None

    def _response(self, app: App, request: Any, version: str | None, names: list[str],
                  queries: list[Query]) -> Any:  # fmt: skip
        pb = self._pb
        response = pb.ModelInferResponse(model_name=app.name, model_version=version or "",
                                         id=request.id)  # fmt: skip
        response.parameters["defaults"].int64_param = sum(
            q.explanation is not None for q in queries
        )
        for name, datatype, shape, data in output_tensors(app, queries, names):
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(to_binary(datatype, data))
        return response


def _sticky(app: App, request: Any) -> object:
    """The request's key of the app's traffic split: its ``parameters`` entry named by the
    app's ``sticky_field`` (any of the scalar kinds), else None."""
    field = app.selection["sticky_field"] if app.selection is not None else None
    if not field or field not in request.parameters:
        return None
    parameter = request.parameters[field]
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None

from collections.abc import Callable
from typing import Any

def parse_input(body: bytes, code: str, /) -> bytes | None: ...
def parse_array_at(body: bytes, offset: int, code: str, /) -> tuple[bytes, int] | None: ...
def scan_request(
    data: bytes, offset: int, max_url: int, max_headers: int, max_header_bytes: int,
    max_body: int, /,
) -> tuple[int, str, str, str, bytes, bytes | None, bytes | None] | None: ...
def http_setup(
    head_cache: dict[tuple[int, bytes, bool], bytes],
    new_head: Callable[[int, bytes, bool], bytes],
    json: bytes, empty: bytes, max_pipeline: int, trim_after_bytes: int, /,
) -> None: ...

class Request:
    method: str
    path: str
    query: str
    body: bytes
    param: str | None
    header_length: int | None
    cancel: Callable[[], None] | None
    authorization: bytes | None
    _answer: bytes | None
    _close: bool
    _head: bool
    _big: bool
    _conn: ConnCore | None
    def __init__(
        self, method: str, path: str, query: str, body: bytes, header_length: int | None = None
    ) -> None: ...
    def __call__(
        self, status: int, body: bytes, content_type: bytes = ..., headers: bytes = ...
    ) -> None: ...

class ConnCore:
    _listener: Any
    _router: Any
    _routes: Any
    _transport: Any
    _slots: Any
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
    def data_received(self, data: bytes) -> None: ...
    def _complete(
        self, method: str, path: str, query: str, body: bytes, keep_alive: bool,
        header_length: int | None, authorization: bytes | None, /,
    ) -> None: ...
    def _flush(self) -> None: ...

class Query:
    id: int
    app: str
    data: bytes
    arrival: float
    deadline: float
    slo_micros: int
    on_done: Callable[[Query], None]
    done: bool
    output: str | None
    explanation: str | None
    reason: str | None
    lost: str | None
    model: Any
    queued: bool
    def __init__(
        self, query_id: int, app: str, data: bytes, arrival: float, slo_micros: int,
        on_done: Callable[[Any], None],
    ) -> None: ...

class SingleAnswer:
    def __init__(self, app: Any, reply: Callable[..., None], overload: Any, /) -> None: ...
    def __call__(self, query: Any, /) -> None: ...

def query_setup(
    output_cache: dict[str, bytes], output_json: Callable[[str], bytes],
    answer_json: Callable[[Any, Any], bytes], shed: str, /,
) -> None: ...

def answer_all(
    queries: list[Any], texts: list[str], now: float,
    record: Callable[[str, list[float]], None], status: Any, failed: Any, /,
) -> None: ...

class PredictRoute:
    def __init__(self, api: Any, codes: dict[Any, str], /) -> None: ...
    def __call__(self, request: Any, reply: Callable[..., None], /) -> None: ...

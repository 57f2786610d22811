"""Issue 10 over a real frontend process: what a peer sends is bounded, slow and idle peers
are closed, and a full query port still lets health checks and the management port in."""

from __future__ import annotations

import re
import socket
from typing import Any

import orjson
import pytest
from conftest import FrontendProcess, StartFrontend, get_json

pytestmark = pytest.mark.timeout(120)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (raises on a close before a whole one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}  # fmt: skip
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (reads to the end; a reset counts)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True


def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)


def post(path: str, body: Any) -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data  # fmt: skip


def counted(fe: FrontendProcess, reason: str) -> int:
    """Connections the frontend's log says it closed for ``reason``."""
    return sum(int(n) for n in re.findall(rf"(\d+) {re.escape(reason)}", fe.process.log()))


def add_app(fe: FrontendProcess, name: str = "app") -> None:
    fe.admin("add_app", {"name": name, "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": 100_000})  # fmt: skip


def test_request_size_limits_have_clear_errors(start_frontend: StartFrontend) -> None:
    fe = start_frontend(extra_args=["--max-url-bytes", "1024", "--max-header-bytes", "4096",
                                    "--max-headers", "20", "--max-inputs-per-request", "100"])  # fmt: skip
    add_app(fe)
    port = fe.query_port

    # a long URL is refused once past the limit, without reading the rest, and not echoed
    with connect(port) as sock:
        sock.sendall(b"GET /")
        sent = 0
        try:
            while sent < 64 << 20:
                sock.sendall(b"u" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(sock)
        assert status == 414 and headers["connection"] == "close" and b"uuu" not in body
    assert sent < 64 << 20

    # a 404 quotes a bounded prefix of a long path
    status, _, body = request(port, b"GET /" + b"q" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404 and body.count(b"q") <= 200

    status, _, body = request(port, b"GET /health HTTP/1.1\r\nX-A: " + b"v" * 5000 + b"\r\n\r\n")
    assert status == 431 and b"vvv" not in body
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(25))
    status, _, body = request(port, b"GET /health HTTP/1.1\r\n" + many + b"\r\n")
    assert status == 431 and b"more than 20" in body

    # inputs per request: Clipper's API (counted, and for a huge numeric body refused before
    # decoding it) and the Open Inference Protocol, REST
    status, _, body = request(port, post("/app/predict", {"input_batch": [[1.0]] * 100}))
    assert status == 200 and len(orjson.loads(body)["batch_predictions"]) == 100
    status, _, body = request(port, post("/app/predict", {"input_batch": [[1.0]] * 101}))
    assert status == 413 and b"101 inputs" in body
    huge = b'{"input_batch": [' + b"[1]," * 1_000_000 + b"[1]]}"
    status, _, body = request(port, post("/app/predict", huge))
    assert status == 413 and b"at most 100" in body
    tensor = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [101, 1],
                          "data": [1.0] * 101}]}  # fmt: skip
    status, _, body = request(port, post("/v2/models/app/infer", tensor))
    assert status == 413 and b"at most 100 rows" in body
    assert get_json(fe.query_url + "/health")[0] == 200


def test_an_upgrade_request_gets_one_answer_then_a_close(start_frontend: StartFrontend) -> None:
    fe = start_frontend()
    with connect(fe.query_port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        status, headers, _ = read_response(sock)
        assert status == 400 and headers["connection"] == "close"
        rest = b""
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass
        assert rest == b""  # no second response


def test_slow_and_idle_peers_are_closed(start_frontend: StartFrontend) -> None:
    fe = start_frontend(extra_args=["--header-timeout", "1", "--body-timeout", "1",
                                    "--idle-timeout", "1"])  # fmt: skip
    port = fe.query_port
    slow = [connect(port) for _ in range(50)]
    for sock in slow:  # slowloris: a request line and one header, then nothing
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: 1\r\n")
    short = connect(port)  # a Content-Length larger than the body
    short.sendall(b"POST /app/predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"input\"")
    idle = connect(port)  # keep-alive, after an answer
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(idle)[0] == 200
    silent = connect(port)  # connected and sent nothing

    for sock in slow:
        status, headers, body = read_response(sock)
        assert status == 408 and headers["connection"] == "close" and b"headers" in body
        assert closed(sock)
    status, _, body = read_response(short)
    assert status == 408 and b"body" in body
    assert closed(short) and closed(idle) and closed(silent)
    for sock in (*slow, short, idle, silent):
        sock.close()
    # the server logs them in a few counted lines, not one line per peer
    fe.process.wait_for_log("header timeout (408)", timeout=10)
    lines = [line for line in fe.process.log().splitlines() if "closed connections" in line]
    assert 1 <= len(lines) <= 5
    assert counted(fe, "header timeout") == 50
    assert get_json(fe.query_url + "/health")[0] == 200


def test_a_full_query_port_still_lets_health_checks_and_the_management_port_in(
    start_frontend: StartFrontend,
) -> None:
    fe = start_frontend(extra_args=["--max-connections", "40", "--reserve-connections", "3",
                                    "--management-max-connections", "8"])  # fmt: skip
    add_app(fe)
    port = fe.query_port
    held = [connect(port) for _ in range(40)]
    for sock in held:  # every one served: they are within the limit
        sock.sendall(post("/app/predict", {"input": [1.0]}))
        assert read_response(sock)[0] == 200

    # past the limit: a health check on a reserve connection is answered, then closed
    for _ in range(2):
        with connect(port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert (status, headers["connection"]) == (200, "close")
    # ... a query on one is 503
    with connect(port) as sock:
        sock.sendall(post("/app/predict", {"input": [1.0]}))
        assert read_response(sock)[0] == 503
    # with the reserve taken too, a new connection gets 503 at once, without asking
    reserve = [connect(port) for _ in range(3)]
    for _ in range(20):
        with connect(port) as sock:
            status, headers, _ = read_response(sock)
            assert status == 503 and headers["connection"] == "close"
    # the management port has a budget of its own
    assert fe.admin("get_all_applications", {}) == ["app"]

    for sock in (*held, *reserve):
        sock.close()
    fe.process.wait_until(lambda: fe.predict("app", {"input": [1.0]})[0] == 200, timeout=20,
                          what="a query answered after the connections closed")  # fmt: skip
    # counted and logged by the sweeps (once a second at most), not once per peer
    fe.process.wait_until(lambda: counted(fe, "refused at the connection limit") == 20,
                          timeout=10, what="20 refused connections logged")  # fmt: skip


def test_the_default_connection_limit_leaves_open_files_for_the_rest(
    start_frontend: StartFrontend,
) -> None:
    import resource

    fe = start_frontend()
    match = re.search(r"connection limits: query port (\d+) \(\+(\d+) for health checks\), "
                      r"management port (\d+)", fe.process.log())  # fmt: skip
    assert match is not None
    query, reserve, management = map(int, match.groups())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # the frontend raised its soft limit to the hard one; the ports leave files to spare
    with open(f"/proc/{fe.process.pid}/limits") as limits:
        soft = int(next(line for line in limits if line.startswith("Max open files")).split()[3])
    assert soft == hard
    assert 16 <= query and query + reserve + management < soft


def test_memory_is_given_back_after_large_requests(start_frontend: StartFrontend) -> None:
    fe = start_frontend()
    fe.admin("add_app", {"name": "s", "input_type": "strings", "default_output": "0",
                         "latency_slo_micros": 100_000})  # fmt: skip

    def rss_mb() -> int:
        with open(f"/proc/{fe.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) // 1024

    assert request(fe.query_port, post("/s/predict", {"input": "warm up"}))[0] == 200
    baseline = rss_mb()
    body = orjson.dumps({"input_batch": ["x" * 1600] * 10_000})  # 15 MiB, 10,000 inputs
    socks = [connect(fe.query_port) for _ in range(4)]
    for sock in socks:
        sock.sendall(post("/s/predict", body))
    for sock in socks:
        status, _, answer = read_response(sock)
        assert status == 200 and len(orjson.loads(answer)["batch_predictions"]) == 10_000
        sock.close()
    # four such requests at once take ~150 MB more; within seconds the frontend is back
    # near where it started (it kept ~230 MB before the trim and with reference cycles)
    fe.process.wait_until(lambda: rss_mb() < baseline + 60, timeout=15,
                          what=f"RSS back under {baseline + 60} MB")  # fmt: skip


def test_grpc_takes_the_same_bounds(start_frontend: StartFrontend) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import numpy as np
    from conftest import free_port
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    fe = start_frontend(extra_args=["--grpc-port", str(grpc_port), "--max-inputs-per-request",
                                    "100", "--max-body-bytes", "100000"])  # fmt: skip
    add_app(fe)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    rows = grpcclient.InferInput("input", [100, 1], "FP64")
    rows.set_data_from_numpy(np.ones((100, 1)))
    assert client.infer("app", [rows]).as_numpy("output").shape == (100,)
    too_many = grpcclient.InferInput("input", [101, 1], "FP64")
    too_many.set_data_from_numpy(np.ones((101, 1)))
    with pytest.raises(InferenceServerException, match="at most 100 rows") as info:
        client.infer("app", [too_many])
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())
    too_big = grpcclient.InferInput("input", [1, 20_000], "FP64")  # 160 kB > --max-body-bytes
    too_big.set_data_from_numpy(np.ones((1, 20_000)))
    with pytest.raises(InferenceServerException) as info:
        client.infer("app", [too_big])
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())

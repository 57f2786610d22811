"""Issue 10, part 2 (the RPC side): nothing a peer sends can stall the frontend or fill its
memory or its log. Real frontend processes, real ZeroMQ and Unix sockets, hand-made frames.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import requests
import zmq

from schooner.runtime import wire
from schooner.runtime.transport import unix_address

SLO = 2_000_000


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def register(fe, model="m"):
    fe.admin("add_app", {"name": "app", "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": SLO})  # fmt: skip
    fe.admin("add_model", {"model_name": model, "model_version": "1", "labels": [],
                           "input_type": "doubles", "container_name": "c",
                           "model_data_path": "", "batch_size": -1})  # fmt: skip
    fe.admin("add_model_links", {"app_name": "app", "model_names": [model]})


def echo(xs):
    return [str(float(x[0])) for x in xs]


def dealer(port: int) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return ctx, sock


def log_size(fe) -> int:
    return fe.log_path.stat().st_size


def test_a_million_frames_do_not_stall_the_frontend(start_frontend, start_container,
                                                     closure_artifact):  # fmt: skip
    fe = start_frontend(log_level="INFO")
    register(fe)
    start_container(closure_artifact(echo), rpc_port=fe.rpc_port, model_name="m")
    fe.wait_for_replica("m", "1", timeout=30)
    ctx, sock = dealer(fe.rpc_port)
    try:
        sock.send_multipart([b""] + [b"x"] * 1_000_000)  # about 1 MB of payload
        # While the frontend reads that message it keeps answering HTTP (health, queries
        # through the local replica would too); count answers, bound them generously.
        answered, started = 0, time.monotonic()
        while "more than 65536 frames" not in fe.process.log():
            assert requests.get(fe.query_url + "/health", timeout=5).status_code == 200
            answered += 1
            assert time.monotonic() - started < 120, "the oversized message was never dropped"
        elapsed = time.monotonic() - started
        print(f"1M-frame message dropped after {elapsed:.2f} s, {answered} health checks "
              f"answered meanwhile")
        assert answered >= 1
        for i in range(5):
            assert fe.predict("app", {"input": [float(i)]})[1]["output"] == float(i)
        assert fe.process.log().count("more than 65536 frames") == 1
    finally:
        sock.close(0)
        ctx.term()


def test_a_huge_model_name_is_refused_and_not_logged(start_frontend):
    fe = start_frontend(log_level="DEBUG")
    before = log_size(fe.process)
    ctx, sock = dealer(fe.rpc_port)
    try:
        sock.send_multipart([b"", u32(2)])
        assert sock.recv_multipart()[-1] == u32(1)  # send your metadata
        name = b"n" * 100_000_000
        sock.send_multipart([b"", u32(0), name, b"1", b"3", u32(3)])
        fe.process.wait_for_log("model name of 100000000 bytes (at most 255)", timeout=60)
        assert fe.containers() == []
        assert log_size(fe.process) - before < 64 * 1024
    finally:
        sock.close(0)
        ctx.term()


def test_a_frame_over_the_byte_limit_drops_the_connection(start_frontend):
    fe = start_frontend(extra_args=["--rpc-max-message-bytes", "65536"])
    ctx, sock = dealer(fe.rpc_port)
    try:
        sock.send_multipart([b"", u32(2), b"y" * 40_000, b"y" * 40_000])  # 80 KB in all
        fe.process.wait_for_log("more than 65536 bytes", timeout=30)
        sock.send_multipart([b"", u32(0), b"z" * 100_000])  # one frame over: libzmq drops it
        ctx2, ok = dealer(fe.rpc_port)
        ok.send_multipart([b"", u32(2)])
        assert ok.recv_multipart()[-1] == u32(1)  # the frontend serves on
        ok.close(0)
        ctx2.term()
    finally:
        sock.close(0)
        ctx.term()


def test_the_local_socket_refuses_a_declared_giant_before_buffering(start_frontend):
    fe = start_frontend(local_socket=True)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(unix_address(fe.rpc_socket))
    try:
        conn.sendall(struct.pack("<3I", 2, 0, 1_900_000_000))  # only the prefix is sent
        assert conn.recv(4096) == b""  # closed at once, nothing of the body was awaited
    finally:
        conn.close()
    fe.process.wait_for_log("a message of 1900000012 bytes (at most 268435456)", timeout=10)


def test_random_frames_never_break_the_frontend(start_frontend, start_container,
                                                 closure_artifact):  # fmt: skip
    """A bounded fuzz: 400 random messages over ZeroMQ and 200 random byte streams over the
    local socket, then a real replica still serves."""
    fe = start_frontend(local_socket=True, log_level="INFO")
    register(fe)
    rng = random.Random(10)
    ctx, sock = dealer(fe.rpc_port)
    interesting = [b"", u32(0), u32(1), u32(2), u32(3), u32(4), u32(3) + u32(3), b"\xff" * 8,
                   struct.pack("<3Q", 1, 2, 3), b"3", b"m"]  # fmt: skip
    try:
        for _ in range(400):
            frames = [rng.choice(interesting) if rng.random() < 0.6
                      else rng.randbytes(rng.randrange(0, 64))
                      for _ in range(rng.randrange(1, 9))]  # fmt: skip
            sock.send_multipart(frames)
    finally:
        sock.close(0)
        ctx.term()
    for _ in range(200):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(unix_address(fe.rpc_socket))
        frames = [rng.choice(interesting) for _ in range(rng.randrange(1, 7))]
        data = wire.stream_header(frames) + b"".join(frames)
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(1, 64)) + data
        try:
            conn.sendall(data)
        except OSError:
            pass
        conn.close()
    start_container(closure_artifact(echo), rpc_port=fe.rpc_port, model_name="m")
    fe.wait_for_replica("m", "1", timeout=30)
    assert fe.predict("app", {"input": [7.0]})[1]["output"] == 7.0
    assert fe.process.alive
    assert "Traceback" not in fe.process.log()


def test_decoders_raise_only_wire_errors_on_random_frames():
    """Seeded fuzz of the pure decoders (bounded: a few thousand messages)."""
    rng = random.Random(3)
    pieces = [b"", u32(0), u32(1), u32(2), u32(3), u32(4), u32(3) + u32(3),
              struct.pack("<Q", 8), struct.pack("<Q", 24), struct.pack("<2Q", 1, 1),
              struct.pack("<3Q", 3, 1, 8), b"\0" * 8, b"\0" * 32, b"3", b"m" * 300]  # fmt: skip
    for _ in range(5000):
        frames = [rng.choice(pieces) if rng.random() < 0.8 else rng.randbytes(rng.randrange(40))
                  for _ in range(rng.randrange(1, 9))]  # fmt: skip
        for decode in (wire.decode_from_container, wire.decode_from_frontend):
            try:
                decode(frames)
            except wire.WireError:
                pass
        reader = wire.StreamReader(wire.Limits(max_frames=16, max_bytes=4096))
        try:
            reader.feed(rng.randbytes(rng.randrange(1, 128)))
        except wire.WireError:
            pass
        assert reader.buffered <= 4096 + 128

"""The container's own ZMTP 3.0 DEALER (``ZmtpChannel``): golden bytes of what it writes, the
reader fed in every chunking, its limits, and the channel against libzmq's own ROUTER."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest
import zmq

from schooner.runtime import wire
from schooner.runtime.errors import WireError
from schooner.runtime.transport import (
    ChannelClosed,
    ZmtpChannel,
    ZmtpReader,
    zmtp_command,
    zmtp_greeting,
    zmtp_message,
)


def test_greeting_is_zmtp_3_0_null_as_client() -> None:
    g = zmtp_greeting()
    assert len(g) == 64
    assert g[0] == 0xFF and g[9] == 0x7F  # signature
    assert g[10:12] == b"\x03\x00"  # version 3.0
    assert g[12:32] == b"NULL" + bytes(16)  # mechanism
    assert g[32] == 0 and g[33:] == bytes(31)  # as-server 0, filler


def test_ready_command_golden_bytes() -> None:
    ready = zmtp_command(b"READY", [(b"Socket-Type", b"DEALER"), (b"Identity", b"")])
    body = (b"\x05READY" + b"\x0bSocket-Type" + b"\x00\x00\x00\x06DEALER"
            + b"\x08Identity" + b"\x00\x00\x00\x00")  # fmt: skip
    assert ready == bytes((0x04, len(body))) + body


def test_message_golden_bytes_short_and_long_frames() -> None:
    big = b"x" * 300
    pieces = zmtp_message([b"", b"\x01\x00\x00\x00", big])
    assert b"".join(pieces) == (
        b"\x01\x00"  # MORE, empty delimiter
        + b"\x01\x04\x01\x00\x00\x00"  # MORE, 4 bytes
        + b"\x02" + struct.pack(">Q", 300) + big  # LONG, last
    )
    # a memoryview is sized in bytes, not in items
    doubles = memoryview(struct.pack("<4d", 1, 2, 3, 4)).cast("d")
    assert b"".join(zmtp_message([doubles]))[:2] == b"\x00\x20"


def _stream(messages: list[list[bytes]]) -> bytes:
    return b"".join(b"".join(zmtp_message(m)) for m in messages)


SHAPES = [
    [b""],
    [b"", b"\x03\x00\x00\x00", b"\x02\x00\x00\x00"],
    [b"", b"a" * 255, b"b" * 256, b""],
    [b"", b"t" * 70_000],  # a large frame: a view, not a copy
    [b""] + [bytes([i]) * (i * 7) for i in range(64)],
]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 4096, 1 << 20])
def test_reader_cuts_every_message_whatever_the_chunking(chunk: int) -> None:
    data = _stream(SHAPES)
    reader = ZmtpReader()
    got: list[list[bytes]] = []
    for i in range(0, len(data), chunk):
        got += [[bytes(f) for f in m] for m in reader.feed(data[i : i + chunk])]
    assert got == SHAPES
    assert reader.buffered == 0 and not reader.commands


def test_reader_random_chunks_and_frame_types() -> None:
    rng = random.Random(7)
    data = _stream(SHAPES * 3)
    reader = ZmtpReader()
    got = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 5000)
        got += reader.feed(memoryview(data)[pos : pos + n])
        pos += n
    assert [[bytes(f) for f in m] for m in got] == SHAPES * 3
    big = [m for m in got if len(m) == 2 and len(m[1]) == 70_000]
    assert big and all(isinstance(m[1], memoryview) for m in big)
    assert all(isinstance(f, bytes) for m in got for f in m if len(f) < 4096)


def test_reader_collects_commands_between_messages() -> None:
    ping = zmtp_command(b"PING", body=b"\x00\x0acontext")
    data = ping + _stream([[b"", b"x"]]) + ping
    reader = ZmtpReader()
    assert [[bytes(f) for f in m] for m in reader.feed(data)] == [[b"", b"x"]]
    assert [(n, bytes(b)) for n, b in reader.commands] == [(b"PING", b"\x00\x0acontext")] * 2


def test_reader_refuses_a_command_inside_a_message() -> None:
    data = b"\x01\x00" + zmtp_command(b"PING", body=b"\x00\x00")
    with pytest.raises(WireError, match="inside a message"):
        ZmtpReader().feed(data)


def test_reader_limits_frames_per_message() -> None:
    reader = ZmtpReader(wire.Limits(max_frames=8, max_bytes=1 << 20))
    assert len(reader.feed(_stream([[b""] * 8]))) == 1
    with pytest.raises(WireError, match="more than 8 frames"):
        reader.feed(_stream([[b""] * 9]))


def test_reader_limits_bytes_before_the_body_arrives() -> None:
    reader = ZmtpReader(wire.Limits(max_frames=8, max_bytes=4096))
    # a LONG frame header announcing 1 GB: refused at once, nothing buffered for it
    with pytest.raises(WireError, match="more than 4096 bytes"):
        reader.feed(b"\x02" + struct.pack(">Q", 1 << 30) + b"abc")
    reader = ZmtpReader(wire.Limits(max_frames=64, max_bytes=4096))
    with pytest.raises(WireError, match="more than 4096 bytes"):  # the sum of the frames
        reader.feed(_stream([[b"a" * 3000, b"b" * 3000]]))


def test_reader_refuses_a_huge_command_before_its_body_arrives() -> None:
    reader = ZmtpReader(wire.Limits(max_frames=8, max_bytes=1 << 30))
    # COMMAND | LONG announcing 1 TB: refused from its header, nothing buffered for it
    with pytest.raises(WireError, match="ZMTP command of"):
        reader.feed(b"\x06" + struct.pack(">Q", 1 << 40) + b"x" * 1000)


# --------------------------------------------------------------------------- against libzmq


@pytest.fixture
def router():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close(linger=0)
    ctx.term()


def test_channel_talks_to_a_libzmq_router(router) -> None:
    sock, port = router
    channel = ZmtpChannel("127.0.0.1", port, timeout=0.2)
    try:
        big = bytes(range(256)) * 400  # 100 KB
        channel.send([b"", b"\x02\x00\x00\x00"])
        identity, *frames = sock.recv_multipart()
        assert frames == [b"", b"\x02\x00\x00\x00"]
        assert not channel.ready()
        sock.send_multipart([identity, b"", b"hello", big])
        sock.send_multipart([identity, b"", b"second"])
        assert [bytes(f) for f in channel.recv()] == [b"", b"hello", big]
        assert channel.ready()
        assert [bytes(f) for f in channel.recv()] == [b"", b"second"]
        channel.send([b"", big, b"end"])
        assert sock.recv_multipart()[1:] == [b"", big, b"end"]
        with pytest.raises(channel.timeouts):
            channel.recv()  # silence: a timeout, not a lost frontend
    finally:
        channel.close()


def test_channel_sees_a_lost_frontend(router) -> None:
    sock, port = router
    channel = ZmtpChannel("127.0.0.1", port, timeout=2)
    channel.send([b"", b"x"])
    sock.recv_multipart()
    sock.close(linger=0)
    with pytest.raises(ChannelClosed):
        channel.recv()
    channel.close()


def test_nothing_listening_is_channel_closed() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ChannelClosed, match="cannot connect"):
        ZmtpChannel("127.0.0.1", port, timeout=0.1)


def _fake_frontend(greeting: bytes, then: bytes = b"", keep: list | None = None):
    """A TCP server that sends ``greeting`` (and ``then``) and records what it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(greeting + then)
        conn.settimeout(2)
        try:
            while chunk := conn.recv(65536):
                received.extend(chunk)
        except OSError:
            pass
        conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], received, thread


def test_a_peer_that_is_not_zmtp_is_refused() -> None:
    port, _, _ = _fake_frontend(b"HTTP/1.1 200 OK\r\n" + bytes(64))
    with pytest.raises(ChannelClosed, match="signature"):
        ZmtpChannel("127.0.0.1", port, timeout=0.5)


def test_a_peer_asking_for_curve_is_refused() -> None:
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"CURVE".ljust(20, b"\0") + bytes(32)
    port, _, _ = _fake_frontend(greeting)
    with pytest.raises(ChannelClosed, match="mechanism"):
        ZmtpChannel("127.0.0.1", port, timeout=0.5)


def test_a_pub_socket_is_refused() -> None:
    ready = zmtp_command(b"READY", [(b"Socket-Type", b"PUB")])
    port, _, _ = _fake_frontend(zmtp_greeting(), ready)
    with pytest.raises(ChannelClosed, match="PUB"):
        ZmtpChannel("127.0.0.1", port, timeout=0.5)


def test_ping_is_answered_with_pong() -> None:
    ready = zmtp_command(b"READY", [(b"Socket-Type", b"ROUTER")])
    ping = zmtp_command(b"PING", body=b"\x00\x0a" + b"ctx")
    message = b"".join(zmtp_message([b"", b"after the ping"]))
    port, received, thread = _fake_frontend(zmtp_greeting(), ready + ping + message)
    channel = ZmtpChannel("127.0.0.1", port, timeout=0.5)
    assert [bytes(f) for f in channel.recv()] == [b"", b"after the ping"]
    channel.close()
    thread.join(timeout=5)
    pong = zmtp_command(b"PONG", body=b"ctx")
    data = bytes(received)
    assert data.startswith(zmtp_greeting()) and data.endswith(pong)


def test_a_large_last_frame_past_the_frame_limit_closes_the_channel() -> None:
    """The limit is checked when the message's last frame, received in place, completes:
    the channel says ChannelClosed (the loop starts a new session), as for any broken
    stream, not a WireError that would end the loop."""
    ready = zmtp_command(b"READY", [(b"Socket-Type", b"ROUTER")])
    message = b"".join(zmtp_message([b"x"] * 8 + [bytes(256 * 1024)]))  # 9 frames, limit 8
    port, _, _ = _fake_frontend(zmtp_greeting(), ready + message)
    channel = ZmtpChannel("127.0.0.1", port, timeout=2.0, limits=wire.Limits(max_frames=8, max_bytes=1 << 20))
    with pytest.raises(ChannelClosed, match="more than 8 frames"):
        channel.recv()
    channel.close()


def test_a_large_frame_still_arriving_is_received_in_place() -> None:
    big = bytes(range(256)) * 1000  # 256 KB
    data = _stream([[b"", big], [b"", b"next"]])
    reader = ZmtpReader()
    assert reader.feed(data[:1000]) == [] and reader.body_target() is not None
    target = reader.body_target()
    rest = data[1000:]
    body_left = len(target)
    target[:] = rest[:body_left]  # as socket.recv_into would
    (message,) = reader.body_received(body_left)
    assert [bytes(f) for f in message] == [b"", big] and reader.body_target() is None
    assert [[bytes(f) for f in m] for m in reader.feed(rest[body_left:])] == [[b"", b"next"]]
    assert reader.buffered == 0


def test_a_frontend_that_reads_nothing_fails_the_send_after_the_send_timeout() -> None:
    """Connected, handshaken, then never reading: the send gives up (ChannelClosed) instead
    of blocking the container's loop forever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    ready = zmtp_command(b"READY", [(b"Socket-Type", b"ROUTER")])
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.sendall(zmtp_greeting() + ready)
        held.append(conn)  # kept open, never read

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    channel = ZmtpChannel("127.0.0.1", server.getsockname()[1], timeout=0.5, send_timeout=0.3)
    thread.join(timeout=5)
    try:
        with pytest.raises(ChannelClosed):
            for _ in range(10_000):  # far more than the kernel buffers hold
                channel.send([b"", b"x" * 65536])
    finally:
        channel.close()
        for conn in held:
            conn.close()
        server.close()


def test_large_frames_that_ready_reads_arrive_whole() -> None:
    """Several large messages behind the first: ``ready`` receives the rest of a large frame
    in place (as ``recv`` does) and every message comes out whole, in order."""
    messages = [[b"", bytes([i]) * 300_000, b"tail%d" % i] for i in range(5)] + [[b"", b"end"]]
    ready_cmd = zmtp_command(b"READY", [(b"Socket-Type", b"ROUTER")])
    port, _, thread = _fake_frontend(zmtp_greeting(), ready_cmd + _stream(messages))
    channel = ZmtpChannel("127.0.0.1", port, timeout=2)
    try:
        got = [channel.recv()]
        while len(got) < len(messages):
            channel.ready()  # takes what has arrived (all of it, most runs)
            got.append(channel.recv())
        assert [[bytes(f) for f in m] for m in got] == messages
        assert not channel.ready()
    finally:
        channel.close()
        thread.join(timeout=5)

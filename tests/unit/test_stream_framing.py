"""The stream framing of Schooner's local transport (``wire.stream_header``, ``StreamReader``).

Expected prefixes are written by hand from the wire module's docstring:
``u32 n | u32 len_0 .. len_{n-1}``, little endian, then the frames.
"""

from __future__ import annotations

import random

import pytest

from schooner.runtime import wire
from schooner.runtime.errors import WireError


def as_bytes(messages):
    return [[bytes(f) for f in m] for m in messages]


def test_header_golden_bytes():
    frames = [b"", b"\x02\x00\x00\x00", b"abc"]
    assert wire.stream_header(frames) == (
        b"\x03\x00\x00\x00" + b"\x00\x00\x00\x00" + b"\x04\x00\x00\x00" + b"\x03\x00\x00\x00"
    )
    view = memoryview(bytearray(10)).cast("B")[2:8]
    assert wire.stream_header([view]) == b"\x01\x00\x00\x00\x06\x00\x00\x00"


def test_one_chunk_with_several_messages_and_empty_frames():
    a = [b"", b"\x02\x00\x00\x00"]
    b = [b"", b"x" * 1000, b"", b"yz"]
    data = wire.stream_header(a) + b"".join(a) + wire.stream_header(b) + b"".join(b)
    reader = wire.StreamReader()
    assert as_bytes(reader.feed(data)) == [a, b]
    assert reader.buffered == 0


def test_messages_survive_any_split_of_the_stream():
    rng = random.Random(7)
    messages = [[bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
                 for _ in range(rng.randrange(1, 6))] for _ in range(200)]  # fmt: skip
    stream = b"".join(wire.stream_header(m) + b"".join(m) for m in messages)
    reader = wire.StreamReader()
    got, pos = [], 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 7, 50, 500])
        got += as_bytes(reader.feed(stream[pos : pos + step]))
        pos += step
    assert got == messages
    assert reader.buffered == 0


def test_a_partial_message_waits_for_the_rest():
    frames = [b"", b"hello"]
    data = wire.stream_header(frames) + b"".join(frames)
    reader = wire.StreamReader()
    assert reader.feed(data[:-1]) == []
    assert reader.buffered == len(data) - 1
    assert as_bytes(reader.feed(data[-1:])) == [frames]


def test_a_large_message_in_many_small_chunks():
    frames = [b"", bytes(range(256)) * 4096, b"tail"]  # a 1 MiB frame
    data = wire.stream_header(frames) + b"".join(frames)
    reader = wire.StreamReader()
    got = []
    for pos in range(0, len(data), 1000):
        got += as_bytes(reader.feed(data[pos : pos + 1000]))
        if pos + 1000 < len(data):
            assert got == [] and reader.buffered == pos + 1000
    assert got == [frames] and reader.buffered == 0


def test_a_prefix_out_of_step_is_an_error():
    with pytest.raises(WireError, match="frames"):
        wire.StreamReader().feed(b"\xff\xff\xff\xff")
    with pytest.raises(WireError, match="bytes"):
        wire.StreamReader().feed(b"\x02\x00\x00\x00" + b"\xff\xff\xff\xff" * 2)


def test_round_trip_of_a_real_request():
    frames = wire.encode_packed_request(9, wire.InputType.DOUBLES, [8, 8], b"\x00" * 16)
    data = wire.stream_header(frames) + b"".join(frames)
    (got,) = wire.StreamReader().feed(data)
    request = wire.decode_from_frontend(got)
    assert bytes(request.msg_id) == b"\x09\x00\x00\x00"
    assert request.sizes == (8, 8)


def test_the_local_channel_hands_out_messages_that_later_reads_leave_alone(tmp_path):
    # SocketChannel's frames are views of what it read: every message must still hold its
    # own bytes after later reads (should the channel ever read into a buffer it reuses,
    # this fails), a message larger than one read (1 MB) must arrive whole, and so must
    # two sent in one write.
    import socket
    import threading

    from schooner.runtime.transport import SocketChannel

    path = str(tmp_path / "rpc.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    channel = SocketChannel(path, timeout=5.0)
    peer, _ = server.accept()
    try:
        def message(tag: bytes, size: int) -> list[bytes]:
            return [b"", tag, bytes(range(256)) * (size // 256) + tag * (size % 256)]

        first, second, third = message(b"a", 300), message(b"b", 3 << 20), message(b"c", 40)
        peer.sendall(wire.stream_bytes(first))
        got_first = channel.recv()
        assert not channel.ready()  # nothing more yet
        sender = threading.Thread(
            target=peer.sendall, args=(wire.stream_bytes(second) + wire.stream_bytes(third),))
        sender.start()
        got_second = channel.recv()  # 3 MB: several reads of the channel's 1 MB buffer
        got_third = channel.recv()
        sender.join()
        assert [bytes(f) for f in got_first] == first
        assert [bytes(f) for f in got_second] == second
        assert [bytes(f) for f in got_third] == third
    finally:
        channel.close()
        peer.close()
        server.close()

"""A driver that is a ZeroMQ ROUTER on the wire and costs next to nothing per frame.

The hot path's plain-path rows measure a container that takes a frame per input (batch 64:
70 frames a request). Driven through pyzmq, the driver spends more per request than the
container it measures (a Python call per frame, and libzmq's I/O thread, on the load core),
so the rows said how fast the driver was. ``RawRouter`` speaks ZMTP 3.0 itself over one TCP
connection, as a ROUTER bound on 127.0.0.1 (NULL mechanism, one peer): the handshake and
the first exchanges go through Schooner's ZMTP code (``schooner.runtime.transport``), and
``drive`` sends each request as one pre-encoded byte string and recognises each answer by
its bytes (every request is the same, so every answer is), with a heartbeat from the peer
skipped. Any other byte from the peer stops the run with an error.

For the harness it looks like the pyzmq ROUTER it replaces: ``poll``, ``recv_multipart``
(the peer's routing identity first) and ``send_multipart`` (which ignores that identity:
there is one peer).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Sequence

from schooner.runtime import wire
from schooner.runtime.transport import (
    _GREETING_BYTES,
    _RECV_CHUNK,
    ZmtpChannel,
    ZmtpReader,
    _parse_greeting,
    _properties,
    zmtp_command,
    zmtp_greeting,
    zmtp_message,
)

__all__ = ["RawRouter", "IDENTITY"]

IDENTITY = b"peer"  # what recv_multipart gives as the routing identity


class RawRouter:
    """A ROUTER's side of ZMTP 3.0 for one peer that connects to ``port``."""

    def __init__(self, host: str = "127.0.0.1", timeout_s: float = 30.0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(1)
        self.port: int = self._listener.getsockname()[1]
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._reader = ZmtpReader()
        self._messages: list[list[bytes]] = []

    # ----------------------------------------------------------------- pyzmq's surface

    def poll(self, timeout_ms: int) -> bool:
        """Whether a message is there within ``timeout_ms`` (accepting the peer first)."""
        deadline = time.monotonic() + timeout_ms / 1000
        if self._sock is None:
            ready, _, _ = select.select([self._listener], [], [], timeout_ms / 1000)
            if not ready:
                return False
            self._accept()
        while not self._messages:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._connection()], [], [], left)[0]:
                return False
            self._read()
        return True

    def recv_multipart(self) -> list[bytes]:
        if not self.poll(int(self._timeout * 1000)):
            raise TimeoutError(f"no message from the peer within {self._timeout:g} s")
        return [IDENTITY, *self._messages.pop(0)]

    def send_multipart(self, frames: Sequence[bytes]) -> None:
        self._connection().sendall(b"".join(zmtp_message(list(frames[1:]))))

    def close(self, linger: int = 0) -> None:
        for sock in (self._sock, self._listener):
            if sock is not None:
                sock.close()
        self._sock = None

    # ----------------------------------------------------------------- the driver

    def drive(self, frames: Sequence[bytes], inflight: int, count: int) -> float:
        """Send ``count`` copies of the request ``frames`` keeping ``inflight`` outstanding;
        return the elapsed seconds. The first answer (outside the timing) gives the bytes
        every answer must have."""
        sock = self._connection()
        request = b"".join(zmtp_message(list(frames)))
        sock.sendall(request)
        answer_frames = self.recv_multipart()[1:]
        if self._messages or self._reader.buffered:
            raise RuntimeError("the peer sent more than one answer to one request")
        answer = b"".join(zmtp_message(answer_frames))
        heartbeat = b"".join(zmtp_message(wire.encode_heartbeat()))
        recv, sendall, startswith = sock.recv, sock.sendall, bytes.startswith
        size, beat = len(answer), len(heartbeat)
        start = time.perf_counter()
        sent = min(inflight, count)
        sendall(request * sent)
        done, rest = 0, b""
        while done < count:
            data = recv(_RECV_CHUNK)
            if not data:
                raise ConnectionError("the peer closed the connection while driven")
            if rest:
                data = rest + data
            pos, end, answered = 0, len(data), 0
            while pos < end:
                if startswith(data, answer, pos):
                    pos += size
                    answered += 1
                elif startswith(data, heartbeat, pos):
                    pos += beat
                elif end - pos < size and (startswith(answer, data[pos:])
                                           or startswith(heartbeat, data[pos:])):  # fmt: skip
                    break  # the start of one still arriving
                else:
                    raise RuntimeError(f"unexpected bytes from the peer: "
                                       f"{wire.excerpt(data[pos : pos + 64])}")  # fmt: skip
            rest = data[pos:]
            done += answered
            more = min(answered, count - sent)
            if more:
                sendall(request * more)
                sent += more
        return time.perf_counter() - start

    # ----------------------------------------------------------------- the handshake

    def _connection(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("no peer has connected")
        return self._sock

    def _accept(self) -> None:
        self._listener.settimeout(self._timeout)
        sock, _ = self._listener.accept()
        sock.settimeout(self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(zmtp_greeting())
        _parse_greeting(ZmtpChannel._read_exactly(sock, _GREETING_BYTES))
        sock.sendall(zmtp_command(b"READY", [(b"Socket-Type", b"ROUTER")]))
        self._sock = sock
        while not self._reader.commands:
            self._read(handshake=True)
        name, body = self._reader.commands.pop(0)
        peer = _properties(body).get(b"socket-type", b"") if name == b"READY" else b""
        if peer not in (b"DEALER", b"REQ"):
            raise wire.WireError(f"expected a DEALER's READY, got {wire.excerpt(name)} "
                                 f"({wire.excerpt(peer)})")  # fmt: skip

    def _read(self, handshake: bool = False) -> None:
        data = self._connection().recv(_RECV_CHUNK)
        if not data:
            raise ConnectionError("the peer closed the connection")
        for message in self._reader.feed(data):
            self._messages.append([bytes(f) for f in message])
        if not handshake:
            self._reader.commands.clear()  # PINGs: nobody here asked for ZMTP heartbeats

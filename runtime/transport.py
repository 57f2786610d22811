"""The two ways a container reaches its frontend: a ZeroMQ DEALER, or a local Unix socket.

Both carry the same RPC v3 messages (``schooner.runtime.wire``) and look the same to the
container's loop: ``recv()`` blocks for the next message and raises one of the channel's
``timeouts`` after ``timeout`` seconds of silence, ``ready()`` is true (non-zero) when
another message can be had without waiting, ``send(frames)`` writes one message. Neither is
safe to use from two threads at once; the loop lends its channel to the heartbeat thread
through a lock. On the ZeroMQ channel the three are pyzmq's own bound methods (no Python
frame of ours between the loop and libzmq: the hot path stays as short as a raw echo's).

* ``ZmqChannel`` (``tcp://host:port``): Clipper's transport, the one every Clipper
  frontend speaks. ZeroMQ reconnects by itself, so a lost frontend only shows as silence.
* ``SocketChannel`` (``SCHOONER_RPC_SOCKET``): a frontend on the same machine. A plain
  stream socket has no I/O threads between the two processes, so a request costs one
  write and one wake-up on each side instead of three hand-overs; messages are delimited
  by ``wire``'s stream framing. A lost frontend is seen at once (end of stream): ``recv``
  raises ``ChannelClosed`` and the loop opens a new session.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import zmq

from schooner.runtime import wire
from schooner.runtime.errors import ConfigError

__all__ = ["Channel", "ChannelClosed", "ZmqChannel", "SocketChannel", "unix_address"]

_RECV_CHUNK = 1 << 20
# connect() errors that mean "no frontend listens there yet (or any more)": retried
_NOT_LISTENING = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})


class ChannelClosed(ConnectionError):
    """The frontend closed the connection (or it broke): start a new session."""


class Channel(Protocol):
    timeouts: tuple[type[BaseException], ...]

    def recv(self) -> list[Any]: ...

    def ready(self) -> int: ...

    def send(self, frames: Sequence[wire.Buffer]) -> Any: ...

    def close(self) -> None: ...


def unix_address(path: str) -> str | bytes:
    """A Unix socket address: ``@name`` is Linux's abstract namespace (no file), else a path."""
    return b"\0" + path[1:].encode() if path.startswith("@") else path


class ZmqChannel:
    """A DEALER connected to ``address``. ``copy=False`` receives zero-copy buffers."""

    timeouts: tuple[type[BaseException], ...] = (zmq.Again,)

    def __init__(
        self,
        context: zmq.Context[Any],
        address: str,
        timeout: float,
        copy: bool,
        limits: wire.Limits | None = None,
    ):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # libzmq drops the connection on a frame larger than a message may be (it reconnects).
        sock.setsockopt(zmq.MAXMSGSIZE, (limits or wire.Limits()).max_bytes)
        # Block in recv (one wake-up per message), but never longer than ``timeout``, so a
        # stop request or a due heartbeat is noticed promptly.
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout * 1000)))
        sock.connect(address)
        self._sock = sock
        self.recv = partial(sock.recv_multipart, copy=True) if copy else self._recv_buffers
        self.ready = partial(sock.get, zmq.EVENTS)  # POLLIN (1) set: a message is waiting
        self.send = partial(sock.send_multipart, copy=False)

    def _recv_buffers(self) -> list[Any]:
        return [f.buffer for f in self._sock.recv_multipart(copy=False)]

    def close(self) -> None:
        self._sock.close(linger=0)


class SocketChannel:
    """A connected Unix stream socket to the frontend's local RPC endpoint.

    Raises ``ChannelClosed`` from the constructor when nothing listens at ``path`` yet,
    and from ``recv``/``send`` when the frontend goes away.
    """

    timeouts: tuple[type[BaseException], ...] = (BlockingIOError, TimeoutError)

    def __init__(self, path: str, timeout: float, limits: wire.Limits | None = None):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(unix_address(path))
        except OSError as exc:
            sock.close()
            if exc.errno in _NOT_LISTENING:
                raise ChannelClosed(f"cannot connect to {path}: {exc}") from None
            raise ConfigError([  # no permission, not a socket, ...: retrying cannot help
                f"SCHOONER_RPC_SOCKET={path}: cannot connect ({exc.strerror or exc})"
            ]) from None
        # Blocking, with a kernel receive timeout: one system call per recv (a Python-level
        # timeout would poll before every recv).
        seconds = max(timeout, 0.001)
        timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self._sock = sock
        self._reader = wire.StreamReader(limits)
        self._messages: list[list[memoryview]] = []
        self._next = 0

    def recv(self) -> list[Any]:
        if self._next < len(self._messages):
            return self._take()
        while True:
            try:
                data = self._sock.recv(_RECV_CHUNK)
            except self.timeouts:  # OSErrors too, but a timeout is not a lost frontend
                raise
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not data:
                raise ChannelClosed("the frontend closed the connection")
            if self._fill(data):
                return self._take()

    def ready(self) -> int:
        if self._next < len(self._messages):
            return True
        # Whatever has arrived meanwhile, without blocking.
        while True:
            try:
                data = self._sock.recv(_RECV_CHUNK, socket.MSG_DONTWAIT)
            except OSError:
                return False  # nothing waiting (or a broken socket: the next recv says so)
            if not data:
                return False
            if self._fill(data):
                return True
        return False

    def send(self, frames: Sequence[wire.Buffer]) -> None:
        try:
            self._sock.sendall(b"".join([wire.stream_header(frames), *frames]))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None

    def close(self) -> None:
        self._sock.close()

    def _fill(self, data: bytes) -> bool:
        try:
            messages = self._reader.feed(data)
        except wire.WireError as exc:
            raise ChannelClosed(f"the stream from the frontend is out of step: {exc}") from None
        if messages:
            self._messages = messages
            self._next = 0
            return True
        return False

    def _take(self) -> list[memoryview]:
        message = self._messages[self._next]
        self._next += 1
        return message

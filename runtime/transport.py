"""The two ways a container reaches its frontend: a ZeroMQ DEALER, or a local Unix socket.

Both carry the same RPC v3 messages (``schooner.runtime.wire``) and look the same to the
container's loop: ``recv()`` blocks for the next message and raises one of the channel's
``timeouts`` after ``timeout`` seconds of silence, ``ready()`` is true (non-zero) when
another message can be had without waiting, ``send(frames)`` writes one message. Neither is
safe to use from two threads at once; the loop lends its channel to the heartbeat thread
through a lock.

* ``ZmtpChannel`` (``tcp://host:port``, the default): Clipper's transport, the one every
  Clipper frontend speaks, spoken directly: a blocking TCP socket that talks ZMTP 3.0 (the
  ZeroMQ wire protocol, NULL mechanism, as a DEALER) to the frontend's ROUTER. libzmq's I/O
  thread sits between a ZeroMQ socket and the network: two thread hand-overs and a wake-up
  per message, and a queue operation per frame, which on the plain v3 path (a frame per input
  and per output) cost more than the container's own work. Here a message is one ``recv``
  (often several messages) and one ``send``; frames are cut out of the received bytes as
  views. Where the optional C extension is built (runtime/_wirefast.c), complete small frames
  are cut, and a message framed for sending, in one C call each: the same frames and bytes.
  A lost frontend is seen at once: ``ChannelClosed``, and the loop opens a new session (as
  ``SocketChannel`` does), where ZeroMQ would have reconnected quietly.
With ``busy_poll`` (``SCHOONER_BUSY_POLL_US``), ``recv`` first checks the socket for up to that
long, yielding the CPU between checks, before it sleeps in the kernel: a request that comes
within the window is read without the wake-up of an idle CPU (tens of microseconds on a
virtual machine whose idle CPUs halt: on this team's, a round trip at one request in flight
went from 9-10k to 13-16k a second), for at most that much CPU per idle gap. Off by default.

* ``SocketChannel`` (``SCHOONER_RPC_SOCKET``): a frontend on the same machine. A plain
  stream socket has no I/O threads between the two processes, so a request costs one
  write and one wake-up on each side instead of three hand-overs; messages are delimited
  by ``wire``'s stream framing. A lost frontend is seen at once (end of stream): ``recv``
  raises ``ChannelClosed`` and the loop opens a new session.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from schooner.runtime import wire
from schooner.runtime.errors import ConfigError

try:  # the optional C shortcut (runtime/_wirefast.c): the same results where it answers
    from schooner.runtime._wirefast import zmtp_cut as _zmtp_cut
    from schooner.runtime._wirefast import zmtp_join as _zmtp_join
except ImportError:
    _zmtp_cut = _zmtp_join = None

__all__ = [
    "Channel", "ChannelClosed", "ZmtpChannel", "SocketChannel", "ZmtpReader",
    "zmtp_greeting", "zmtp_command", "zmtp_message", "zmtp_bytes", "unix_address",
]  # fmt: skip

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


def _kernel_timeouts(sock: socket.socket, recv_s: float, send_s: float) -> None:
    """A blocking socket with kernel timeouts: a recv waits at most ``recv_s`` (one system
    call per recv; a Python-level timeout would poll before each), and a send to a frontend
    that stays connected but reads nothing (stopped, wedged) fails after ``send_s`` instead
    of holding the loop and the socket's lock forever: the stream is then out of step, and
    the loop opens a new session (ChannelClosed)."""
    for option, seconds in ((socket.SO_RCVTIMEO, recv_s), (socket.SO_SNDTIMEO, send_s)):
        seconds = max(seconds, 0.001)
        timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, option, timeval)


def _busy_poll(poll: Callable[[int], list[Any]], seconds: float) -> None:
    """Check for bytes to read, yielding the CPU between checks, until some arrive or
    ``seconds`` have passed."""
    deadline = time.perf_counter() + seconds
    while not poll(0):
        if time.perf_counter() >= deadline:
            return
        os.sched_yield()


class SocketChannel:
    """A connected Unix stream socket to the frontend's local RPC endpoint.

    Raises ``ChannelClosed`` from the constructor when nothing listens at ``path`` yet,
    and from ``recv``/``send`` when the frontend goes away.
    """

    timeouts: tuple[type[BaseException], ...] = (BlockingIOError, TimeoutError)

    def __init__(self, path: str, timeout: float, limits: wire.Limits | None = None,
                 send_timeout: float = 30.0, busy_poll: float = 0.0):  # fmt: skip
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
        _kernel_timeouts(sock, timeout, send_timeout)
        self._sock = sock
        self._reader = wire.StreamReader(limits)
        self._messages: list[list[memoryview]] = []
        self._next = 0
        self._drained = False  # the last read took everything the socket held
        self._busy_poll = busy_poll
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        self._poll = poller.poll

    def recv(self) -> list[Any]:
        if self._next < len(self._messages):
            return self._take()
        if self._busy_poll:
            _busy_poll(self._poll, self._busy_poll)
        while True:
            try:
                data = self._sock.recv(_RECV_CHUNK)
            except self.timeouts:  # OSErrors too, but a timeout is not a lost frontend
                raise
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not data:
                raise ChannelClosed("the frontend closed the connection")
            self._drained = len(data) < _RECV_CHUNK
            if self._fill(data):
                return self._take()

    def ready(self) -> int:
        if self._next < len(self._messages):
            return True
        if self._drained:  # nothing was left a moment ago: no system call to ask again
            return False
        # Whatever has arrived meanwhile, without blocking.
        while True:
            try:
                data = self._sock.recv(_RECV_CHUNK, socket.MSG_DONTWAIT)
            except OSError:
                return False  # nothing waiting (or a broken socket: the next recv says so)
            if not data:
                return False
            self._drained = len(data) < _RECV_CHUNK
            if self._fill(data):
                return True
            if self._drained:
                return False

    def send(self, frames: Sequence[wire.Buffer]) -> None:
        try:
            self._sock.sendall(wire.stream_bytes(frames))
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


# --------------------------------------------------------------------------- ZMTP 3.0
#
# What a ZeroMQ DEALER says on a TCP connection (ZMTP 3.0, rfc.zeromq.org/spec/23, NULL
# mechanism): a 64-byte greeting each way, one READY command each way (the socket type and
# identity as properties), then frames. A frame is one flags byte (MORE 1, LONG 2, COMMAND 4)
# and its size (one byte, or 8 bytes big-endian with LONG), then the body; a message is its
# frames up to the first without MORE.

_ZMTP_MORE, _ZMTP_LONG, _ZMTP_COMMAND = 1, 2, 4
_GREETING_BYTES = 64
_U64BE = struct.Struct(">Q")
_U32BE = struct.Struct(">I")
# One header per short frame size: flags byte (MORE or not) and size byte.
_SHORT_MORE = [bytes((_ZMTP_MORE, n)) for n in range(256)]
_SHORT_LAST = [bytes((0, n)) for n in range(256)]
_LONG_MORE = bytes((_ZMTP_LONG | _ZMTP_MORE,))
_LONG_LAST = bytes((_ZMTP_LONG,))
_COPY_BELOW = 4096  # received frames smaller than this are bytes, larger ones views
_MAX_COMMAND = 1 << 16
_IN_PLACE = 64 * 1024  # a frame at least this large that is still arriving is received in place


def zmtp_greeting() -> bytes:
    """Our greeting: signature, version 3.0, mechanism NULL, as-server 0, filler."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


def zmtp_command(name: bytes, properties: Sequence[tuple[bytes, bytes]] = (),
                 body: bytes = b"") -> bytes:  # fmt: skip
    """One command frame: ``name`` (with READY-style properties, or a raw ``body``)."""
    data = bytes((len(name),)) + name + body + b"".join(
        bytes((len(k),)) + k + _U32BE.pack(len(v)) + v for k, v in properties
    )
    if len(data) < 256:
        return bytes((_ZMTP_COMMAND, len(data))) + data
    return bytes((_ZMTP_COMMAND | _ZMTP_LONG,)) + _U64BE.pack(len(data)) + data


def zmtp_message(frames: Sequence[wire.Buffer]) -> list[wire.Buffer]:
    """The pieces to write for one message: each frame's header, then the frame itself."""
    out: list[wire.Buffer] = []
    append = out.append
    n = 0
    for frame in frames:
        n = frame.nbytes if type(frame) is memoryview else len(frame)
        append(_SHORT_MORE[n] if n < 256 else _LONG_MORE + _U64BE.pack(n))
        append(frame)
    if out:  # the last frame's header says no more
        out[-2] = _SHORT_LAST[n] if n < 256 else _LONG_LAST + _U64BE.pack(n)
    return out


def zmtp_bytes(frames: Sequence[wire.Buffer]) -> bytes:
    """One message as the bytes to write: ``b"".join(zmtp_message(frames))``."""
    return b"".join(zmtp_message(frames))


if _zmtp_join is not None:
    zmtp_bytes = _zmtp_join  # noqa: F811 (the same bytes, in one C call)


def _parse_greeting(data: bytes) -> None:
    if data[0] != 0xFF or data[9] != 0x7F:
        raise wire.WireError("the peer does not speak ZMTP (bad greeting signature)")
    if data[10] < 3:
        raise wire.WireError(f"the peer speaks ZMTP {data[10]}.{data[11]}; 3.0 or later is needed")
    mechanism = data[12:32].rstrip(b"\0")
    if mechanism != b"NULL":
        raise wire.WireError(f"the peer asks for the {wire.excerpt(mechanism)} mechanism; only NULL is spoken")


def _command(body: memoryview) -> tuple[bytes, memoryview]:
    """A command frame's name and the rest of its body."""
    if len(body) < 1 or len(body) < 1 + body[0]:
        raise wire.WireError("a ZMTP command frame shorter than its name")
    return bytes(body[1 : 1 + body[0]]), body[1 + body[0] :]


def _properties(data: memoryview) -> dict[bytes, bytes]:
    props: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        k = data[pos]
        if pos + 1 + k + 4 > end:
            raise wire.WireError("a ZMTP READY property runs past its frame")
        name = bytes(data[pos + 1 : pos + 1 + k])
        (v,) = _U32BE.unpack_from(data, pos + 1 + k)
        start = pos + 1 + k + 4
        if start + v > end:
            raise wire.WireError("a ZMTP READY property value runs past its frame")
        props[name.lower()] = bytes(data[start : start + v])
        pos = start + v
    return props


def _too_big(frames: int, size: int, max_frames: int, max_bytes: int) -> str:
    if frames > max_frames:
        return f"a message of more than {max_frames} frames"
    return f"a message of more than {max_bytes} bytes"


class ZmtpReader:
    """Cuts a ZMTP byte stream (after the greeting) into messages and commands.

    ``feed`` takes whatever the socket returned and gives back every message completed by it,
    each a list of frames (frames under 4 KB as bytes, larger ones as zero-copy views of the
    received bytes), and every command frame (name, body) in ``commands``. The frames of a
    message still arriving are kept as they complete, and only a partial frame is buffered
    (and appended to, until it is whole), so a large message costs one pass, not one per
    chunk. A message of more frames, or more bytes, than ``limits`` allow raises WireError as
    soon as a frame header says so (a large frame), or at the latest once the chunk that
    carries them is read (small frames); the connection must then be closed (libzmq's
    ``MAXMSGSIZE`` does the same).
    """

    __slots__ = ("_buf", "_need", "_frames", "_total", "_max_frames", "_max_bytes", "commands",
                 "_body", "_filled", "_body_flags")  # fmt: skip

    def __init__(self, limits: wire.Limits | None = None) -> None:
        self._buf = bytearray()  # the start of a frame (or frame header) not yet complete
        self._need = 0  # bytes _buf must hold before that frame can be cut
        # A large data frame still arriving: its body, allocated once at its full size and
        # filled in place (by ``feed`` or, through ``body_target``, by the socket itself).
        self._body: memoryview | None = None
        self._filled = 0
        self._body_flags = 0
        self._frames: list[wire.Buffer] = []  # the complete frames of the message arriving
        self._total = 0  # their bytes
        limits = limits or wire.Limits()
        self._max_frames, self._max_bytes = limits.max_frames, limits.max_bytes
        self.commands: list[tuple[bytes, memoryview]] = []

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as (part of) a message."""
        return len(self._buf) + self._total + self._filled

    def body_target(self) -> memoryview | None:
        """Where the rest of a large frame's body goes, to receive it in place; None when no
        large frame is arriving. Report what was written there with ``body_received``."""
        return None if self._body is None else self._body[self._filled :]

    def body_received(self, n: int) -> list[list[wire.Buffer]]:
        """``n`` more bytes were written at ``body_target()``; the messages that completes."""
        self._filled += n
        return self.feed(b"") if self._body is not None and self._filled >= len(self._body) else []

    def _large_frame(self, data: wire.Buffer) -> tuple[list[list[wire.Buffer]], int]:
        """Fill the large frame arriving from ``data``; the message it completed (if it did)
        and how many bytes of ``data`` it took."""
        body = self._body
        assert body is not None
        take = min(len(body) - self._filled, len(data))
        body[self._filled : self._filled + take] = data[:take]
        self._filled += take
        if self._filled < len(body):
            return [], take
        self._body, self._filled = None, 0
        self._frames.append(body)
        self._total += len(body)
        if self._body_flags & _ZMTP_MORE:
            return [], take
        if len(self._frames) > self._max_frames:
            raise wire.WireError(f"a message of more than {self._max_frames} frames")
        frames, self._frames, self._total = self._frames, [], 0
        return [frames], take

    def feed(self, data: wire.Buffer) -> list[list[wire.Buffer]]:
        """Every message ``data`` completes, in order."""
        if self._body is not None:
            done, take = self._large_frame(data)
            if self._body is not None or take == len(data):
                return done
            return done + self.feed(memoryview(data)[take:])
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
        elif type(data) is not bytes:
            data = bytes(data)
        out: list[list[wire.Buffer]] = []
        end = len(data)
        pos = 0
        frames, total = self._frames, self._total
        max_frames, max_bytes = self._max_frames, self._max_bytes
        need = 0
        cut = _zmtp_cut
        while True:
            if cut is not None:  # complete small data frames in one C call
                pos, frames, total = cut(data, pos, frames, total, out, max_frames, max_bytes)
            if end - pos < 2:
                need = pos + 2
                break
            flags = data[pos]
            if flags & _ZMTP_LONG:
                if end - pos < 9:
                    need = pos + 9
                    break
                (size,) = _U64BE.unpack_from(data, pos + 1)
                at = pos + 9
                # refused before waiting for a body that may never fit
                if flags & _ZMTP_COMMAND:
                    if size > _MAX_COMMAND:
                        raise wire.WireError(f"a ZMTP command of {size} bytes")
                elif total + size > max_bytes:
                    raise wire.WireError(f"a message of more than {max_bytes} bytes")
            else:
                size = data[pos + 1]
                at = pos + 2
            nxt = at + size
            if nxt > end:
                if size >= _IN_PLACE and not flags & _ZMTP_COMMAND:
                    # A large frame still arriving: its body gets a buffer of its own, filled
                    # in place from here on (no growing buffer, no copy when it completes).
                    self._frames, self._total = frames, total
                    self._body, self._body_flags = memoryview(bytearray(size)), flags
                    self._buf, self._need = bytearray(), 0
                    done, _ = self._large_frame(memoryview(data)[at:])
                    return out + done
                need = nxt
                break
            if flags & _ZMTP_COMMAND:
                if frames:
                    raise wire.WireError("a ZMTP command inside a message")
                if size > _MAX_COMMAND:
                    raise wire.WireError(f"a ZMTP command of {size} bytes")
                self.commands.append(_command(memoryview(data)[at:nxt]))
                pos = nxt
                continue
            # A small frame is copied out (cheaper to make and to use than a view); a large
            # one is a view of the received bytes.
            frames.append(data[at:nxt] if size < _COPY_BELOW else memoryview(data)[at:nxt])
            total += size
            pos = nxt
            if not flags & _ZMTP_MORE:
                # Frames and short-frame bytes are counted per message, and per chunk below:
                # never more than one chunk's worth past the limits.
                if len(frames) > max_frames or total > max_bytes:
                    raise wire.WireError(_too_big(len(frames), total, max_frames, max_bytes))
                out.append(frames)
                frames, total = [], 0
        if len(frames) > max_frames or total > max_bytes:
            raise wire.WireError(_too_big(len(frames), total, max_frames, max_bytes))
        self._frames, self._total = frames, total
        if pos < end:
            self._buf, self._need = bytearray(memoryview(data)[pos:]), need - pos
        elif self._buf:
            self._buf, self._need = bytearray(), 0
        return out


class ZmtpChannel:
    """A DEALER's side of ZMTP 3.0 over one blocking TCP connection to ``host:port``.

    Commands (PING) are read and answered by ``recv``/``ready`` only, so a frontend that
    sets ZMQ_HEARTBEAT_TIMEOUT shorter than a predict call would drop the replica while it
    predicts (Schooner's frontend sets none; Clipper's neither). Connecting and each read of
    the handshake wait at most ``handshake_timeout``; a send, at most ``send_timeout``.

    Raises ``ChannelClosed`` from the constructor when nothing listens there (yet) or the
    handshake fails, and from ``recv``/``send`` when the frontend goes away or breaks the
    protocol.
    """

    timeouts: tuple[type[BaseException], ...] = (BlockingIOError, TimeoutError)

    def __init__(self, host: str, port: int, timeout: float, limits: wire.Limits | None = None,
                 handshake_timeout: float = 5.0, send_timeout: float = 30.0,
                 busy_poll: float = 0.0):  # fmt: skip
        try:
            sock = socket.create_connection((host, port), timeout=handshake_timeout)
        except OSError as exc:
            raise ChannelClosed(f"cannot connect to tcp://{host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(zmtp_greeting())
            greeting = self._read_exactly(sock, _GREETING_BYTES)
            _parse_greeting(greeting)
            sock.sendall(zmtp_command(b"READY", [(b"Socket-Type", b"DEALER"), (b"Identity", b"")]))
            self._reader = wire_reader = ZmtpReader(limits)
            self._messages: list[list[memoryview]] = []
            self._next = 0
            while not wire_reader.commands:
                data = sock.recv(_RECV_CHUNK)
                if not data:
                    raise ChannelClosed("the frontend closed the connection in the handshake")
                self._messages += wire_reader.feed(data)
            name, body = wire_reader.commands.pop(0)
            if name == b"ERROR":
                raise wire.WireError(f"the frontend refused the handshake: {wire.excerpt(bytes(body))}")
            if name != b"READY":
                raise wire.WireError(f"expected READY from the frontend, got {wire.excerpt(name)}")
            peer = _properties(body).get(b"socket-type", b"")
            if peer not in (b"ROUTER", b"DEALER", b"REP"):
                raise wire.WireError(f"a DEALER cannot talk to a {wire.excerpt(peer)} socket")
        except (OSError, wire.WireError) as exc:
            sock.close()
            raise ChannelClosed(f"ZMTP handshake with tcp://{host}:{port} failed: {exc}") from None
        sock.settimeout(None)
        _kernel_timeouts(sock, timeout, send_timeout)
        self._sock = sock
        self._sendall = sock.sendall
        # Received into one buffer that stays mapped (a fresh 1 MB bytes per recv would be
        # a fresh mapping, page-faulted in by every large read), then copied out as long as
        # what arrived.
        self._chunk = memoryview(bytearray(_RECV_CHUNK))
        self._recv_into = sock.recv_into
        self._drained = False  # the last read took everything the socket held
        self._busy_poll = busy_poll
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        self._poll = poller.poll
        if wire_reader.commands:  # sent right behind READY (a PING, say)
            try:
                self._answer_commands()
            except ChannelClosed:
                sock.close()
                raise

    @staticmethod
    def _read_exactly(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ChannelClosed("the frontend closed the connection in the handshake")
            data += chunk
        return data

    def recv(self) -> list[Any]:
        if self._next < len(self._messages):
            return self._take()
        if self._busy_poll:
            _busy_poll(self._poll, self._busy_poll)
        reader = self._reader
        while True:
            target = reader.body_target()
            try:
                if target is not None:  # the rest of a large frame: straight into its buffer
                    n = self._sock.recv_into(target)
                else:
                    n = self._recv_into(self._chunk)
            except self.timeouts:
                raise
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not n:
                raise ChannelClosed("the frontend closed the connection")
            if self._received(n, target):
                return self._take()

    def ready(self) -> int:
        if self._next < len(self._messages):
            return True
        if self._drained:  # nothing was left a moment ago: no system call to ask again
            return False
        # Whatever has arrived meanwhile, without blocking; poll first, so that "nothing
        # yet" (the usual answer) costs no exception.
        reader = self._reader
        while self._poll(0):
            target = reader.body_target()
            try:
                if target is not None:  # the rest of a large frame, in place (as in recv)
                    n = self._sock.recv_into(target, 0, socket.MSG_DONTWAIT)
                else:
                    n = self._recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
            except OSError:
                return False  # a broken socket: the next recv says so
            if not n:
                return False  # closed: the next recv says so
            if self._received(n, target):
                return True
        return False

    def send(self, frames: Sequence[wire.Buffer]) -> None:
        try:
            self._sendall(zmtp_bytes(frames))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None

    def close(self) -> None:
        self._sock.close()

    def _received(self, n: int, target: memoryview | None) -> bool:
        """``n`` bytes were read, into ``target`` (the rest of a large frame) or into the
        chunk buffer: whether they completed a message (then ``_take`` has it)."""
        reader = self._reader
        self._drained = n < (_RECV_CHUNK if target is None else len(target))
        try:
            messages = reader.body_received(n) if target is not None else \
                reader.feed(self._chunk[:n].tobytes())  # fmt: skip
        except wire.WireError as exc:
            raise ChannelClosed(f"the frontend broke ZMTP: {exc}") from None
        if reader.commands:
            self._answer_commands()
        if messages:
            self._messages = messages
            self._next = 0
            return True
        return False

    def _answer_commands(self) -> None:
        """PING (ZMTP 3.1 heartbeats) is answered with PONG; ERROR ends the session; other
        commands (PONG, SUBSCRIBE, ...) mean nothing to a DEALER and are ignored."""
        for name, body in self._reader.commands:
            if name == b"PING":
                context = bytes(body[2:18]) if len(body) >= 2 else b""  # after the u16 TTL
                self.send_command(zmtp_command(b"PONG", body=context))
            elif name == b"ERROR":
                raise ChannelClosed(f"the frontend sent a ZMTP ERROR: {wire.excerpt(bytes(body))}")
        self._reader.commands.clear()

    def send_command(self, frame: bytes) -> None:
        try:
            self._sendall(frame)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None

    def _take(self) -> list[memoryview]:
        message = self._messages[self._next]
        self._next += 1
        return message

"""The ZeroMQ ROUTER that model containers connect to, run inside the asyncio loop.

No ``zmq.asyncio``: the socket's file descriptor is watched with ``loop.add_reader`` and
drained with non-blocking receives while ``EVENTS`` says a message is waiting. That FD is
edge-triggered (it signals a change, not a level), so ``EVENTS`` is re-checked after every
send too: a send can consume the edge that announced an incoming message.

Who is connected, precisely: a socket monitor reports ``EVENT_DISCONNECTED`` with the file
descriptor of the closed connection, and every received message's identity frame tells the
descriptor it came in on (``ZMQ_SRCFD``), so each fd maps to one container identity. File
descriptors are reused by the kernel, so the monitor is drained before the ROUTER is read
and again whenever a message arrives on an fd that is mapped to another identity: a stale
DISCONNECTED event is consumed before the new owner of the fd is recorded. A container
silent for more than ``silence_timeout`` seconds is dropped as well (``check_silence``, run
periodically by the server), for peers whose disconnect the monitor cannot see.

``LocalEndpoint`` serves the same messages on a Unix stream socket, for Schooner containers
on this machine (``SCHOONER_RPC_SOCKET``): no ZeroMQ I/O threads between the event loop
and the container, so a batch costs one write and one wake-up each way. Every connection
is one container; its end is its disconnect, seen at once.

Protocol duties (Clipper RPC v3, the same on both endpoints): every heartbeat is answered,
KEEP_ALIVE when the sender is registered, REQUEST_CONTAINER_METADATA when not (so
containers re-register after a frontend restart); NewContainer registers; responses go to
the dispatcher. Malformed messages are logged with the sender's identity and dropped;
nothing a container sends can stop this loop.

Who may register (``RpcSecurity``): with a cluster secret, a container that announces
``CAP_AUTH`` is challenged and registered only when its answer proves it holds the secret
(``wire``'s authenticated registration); a plain v3 container (Clipper's) is registered only
when ``allow_unauthenticated`` is set. Without a secret every container is registered, as
in Clipper. The local socket also checks its peer's uid (``SO_PEERCRED``): only processes
of the frontend's own user (or root) are served; as a file it is created owner-only (0600).

Bounds (``wire.Limits``): a message of more frames or bytes than allowed is never decoded.
On ZeroMQ the ROUTER's ``MAXMSGSIZE`` makes libzmq drop a connection that sends a larger
frame, and frames are counted while they are received (the rest of an oversized message is
discarded without building frame objects); the sender is forgotten (it must register
again). On the local socket a declared length over the limit closes the connection before
the body is buffered. Either way: one bounded log line per peer (``wire.excerpt``).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import socket
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from schooner.runtime import wire
from schooner.runtime.errors import WireError
from schooner.runtime.transport import unix_address
from schooner.runtime.wire import (
    AuthResponse,
    Heartbeat,
    HeartbeatType,
    Limits,
    NewContainer,
    PredictResponse,
    excerpt,
)

__all__ = ["RpcEndpoint", "LocalEndpoint", "ContainerEvents", "RpcSecurity"]

log = logging.getLogger(__name__)

_KEEP_ALIVE = wire.encode_heartbeat_reply(HeartbeatType.KEEP_ALIVE)
_SEND_METADATA = wire.encode_heartbeat_reply(HeartbeatType.REQUEST_CONTAINER_METADATA)
_MAX_PER_WAKEUP = 512  # messages read before yielding to the rest of the loop
_FRAMES_PER_WAKEUP = 8192  # frames read before yielding (a message may span wake-ups)


_NONCE_BYTES = 32
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class RpcSecurity:
    """Who may register and how large a message may be (both endpoints share one)."""

    secret: bytes | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False
    limits: Limits = field(default_factory=Limits)

    def admits_plain(self) -> bool:
        """Whether a container that cannot authenticate (plain v3) is registered."""
        return self.secret is None or self.allow_unauthenticated


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (ZMQ_EVENTS is an int; pyzmq types it loosely)."""
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


class ContainerEvents(Protocol):
    """What the endpoint tells the dispatcher (all called on the event loop)."""

    def add_replica(self, identity: bytes, info: NewContainer) -> Any: ...

    def remove_replica(self, identity: bytes, reason: str) -> None: ...

    def on_response(self, identity: bytes, response: PredictResponse) -> None: ...


class _Peer:
    __slots__ = ("fd", "last_seen", "registered", "warned", "pending", "nonce")

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd
        self.last_seen = now
        self.registered = False
        self.warned = False
        self.pending: NewContainer | None = None  # challenged, waiting for its answer
        self.nonce = b""


class _Peers(ABC):
    """Who is connected to an endpoint, and the protocol duties towards each of them."""

    def __init__(
        self, events: ContainerEvents, silence_timeout: float, security: RpcSecurity | None
    ) -> None:
        self._events = events
        self._silence_timeout = silence_timeout
        self._peers: dict[bytes, _Peer] = {}
        self.security = security or RpcSecurity()

    @abstractmethod
    def send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        """Send one message to ``identity``; False if it cannot be reached."""

    def _message(self, identity: bytes, peer: _Peer, buffers: Sequence[Any]) -> None:
        """Handle one message (identity already stripped) from a known peer."""
        try:
            msg = wire.decode_from_container(buffers)
        except WireError as exc:
            self._warn(peer, "dropping a malformed message from container %s: %s",
                       identity.hex(), exc)  # fmt: skip
            return
        if type(msg) is PredictResponse:
            if peer.registered:
                self._events.on_response(identity, msg)
            else:
                log.debug("dropping a response from unregistered container %s", identity.hex())
        elif type(msg) is Heartbeat:
            self.send(identity, _KEEP_ALIVE if peer.registered else _SEND_METADATA)
        elif type(msg) is NewContainer:
            if peer.registered:
                log.debug("container %s registered again; ignored", identity.hex())
                return
            self._new_container(identity, peer, msg)
        elif type(msg) is AuthResponse:
            self._authenticate(identity, peer, msg)

    @staticmethod
    def _warn(peer: _Peer, message: str, *args: Any) -> None:
        """One warning per peer; later ones at debug level (a peer cannot flood the log)."""
        level = logging.DEBUG if peer.warned else logging.WARNING
        peer.warned = True
        log.log(level, message, *args)

    def _new_container(self, identity: bytes, peer: _Peer, info: NewContainer) -> None:
        secret = self.security.secret
        if secret is not None and info.capabilities & wire.CAP_AUTH:
            if peer.pending != info:  # the same NewContainer again: the same challenge
                peer.pending, peer.nonce = info, os.urandom(_NONCE_BYTES)
            self.send(identity, wire.encode_auth_challenge(peer.nonce))
            return
        if not self.security.admits_plain():
            self._refuse(identity, peer, info, "it did not authenticate (a plain RPC v3 "
                         "container; see --allow-unauthenticated-containers)")  # fmt: skip
            return
        self._register(identity, peer, info)

    def _authenticate(self, identity: bytes, peer: _Peer, answer: AuthResponse) -> None:
        if peer.registered:
            log.debug("container %s answered a challenge again; ignored", identity.hex())
            return
        info, nonce = peer.pending, peer.nonce
        peer.pending, peer.nonce = None, b""
        secret = self.security.secret
        if info is None or secret is None:
            self._warn(peer, "container %s answered a challenge it was not sent", identity.hex())
            return
        if not hmac.compare_digest(answer.mac, wire.auth_mac(secret, nonce, info)):
            self._refuse(identity, peer, info, "its answer to the challenge is wrong (it "
                         "does not hold this cluster's secret)")  # fmt: skip
            return
        self._register(identity, peer, info)

    def _register(self, identity: bytes, peer: _Peer, info: NewContainer) -> None:
        peer.registered = True
        self._events.add_replica(identity, info)

    def _refuse(self, identity: bytes, peer: _Peer, info: NewContainer, why: str) -> None:
        self._warn(peer, "refused container %s registering as %s:%s: %s", identity.hex(),
                   excerpt(info.name), excerpt(info.version), why)  # fmt: skip
        self._refused(identity)

    def _refused(self, identity: bytes) -> None:
        """A container was refused: the local endpoint closes its connection; a ZeroMQ
        peer cannot be closed, so it stays known but unregistered."""
        return None

    def _forget(self, identity: bytes, reason: str) -> None:
        peer = self._peers.pop(identity, None)
        if peer is None:
            return
        self._forgotten(identity, peer)
        if peer.registered:
            self._events.remove_replica(identity, reason)
        else:
            log.debug("unregistered container %s forgotten: %s", identity.hex(), reason)

    @abstractmethod
    def _forgotten(self, identity: bytes, peer: _Peer) -> None:
        """Release what the endpoint holds for ``peer`` (its fd, its connection)."""

    def unregister(self, identity: bytes) -> None:
        """Treat ``identity`` as unknown again: its next heartbeat asks for its metadata."""
        peer = self._peers.get(identity)
        if peer is not None:
            peer.registered = False

    def owns(self, identity: bytes) -> bool:
        return identity in self._peers

    def check_silence(self) -> None:
        """Drop containers silent for longer than ``silence_timeout`` (the server calls this
        every 10 s)."""
        cutoff = time.monotonic() - self._silence_timeout
        for identity in [i for i, p in self._peers.items() if p.last_seen < cutoff]:
            self._forget(identity, f"it was silent for more than {self._silence_timeout:g} s")

    @property
    def connected(self) -> int:
        return len(self._peers)


class RpcEndpoint(_Peers):
    """Bound ROUTER socket plus its monitor. ``start`` hooks it into the running loop."""

    def __init__(
        self,
        context: zmq.Context[Any],
        events: ContainerEvents,
        *,
        silence_timeout: float = 30.0,
        security: RpcSecurity | None = None,
    ) -> None:
        super().__init__(events, silence_timeout, security)
        self._sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # libzmq drops a connection that sends a frame larger than a whole message may be.
        self._sock.setsockopt(zmq.MAXMSGSIZE, self.security.limits.max_bytes)
        self._monitor: zmq.Socket[Any] = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._fd_owner: dict[int, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self.port = 0
        # the message being received (it may span wake-ups), or the one being discarded
        self._partial: list[zmq.Frame] = []
        self._partial_bytes = 0
        self._discard: str | None = None
        self._discard_identity = b""
        self._discarded = 0

    # ----------------------------------------------------------------- lifecycle

    def bind(self, host: str, port: int) -> int:
        """Bind the ROUTER (port 0: any free port); returns the port."""
        if port == 0:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        else:
            self._sock.bind(f"tcp://{host}:{port}")
            self.port = port
        return self.port

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading (call after ``bind``, from the loop thread)."""
        self._loop = loop
        loop.add_reader(self._sock.FD, self._on_readable)
        loop.add_reader(self._monitor.FD, self._drain_monitor)
        self._schedule_drain()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.FD)
            self._loop.remove_reader(self._monitor.FD)
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)
        self._sock.close(0)

    # ----------------------------------------------------------------- sending

    def send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        """Send to one container; False if it is gone (or its queue is full)."""
        sock = self._sock
        try:
            sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            ok = True
        except zmq.ZMQError as exc:
            log.debug("send to %s failed: %s", identity.hex(), exc)
            ok = False
        if not self._drain_scheduled and _readable(sock):
            self._schedule_drain()
        return ok

    def _schedule_drain(self) -> None:
        if self._loop is not None and not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._on_readable)

    # ----------------------------------------------------------------- receiving

    def _on_readable(self) -> None:
        self._drain_scheduled = False
        self._drain_monitor()
        sock = self._sock
        now = time.monotonic()
        budget = _FRAMES_PER_WAKEUP
        for _ in range(_MAX_PER_WAKEUP):
            if budget <= 0:
                break
            if not self._partial and self._discard is None and not _readable(sock):
                return
            try:
                frames, used = self._read(budget)
            except zmq.Again:
                return
            budget -= used
            if frames is None:
                continue  # the budget ran out inside a message, or it was discarded
            try:
                self._handle(frames, now)
            except Exception:
                log.exception("failed to handle a message from a container")
        self._schedule_drain()

    def _read(self, budget: int) -> tuple[list[zmq.Frame] | None, int]:
        """Read at most ``budget`` frames: a whole message (identity first), or None when
        the message goes on past the budget (``_partial`` keeps it, the next wake-up goes
        on) or was over the limits. An oversized message is discarded frame by frame
        without being kept, its sender forgotten; the loop serves other work between
        budgets, so a message of a million frames never stalls it."""
        sock = self._sock
        limits = self.security.limits
        frames, used = self._partial, 0
        if not frames and self._discard is None:
            frames = [sock.recv(zmq.NOBLOCK, copy=False)]
            used = 1
        while used < budget:
            if self._discard is not None:
                if not sock.get(zmq.RCVMORE):
                    self._discarded_message()
                    return None, used
                sock.recv(zmq.NOBLOCK)
                self._discarded += 1
                used += 1
                continue
            if not frames[-1].more:
                self._partial, self._partial_bytes = [], 0
                return frames, used
            if len(frames) > limits.max_frames:
                self._start_discard(frames[0].bytes, f"more than {limits.max_frames} frames")
                frames = []
                continue
            frame = sock.recv(zmq.NOBLOCK, copy=False)
            used += 1
            self._partial_bytes += len(frame)
            if self._partial_bytes > limits.max_bytes:
                self._start_discard(frames[0].bytes, f"more than {limits.max_bytes} bytes")
                frames = []
                continue
            frames.append(frame)
        self._partial = frames
        return None, used

    def _start_discard(self, identity: bytes, why: str) -> None:
        self._partial, self._partial_bytes = [], 0
        self._discard, self._discard_identity, self._discarded = why, identity, 0

    def _discarded_message(self) -> None:
        identity, why = self._discard_identity, self._discard
        self._discard = None
        peer = self._peers.get(identity) or _Peer(-1, 0.0)
        self._warn(peer, "dropped container %s: it sent a message of %s (%d more frames "
                   "discarded)", identity.hex(), why, self._discarded)  # fmt: skip
        self._forget(identity, f"it sent a message of {why}")

    def _handle(self, frames: list[zmq.Frame], now: float) -> None:
        id_frame = frames[0]
        identity = id_frame.bytes
        fd = self._source_fd(id_frame)
        peer = self._peers.get(identity)
        if peer is None or peer.fd != fd:
            peer = self._admit(identity, fd, now)
        else:
            peer.last_seen = now
        self._message(identity, peer, [f.buffer for f in frames[1:]])

    @staticmethod
    def _source_fd(frame: zmq.Frame) -> int:
        try:
            return int(frame.get(zmq.SRCFD))
        except zmq.ZMQError:
            return -1

    def _admit(self, identity: bytes, fd: int, now: float) -> _Peer:
        """First message from ``identity``, or from a new fd: record who owns the fd."""
        owner = self._fd_owner.get(fd) if fd >= 0 else None
        if owner is not None and owner != identity:
            # The fd was reused: its old connection's DISCONNECTED event must be waiting.
            self._drain_monitor()
            owner = self._fd_owner.get(fd)
            if owner is not None and owner != identity:
                self._forget(owner, "its connection was replaced")
        old = self._peers.get(identity)
        if old is not None and old.fd != fd:
            self._fd_owner.pop(old.fd, None)
        peer = self._peers.get(identity)
        if peer is None:
            peer = self._peers[identity] = _Peer(fd, now)
        peer.fd, peer.last_seen = fd, now
        if fd >= 0:
            self._fd_owner[fd] = identity
        return peer

    def _drain_monitor(self) -> None:
        mon = self._monitor
        while _readable(mon):
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception:
                log.exception("unreadable socket monitor event")
                continue
            if event["event"] == zmq.EVENT_DISCONNECTED:
                owner = self._fd_owner.get(int(event["value"]))
                if owner is not None:
                    self._forget(owner, "it disconnected")

    def _forgotten(self, identity: bytes, peer: _Peer) -> None:
        if self._fd_owner.get(peer.fd) == identity:
            del self._fd_owner[peer.fd]


class _LocalConnection(asyncio.Protocol):
    """One container on the local socket."""

    __slots__ = ("_endpoint", "identity", "transport", "_reader")

    def __init__(self, endpoint: LocalEndpoint, identity: bytes) -> None:
        self._endpoint = endpoint
        self.identity = identity
        self.transport: asyncio.Transport | None = None
        self._reader = wire.StreamReader(endpoint.security.limits)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        uid = _peer_uid(transport.get_extra_info("socket"))
        if uid is not None and uid not in (os.getuid(), 0):
            log.warning("refused a local connection from uid %d (this frontend serves only "
                        "uid %d and root)", uid, os.getuid())  # fmt: skip
            self.transport = None
            transport.close()
            return
        self._endpoint._connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except WireError as exc:
            log.warning("closing local container connection %s: %s", self.identity.hex(), exc)
            if self.transport is not None:
                self.transport.close()
            return
        if messages:
            self._endpoint._received(self.identity, messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._endpoint._forget(self.identity, "it disconnected")


def _peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where unknown)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return None
    return int(uid)


class LocalEndpoint(_Peers):
    """A Unix stream socket for Schooner containers on this machine (stream framing).

    ``path`` is a file path (created owner-only, 0600), or ``@name`` for Linux's abstract
    namespace (no file and no file permissions: only the uid check guards it).
    """

    def __init__(
        self,
        events: ContainerEvents,
        *,
        silence_timeout: float = 30.0,
        security: RpcSecurity | None = None,
    ) -> None:
        super().__init__(events, silence_timeout, security)
        self._connections: dict[bytes, _LocalConnection] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self.path = ""

    async def start(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        """Listen at ``path`` (a stale socket file left there is replaced)."""
        address = unix_address(path)
        if isinstance(address, str) and os.path.exists(address):
            os.unlink(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o177)  # the socket file is born owner-only: no window to connect
        try:
            sock.bind(address)
            if isinstance(address, str):
                os.chmod(address, 0o600)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(umask)
        self._server = await loop.create_unix_server(self._accept, sock=sock)
        self.path = path

    def _accept(self) -> _LocalConnection:
        return _LocalConnection(self, b"local-%d" % next(self._ids))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        if self.path and not self.path.startswith("@"):
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # ----------------------------------------------------------------- connections

    def _connected(self, connection: _LocalConnection) -> None:
        self._connections[connection.identity] = connection
        self._peers[connection.identity] = _Peer(-1, time.monotonic())

    def _received(self, identity: bytes, messages: list[list[memoryview]]) -> None:
        peer = self._peers.get(identity)
        if peer is None:
            return
        peer.last_seen = time.monotonic()
        for frames in messages:
            try:
                self._message(identity, peer, frames)
            except Exception:
                log.exception("failed to handle a message from a container")

    def _refused(self, identity: bytes) -> None:
        self._forget(identity, "it was refused")

    def _forgotten(self, identity: bytes, peer: _Peer) -> None:
        connection = self._connections.pop(identity, None)
        if connection is not None and connection.transport is not None:
            connection.transport.close()  # silent, or dropped by the dispatcher

    def send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        connection = self._connections.get(identity)
        if connection is None or connection.transport is None:
            return False
        connection.transport.writelines([wire.stream_header(frames), *frames])  # one writev
        return True

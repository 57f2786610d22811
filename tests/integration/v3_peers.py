"""Minimal Clipper RPC v3 peers, written from ``docs/clipper-rpc-v3.md`` with pyzmq and struct.

This module deliberately imports nothing from Schooner: it is a second, independent
reading of the protocol, so that the compatibility tests catch a Schooner encoder and
decoder that merely agree with each other.

* ``MiniFrontend`` plays Clipper's query frontend: a ROUTER that answers heartbeats
  (RequestContainerMetadata to identities it does not know, KeepAlive otherwise), registers
  containers from NewContainer (reading only the first 4 bytes of the RPC version frame, as
  Clipper's C++ frontend does), sends plain v3 prediction requests and parses plain v3
  responses. It has no thread: it does its work while a test calls one of its methods.
* ``MiniContainer`` plays a plain Clipper model container: a DEALER, driven by its own
  thread, that heartbeats, sends NewContainer with a 4-byte version frame on a
  RequestContainerMetadata reply, and answers plain v3 requests with a function of the inputs.

Both record every protocol violation they see instead of raising in the middle of their
loop; tests assert that the lists stay empty.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

log = logging.getLogger(__name__)

RPC_VERSION = 3

MSG_NEW_CONTAINER = 0
MSG_CONTAINER_CONTENT = 1
MSG_HEARTBEAT = 2

HB_KEEP_ALIVE = 0
HB_REQUEST_METADATA = 1

REQ_PREDICT = 0

INPUT_BYTES, INPUT_INTS, INPUT_FLOATS, INPUT_DOUBLES, INPUT_STRINGS = 0, 1, 2, 3, 4
# struct format character of one element of each input type (strings: raw UTF-8)
ELEMENT_FORMAT = {INPUT_BYTES: "b", INPUT_INTS: "i", INPUT_FLOATS: "f", INPUT_DOUBLES: "d"}


class V3ProtocolError(AssertionError):
    """A peer broke Clipper RPC v3 (raised to the test, recorded by the loops)."""


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def read_u32(frame: bytes, what: str) -> int:
    if len(frame) != 4:
        raise V3ProtocolError(f"{what}: expected a 4-byte u32 frame, got {frame!r}")
    return int(struct.unpack("<I", frame)[0])


def read_u64s(frame: bytes, what: str) -> tuple[int, ...]:
    if len(frame) % 8:
        raise V3ProtocolError(f"{what}: {len(frame)} bytes is not a whole number of u64")
    return struct.unpack(f"<{len(frame) // 8}Q", frame)


def read_u64(frame: bytes, what: str) -> int:
    if len(frame) != 8:
        raise V3ProtocolError(f"{what}: expected an 8-byte u64 frame, got {frame!r}")
    return int(struct.unpack("<Q", frame)[0])


def pack_values(input_type: int, values: Sequence[float] | str | bytes) -> bytes:
    """One input as its frame: a packed array of the element type, or raw UTF-8."""
    if input_type == INPUT_STRINGS:
        assert isinstance(values, str)
        return values.encode("utf-8")
    if input_type == INPUT_BYTES and isinstance(values, bytes):
        return values
    fmt = ELEMENT_FORMAT[input_type]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def unpack_values(input_type: int, frame: bytes) -> tuple[float, ...] | str:
    """One input frame back into values (a str for strings)."""
    if input_type == INPUT_STRINGS:
        return frame.decode("utf-8")
    fmt = ELEMENT_FORMAT[input_type]
    width = struct.calcsize(fmt)
    if len(frame) % width:
        raise V3ProtocolError(f"input of {len(frame)} bytes is not a whole number of {fmt!r}")
    return struct.unpack(f"<{len(frame) // width}{fmt}", frame)


def _close(sock: zmq.Socket[bytes]) -> None:
    sock.close(linger=0)


# --------------------------------------------------------------------------- frontend


@dataclass
class Registration:
    """One container that sent a valid NewContainer."""

    identity: bytes
    name: str
    version: str
    input_type: int
    version_frame: bytes  # the raw last frame (4 bytes from Clipper, maybe 8 from Schooner)


@dataclass
class MiniFrontend:
    """A plain Clipper v3 frontend on a ROUTER bound to 127.0.0.1 (random port)."""

    host: str = "127.0.0.1"
    port: int = 0
    registrations: list[Registration] = field(default_factory=list)
    heartbeats: int = 0
    violations: list[str] = field(default_factory=list)
    received: list[list[bytes]] = field(default_factory=list)  # every message, identity first
    _known: set[bytes] = field(default_factory=set)
    _responses: dict[tuple[bytes, bytes], list[bytes]] = field(default_factory=dict)
    _next_id: int = 1

    def __post_init__(self) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.port:
            self._sock.bind(f"tcp://{self.host}:{self.port}")
        else:
            self.port = self._sock.bind_to_random_port(f"tcp://{self.host}")

    def close(self) -> None:
        _close(self._sock)
        self._ctx.term()

    def __enter__(self) -> MiniFrontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pumping

    def pump(self, timeout: float) -> None:
        """Handle every message that arrives within ``timeout`` seconds (at least one poll)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if self._sock.poll(int(remaining * 1000)):
                self._handle(self._sock.recv_multipart())
                continue
            if time.monotonic() >= deadline:
                return

    def pump_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"mini frontend: timed out after {timeout}s waiting for {what}")
            if self._sock.poll(int(min(remaining, 0.1) * 1000)):
                self._handle(self._sock.recv_multipart())

    def _handle(self, frames: list[bytes]) -> None:
        self.received.append(frames)
        identity, body = frames[0], frames[1:]
        try:
            if not body or body[0] != b"":
                raise V3ProtocolError(f"message without the empty delimiter: {frames!r}")
            if len(body) < 2:
                raise V3ProtocolError(f"message too short: {frames!r}")
            mtype = read_u32(body[1], "message type")
            if mtype == MSG_HEARTBEAT:
                self._on_heartbeat(identity)
            elif mtype == MSG_NEW_CONTAINER:
                self._on_new_container(identity, body)
            elif mtype == MSG_CONTAINER_CONTENT:
                self._on_response(identity, body)
            else:
                raise V3ProtocolError(f"message type {mtype} is not plain v3: {frames!r}")
        except V3ProtocolError as exc:
            log.warning("mini frontend: %s", exc)
            self.violations.append(str(exc))

    def _on_heartbeat(self, identity: bytes) -> None:
        self.heartbeats += 1
        hb = HB_KEEP_ALIVE if identity in self._known else HB_REQUEST_METADATA
        self._sock.send_multipart([identity, b"", u32(RPC_VERSION), u32(MSG_HEARTBEAT), u32(hb)])

    def _on_new_container(self, identity: bytes, body: list[bytes]) -> None:
        if len(body) != 6:
            raise V3ProtocolError(f"NewContainer has {len(body)} frames, v3 needs 6")
        version_frame = body[5]
        if len(version_frame) < 4:
            raise V3ProtocolError(f"NewContainer version frame too short: {version_frame!r}")
        # Like Clipper's frontend: only the first u32 of the last frame is read.
        version = int(struct.unpack("<I", version_frame[:4])[0])
        if version != RPC_VERSION:
            raise V3ProtocolError(f"NewContainer with RPC version {version}")
        reg = Registration(
            identity=identity,
            name=body[2].decode("utf-8"),
            version=body[3].decode("utf-8"),
            input_type=int(body[4].decode("ascii")),
            version_frame=version_frame,
        )
        self._known.add(identity)
        self.registrations.append(reg)

    def _on_response(self, identity: bytes, body: list[bytes]) -> None:
        if len(body) < 5:
            raise V3ProtocolError(f"response of {len(body)} frames is too short")
        msg_id = body[2]
        if len(msg_id) != 4:
            raise V3ProtocolError(f"response message id {msg_id!r} is not 4 bytes")
        declared = read_u64(body[3], "header size")
        header = read_u64s(body[4], "response header")
        if declared != len(body[4]):
            raise V3ProtocolError(f"header size {declared} but the header is {len(body[4])} bytes")
        if not header or header[0] != len(header) - 1:
            raise V3ProtocolError(f"response header {header} is not [N, len_0 .. len_N-1]")
        outputs = body[5:]
        lengths = header[1:]
        if len(outputs) != len(lengths):
            raise V3ProtocolError(f"header says {len(lengths)} outputs, got {len(outputs)}")
        for i, (out, n) in enumerate(zip(outputs, lengths)):
            if len(out) != n:
                raise V3ProtocolError(f"output {i} is {len(out)} bytes, header says {n}")
        self._responses[(identity, msg_id)] = outputs

    # -- what tests call

    def wait_for_registration(self, timeout: float) -> Registration:
        """Serve heartbeats until a container registers; return the newest registration."""
        count = len(self.registrations)
        self.pump_until(lambda: len(self.registrations) > count, timeout, "a NewContainer")
        return self.registrations[-1]

    def send_raw(self, identity: bytes, frames: Sequence[bytes]) -> None:
        """Send any frames to one container (the identity frame is added here)."""
        self._sock.send_multipart([identity, *frames])

    def request_frames(self, msg_id: int, input_type: int, inputs: Sequence[bytes]) -> list[bytes]:
        """A plain v3 prediction request, delimiter first."""
        header = struct.pack(f"<{len(inputs) + 2}Q", input_type, len(inputs), *map(len, inputs))
        return [
            b"", u32(RPC_VERSION), u32(MSG_CONTAINER_CONTENT), u32(msg_id), u32(REQ_PREDICT),
            u64(len(header)), header, *inputs,
        ]  # fmt: skip

    def predict(
        self, identity: bytes, input_type: int, inputs: Sequence[bytes], timeout: float
    ) -> list[bytes]:
        """Send one plain v3 request and serve the socket until its response arrives."""
        msg_id = self._next_id
        self._next_id += 1
        self.send_raw(identity, self.request_frames(msg_id, input_type, inputs))
        key = (identity, u32(msg_id))
        self.pump_until(lambda: key in self._responses, timeout, f"the response to {msg_id}")
        return self._responses.pop(key)

    def predict_texts(
        self, identity: bytes, input_type: int, inputs: Sequence[bytes], timeout: float
    ) -> list[str]:
        return [o.decode("utf-8") for o in self.predict(identity, input_type, inputs, timeout)]


# --------------------------------------------------------------------------- container


def sum_as_text(input_type: int, inputs: list[bytes]) -> list[bytes]:
    """The default model: each numeric input's sum as text; strings reversed."""
    outputs = []
    for frame in inputs:
        values = unpack_values(input_type, frame)
        if isinstance(values, str):
            outputs.append(values[::-1].encode("utf-8"))
        else:
            outputs.append(repr(float(sum(values))).encode("utf-8"))
    return outputs


@dataclass
class MiniContainer:
    """A plain Clipper v3 container on a DEALER connected to ``tcp://host:port``.

    ``start()`` runs its loop in a thread that owns the socket; ``stop()`` ends it.
    ``rpc_version`` and ``send_version_frame`` exist to play a broken or foreign container.
    """

    port: int
    name: str = "mini"
    version: str = "1"
    input_type: int = INPUT_DOUBLES
    host: str = "127.0.0.1"
    heartbeat_interval: float = 0.5
    predict: Callable[[int, list[bytes]], list[bytes]] = sum_as_text
    rpc_version: int = RPC_VERSION
    send_version_frame: bool = True
    # observable state (written by the loop thread, read by tests)
    new_containers_sent: int = 0
    metadata_requests: int = 0
    keep_alives: int = 0
    requests_served: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    registered: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._outbox: queue.Queue[list[bytes]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"mini-container-{self.name}")
        self._failure: BaseException | None = None

    def start(self) -> MiniContainer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._ctx.term()
        if self._failure is not None:
            raise V3ProtocolError(f"mini container loop crashed: {self._failure!r}")

    def __enter__(self) -> MiniContainer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send_raw(self, frames: Sequence[bytes]) -> None:
        """Queue arbitrary frames (delimiter included, if wanted) for the loop to send."""
        self._outbox.put(list(frames))

    def wait_registered(self, timeout: float) -> None:
        """Until a KeepAlive answers a heartbeat sent after our NewContainer."""
        if not self.registered.wait(timeout):
            raise TimeoutError(
                f"mini container {self.name!r} not registered after {timeout}s "
                f"(NewContainer sent {self.new_containers_sent}x, "
                f"metadata requests {self.metadata_requests}, keep-alives {self.keep_alives})"
            )

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{self.host}:{self.port}")
        try:
            self._loop(sock)
        except BaseException as exc:  # surfaced by stop()
            log.exception("mini container loop crashed")
            self._failure = exc
        finally:
            _close(sock)

    def _loop(self, sock: zmq.Socket[bytes]) -> None:
        sock.send_multipart([b"", u32(MSG_HEARTBEAT)])
        last_sent = time.monotonic()
        while not self._stop.is_set():
            while not self._outbox.empty():
                sock.send_multipart(self._outbox.get_nowait())
            if sock.poll(50):
                self._handle(sock, sock.recv_multipart())
            elif time.monotonic() - last_sent >= self.heartbeat_interval:
                sock.send_multipart([b"", u32(MSG_HEARTBEAT)])
                last_sent = time.monotonic()

    def _handle(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            if len(frames) < 3 or frames[0] != b"":
                raise V3ProtocolError(f"malformed message from the frontend: {frames!r}")
            version = read_u32(frames[1], "rpc version")
            if version != RPC_VERSION:
                raise V3ProtocolError(f"frontend sent RPC version {version}")
            mtype = read_u32(frames[2], "message type")
            if mtype == MSG_HEARTBEAT:
                self._on_heartbeat_reply(sock, frames)
            elif mtype == MSG_CONTAINER_CONTENT:
                self._on_request(sock, frames)
            else:
                raise V3ProtocolError(f"message type {mtype} from the frontend")
        except V3ProtocolError as exc:
            log.warning("mini container %s: %s", self.name, exc)
            self.violations.append(str(exc))

    def _on_heartbeat_reply(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if len(frames) != 4:
            raise V3ProtocolError(f"heartbeat reply of {len(frames)} frames")
        hb = read_u32(frames[3], "heartbeat type")
        if hb == HB_REQUEST_METADATA:
            self.metadata_requests += 1
            self.registered.clear()
            new = [b"", u32(MSG_NEW_CONTAINER), self.name.encode(), self.version.encode(),
                   str(self.input_type).encode()]  # fmt: skip
            if self.send_version_frame:
                new.append(u32(self.rpc_version))
            sock.send_multipart(new)
            self.new_containers_sent += 1
        elif hb == HB_KEEP_ALIVE:
            self.keep_alives += 1
            if self.new_containers_sent:
                self.registered.set()
        else:
            raise V3ProtocolError(f"unknown heartbeat type {hb}")

    def _on_request(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if len(frames) < 7:
            raise V3ProtocolError(f"prediction request of {len(frames)} frames")
        msg_id = frames[3]
        if len(msg_id) != 4:
            raise V3ProtocolError(f"message id {msg_id!r} is not 4 bytes")
        rtype = read_u32(frames[4], "request type")
        if rtype != REQ_PREDICT:
            raise V3ProtocolError(f"request type {rtype} sent to a plain v3 container")
        declared = read_u64(frames[5], "header size")
        if declared != len(frames[6]):
            raise V3ProtocolError(f"header size {declared}, header {len(frames[6])} bytes")
        header = read_u64s(frames[6], "request header")
        if len(header) < 2 or header[1] != len(header) - 2:
            raise V3ProtocolError(f"request header {header} is not [type, N, sizes..]")
        input_type, sizes, inputs = header[0], header[2:], frames[7:]
        if input_type != self.input_type:
            raise V3ProtocolError(f"input type {input_type}, registered {self.input_type}")
        if [len(i) for i in inputs] != list(sizes):
            raise V3ProtocolError(f"input frames {[len(i) for i in inputs]} vs sizes {sizes}")
        outputs = self.predict(input_type, inputs)
        header_out = struct.pack(f"<{len(outputs) + 1}Q", len(outputs), *map(len, outputs))
        sock.send_multipart(
            [b"", u32(MSG_CONTAINER_CONTENT), msg_id, u64(len(header_out)), header_out, *outputs]
        )
        self.requests_served += 1
        self.batch_sizes.append(len(inputs))

"""The model container's loop: one session with the frontend after another.

A session opens a fresh channel (``schooner.runtime.transport``: a ZeroMQ DEALER, spoken
as ZMTP over one TCP connection, to a Clipper-compatible frontend, or the local Unix socket of
a Schooner frontend on the same machine), so the frontend sees a new replica, says hello with a heartbeat and then, until
the frontend has been silent for ``session_timeout`` or has closed the connection:

1. waits for messages; when idle for ``heartbeat_interval`` it sends a heartbeat (and,
   idle after serving, gives back the freed memory kept for large inputs: runtime.memory);
2. drains everything queued (up to the max batch size): heartbeat replies are answered
   (NewContainer when the frontend asks who we are), prediction requests are collected;
3. predicts the collected requests as one batch, checks N outputs for N inputs, and sends
   one response per request.

The channel belongs to this loop. While ``predict`` runs, the loop lends it to a small
heartbeat thread through a lock (a full memory barrier, which is how ZeroMQ allows a
socket to change threads), so a prediction that takes minutes does not get the container
dropped. A batch whose predict raises is predicted again input by input when the frontend
reads per-input status (packed requests), so that only the inputs the model raises on are
answered with errors; otherwise (a broken output contract, a plain v3 frontend) every input
of the failed batch gets an error output. Either way the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from schooner.frameworks.base import Framework
from schooner.runtime import batch as batching
from schooner.runtime import wire
from schooner.runtime.config import ContainerConfig
from schooner.runtime.errors import PredictionError, WireError
from schooner.runtime.memory import release_freed_memory
from schooner.runtime.metrics import ContainerMetrics
from schooner.runtime.transport import Channel, ChannelClosed, SocketChannel, ZmtpChannel

__all__ = ["Container"]

log = logging.getLogger(__name__)

_REQUEST_METADATA = wire.HeartbeatType.REQUEST_CONTAINER_METADATA
_AUTH_CHALLENGE = wire.HeartbeatType.AUTH_CHALLENGE


class Container:
    """Serves one loaded framework to the frontend at ``config.frontend_address``."""

    def __init__(
        self,
        config: ContainerConfig,
        framework: Framework,
        metrics: ContainerMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.framework = framework
        self.metrics = metrics
        self._clock = clock
        self._socket: Channel | None = None
        self._socket_lock = threading.Lock()  # held by the loop except while predicting
        self._predicting_since: float | None = None
        self._last_sent = 0.0
        self._connect_delay = 0.0
        self._stopped = threading.Event()
        self._secret = config.secret()
        capabilities = wire.SCHOONER_CAPABILITIES | (wire.CAP_AUTH if self._secret else 0)
        self._identity = wire.NewContainer(
            config.model_name, config.model_version, config.input_type, capabilities
        )
        self._hello = wire.encode_new_container(
            config.model_name, config.model_version, config.input_type, capabilities
        )

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Serve until :meth:`stop`; reconnect with a fresh socket after each timeout."""
        beater = threading.Thread(target=self._heartbeat_while_predicting, daemon=True,
                                  name="heartbeat")  # fmt: skip
        beater.start()
        try:
            while not self._stopped.is_set():
                self._session()
        finally:
            self._stopped.set()
            beater.join(timeout=2)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (within a second when idle).
        Safe from a signal handler."""
        self._stopped.set()

    # ------------------------------------------------------------------ one session

    def _open(self) -> Channel | None:
        """A new channel to the frontend, or None (after a pause) if it cannot be reached."""
        cfg = self.config
        timeout = min(cfg.heartbeat_interval, 1.0)
        try:
            if cfg.rpc_socket is not None:
                channel: Channel = SocketChannel(cfg.rpc_socket, timeout, cfg.limits,
                                                 send_timeout=cfg.session_timeout,
                                                 busy_poll=cfg.busy_poll_us / 1e6)  # fmt: skip
            else:
                channel = ZmtpChannel(cfg.frontend_host, cfg.frontend_port, timeout, cfg.limits,
                                      send_timeout=cfg.session_timeout,
                                      busy_poll=cfg.busy_poll_us / 1e6)  # fmt: skip
        except ChannelClosed as exc:
            # The frontend is not listening (yet, or any more): retry with a growing pause,
            # as ZeroMQ's reconnection would.
            self._connect_delay = min(max(self._connect_delay * 2, 0.05), 1.0)
            log.debug("%s; retrying in %.2f s", exc, self._connect_delay)
            self._stopped.wait(self._connect_delay)
            return None
        self._connect_delay = 0.0
        return channel

    def _session(self) -> None:
        cfg = self.config
        channel = self._open()
        if channel is None:
            return
        max_inputs = cfg.max_batch_size or 1 << 62
        recv, ready, timeouts = channel.recv, channel.ready, channel.timeouts
        with self._socket_lock:
            self._socket = channel
            try:
                self._send(wire.encode_heartbeat())
                last_heard = self._clock()
                served = False
                log.info("session open: %s", cfg.frontend_address)
                while not self._stopped.is_set():
                    try:
                        frames = recv()
                    except timeouts:
                        if served:  # idle after work: give the memory kept for it back
                            release_freed_memory()
                            served = False
                        now = self._clock()
                        if now - last_heard > cfg.session_timeout:
                            self.metrics.reconnects += 1
                            log.warning("no message from the frontend for %.0f s: reconnecting",
                                        now - last_heard)  # fmt: skip
                            return
                        if now - self._last_sent >= cfg.heartbeat_interval:
                            self._send(wire.encode_heartbeat())
                        continue
                    last_heard = self._clock()
                    requests: list[wire.PredictRequest] = []
                    n_inputs = 0
                    while True:
                        request = self._read(frames)
                        if request is not None:
                            requests.append(request)
                            n_inputs += len(request.sizes)
                        if n_inputs >= max_inputs or not ready() & 1:  # 1: POLLIN
                            break
                        frames = recv()
                    if requests:
                        self._serve(requests)
                        served = True
            except ChannelClosed as exc:
                self.metrics.reconnects += 1
                log.warning("lost the frontend (%s): reconnecting", exc)
                self._stopped.wait(0.05)
            finally:
                self._socket = None
                channel.close()

    def _send(self, frames: Sequence[wire.Buffer]) -> None:
        assert self._socket is not None
        self._socket.send(frames)
        self._last_sent = self._clock()

    def _read(self, frames: list[Any]) -> wire.PredictRequest | None:
        """Decode one message; answer heartbeat replies here; return prediction requests."""
        try:
            message = wire.decode_from_frontend(frames)
        except WireError as exc:
            self.metrics.malformed += 1
            log.warning("dropped a malformed message (%d frames): %s", len(frames), exc)
            return None
        if isinstance(message, wire.HeartbeatReply):
            if message.hb_type == _REQUEST_METADATA:
                self._send(self._hello)
                log.info("registered as %s:%s (%s)", self.config.model_name,
                         self.config.model_version, self.config.input_type.clipper_name)
            elif message.hb_type == _AUTH_CHALLENGE:
                if self._secret is None:  # never sent to a container without CAP_AUTH
                    log.warning("the frontend sent a challenge, but this container has no "
                                "secret (SCHOONER_RPC_SECRET)")  # fmt: skip
                    return None
                self._send(wire.encode_auth_response(
                    wire.auth_mac(self._secret, message.nonce, self._identity)))  # fmt: skip
                log.info("answered the frontend's challenge")
            return None
        return message

    # ------------------------------------------------------------------ predicting

    def _serve(self, requests: list[wire.PredictRequest]) -> None:
        """Predict the requests (in groups of at most the max batch size) and answer each."""
        limit = self.config.max_batch_size
        groups = self._groups(requests, limit) if limit and len(requests) > 1 else (requests,)
        for group in groups:
            started = self._clock()
            answers, inputs, errors = self._predict_group(group)
            for request, (outputs, status) in zip(group, answers):
                if request.inputs is None:  # packed
                    self._send(wire.encode_packed_response(request.msg_id, outputs, status))
                else:  # a plain v3 peer reads errors from the outputs themselves
                    self._send(wire.encode_predict_response(request.msg_id, outputs))
            self.metrics.record_batch(len(group), inputs, self._last_sent - started, errors)

    @staticmethod
    def _groups(requests: list[wire.PredictRequest],
                limit: int) -> Iterator[list[wire.PredictRequest]]:  # fmt: skip
        group: list[wire.PredictRequest] = []
        size = 0
        for request in requests:
            n = len(request.sizes)
            if group and size + n > limit:
                yield group
                group, size = [], 0
            group.append(request)
            size += n
        if group:
            yield group

    def _predict_group(
        self, group: list[wire.PredictRequest]
    ) -> tuple[list[tuple[list[bytes], bytes]], int, int]:
        """Each request's outputs and status bytes (1: that output is an error), with how
        many inputs the group has and how many of them were answered with an error."""
        answers: list[tuple[list[bytes], bytes] | None] = [None] * len(group)
        good: list[int] = []
        total = n = errors = 0  # inputs: all of them, the good requests', the failed
        input_type = self.config.input_type
        for i, request in enumerate(group):
            size = len(request.sizes)
            total += size
            try:
                batching.validate(request, input_type)
            except PredictionError as exc:
                answers[i] = self._failed(request, str(exc))
                errors += size
            else:
                good.append(i)
                n += size
        if good:
            ok = group if len(good) == len(group) else [group[i] for i in good]
            try:
                outputs = self._predict(ok, n)
            except PredictionError as exc:
                message = str(exc)
                # Which inputs made the model raise? Only predicting each alone can say.
                isolate = isinstance(exc, _ModelRaised) and n > 1
                log.error("batch of %d inputs failed: %s%s", n, message,
                          "; predicting each input alone" if isolate else "")  # fmt: skip
                for i in good:
                    if isolate and group[i].packed:
                        answer = self._predict_alone(group[i])
                    else:
                        answer = self._failed(group[i], message)
                    answers[i] = answer
                    errors += answer[1].count(1)
            else:
                if len(good) == 1:  # most groups: one request, which gets every output
                    answers[good[0]] = (outputs, bytes(n))
                else:
                    pos = 0
                    for i in good:
                        size = len(group[i].sizes)
                        answers[i] = (outputs[pos : pos + size], bytes(size))
                        pos += size
        return answers, total, errors  # type: ignore[return-value]

    def _predict(self, requests: list[wire.PredictRequest], n: int, *,
                 quiet: bool = False) -> list[bytes]:  # fmt: skip
        """The outputs for the ``n`` inputs of ``requests``, calling the framework and
        converting anything it raises into PredictionError (``_ModelRaised``); ``quiet``
        logs the traceback at debug level only."""
        limit = self.config.max_batch_size
        try:
            if limit and n > limit:  # one request bigger than the limit: predict in chunks
                return [out for chunk in _chunks(requests[0], limit)
                        for out in self._call([chunk], len(chunk.sizes))]  # fmt: skip
            return self._call(requests, n)
        except PredictionError:
            raise
        except Exception as exc:  # the model's own failure, converted at this one boundary
            log.log(logging.DEBUG if quiet else logging.ERROR,
                    "predict raised on a batch of %d inputs:\n%s", n, traceback.format_exc())  # fmt: skip
            raise _ModelRaised(f"{type(exc).__name__}: {exc}") from exc

    def _predict_alone(self, request: wire.PredictRequest) -> tuple[list[bytes], bytes]:
        """A packed request of a batch that raised: each input predicted on its own, so that
        only the inputs the model raises on are answered with errors (status 1)."""
        outputs: list[bytes] = []
        status = bytearray()
        for single in _chunks(request, 1):
            try:
                outputs += self._predict([single], 1, quiet=True)
                status.append(0)
            except PredictionError as exc:
                outputs.append(batching.error_text(str(exc), plain=False))
                status.append(1)
        if status.count(1):
            log.error("request %d: %d of %d inputs failed on their own", request.msg_id,
                      status.count(1), len(status))  # fmt: skip
        return outputs, bytes(status)

    def _call(self, requests: list[wire.PredictRequest], n: int) -> list[bytes]:
        batch = batching.assemble(requests, self.config.input_type)
        self._predicting_since = self._clock()
        self._socket_lock.release()
        try:
            outputs = self.framework.predict(batch)
        finally:
            self._socket_lock.acquire()
            self._predicting_since = None
        return batching.encode_outputs(outputs, n)

    def _failed(self, request: wire.PredictRequest, message: str) -> tuple[list[bytes], bytes]:
        n = len(request.sizes)
        return [batching.error_text(message, plain=not request.packed)] * n, b"\x01" * n

    # ------------------------------------------------------------------ heartbeats

    def _heartbeat_while_predicting(self) -> None:
        """Keep the session alive while a long predict holds the loop (runs on a thread)."""
        interval = self.config.heartbeat_interval
        while not self._stopped.wait(min(interval / 2, 1.0)):
            since = self._predicting_since
            if since is None or self._clock() - max(since, self._last_sent) < interval:
                continue
            if not self._socket_lock.acquire(timeout=0.5):
                continue
            try:
                if self._predicting_since is not None and self._socket is not None:
                    self._send(wire.encode_heartbeat())
                    log.debug("heartbeat sent during a predict running for %.1f s",
                              self._clock() - since)  # fmt: skip
            except ChannelClosed:
                pass  # the loop finds out when the predict returns
            finally:
                self._socket_lock.release()


class _ModelRaised(PredictionError):
    """The model's predict raised (its output contract was not broken): the inputs it
    raises on may be a few of the batch."""


def _chunks(request: wire.PredictRequest, size: int) -> Iterator[wire.PredictRequest]:
    """Split one request into requests of at most ``size`` inputs (views, no copies)."""
    items = batching.items_of(request)
    for start in range(0, len(items), size):
        part = items[start : start + size]
        yield wire.PredictRequest(request.msg_id, request.input_type,
                                  tuple(len(p) for p in part), inputs=list(part))  # fmt: skip

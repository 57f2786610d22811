"""One replica serving every frontend: a session per frontend address (found through DNS,
or listed).

With ``SCHOONER_EVERY_FRONTEND=1``, ``CLIPPER_IP`` names every frontend rather than one: a
Kubernetes headless Service (which resolves to the address of each frontend pod), or a
comma-separated list of hosts. ``EveryFrontend`` resolves it every ``RESOLVE_INTERVAL_S``,
runs one ``Container`` session (the same machinery, its own socket and heartbeat) per address
found, stops the session of an address that went away, and keeps the last addresses when a
lookup fails. So N frontend pods share M replicas, each replica serving all of them, rather
than Clipper's one model Deployment per frontend (N x M replicas).

With ``SCHOONER_FRONTEND_ENDPOINTS`` the endpoints are listed instead (``unix:PATH`` or
``HOST:PORT``, no lookup): the workers of one frontend run with ``--workers N`` on this
machine, each with its own RPC socket, so that every worker reaches every replica.

The sessions share the loaded model, and its batches: one predict call at a time, so a
framework that is not thread-safe is safe here, and what the sessions bring while a predict
runs is **coalesced** into the next call (``_Coalescing``, up to the max batch size). Each
frontend (or worker) batches only the queries it holds itself; coalescing is what keeps the
model's batches as full as one frontend's would be. ``schooner_container_batch_size`` and
``schooner_container_predict_seconds`` count the model's calls (what it saw), the other
counters each session's requests.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from schooner.frameworks.base import Batch, Framework
from schooner.runtime.config import ContainerConfig, parse_endpoint
from schooner.runtime.container import Container
from schooner.runtime.metrics import ContainerMetrics

__all__ = ["EveryFrontend", "resolve_all", "RESOLVE_INTERVAL_S", "MAX_FRONTENDS"]

log = logging.getLogger(__name__)

RESOLVE_INTERVAL_S = 5.0  # how soon a new frontend pod gets this replica
MAX_FRONTENDS = 64  # sessions one replica keeps at most (more addresses are ignored, logged)
BUSY_S = 0.005  # a session that brought a batch this recently is busy (its next is coming)


def resolve_all(hosts: str, port: int) -> list[str]:
    """Every IPv4/IPv6 address the comma-separated ``hosts`` resolve to, sorted; raises
    OSError when none resolves."""
    found: set[str] = set()
    error: OSError | None = None
    for host in (h.strip() for h in hosts.split(",") if h.strip()):
        try:
            for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                found.add(str(sockaddr[0]))
        except OSError as exc:
            error = exc
    if not found:
        raise error or OSError(f"{hosts!r} names no host")
    return sorted(found)


class _Call:
    """One session's batch waiting to be predicted (with others') and, later, its answer."""

    __slots__ = ("batch", "size", "outputs", "error", "done")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.size = len(batch)
        self.outputs: Sequence[str] | None = None
        self.error: BaseException | None = None
        self.done = False


def _join(batches: list[Batch]) -> Batch:
    """The batches of several calls as one, in the form the runtime hands a framework: one
    2-D array when every input has the same size, else a list (of 1-D arrays, or of str)."""
    if all(isinstance(b, np.ndarray) and b.ndim == 2 for b in batches):
        widths = {b.shape[1] for b in batches}
        dtypes = {b.dtype for b in batches}
        if len(widths) == 1 and len(dtypes) == 1:
            return np.concatenate(batches)
    joined: list[Any] = []
    for b in batches:
        joined.extend(list(b))
    return joined


class _Coalescing:
    """The framework shared by the sessions' threads: one ``predict`` at a time, and the
    batches that sessions hand in while one runs are predicted together in the next call
    (up to ``max_inputs``; 0: any), by whichever waiting thread goes first. A joined call
    that raises, or breaks the output contract, is predicted again batch by batch, so each
    session sees what its own batch alone gives (the container isolates inputs from there).
    """

    def __init__(self, framework: Framework, max_inputs: int, metrics: ContainerMetrics,
                 wait_s: float = 0.0) -> None:
        self._framework = framework
        self._max_inputs = max_inputs
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._busy = False
        self._wait_s = wait_s
        self._seen: dict[int, float] = {}  # session thread -> when it last brought a batch

    def _busy_sessions(self) -> int:
        """Sessions that brought a batch in the last BUSY_S (0 when not waiting at all)."""
        if not self._wait_s:
            return 0
        now = time.monotonic()
        if len(self._seen) > 2 * MAX_FRONTENDS:  # threads of sessions long closed
            self._seen = {k: t for k, t in self._seen.items() if now - t < BUSY_S}
        return sum(1 for t in self._seen.values() if now - t < BUSY_S)

    def _full(self) -> bool:
        """The waiting calls already fill one batch."""
        limit = self._max_inputs
        return bool(limit) and sum(c.size for c in self._queue) >= limit

    def predict(self, batch: Batch) -> Sequence[str]:
        call = _Call(batch)
        with self._cond:
            self._queue.append(call)
            if self._wait_s:
                self._seen[threading.get_ident()] = time.monotonic()
                self._cond.notify_all()
            while True:
                while self._busy and not call.done:
                    self._cond.wait()
                if call.done:
                    break
                busy_sessions = self._busy_sessions()
                if len(self._queue) < busy_sessions and not self._full():
                    # the other busy sessions' batches are on their way: let them join
                    deadline = time.monotonic() + self._wait_s
                    while len(self._queue) < busy_sessions and not self._busy \
                            and not call.done and not self._full():  # fmt: skip
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._busy or call.done:
                        continue
                taken = self._take()
                self._busy = True
                self._cond.release()
                try:
                    self._run(taken)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.outputs is not None
        return call.outputs

    def _take(self) -> list[_Call]:
        """The oldest waiting calls that fit in one batch (at least one)."""
        limit, queue = self._max_inputs, self._queue
        taken, size = [queue[0]], queue[0].size
        while len(taken) < len(queue) and (not limit or size + queue[len(taken)].size <= limit):
            size += queue[len(taken)].size
            taken.append(queue[len(taken)])
        del queue[: len(taken)]
        return taken

    def _run(self, calls: list[_Call]) -> None:
        """Answer every call of ``calls`` (each ends ``done``, with outputs or an error),
        whatever happens here: the calls are out of the queue and their threads wait."""
        try:
            self._predict_calls(calls)
        except BaseException as exc:
            for c in calls:
                if not c.done:
                    c.error, c.done = exc, True
            if not isinstance(exc, Exception):
                raise

    def _predict_calls(self, calls: list[_Call]) -> None:
        if len(calls) > 1:
            total = sum(c.size for c in calls)
            try:
                joined = _join([c.batch for c in calls])
            except Exception as exc:  # (a MemoryError, say): each batch alone, below
                outputs: Any = exc
            else:
                outputs = self._timed(joined, total)
            if _sized(outputs) == total:
                pos = 0
                for c in calls:
                    c.outputs, c.done = outputs[pos : pos + c.size], True
                    pos += c.size
                return
            log.debug("a coalesced batch of %d calls failed; predicting each alone", len(calls))
        for c in calls:
            result = self._timed(c.batch, c.size)
            if isinstance(result, BaseException):
                c.error = result
            else:
                c.outputs = result
            c.done = True

    def _timed(self, batch: Batch, size: int) -> Any:
        """The framework's outputs for ``batch``, or what it raised; observed as one call."""
        started = time.monotonic()
        try:
            return self._framework.predict(batch)
        except Exception as exc:
            return exc
        finally:
            self._metrics.batch_size.observe(size)
            self._metrics.predict_latency.observe(time.monotonic() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._framework, name)


def _sized(outputs: Any) -> int:
    """How many outputs a framework returned (-1: it raised, or returned no sequence)."""
    if isinstance(outputs, BaseException | str | bytes) or not hasattr(outputs, "__getitem__"):
        return -1
    try:
        return len(outputs)
    except TypeError:
        return -1


class _SessionMetrics:
    """A session's view of the replica's metrics: its requests, inputs and errors are
    counted as the container records them; batch sizes and predict time are the model's own
    calls, observed by ``_Coalescing`` instead."""

    def __init__(self, shared: ContainerMetrics) -> None:
        object.__setattr__(self, "_shared", shared)

    def record_batch(self, requests: int, inputs: int, seconds: float, errors: int) -> None:
        shared = self._shared
        shared.requests += requests
        shared.inputs += inputs
        shared.errors += errors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._shared, name, value)


class EveryFrontend:
    """Serves one loaded framework to every frontend ``config.frontend_host`` names."""

    def __init__(
        self,
        config: ContainerConfig,
        framework: Framework,
        metrics: ContainerMetrics,
        *,
        resolve: Callable[[str, int], list[str]] = resolve_all,
        interval_s: float = RESOLVE_INTERVAL_S,
    ) -> None:
        self.config = config
        self.framework = cast(Framework, _Coalescing(framework, config.max_batch_size, metrics,
                                                     config.coalesce_wait_s))  # fmt: skip
        self.metrics = metrics
        self._session_metrics = cast(ContainerMetrics, _SessionMetrics(metrics))
        self._resolve = resolve
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self.sessions: dict[str, tuple[Container, threading.Thread]] = {}

    def run(self) -> None:
        """Until :meth:`stop`: follow the addresses, a session each; then stop them all."""
        try:
            while not self._stopped.is_set():
                self._follow()
                self._stopped.wait(self._interval_s)
        finally:
            for container, _ in self.sessions.values():
                container.stop()
            for _, thread in self.sessions.values():
                thread.join(timeout=10)
            self.sessions.clear()

    def stop(self) -> None:
        """Stop every session (safe from a signal handler)."""
        self._stopped.set()

    def _addresses(self) -> list[str]:
        cfg = self.config
        if cfg.frontend_endpoints:
            return list(cfg.frontend_endpoints)
        return self._resolve(cfg.frontend_host, cfg.frontend_port)

    def _session_config(self, address: str) -> ContainerConfig:
        cfg = self.config
        common = {"every_frontend": False, "frontend_endpoints": ()}
        if not cfg.frontend_endpoints:
            return dataclasses.replace(cfg, frontend_host=address, **common)  # type: ignore[arg-type]
        path, host, port = parse_endpoint(address)
        if path is not None:
            return dataclasses.replace(cfg, rpc_socket=path, **common)  # type: ignore[arg-type]
        return dataclasses.replace(cfg, rpc_socket=None, frontend_host=host, frontend_port=port,
                                   **common)  # type: ignore[arg-type]  # fmt: skip

    def _follow(self) -> None:
        cfg = self.config
        try:
            addresses = self._addresses()
        except OSError as exc:
            log.warning("cannot resolve %s (%s); keeping %d sessions", cfg.frontend_host, exc,
                        len(self.sessions))  # fmt: skip
            return
        if len(addresses) > MAX_FRONTENDS:
            log.warning("%s resolves to %d addresses; serving the first %d", cfg.frontend_host,
                        len(addresses), MAX_FRONTENDS)  # fmt: skip
            addresses = addresses[:MAX_FRONTENDS]
        for gone in set(self.sessions) - set(addresses):
            container, thread = self.sessions.pop(gone)
            log.info("frontend %s is gone: closing its session", gone)
            container.stop()
            thread.join(timeout=10)
        for address in addresses:
            if address in self.sessions:
                continue
            config = self._session_config(address)
            container = Container(config, self.framework, self._session_metrics)
            thread = threading.Thread(target=container.run, name=f"frontend-{address}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self.sessions[address] = (container, thread)
            log.info("serving frontend %s", config.frontend_address)

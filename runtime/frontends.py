"""One replica serving every frontend: a session per frontend address, found through DNS.

With ``SCHOONER_EVERY_FRONTEND=1``, ``CLIPPER_IP`` names every frontend rather than one: a
Kubernetes headless Service (which resolves to the address of each frontend pod), or a
comma-separated list of hosts. ``EveryFrontend`` resolves it every ``RESOLVE_INTERVAL_S``,
runs one ``Container`` session (the same machinery, its own socket and heartbeat) per address
found, stops the session of an address that went away, and keeps the last addresses when a
lookup fails. So N frontend pods share M replicas, each replica serving all of them, rather
than Clipper's one model Deployment per frontend (N x M replicas).

The sessions share the loaded model: one predict call at a time (a lock), so a framework
that is not thread-safe is safe here, and a replica's capacity is shared by its frontends as
the frontends' in-flight limits divide it.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from schooner.frameworks.base import Batch, Framework
from schooner.runtime.config import ContainerConfig
from schooner.runtime.container import Container
from schooner.runtime.metrics import ContainerMetrics

__all__ = ["EveryFrontend", "resolve_all", "RESOLVE_INTERVAL_S", "MAX_FRONTENDS"]

log = logging.getLogger(__name__)

RESOLVE_INTERVAL_S = 5.0  # how soon a new frontend pod gets this replica
MAX_FRONTENDS = 64  # sessions one replica keeps at most (more addresses are ignored, logged)


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


class _OneAtATime:
    """The framework, its ``predict`` serialized across the sessions' threads."""

    def __init__(self, framework: Framework) -> None:
        self._framework = framework
        self._lock = threading.Lock()

    def predict(self, batch: Batch) -> Sequence[str]:
        with self._lock:
            return self._framework.predict(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._framework, name)


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
        self.framework = cast(Framework, _OneAtATime(framework))
        self.metrics = metrics
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

    def _follow(self) -> None:
        cfg = self.config
        try:
            addresses = self._resolve(cfg.frontend_host, cfg.frontend_port)
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
            config = dataclasses.replace(cfg, frontend_host=address, every_frontend=False)
            container = Container(config, self.framework, self.metrics)
            thread = threading.Thread(target=container.run, name=f"frontend-{address}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self.sessions[address] = (container, thread)
            log.info("serving frontend %s:%d", address, cfg.frontend_port)

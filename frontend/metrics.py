"""Prometheus metrics of the frontend, in a registry of its own.

Labelled children are looked up once and cached, so recording a request costs a dict
lookup and an increment. ``render`` runs when ``GET /metrics`` is scraped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["FrontendMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class FrontendMetrics:
    """Every series the frontend exports. One instance per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "schooner_frontend_predictions", "Queries answered, per app", ["app"], registry=r
        )
        self._defaults = Counter(
            "schooner_frontend_default_outputs",
            "Queries answered with the default output, per app and reason",
            ["app", "reason"],
            registry=r,
        )
        self._latency = Histogram(
            "schooner_frontend_query_latency_seconds",
            "From the query's arrival to its answer, per app",
            ["app"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch = Histogram(
            "schooner_frontend_batch_size",
            "Queries per batch sent to a replica, per model version",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self._replicas = Gauge(
            "schooner_frontend_replicas", "Connected replicas, per model version", ["model"],
            registry=r,
        )  # fmt: skip
        self._bad_requests = Counter(
            "schooner_frontend_rejected_requests", "Requests answered with 4xx", ["status"],
            registry=r,
        )  # fmt: skip
        self._cache: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: object, *labels: str) -> object:
        key = (str(id(metric)), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)  # type: ignore[attr-defined]
        return child

    def answered(self, app: str, latency_s: float, default_reason: str | None) -> None:
        """One query answered (from the dispatcher, once per query)."""
        cache = self._cache
        child = cache.get(("q", app))
        if child is None:
            child = cache[("q", app)] = (self._requests.labels(app), self._latency.labels(app))
        counter, histogram = child
        counter.inc()
        histogram.observe(latency_s)
        if default_reason is not None:
            self._child(self._defaults, app, default_reason).inc()  # type: ignore[attr-defined]

    def batch(self, model: str, size: int) -> None:
        self._child(self._batch, model).observe(size)  # type: ignore[attr-defined]

    def replicas(self, model: str, count: int) -> None:
        self._child(self._replicas, model).set(count)  # type: ignore[attr-defined]

    def rejected(self, status: int) -> None:
        self._child(self._bad_requests, str(status)).inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)

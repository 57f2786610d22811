"""Prometheus metrics of the frontend, in a registry of its own.

The series recorded for every query and every batch (answers, latency and default outputs
per app, batch sizes per model) are plain counters in lists, bucketed with ``bisect`` and turned into
Prometheus families only when ``GET /metrics`` is scraped (``render``): recording one costs
a dict lookup and two additions, not prometheus_client's per-bucket Python loop and lock.
The same counts are exported a second time under Triton's names (``nv_inference_*``), which
the dashboards of Triton and KServe users graph.
Rarer series (rejections, replicas, cancellations) use prometheus_client directly, with
their labelled children looked up once and cached. Everything runs on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from schooner.runtime.metrics import BucketHistogram

__all__ = ["FrontendMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _HotSeries:
    """The per-query and per-batch series, exported at scrape time (a custom collector)."""

    def __init__(self) -> None:
        self.latency: dict[str, BucketHistogram] = {}
        self.batch: dict[str, BucketHistogram] = {}
        self.defaults: dict[str, int] = {}  # default outputs per app, all reasons
        self.default_reasons: dict[tuple[str, str], int] = {}  # per (app, reason)
        # model selection and the prediction cache, per (app, event or outcome)
        self.cache_events: dict[tuple[str, str], int] = {}
        self.shadow: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "schooner_frontend_predictions", "Queries answered, per app", labels=["app"]
        )
        latency = HistogramMetricFamily(
            "schooner_frontend_query_latency_seconds",
            "From the query's arrival to its answer, per app", labels=["app"],
        )  # fmt: skip
        for app, h in self.latency.items():
            answered.add_metric([app], sum(h.counts))
            latency.add_metric([app], h.cumulative(), sum_value=h.total)
        batch = HistogramMetricFamily(
            "schooner_frontend_batch_size", "Queries per batch sent to a replica, per model version",
            labels=["model"],
        )  # fmt: skip
        for model, h in self.batch.items():
            batch.add_metric([model], h.cumulative(), sum_value=h.total)
        defaults = CounterMetricFamily(
            "schooner_frontend_default_outputs",
            "Queries answered with the default output, per app and reason",
            labels=["app", "reason"],
        )
        for (app, reason), n in self.default_reasons.items():
            defaults.add_metric([app, reason], n)
        yield answered
        yield latency
        yield batch
        yield defaults
        for name, doc, counts in (
            ("schooner_frontend_cache_events",
             "Prediction cache: hit, miss, coalesced (waited for an identical pending query), "
             "evict, invalidated (dropped on a version change), per app", self.cache_events),
            ("schooner_frontend_shadow_comparisons",
             "Shadow copies: agree/disagree with the primary's answer, primary_default, "
             "shadow_default (shed, late or failed), skipped (not sent), per app", self.shadow),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=["app", "event" if "cache" in name
                                                            else "outcome"])  # fmt: skip
            for (app, label), n in counts.items():
                family.add_metric([app, label], n)
            yield family
        yield from self._triton_names()

    def _triton_names(self) -> Iterator[Metric]:
        """The same counts under the names Triton's dashboards graph (``nv_inference_*``),
        with Triton's labels: ``model`` (an app, or for batches its model) and ``version``.
        A Schooner "request" here is one query (one input, one row of an OIP tensor)."""
        families = {
            # "unknown" (untyped): prometheus_client would name a counter's samples *_total,
            # and the point of these series is Triton's exact names.
            name: Metric(name, doc, "unknown") for name, doc in (
                ("nv_inference_request_success", "Queries answered with a prediction"),
                ("nv_inference_request_failure", "Queries answered with the default output"),
                ("nv_inference_count", "Queries answered (inferences)"),
                ("nv_inference_exec_count", "Batches sent to replicas (model executions)"),
                ("nv_inference_request_duration_us", "Arrival to answer, summed, microseconds"),
            )
        }  # fmt: skip
        for app, h in self.latency.items():
            labels = {"model": app, "version": ""}
            total = sum(h.counts)
            failed = self.defaults.get(app, 0)
            for name, value in (
                ("nv_inference_request_success", total - failed),
                ("nv_inference_request_failure", failed),
                ("nv_inference_count", total),
                ("nv_inference_request_duration_us", round(h.total * 1e6)),
            ):
                families[name].add_sample(name, labels, value)
        for model, h in self.batch.items():
            name, _, version = model.partition(":")
            families["nv_inference_exec_count"].add_sample(
                "nv_inference_exec_count", {"model": name, "version": version}, sum(h.counts)
            )
        yield from families.values()


class FrontendMetrics:
    """Every series the frontend exports. One instance per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._hot = _HotSeries()
        r.register(self._hot)  # type: ignore[arg-type]
        self._replicas = Gauge(
            "schooner_frontend_replicas", "Connected replicas, per model version", ["model"],
            registry=r,
        )  # fmt: skip
        self._bad_requests = Counter(
            "schooner_frontend_rejected_requests", "Requests answered with 4xx", ["status"],
            registry=r,
        )  # fmt: skip
        self._cancelled = Counter(
            "schooner_frontend_cancelled_queries",
            "Queries dropped unanswered because their client went away", registry=r,
        )  # fmt: skip
        # the selection layer (schooner.frontend.selection); its per-query counts (cache
        # events, shadow comparisons) are plain counts in _HotSeries
        self._feedback = Counter(
            "schooner_frontend_feedback",
            "POST /<app>/update feedback: scored, unmatched (no recent answer), no_policy",
            ["app", "outcome"], registry=r,
        )  # fmt: skip
        self._cache: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: object, *labels: str) -> object:
        key = (str(id(metric)), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)  # type: ignore[attr-defined]
        return child

    def _latency(self, app: str) -> BucketHistogram:
        histogram = self._hot.latency.get(app)
        if histogram is None:
            histogram = self._hot.latency[app] = BucketHistogram(_LATENCY_BUCKETS)
        return histogram

    def answered(self, app: str, latency_s: float, default_reason: str | None) -> None:
        """One query answered (from the dispatcher, once per query)."""
        self._latency(app).observe(latency_s)
        if default_reason is not None:
            hot = self._hot
            key = (app, default_reason)
            hot.default_reasons[key] = hot.default_reasons.get(key, 0) + 1
            hot.defaults[app] = hot.defaults.get(app, 0) + 1

    def answered_many(self, app: str, latencies_s: list[float]) -> None:
        """Queries of ``app`` answered by a model (``answered`` with no default reason, for
        each latency, in order)."""
        self._latency(app).observe_many(latencies_s)

    def batch(self, model: str, size: int) -> None:
        histogram = self._hot.batch.get(model)
        if histogram is None:
            histogram = self._hot.batch[model] = BucketHistogram(_BATCH_BUCKETS)
        histogram.observe(size)

    def replicas(self, model: str, count: int) -> None:
        self._child(self._replicas, model).set(count)  # type: ignore[attr-defined]

    def cancelled(self, count: int) -> None:
        self._cancelled.inc(count)

    def rejected(self, status: int) -> None:
        self._child(self._bad_requests, str(status)).inc()  # type: ignore[attr-defined]

    def cache_event(self, app: str, event: str, count: int = 1) -> None:
        counts = self._hot.cache_events
        counts[(app, event)] = counts.get((app, event), 0) + count

    def shadow(self, app: str, outcome: str, count: int = 1) -> None:
        counts = self._hot.shadow
        counts[(app, outcome)] = counts.get((app, outcome), 0) + count

    def feedback(self, app: str, outcome: str) -> None:
        self._child(self._feedback, app, outcome).inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)

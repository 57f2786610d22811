"""Container metrics and health, served over HTTP from the container process itself.

The hot path only adds to plain integers and a bucket list (no locks, no label lookups);
the Prometheus text is built from them when ``/metrics`` is scraped. Endpoints:

* ``GET /metrics`` — Prometheus text format
* ``GET /health``  — 200 ``{"status": "ready"}`` once the model is loaded, else 503
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from schooner.runtime.errors import ConfigError

__all__ = ["BucketHistogram", "ContainerMetrics", "MetricsServer"]

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip


class BucketHistogram:
    """One labelled histogram series as plain numbers: a count per bucket (the last is
    +Inf), a sum and a count. Observing is a bisect and two additions, with no lock; the
    Prometheus buckets are built only when scraped. The frontend uses it too."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value: "le"
        self.total += value
        self.count += 1

    def observe_many(self, values: list[float]) -> None:
        """``observe`` each of ``values``, in order."""
        counts, bounds, total = self.counts, self.bounds, self.total
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        self.total = total
        self.count += len(values)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, observations <= le)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out

    def family(self, name: str, doc: str, labels: dict[str, str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), self.cumulative(), self.total)
        return fam


class ContainerMetrics(Collector):
    """Counters the container loop updates; a Prometheus collector over them."""

    def __init__(self, model_name: str, model_version: str):
        self.labels = {"model": model_name, "version": model_version}
        self.ready = False
        self.requests = 0  # prediction requests (messages) answered
        self.inputs = 0  # inputs predicted
        self.errors = 0  # inputs answered with an error
        self.malformed = 0  # messages that could not be decoded
        self.reconnects = 0
        self.batch_size = BucketHistogram(BATCH_BUCKETS)
        self.predict_latency = BucketHistogram(LATENCY_BUCKETS)

    def record_batch(self, requests: int, inputs: int, seconds: float, errors: int) -> None:
        self.requests += requests
        self.inputs += inputs
        self.errors += errors
        self.batch_size.observe(inputs)
        self.predict_latency.observe(seconds)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        names, values = list(self.labels), list(self.labels.values())
        for name, doc, value in (
            ("schooner_container_requests", "Prediction requests answered", self.requests),
            ("schooner_container_inputs", "Inputs predicted", self.inputs),
            ("schooner_container_errors", "Inputs answered with an error", self.errors),
            ("schooner_container_malformed_messages", "Messages that failed to decode",
             self.malformed),
            ("schooner_container_reconnects", "Sessions re-opened after silence", self.reconnects),
        ):  # fmt: skip
            fam = CounterMetricFamily(name, doc, labels=names)
            fam.add_metric(values, value)
            yield fam
        ready = GaugeMetricFamily("schooner_container_ready", "1 once the model is loaded",
                                  labels=names)  # fmt: skip
        ready.add_metric(values, 1.0 if self.ready else 0.0)
        yield ready
        yield self.batch_size.family(
            "schooner_container_batch_size", "Inputs per predict call", self.labels
        )
        yield self.predict_latency.family(
            "schooner_container_predict_seconds", "Time spent in predict per call", self.labels
        )


class MetricsServer:
    """``/metrics`` and ``/health`` on a daemon thread. Port 0 picks a free port."""

    def __init__(self, metrics: ContainerMetrics, host: str, port: int):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
                elif path in ("/health", "/ready", "/healthz"):
                    ok = metrics.ready
                    body = json.dumps({"status": "ready" if ok else "loading", **metrics.labels})
                    self._send(200 if ok else 503, body.encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("metrics http: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # a port in use, an address not on this machine, no permission
            raise ConfigError([
                f"SCHOONER_METRICS_HOST={host} SCHOONER_METRICS_PORT={port}: cannot listen "
                f"there ({exc.strerror or exc}); pick another port, or 0 for any free one"
            ]) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

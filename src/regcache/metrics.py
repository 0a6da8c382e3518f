"""Prometheus metrics, and the short memory of recent upstream errors the dashboard shows.

One `Metrics` per application, on its own collector registry, so that several servers in one
process (tests) never share counters. Gauges that mirror state (storage, downloads, rate
limits) are read when scraped, never kept in step by hand.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from regcache.manifest import INDEX_TYPES


@dataclass(frozen=True)
class UpstreamFailure:
    time: float
    upstream: str
    status: int | None
    message: str


class Metrics:
    """Every counter regcache keeps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("regcache_requests", "HTTP requests served",
                                ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram(
            "regcache_request_duration_seconds", "Time to answer a request", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )  # fmt: skip
        self.cache = Counter("regcache_cache_requests", "Pulls of cached repositories by outcome",
                             ["kind", "outcome"], registry=r)  # fmt: skip
        self.bytes = Counter("regcache_cache_bytes", "Blob and manifest bytes, by where from",
                             ["source"], registry=r)  # fmt: skip
        self.upstream_requests = Counter("regcache_upstream_requests", "Requests to upstreams",
                                         ["upstream", "method", "status"], registry=r)  # fmt: skip
        self.upstream_pulls = Counter(
            "regcache_upstream_pulls", "Manifest GETs that upstreams count as pulls",
            ["upstream"], registry=r,
        )  # fmt: skip
        self.gc_runs = Counter("regcache_gc_runs", "Garbage collections run", registry=r)
        self.recent_failures: deque[UpstreamFailure] = deque(maxlen=50)

    def observe_upstream(
        self, upstream: str, method: str, path: str, status: int | None, content_type: str
    ) -> None:
        """Count one upstream response (None: no response at all)."""
        self.upstream_requests.labels(upstream, method, str(status or "error")).inc()
        if (method == "GET" and status == 200 and path.startswith("manifests/")
                and content_type.split(";")[0].strip() not in INDEX_TYPES):  # fmt: skip
            self.upstream_pulls.labels(upstream).inc()

    def upstream_failed(self, upstream: str, status: int | None, message: str) -> None:
        self.recent_failures.appendleft(UpstreamFailure(time.time(), upstream, status, message))

    def failures(self) -> list[dict[str, object]]:
        return [asdict(failure) for failure in self.recent_failures]

    def add_collector(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Gauges computed at scrape time by `collect`."""

        class _Live(Collector):
            def collect(self) -> Iterable[GaugeMetricFamily]:
                return collect()

        self.registry.register(_Live())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    """One gauge sample, for collectors."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family

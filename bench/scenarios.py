"""The scenarios, run against each target in turn; every load is bounded in count and time."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from load import ACCEPT, LoadError, pull, stream_blob, write_accept_script, wrk
from report import Metric, Results
from targets import (
    TAG,
    NginxTarget,
    Published,
    RegcacheTarget,
    RegistryProxyTarget,
    Target,
    TargetError,
    Upstream,
    wait_warm,
)
from tooling.peers import http_request
from tooling.server import PeakRss

MIB = 1 << 20


@dataclass(frozen=True)
class Params:
    """Sizes, client counts and repetitions of one run."""

    reps: int
    blob_mib: int
    large_mib: int
    large_layers: int
    medium_mib: int
    medium_layers: int
    blob_clients: int = 8  # besides the single-client run
    pull_clients: int = 32
    stream_clients: int = 32
    blob_concurrency: int = 3  # blobs in flight per pull, as dockerd's default
    wrk_seconds: int = 5
    wrk_connections: int = 64
    wrk_threads: int = 2
    timeout: float = 300  # any single load step


FULL = Params(reps=3, blob_mib=1024, large_mib=512, large_layers=8, medium_mib=100, medium_layers=5)
QUICK = Params(
    reps=2,
    blob_mib=128,
    large_mib=64,
    large_layers=8,
    medium_mib=20,
    medium_layers=5,
    wrk_seconds=2,
    timeout=60,
)


def size_label(mib: int) -> str:
    """`1 GiB`, `512 MiB`."""
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def metrics(p: Params) -> list[Metric]:
    """The table's rows, labelled with this run's sizes and client counts."""
    blob, large, medium = size_label(p.blob_mib), size_label(p.large_mib), size_label(p.medium_mib)
    cold = f"{p.pull_clients} concurrent cold pulls, {medium}, {p.medium_layers} layers"
    rows = [
        Metric("blob_1", f"Warm blob GET, {blob}, 1 client", "MiB/s", True, digits=0),
        Metric(
            "blob_many", f"Warm blob GET, {blob}, {p.blob_clients} clients", "MiB/s", True, digits=0
        ),
        Metric(
            "blob_stream",
            f"Warm blob GET, {blob}, {p.stream_clients} clients (1 run)",
            "MiB/s",
            True,
            digits=0,
        ),
        Metric(
            "cold_large_s", f"Cold pull, {large}, {p.large_layers} layers, 1 client", "s", False
        ),
        Metric("cold_large_x", "… upstream blob bytes", "x image", False),
        Metric("cold_many_s", cold, "s", False),
        Metric(
            "cold_many_gets",
            f"… upstream blob GETs ({p.medium_layers + 1} blobs)",
            "GETs",
            False,
            digits=0,
        ),
        Metric(
            "cold_many_max_gets",
            "… upstream GETs of the most-fetched blob",
            "GETs",
            False,
            digits=0,
        ),
        Metric("cold_many_x", "… upstream blob bytes", "x image", False),
        Metric("warm_pull_1_s", f"Warm pull, {medium}, 1 client", "s", False, digits=3),
        Metric("warm_pull_many_s", f"Warm pull, {medium}, {p.pull_clients} clients", "s", False),
    ]
    for by in ("tag", "digest"):
        rows += [
            Metric(
                f"manifest_{by}_rps",
                f"Warm manifest GET by {by}, {p.wrk_connections} connections",
                "req/s",
                True,
                digits=0,
            ),
            Metric(f"manifest_{by}_p99", "… p99 latency", "ms", False, digits=1),
            Metric(
                f"manifest_{by}_upstream",
                "… upstream requests during the run",
                "requests",
                False,
                digits=0,
            ),
        ]
    rows += [
        Metric("rss_cold", f"Peak RSS during {cold}", "MiB", False, max, digits=0),
        Metric(
            "rss_stream",
            f"Peak RSS while {p.stream_clients} clients stream the {blob} blob",
            "MiB",
            False,
            max,
            digits=0,
        ),
    ]
    return rows


class Bench:
    """The upstream with its images, fresh targets on demand, and the results."""

    def __init__(self, params: Params, workdir: Path) -> None:
        self.params = params
        self.workdir = workdir
        self.results = Results(metrics(params))
        self.upstream = Upstream(workdir)
        self.images: dict[str, Published] = {}
        self.script = write_accept_script(workdir / "accept.lua")
        self.broken: dict[str, str] = {}  # targets that failed to start, with the reason
        self._runs = itertools.count()
        self._started = time.monotonic()

    def log(self, message: str) -> None:
        """Progress on stderr."""
        print(f"[{time.monotonic() - self._started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def setup(self) -> None:
        """Start the upstream and push the three images."""
        p = self.params
        self.upstream.start()
        for name, mib, layers in (
            ("blob", p.blob_mib, 1),
            ("large", p.large_mib, p.large_layers),
            ("medium", p.medium_mib, p.medium_layers),
        ):
            self.images[name] = self.upstream.publish(name, total_bytes=mib * MIB, layers=layers)
            self.log(f"upstream holds library/{name}:{TAG} ({size_label(mib)}, {layers} layers)")

    def close(self) -> None:
        """Stop the upstream."""
        self.upstream.stop()

    @contextmanager
    def target(self, kind: str) -> Iterator[Target]:
        """A freshly started target with an empty cache, removed afterwards."""
        if kind in self.broken:
            raise TargetError(self.broken[kind])
        workdir = self.workdir / f"{kind}-{next(self._runs)}"
        target: Target
        if kind == "regcache":
            target = RegcacheTarget(workdir, self.upstream.url)
        elif kind == "registry":
            target = RegistryProxyTarget(workdir, self.upstream.url)
        else:
            target = NginxTarget(workdir, self.upstream.blob_root)
        try:
            target.start()
        except Exception as exc:
            self.broken[kind] = str(exc)
            raise
        os.sync()  # no writeback left from the target before slows this one down
        try:
            yield target
        finally:
            target.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    @contextmanager
    def attempt(self, scenario: str, keys: Iterable[str], kind: str) -> Iterator[None]:
        """Record a failure of the enclosed steps against every metric not yet measured."""
        try:
            yield
        except Exception as exc:
            lines = str(exc).strip().splitlines() or [""]
            message = f"{type(exc).__name__}: {lines[0][:300]}"
            self.log(f"{kind}: {scenario} FAILED: {message}")
            self.results.fail(scenario, keys, kind, message)

    def add(self, key: str, kind: str, samples: list[float]) -> None:
        """Record a metric and show it."""
        self.results.add(key, kind, samples)
        metric = self.results.metrics[key]
        shown = ", ".join(metric.show(s) for s in samples)
        self.log(f"{kind}: {metric.label}: {shown} {metric.unit}")

    def pull(self, target: Target, image: Published, clients: int) -> float:
        """Wall seconds for `clients` concurrent verifying pulls of `image` by tag."""
        p = self.params
        return pull(
            target.url,
            image.repo,
            TAG,
            clients=clients,
            blob_concurrency=p.blob_concurrency,
            timeout=p.timeout,
        )


def warm_blob(b: Bench, kind: str) -> None:
    """Scenario 1 (and 6b): stream the big blob from a warm target to 1, N and 32 clients."""
    p, image = b.params, b.images["blob"]
    blob = image.largest
    keys = ["blob_1", "blob_many", "blob_stream", "rss_stream"]
    with b.attempt("warm blob GET", keys, kind), b.target(kind) as target:
        stream = functools.partial(
            stream_blob, target.blob_url(image.repo, blob.digest), blob.size, timeout=p.timeout
        )
        if kind != "nginx":
            stream(clients=1)
            wait_warm(b.upstream, [target.url], image.repo, [blob.digest], p.timeout)
        b.upstream.mark()
        b.add("blob_1", kind, [stream(clients=1).mib_per_s for _ in range(p.reps)])
        runs = [stream(clients=p.blob_clients).mib_per_s for _ in range(p.reps)]
        b.add("blob_many", kind, runs)
        with PeakRss(target.pid) as peak:
            b.add("blob_stream", kind, [stream(clients=p.stream_clients).mib_per_s])
        if kind != "nginx":  # nginx's workers are other processes
            b.add("rss_stream", kind, [peak.peak / MIB])
        b.results.detail("warm_blob_upstream_bytes", kind, b.upstream.traffic().blob_bytes)


def cold_large(b: Bench, kind: str) -> None:
    """Scenario 2: one client pulls the large image from an empty cache."""
    image = b.images["large"]
    seconds: list[float] = []
    ratios: list[float] = []
    with b.attempt("cold pull", ["cold_large_s", "cold_large_x"], kind):
        for _ in range(b.params.reps):
            with b.target(kind) as target:
                b.upstream.mark()
                seconds.append(b.pull(target, image, clients=1))
                ratios.append(b.upstream.traffic().blob_bytes / image.blob_bytes)
        b.add("cold_large_s", kind, seconds)
        b.add("cold_large_x", kind, ratios)


COLD_KEYS = ["cold_many_s", "cold_many_gets", "cold_many_max_gets", "cold_many_x", "rss_cold"]
WARM_KEYS = ["warm_pull_1_s", "warm_pull_many_s"]
MANIFEST_KEYS = [
    f"manifest_{by}_{m}" for by in ("tag", "digest") for m in ("rps", "p99", "upstream")
]


def cold_many(b: Bench, kind: str) -> None:
    """Scenarios 3 and 6a, then 4 and 5 on the cache the last repetition filled."""
    p, image = b.params, b.images["medium"]
    samples: dict[str, list[float]] = {key: [] for key in COLD_KEYS}
    with b.attempt("concurrent cold pulls", COLD_KEYS + WARM_KEYS + MANIFEST_KEYS, kind):
        for rep in range(p.reps):
            with b.target(kind) as target:
                b.upstream.mark()
                with PeakRss(target.pid) as peak:
                    samples["cold_many_s"].append(b.pull(target, image, clients=p.pull_clients))
                traffic = b.upstream.traffic()
                samples["rss_cold"].append(peak.peak / MIB)
                samples["cold_many_gets"].append(sum(traffic.blob_gets.values()))
                samples["cold_many_max_gets"].append(max(traffic.blob_gets.values(), default=0))
                samples["cold_many_x"].append(traffic.blob_bytes / image.blob_bytes)
                b.results.detail("cold_many_gets_per_digest", kind, dict(traffic.blob_gets))
                if rep == p.reps - 1:
                    for key, values in samples.items():
                        b.add(key, kind, values)
                    warm_pulls(b, kind, target, image)
                    manifests(b, kind, target, image)


def warm_pulls(b: Bench, kind: str, target: Target, image: Published) -> None:
    """Scenario 4: pulls of an image the target already holds, by 1 and N clients."""
    p = b.params
    with b.attempt("warm pull", WARM_KEYS, kind):
        digests = [blob.digest for blob in image.image.blobs]
        wait_warm(b.upstream, [target.url], image.repo, digests, p.timeout)
        for key, clients in (("warm_pull_1_s", 1), ("warm_pull_many_s", p.pull_clients)):
            b.upstream.mark()
            b.add(key, kind, [b.pull(target, image, clients) for _ in range(p.reps)])
            b.results.detail(f"{key}_upstream_requests", kind, b.upstream.traffic().requests)


def manifests(b: Bench, kind: str, target: Target, image: Published) -> None:
    """Scenario 5: wrk on the manifest by tag and by digest, counting upstream requests."""
    p = b.params
    for by, ref in (("tag", TAG), ("digest", image.image.digest)):
        keys = [key for key in MANIFEST_KEYS if key.startswith(f"manifest_{by}_")]
        with b.attempt(f"manifest GET by {by}", keys, kind):
            url = f"{target.url}/v2/{image.repo}/manifests/{ref}"
            status, _, body = http_request("GET", url, headers={"Accept": ACCEPT})
            if status != 200:
                raise LoadError(f"GET {url}: HTTP {status} {body[:200].decode(errors='replace')}")
            runs, upstream = [], []
            for _ in range(p.reps):
                b.upstream.mark()
                runs.append(
                    wrk(
                        url,
                        b.script,
                        seconds=p.wrk_seconds,
                        connections=p.wrk_connections,
                        threads=p.wrk_threads,
                    )
                )
                upstream.append(float(b.upstream.traffic().requests))
            b.add(f"manifest_{by}_rps", kind, [run.requests_per_s for run in runs])
            b.add(f"manifest_{by}_p99", kind, [run.p99_ms for run in runs])
            b.add(f"manifest_{by}_upstream", kind, upstream)
            b.results.detail(f"manifest_{by}_socket_errors", kind, [r.socket_errors for r in runs])


SCENARIOS: list[tuple[Callable[[Bench, str], None], tuple[str, ...]]] = [
    (warm_blob, ("regcache", "registry", "nginx")),
    (cold_large, ("regcache", "registry")),
    (cold_many, ("regcache", "registry")),
]


def run_all(b: Bench, targets: Iterable[str]) -> None:
    """Every scenario against every chosen target it applies to."""
    chosen = set(targets)
    for scenario, kinds in SCENARIOS:
        for kind in kinds:
            if kind in chosen:
                scenario(b, kind)

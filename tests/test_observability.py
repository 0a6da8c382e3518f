"""Metrics, log lines and health endpoints after real cold and warm pulls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tooling.images import Image, make_image
from tooling.oci import OCI_MANIFEST
from tooling.peers import DockerRegistry, push_layout
from tooling.server import Regcache

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Regcache, Image]]:
    root = tmp_path_factory.mktemp("observability")
    image = make_image(root / "layout", "1.0.0", layers=2, layer_size=300_000)
    with DockerRegistry(root / "registry") as upstream:
        push_layout(root / "layout", "1.0.0", upstream.url, "library/app")
        config = root / "regcache.json"
        config.write_text(json.dumps({
            "log_format": "json", "admin_token": "t",
            "upstreams": [{"name": "hub", "url": upstream.url, "prefix": "docker.io",
                           "mirror": True}],
        }))  # fmt: skip
        with Regcache(root / "rc", config=config) as cache:
            yield cache, image


def samples(cache: Regcache) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{cache.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }  # fmt: skip


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def pull(cache: Regcache, image: Image) -> None:
    got = requests.get(f"{cache.url}/v2/library/app/manifests/1.0.0",
                       headers={"Accept": OCI_MANIFEST}, timeout=30)  # fmt: skip
    assert got.status_code == 200
    for blob in image.blobs:
        assert requests.get(f"{cache.url}/v2/library/app/blobs/{blob.digest}").status_code == 200


def test_metrics_count_a_cold_then_a_warm_pull(setup: tuple[Regcache, Image]) -> None:
    cache, image = setup
    blob_bytes = sum(b.size for b in image.blobs)
    pull(cache, image)
    cold = samples(cache)
    assert value(cold, "regcache_cache_requests_total", kind="manifest", outcome="miss") == 1
    assert value(cold, "regcache_cache_requests_total", kind="blob", outcome="miss") == 3
    assert value(cold, "regcache_cache_requests_total", kind="blob", outcome="hit") == 0
    assert value(cold, "regcache_cache_bytes_total", source="upstream") == image.size + blob_bytes
    assert value(cold, "regcache_upstream_pulls_total", upstream="hub") == 1
    assert value(cold, "regcache_upstream_requests_total", upstream="hub", method="GET",
                 status="200") == 4  # fmt: skip
    pull(cache, image)
    warm = samples(cache)
    assert value(warm, "regcache_cache_requests_total", kind="manifest", outcome="hit") == 1
    assert value(warm, "regcache_cache_requests_total", kind="blob", outcome="hit") == 3
    assert value(warm, "regcache_cache_bytes_total", source="cache") == image.size + blob_bytes
    assert value(warm, "regcache_upstream_requests_total", upstream="hub", method="GET",
                 status="200") == 4  # the warm pull asked nothing upstream  # fmt: skip
    assert value(warm, "regcache_requests_total", route="blobs", method="GET", status="200") == 6
    assert value(warm, "regcache_request_duration_seconds_count", route="manifests") == 2
    storage = requests.get(f"{cache.url}/admin/storage", headers={"Authorization": "Bearer t"})
    assert value(warm, "regcache_storage_used_bytes") == storage.json()["used"] > blob_bytes
    assert value(warm, "regcache_downloads_in_flight") == 0
    overview = requests.get(f"{cache.url}/admin/overview", headers={"Authorization": "Bearer t"})
    traffic = overview.json()["traffic"]
    assert (traffic["hits"], traffic["misses"]) == (4, 4) and traffic["hit_ratio"] == 0.5
    assert traffic["bytes_from_cache"] == image.size + blob_bytes


def test_one_json_line_per_request_and_per_upstream_call(setup: tuple[Regcache, Image]) -> None:
    cache, image = setup
    pull(cache, image)
    pull(cache, image)  # from the cache, if an earlier test did not fill it already
    lines = [json.loads(line) for line in cache.log().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "regcache.access"]
    blob_lines = [e for e in access if e.get("reference") == image.blobs[-1].digest]
    outcomes = [e["cache"] for e in blob_lines]
    assert outcomes[0] == "miss" and set(outcomes[1:]) == {"hit"}
    for blob in blob_lines:  # bytes on the wire: the headers and the whole body, sent either way
        assert blob["repository"] == "docker.io/library/app" and blob["tenant"] == "default"
        assert blob["method"] == "GET" and blob["status"] == 200 and blob["client"] == "127.0.0.1"
        assert image.blobs[-1].size < blob["bytes"] < image.blobs[-1].size + 1024
        assert blob["duration"] >= 0
    upstream = [e for e in lines if e["logger"] == "regcache.upstream"]
    assert upstream and all(e["upstream"] == "hub" and "status" in e for e in upstream)


def test_health_and_readiness(setup: tuple[Regcache, Image]) -> None:
    cache, _ = setup
    assert requests.get(f"{cache.url}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{cache.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "store": "writable", "database": "open",
                            "upstreams": {"hub": "ok"}}  # fmt: skip


def test_not_ready_when_the_store_is_not_writable(tmp_path: Path) -> None:
    with Regcache(tmp_path) as cache:
        tmp = cache.data_dir / "tmp"
        tmp.rename(cache.data_dir / "tmp.away")
        tmp.write_text("a file where the temporary folder should be")  # even root cannot write
        try:
            ready = requests.get(f"{cache.url}/readyz")
            assert ready.status_code == 503 and ready.json()["store"].startswith("not writable")
            assert requests.get(f"{cache.url}/healthz").status_code == 200
        finally:
            tmp.unlink()
            (cache.data_dir / "tmp.away").rename(tmp)

"""Three replicas sharing one SeaweedFS bucket and one PostgreSQL database: one upstream
download per digest across the fleet, a replica killed mid-download taken over without a
corrupt byte, and one quota for everyone. The upstream is a real docker-registry behind the
Docker Hub emulator, which counts every blob it sends."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from conftest import Engines
from tooling.dockerhub import DockerHub
from tooling.images import Image, make_image
from tooling.peers import DockerRegistry, push_layout
from tooling.server import Regcache

pytestmark = pytest.mark.peers
MiB = 1 << 20
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
IMAGES = {"hundred": (5, 20 * MiB), "slow": (3, 40 * MiB)} | {
    f"small{i}": (2, 5 * MiB) for i in range(9)
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockerHub, dict[str, Image]]]:
    root = tmp_path_factory.mktemp("fleet")
    layout = root / "layout"
    images = {name: make_image(layout, name, layers=n, layer_size=size)
              for name, (n, size) in IMAGES.items()}  # fmt: skip
    with DockerRegistry(root / "registry") as registry:
        for name, image in images.items():
            push_layout(layout, name, registry.url, f"library/{name}")
            requests.put(
                f"{registry.url}/v2/library/{name}/manifests/1.0.0", data=image.manifest,
                headers={"Content-Type": image.media_type},
            ).raise_for_status()  # fmt: skip
        with DockerHub(root, registry.url) as hub:
            yield hub, images


class Fleet:
    """Replicas on one bucket and one database, each told the others' way to it."""

    def __init__(self, root: Path, hub: DockerHub, shared: dict[str, Any], **extra: Any) -> None:
        self.replicas = [Regcache(root / f"replica{i}") for i in range(3)]
        for replica in self.replicas:
            replica.workdir.mkdir(parents=True)
            config = {
                **shared, **extra,
                "upstreams": [{"name": "hub", "url": hub.url, "prefix": "docker.io",
                               "mirror": True, "docker_hub": True}],
                "fleet": {"address": replica.url, "token": "fleet-secret", "lease_seconds": 5},
            }  # fmt: skip
            replica.config = replica.workdir / "config.json"
            replica.config.write_text(json.dumps(config))
            replica.start()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def fleet_of(world, engines: Engines, tmp_path: Path) -> Iterator[Any]:
    hub, _ = world
    started: list[Fleet] = []

    def start(**extra: Any) -> Fleet:
        hub.reset()
        started.append(Fleet(tmp_path, hub, engines.settings(), **extra))
        return started[-1]

    yield start
    for fleet in started:
        fleet.stop()


def pull(url: str, name: str) -> list[bool | str]:
    """Pull an image through `url`: True for each blob that arrived with its digest, else
    what went wrong."""
    base = f"{url}/v2/docker.io/library/{name}"
    manifest = requests.get(f"{base}/manifests/1.0.0", headers=ACCEPT, timeout=60).json()
    results = []
    for layer in [manifest["config"], *manifest["layers"]]:
        try:
            got = requests.get(f"{base}/blobs/{layer['digest']}", timeout=120)
            digest = "sha256:" + hashlib.sha256(got.content).hexdigest()
            results.append(digest == layer["digest"] or f"{got.status_code} {got.text[:200]}")
        except requests.RequestException as exc:
            results.append(f"{url}: {exc}")
    return results


def test_one_upstream_download_per_digest_across_three_replicas(world, fleet_of) -> None:
    hub, images = world
    fleet = fleet_of()
    urls = [replica.url for replica in fleet.replicas]
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda i: pull(urls[i % 3], "hundred"), range(30)))
    assert all(layers == [True] * len(layers) for layers in results), results
    image = images["hundred"]
    digests = [blob.digest for blob in image.blobs]
    assert hub.stats()["blob_gets"] == dict.fromkeys(digests, 1)


def pull_blob(url: str) -> None:
    """GET a blob from the replica that will be killed (its client is cut off)."""
    with contextlib.suppress(requests.RequestException):
        requests.get(url, timeout=120)


def _metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_replica_killed_mid_download_is_taken_over(world, fleet_of) -> None:
    hub, images = world
    fleet = fleet_of()
    first, *others = fleet.replicas
    requests.get(f"{first.url}/v2/docker.io/library/slow/manifests/1.0.0", headers=ACCEPT)
    hub.set_mode("trickle")  # about 25 MB/s: a 40 MiB layer takes well over a second
    try:
        layer = json.loads(images["slow"].manifest)["layers"][0]["digest"]
        path = f"v2/docker.io/library/slow/blobs/{layer}"
        owner = threading.Thread(target=pull_blob, args=(f"{first.url}/{path}",))
        owner.start()
        deadline = time.monotonic() + 30
        while _metric(first.url, "regcache_downloads_in_flight") < 1:
            assert time.monotonic() < deadline, "the first replica never started downloading"
            time.sleep(0.02)
        with ThreadPoolExecutor(6) as pool:
            pulls = [pool.submit(pull, others[i % 2].url, "slow") for i in range(6)]
            while _metric(first.url, "regcache_download_waiters") < 3:  # relays joined it
                assert time.monotonic() < deadline, "the other replicas never relayed"
                time.sleep(0.02)
            first.kill()
            results = [p.result() for p in pulls]
        owner.join()
    finally:
        hub.set_mode("normal")
    assert all(all(layers) for layers in results)
    gets = hub.stats()["blob_gets"]
    assert gets[layer] == 2  # asked again once, by the replica that took over
    assert {d: n for d, n in gets.items() if d != layer} == {
        blob.digest: 1 for blob in images["slow"].blobs if blob.digest != layer
    }


def test_quota_holds_across_the_fleet(world, fleet_of, engines: Engines) -> None:
    _, images = world
    quota = 24 * MiB
    fleet = fleet_of(quota_bytes=quota)
    settings = json.loads(fleet.replicas[0].config.read_text())
    bucket = settings["object_storage"]["bucket"]
    s3 = engines.s3.client()
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(settings["database_url"], autocommit=True) as db:
            while not stop.is_set():
                accounted = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
                stored = sum(
                    item["Size"]
                    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                    for item in page.get("Contents", [])
                )
                samples.append((int(accounted), stored))
                time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        names = [f"small{i}" for i in range(9)]  # 9 images of 10 MiB: more than 3 times the quota
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(
                lambda i: [pull(fleet.replicas[i].url, n) for n in names[i::3]], range(3)
            ))  # fmt: skip
    finally:
        stop.set()
        sampler.join()
    assert all(all(layers) for image in results for layers in image)
    total = sum(images[n].total_bytes for n in names)
    assert total > 3 * quota
    assert len(samples) > 10
    assert max(accounted for accounted, _ in samples) <= quota
    assert max(stored for _, stored in samples) <= quota

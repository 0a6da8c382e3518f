"""One upstream download per digest, streamed to every client; crashes never serve a partial
blob. Upstream requests are counted from Debian's docker-registry's own access log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from tooling.images import Image, make_image
from tooling.peers import DockerRegistry, blob_gets, push_layout
from tooling.server import Regcache
from urllib3.exceptions import ProtocolError

pytestmark = pytest.mark.peers
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockerRegistry, dict]]:
    work = tmp_path_factory.mktemp("single-flight")
    images = {
        "medium": make_image(work / "layout", "medium", layers=5, layer_size=100 * MiB // 5),
        "large": make_image(work / "layout", "large", layers=2, layer_size=250 * MiB),
    }
    with DockerRegistry(work / "registry") as registry:
        for tag in images:
            push_layout(work / "layout", tag, registry.url, "library/app")
        yield registry, images


def cache_for(registry: DockerRegistry, workdir: Path) -> Regcache:
    config = workdir / "regcache.json"
    config.write_text(json.dumps({"upstreams": [
        {"name": "up", "url": registry.url, "prefix": "docker.io", "mirror": True},
    ]}))  # fmt: skip
    return Regcache(workdir, config=config)


def pull_image(url: str, image: Image, *, quit_after: int | None = None) -> set[str]:
    """Pull every blob of `image` through the mirror path, returning the digests received
    intact; with `quit_after`, hang up after that many bytes of each blob."""
    got = requests.get(f"{url}/v2/library/app/manifests/{image.tag}",
                       headers={"Accept": image.media_type}, timeout=120)  # fmt: skip
    assert got.content == image.manifest
    intact = set()
    for blob in image.blobs:
        hasher, received = hashlib.sha256(), 0
        with requests.get(f"{url}/v2/library/app/blobs/{blob.digest}", stream=True,
                          timeout=120) as response:  # fmt: skip
            assert response.status_code == 200
            for chunk in response.iter_content(MiB):
                hasher.update(chunk)
                received += len(chunk)
                if quit_after is not None and received >= quit_after:
                    break
        if "sha256:" + hasher.hexdigest() == blob.digest:
            intact.add(blob.digest)
    return intact


def test_32_concurrent_cold_pulls_fetch_each_blob_once(upstream, tmp_path) -> None:
    registry, images = upstream
    image = images["medium"]
    registry.reset_log_position()
    with cache_for(registry, tmp_path) as cache, ThreadPoolExecutor(32) as pool:
        # four clients give up after the first MiB of each blob: the others must not notice
        quitters = [pool.submit(pull_image, cache.url, image, quit_after=MiB) for _ in range(4)]
        results = list(pool.map(lambda _: pull_image(cache.url, image), range(28)))
        for quitter in quitters:
            quitter.result()
    expected = {blob.digest for blob in image.blobs}
    assert all(result == expected for result in results)
    counts = blob_gets(registry.requests())
    assert {digest: counts[digest] for digest in expected} == dict.fromkeys(expected, 1)
    assert sum(counts.values()) == len(expected)


def test_range_requests_and_late_joiners_during_a_download(upstream, tmp_path) -> None:
    registry, images = upstream
    blob = images["large"].blobs[-1]
    registry.reset_log_position()
    with cache_for(registry, tmp_path) as cache:
        url = f"{cache.url}/v2/library/app/blobs/{blob.digest}"
        first = requests.get(url, stream=True, timeout=120)
        head = first.raw.read(MiB)
        ranged = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=120)
        late = requests.get(url, timeout=120)
        rest = first.raw.read()
    whole = head + rest
    assert "sha256:" + hashlib.sha256(whole).hexdigest() == blob.digest
    assert late.content == whole
    assert ranged.status_code == 206 and ranged.content == whole[100:200]
    assert blob_gets(registry.requests())[blob.digest] == 1


def _partial_files(cache: Regcache) -> list[int]:
    return [p.stat().st_size for p in (cache.data_dir / "tmp").glob("*") if p.is_file()]


def test_sigkill_during_a_500_mib_cold_pull(upstream, tmp_path) -> None:
    registry, images = upstream
    image = images["large"]
    cache = cache_for(registry, tmp_path).start()
    try:
        blob = image.blobs[-1]
        url = f"{cache.url}/v2/library/app/blobs/{blob.digest}"
        reader = requests.get(url, stream=True, timeout=120)

        def drain() -> None:
            with contextlib.suppress(requests.RequestException, ProtocolError):
                reader.raw.read()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while max(_partial_files(cache), default=0) < 50 * MiB and time.monotonic() < deadline:
            time.sleep(0.005)
        assert max(_partial_files(cache)) >= 50 * MiB  # killed in the middle of the download
        cache.kill()
        assert not list((cache.data_dir / "blobs").rglob(blob.digest.split(":")[1]))
        cache.start()
        assert _partial_files(cache) == []
        assert pull_image(cache.url, image) == {b.digest for b in image.blobs}
    finally:
        cache.stop()

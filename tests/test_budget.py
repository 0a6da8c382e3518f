"""The storage budget: quota with LRU eviction, pins, shared layers, crashes, the admin API
and CLI. The upstream is Debian's docker-registry; its access log counts what it served."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from tooling.images import make_image, make_index
from tooling.peers import DockerRegistry, blob_gets, push_layout
from tooling.server import PeakRss, Regcache

from regcache.config import load_settings
from regcache.digest import Digest
from regcache.manifest import OCI_MANIFEST, parse_manifest
from regcache.registry import Registry
from regcache.store.metadata import CACHED

pytestmark = pytest.mark.peers
MiB = 1024 * 1024
TOKEN = "admin-token-for-tests"
QUOTA = 8 * MiB


class World:
    """An upstream holding twelve distinct 1.5 MiB images and two that share a base layer."""

    def __init__(self, root: Path) -> None:
        layout = root / "layout"
        self.images = [
            make_image(layout, f"img{i}", layers=2, layer_size=768 * 1024) for i in range(12)
        ]
        self.pair = make_index(layout, "pair", layers=2, layer_size=MiB, shared_base=True)
        self.registry = DockerRegistry(root / "registry")

    def push(self, layout: Path) -> None:
        for image in self.images:
            push_layout(layout, image.tag, self.registry.url, f"library/{image.tag}")
        push_layout(layout, "pair", self.registry.url, "library/pair")
        index = json.loads(self.pair.manifest)
        for name, child in zip(("a", "b"), index["manifests"], strict=True):
            body = (layout / "blobs" / "sha256" / child["digest"].split(":")[1]).read_bytes()
            requests.put(f"{self.registry.url}/v2/library/pair/manifests/{name}", data=body,
                         headers={"Content-Type": OCI_MANIFEST}).raise_for_status()  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("budget")
    world = World(root)
    with world.registry:
        world.push(root / "layout")
        yield world


def start_cache(world: World, workdir: Path, **settings: object) -> Regcache:
    config = workdir / "regcache.json"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "quota_bytes": QUOTA, "min_free_bytes": 0, "admin_token": TOKEN,
        "upstreams": [{"name": "up", "url": world.registry.url, "prefix": "docker.io",
                       "mirror": True}],
        **settings,
    }))  # fmt: skip
    return Regcache(workdir, config=config).start()


def admin(cache: Regcache, method: str, path: str, **kwargs: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return requests.request(method, f"{cache.url}/admin/{path}", headers=headers, timeout=300,
                            **kwargs)  # fmt: skip


def pull(cache: Regcache, repo: str, ref: str) -> str:
    accept = f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"
    got = requests.get(f"{cache.url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept},
                       timeout=60)  # fmt: skip
    assert got.status_code == 200, got.text
    doc = got.json()
    for blob in [doc["config"], *doc["layers"]]:
        data = requests.get(f"{cache.url}/v2/{repo}/blobs/{blob['digest']}", timeout=60).content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]
    return got.headers["Docker-Content-Digest"]


def run_cli(cache: Regcache, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGCACHE_URL": cache.url, "REGCACHE_ADMIN_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "regcache", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)  # fmt: skip


def test_pulling_three_times_the_quota_stays_within_it(world: World, tmp_path: Path) -> None:
    cache = start_cache(world, tmp_path)
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            summary = admin(cache, "GET", "storage").json()
            on_disk = sum(p.stat().st_size for p in (cache.data_dir / "blobs").rglob("*")
                          if p.is_file())  # fmt: skip
            samples.append((summary["used"] + summary["reserved"], on_disk))
            time.sleep(0.01)

    try:
        first = world.images[0]
        assert pull(cache, "library/img0", "img0") == first.digest
        assert admin(cache, "POST", "pin", json={"repository": "docker.io/library/img0",
                                                 "ref": "img0"}).status_code == 200  # fmt: skip
        sampler = threading.Thread(target=sample)
        sampler.start()
        for image in world.images[1:]:
            assert pull(cache, f"library/{image.tag}", image.tag) == image.digest
        stop.set()
        sampler.join()
        assert samples and all(accounted <= QUOTA and disk <= QUOTA for accounted, disk in samples)
        total = sum(i.total_bytes for i in world.images)
        assert total > 3 * QUOTA * 0.6  # the images really are far larger than the quota
        world.registry.reset_log_position()
        assert pull(cache, "library/img0", "img0") == first.digest  # pinned: still cached
        assert not blob_gets(world.registry.requests())
        assert pull(cache, "library/img1", "img1") == world.images[1].digest  # evicted: again
        assert set(blob_gets(world.registry.requests())) == {
            b.digest for b in world.images[1].blobs
        }
        listing = {i["repository"]: i for i in admin(cache, "GET", "images").json()["images"]}
        assert listing["docker.io/library/img0"]["pinned"] is True
        assert listing["docker.io/library/img0"]["pulls"] >= 2
        assert admin(cache, "GET", "storage").json()["evictions"] > 0
    finally:
        stop.set()
        cache.stop()


def test_downloads_in_flight_survive_eviction(world: World, tmp_path: Path) -> None:
    cache = start_cache(world, tmp_path)
    try:
        slow = world.images[0].blobs[-1]
        reader = requests.get(f"{cache.url}/v2/library/img0/blobs/{slow.digest}", stream=True,
                              timeout=60)  # fmt: skip
        first = reader.raw.read(1000)
        for image in world.images[1:8]:
            pull(cache, f"library/{image.tag}", image.tag)
        rest = reader.raw.read()
        assert "sha256:" + hashlib.sha256(first + rest).hexdigest() == slow.digest
    finally:
        cache.stop()


def test_evicting_an_image_keeps_layers_another_image_uses(world: World, tmp_path: Path) -> None:
    cache = start_cache(world, tmp_path)
    try:
        a, b = pull(cache, "library/pair", "a"), pull(cache, "library/pair", "b")
        deleted = admin(cache, "DELETE", "images",
                        params={"repository": "docker.io/library/pair", "ref": "a"})  # fmt: skip
        assert deleted.status_code == 200, deleted.text
        world.registry.reset_log_position()
        assert pull(cache, "library/pair", "b") == b
        assert not blob_gets(world.registry.requests())  # the shared base layer was kept
        assert pull(cache, "library/pair", "a") == a  # and the deleted image comes back
        base = json.loads(cache_manifest(cache, "library/pair", "a"))["layers"][0]["digest"]
        assert base not in blob_gets(world.registry.requests())
    finally:
        cache.stop()


def cache_manifest(cache: Regcache, repo: str, ref: str) -> bytes:
    return requests.get(f"{cache.url}/v2/{repo}/manifests/{ref}",
                        headers={"Accept": OCI_MANIFEST}, timeout=60).content  # fmt: skip


def test_admin_api_refuses_missing_or_wrong_tokens(world: World, tmp_path: Path) -> None:
    cache = start_cache(world, tmp_path)
    try:
        for method, path in [("GET", "storage"), ("GET", "images"), ("GET", "repositories"),
                             ("DELETE", "images"), ("POST", "pin"), ("POST", "unpin"),
                             ("POST", "prune"), ("POST", "gc"), ("GET", "nothing")]:  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = requests.request(method, f"{cache.url}/admin/{path}", headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert admin(cache, "GET", "storage").status_code == 200
    finally:
        cache.stop()
    closed = start_cache(world, tmp_path / "closed", admin_token=None)
    try:
        response = requests.get(f"{closed.url}/admin/storage", headers={"Authorization": "x"})
        assert response.status_code == 401 and "disabled" in response.text
    finally:
        closed.stop()


def test_cli_tables_json_and_errors_in_words(world: World, tmp_path: Path) -> None:
    cache = start_cache(world, tmp_path, quota_bytes=64 * MiB)
    try:
        for image in world.images[:3]:
            pull(cache, f"library/{image.tag}", image.tag)
        listing = run_cli(cache, "ls")
        assert listing.returncode == 0 and "docker.io/library/img1" in listing.stdout
        assert listing.stdout.splitlines()[0].split()[:3] == ["REPOSITORY", "TAGS", "DIGEST"]
        as_json = json.loads(run_cli(cache, "ls", "--json", "*img2*").stdout)
        assert [i["repository"] for i in as_json] == ["docker.io/library/img2"]
        assert run_cli(cache, "pin", "docker.io/library/img1:img1").returncode == 0
        pruned = json.loads(run_cli(cache, "prune", "--down-to", "0", "--json").stdout)
        assert pruned["evicted"] == 2
        remaining = json.loads(run_cli(cache, "ls", "--json").stdout)
        assert [(i["repository"], i["pinned"]) for i in remaining] == [
            ("docker.io/library/img1", True)]  # fmt: skip
        assert run_cli(cache, "unpin", "docker.io/library/img1:img1").returncode == 0
        assert run_cli(cache, "rm", "docker.io/library/img1:img1").returncode == 0
        du = run_cli(cache, "du")
        assert du.returncode == 0 and "quota" in du.stdout and "64.0 MiB" in du.stdout
        for args, words in [
            (["rm", "docker.io/library/nothere:1"], "unknown"),
            (["rm", "no-tag-given"], "needs a tag or digest"),
            (["prune", "--older-than", "soon"], "not a duration"),
            (["ls", "--token", "wrong"], "valid admin token"),
            (["ls", "--url", "http://127.0.0.1:9"], "cannot reach"),
        ]:
            result = run_cli(cache, *args)
            assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr
    finally:
        cache.stop()


def _seed(data_dir: Path, count: int) -> None:
    """Store `count` small cached images through regcache's own storage code, in-process."""

    async def fill() -> None:
        registry = Registry(load_settings(data_dir=data_dir, quota_bytes=1024**4))
        registry.open()
        config = b"{}"
        registry.blobs.write(config, Digest.of(config))
        registry.budget.stored(Digest.of(config), len(config))
        for i in range(count):
            layer = f"layer {i}".encode()
            registry.blobs.write(layer, Digest.of(layer))
            registry.budget.stored(Digest.of(layer), len(layer))
            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                              "digest": str(Digest.of(config)), "size": 2},
                   "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": str(Digest.of(layer)), "size": len(layer)}]}  # fmt: skip
            body = json.dumps(doc).encode()
            repo = f"docker.io/small/image{i % 100}"
            registry.meta.link_blob(repo, Digest.of(layer), CACHED)
            registry.meta.link_blob(repo, Digest.of(config), CACHED)
            manifest = parse_manifest(body, OCI_MANIFEST)
            await registry.store_manifest(repo, Digest.of(body), body, manifest, [f"t{i}"], CACHED)
        registry.close()

    asyncio.run(fill())


def test_eviction_of_10000_images_with_bounded_memory(world: World, tmp_path: Path) -> None:
    _seed(tmp_path / "data", 10_000)
    cache = start_cache(world, tmp_path, quota_bytes=1024**4)
    try:
        pinned = world.images[0]
        pull(cache, "library/img0", "img0")
        admin(cache, "POST", "pin", json={"repository": "docker.io/library/img0", "ref": "img0"})
        latencies: list[float] = []
        done = threading.Event()

        def pull_meanwhile() -> None:
            while not done.is_set():
                started = time.monotonic()
                assert pull(cache, "library/img0", "img0") == pinned.digest
                latencies.append(time.monotonic() - started)

        with PeakRss(cache.pid) as rss, ThreadPoolExecutor(2) as pool:
            pullers = [pool.submit(pull_meanwhile) for _ in range(2)]
            pruned = admin(cache, "POST", "prune", json={"down_to": 0}).json()
            done.set()
            for puller in pullers:
                puller.result()
        assert pruned["evicted"] == 10_000
        images = admin(cache, "GET", "images").json()["images"]
        assert [i["repository"] for i in images] == ["docker.io/library/img0"]
        print(f"evicted 10,000 images: peak RSS {rss.peak / MiB:.1f} MiB, "
              f"{len(latencies)} concurrent pulls, slowest {max(latencies):.3f} s")  # fmt: skip
        assert rss.peak < 150 * MiB
        assert len(latencies) > 10 and max(latencies) < 5  # pulls went on during eviction
    finally:
        cache.stop()


def _verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regcache", "verify", "--data-dir",
                           str(data_dir), "--json"], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


@pytest.mark.parametrize("moment", ["eviction", "gc"])
def test_sigkill_during_eviction_or_gc(world: World, tmp_path: Path, moment: str) -> None:
    _seed(tmp_path / "data", 3000)
    cache = start_cache(world, tmp_path, quota_bytes=1024**4)
    for image in world.images[:3]:
        pull(cache, f"library/{image.tag}", image.tag)
    if moment == "gc":
        for i in range(3000):  # leftovers of an earlier crash: files with no record
            path = cache.data_dir / "blobs" / "sha256" / f"{i:02x}"[:2] / hashlib.sha256(
                str(i).encode()).hexdigest()  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(str(i).encode())
            os.utime(path, (0, 0))
    request = ("prune", {"json": {"down_to": 0}}) if moment == "eviction" else ("gc", {})
    threading.Thread(target=lambda: _quietly(admin, cache, "POST", request[0], **request[1]),
                     daemon=True).start()  # fmt: skip
    files = _files(cache)
    deadline = time.monotonic() + 60
    while not _started(cache, moment, files) and time.monotonic() < deadline:
        time.sleep(0.005)
    cache.kill()
    check = _verify(cache.data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["ok"] is True
    cache.start()
    try:
        remaining = admin(cache, "GET", "images").json()["images"]
        if moment == "eviction":
            assert 0 < len(remaining) < 3003  # killed in the middle of it
        for image in remaining[:50] + remaining[-50:]:
            tag = image["tags"][0]
            got = requests.get(f"{cache.url}/v2/{image['repository']}/manifests/{tag}",
                               headers={"Accept": OCI_MANIFEST}, timeout=60)  # fmt: skip
            assert got.status_code == 200
            for blob in [got.json()["config"], *got.json()["layers"]]:
                data = requests.get(f"{cache.url}/v2/{image['repository']}/blobs/{blob['digest']}",
                                    timeout=60).content  # fmt: skip
                assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]
        for image in world.images[:3]:
            assert pull(cache, f"library/{image.tag}", image.tag) == image.digest
    finally:
        cache.stop()


def _files(cache: Regcache) -> int:
    return sum(1 for path in (cache.data_dir / "blobs").rglob("*") if path.is_file())


def _started(cache: Regcache, moment: str, files: int) -> bool:
    """Whether the eviction or collection under test has begun deleting."""
    if moment == "eviction":
        return admin(cache, "GET", "storage").json()["evictions"] > 0
    return _files(cache) < files


def _quietly(function, *args, **kwargs) -> None:
    with contextlib.suppress(requests.RequestException):
        function(*args, **kwargs)

"""`regcache warm` fills a regcache so that a class's pulls never reach the upstream.

The world: Debian's docker-registry as the upstream, the Docker Hub emulator in front of it
for `docker.io`, and the same registry as a plain upstream under the `registry.local` prefix.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from tooling.dockerhub import DockerHub
from tooling.images import Image, make_image, make_index
from tooling.peers import DockerRegistry, blob_gets, client_env, push_layout
from tooling.server import Regcache

pytestmark = pytest.mark.peers
WORKSHOP = Path(__file__).parent / "workshops" / "warm"
ACCEPT = {
    "Accept": ", ".join([
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ])
}  # fmt: skip


@dataclass(frozen=True)
class World:
    upstream: DockerRegistry
    hub: DockerHub
    images: dict[str, Image]  # by the reference the workshop writes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The images of tests/workshops/warm, upstream: a Docker-flavoured two-platform nginx,
    an OCI busybox, and an image of a non-Docker-Hub registry."""
    work = tmp_path_factory.mktemp("warm")
    layout = work / "layout"
    images = {
        "nginx:1.25.3": make_index(layout, "1.25.3", layers=2, layer_size=100_000,
                                   shared_base=True, flavour="docker"),
        "busybox:1.36.1": make_image(layout, "1.36.1", layers=2, layer_size=80_000),
        "registry.local/org/tool:2.0.1": make_image(layout, "2.0.1", layers=1, layer_size=60_000),
    }  # fmt: skip
    with DockerRegistry(work / "registry") as upstream:
        for repo, image in zip(
            ["library/nginx", "library/busybox", "org/tool"], images.values(), strict=True
        ):
            push_layout(layout, image.tag, upstream.url, repo)
        with DockerHub(work, upstream.url) as hub:
            yield World(upstream, hub, images)


@pytest.fixture
def cache(world: World, tmp_path: Path) -> Iterator[Regcache]:
    """A cold regcache with Docker Hub (the emulator) and registry.local as upstreams."""
    config = {
        "upstreams": [
            {"name": "dockerhub", "url": world.hub.url, "prefix": "docker.io", "mirror": True,
             "docker_hub": True, "tag_ttl": 300},
            {"name": "plain", "url": world.upstream.url, "prefix": "registry.local",
             "tag_ttl": 300},
        ],
    }  # fmt: skip
    (tmp_path / "regcache.json").write_text(json.dumps(config))
    with Regcache(tmp_path, config=tmp_path / "regcache.json") as server:
        world.hub.reset()
        world.upstream.reset_log_position()
        yield server


def regcache_warm(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regcache", "warm", "--url", url, *args],
        capture_output=True, text=True, env=client_env(), timeout=600, check=False,
    )  # fmt: skip


def pull(url: str, repo: str, ref: str) -> set[str]:
    """Pull an image as a client does: manifest, every platform, every blob (digests
    checked); return the digests of every manifest and blob."""
    response = requests.get(f"{url}/v2/{repo}/manifests/{ref}", headers=ACCEPT, timeout=60)
    assert response.status_code == 200, response.text
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    doc = response.json()
    seen = {digest}
    for child in doc.get("manifests", []):
        seen |= pull(url, repo, child["digest"])
    for blob in [doc["config"], *doc["layers"]] if "config" in doc else []:
        got = requests.get(f"{url}/v2/{repo}/blobs/{blob['digest']}", timeout=60)
        assert got.status_code == 200, got.text
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == blob["digest"]
        seen.add(blob["digest"])
    return seen


def client_paths(reference: str, mirror: bool) -> tuple[str, str]:
    """Repository and tag as a session client asks the cache: by the prefixed name, or, for
    Docker Hub images and `mirror`, by the unprefixed name dockerd's mirror setting sends."""
    name, tag = reference.rsplit(":", 1)
    if name.startswith("registry.local/"):
        return name, tag
    return (f"library/{name}" if mirror else f"docker.io/library/{name}"), tag


@pytest.mark.parametrize("how", ["images", "from"])
def test_after_warm_30_concurrent_pulls_make_no_upstream_request(
    world: World, cache: Regcache, how: str
) -> None:
    args = ["--from", str(WORKSHOP)] if how == "from" else list(world.images)
    proc = regcache_warm(cache.url, *args)
    assert proc.returncode == 0, proc.stderr
    for reference in world.images:
        full = (
            reference
            if reference.startswith("registry.local/")
            else f"docker.io/library/{reference}"
        )
        assert f"{full}: warmed" in proc.stdout, proc.stdout
    expected = {d.digest for image in world.images.values() for d in image.blobs}
    assert set(blob_gets(world.upstream.requests())) == expected  # the cache was cold

    world.hub.reset()
    world.upstream.reset_log_position()
    jobs = [(ref, i % 2 == 1) for i in range(30) for ref in world.images]
    with ThreadPoolExecutor(30) as pool:
        pulled = list(pool.map(lambda job: pull(cache.url, *client_paths(*job)), jobs))
    assert world.upstream.requests() == []
    assert world.hub.stats()["stats"] == {}
    for (reference, _), seen in zip(jobs, pulled, strict=True):
        image = world.images[reference]
        assert seen == {image.digest, *image.children, *(d.digest for d in image.blobs)}


def test_warm_of_one_platform_pulls_only_that_platform(world: World, cache: Regcache) -> None:
    proc = regcache_warm(cache.url, "--quiet", "--platform", "linux/arm64", "nginx:1.25.3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    arm64 = world.images["nginx:1.25.3"].children[1]
    arm64_blobs = pull(world.upstream.url, "library/nginx", arm64) - {arm64}
    assert set(blob_gets(world.upstream.requests())) == arm64_blobs


def test_warm_reports_each_image_that_failed(world: World, cache: Regcache) -> None:
    proc = regcache_warm(cache.url, "nginx:9.9.9", "busybox:1.36.1")
    assert proc.returncode == 1
    assert "docker.io/library/busybox:1.36.1: warmed" in proc.stdout
    assert proc.stderr.startswith("regcache: docker.io/library/nginx:9.9.9: ")
    assert proc.stderr.count("\n") == 1, proc.stderr

"""dockerd, podman and containerd pull `docker.io/library/...` through regcache as their Docker
Hub mirror, with the Docker Hub emulator and a real docker-registry behind it."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tooling.clients import Containerd, Dockerd, MirrorClient, Podman
from tooling.dockerhub import DockerHub
from tooling.images import Image, make_image, make_index
from tooling.peers import DockerRegistry, push_layout
from tooling.server import Regcache

pytestmark = pytest.mark.peers
HOST = f"linux/{ {'x86_64': 'amd64', 'aarch64': 'arm64'}[platform.machine()] }"
OTHER = "linux/arm64" if HOST == "linux/amd64" else "linux/amd64"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockerHub, dict[str, Image]]]:
    root = tmp_path_factory.mktemp("clients")
    layout = root / "layout"
    images = {
        "single": make_image(layout, "single", layers=2, layer_size=1 << 20, platform=HOST),
        "multi": make_index(layout, "multi", layers=2, layer_size=1 << 20, platforms=(HOST, OTHER),
                            shared_base=True),
        "docker": make_index(layout, "docker", layers=1, layer_size=1 << 20,
                             platforms=(HOST, OTHER), flavour="docker"),
    }  # fmt: skip
    with DockerRegistry(root / "registry") as registry:
        for name in images:
            push_layout(layout, name, registry.url, f"library/{name}")
            manifest = images[name]  # also tagged as a workshop would pin it
            status = requests.put(
                f"{registry.url}/v2/library/{name}/manifests/1.0.0", data=manifest.manifest,
                headers={"Content-Type": manifest.media_type},
            ).status_code  # fmt: skip
            assert status == 201
        with DockerHub(root, registry.url) as emulator:
            yield emulator, images


@pytest.fixture
def cache(hub, tmp_path: Path) -> Iterator[Regcache]:
    emulator, _ = hub
    emulator.reset()
    config = tmp_path / "regcache.json"
    config.write_text(json.dumps({"upstreams": [
        {"name": "dockerhub", "url": emulator.url, "prefix": "docker.io", "mirror": True,
         "docker_hub": True},
    ]}))  # fmt: skip
    with Regcache(tmp_path / "rc", config=config) as server:
        yield server


@pytest.mark.parametrize("client_type", [Dockerd, Podman, Containerd])
def test_client_pulls_through_regcache(
    hub, cache, tmp_path, client_type: type[MirrorClient]
) -> None:
    emulator, images = hub
    with client_type(tmp_path / "client", cache.url) as client:
        for name, image in images.items():
            client.pull(f"docker.io/library/{name}:1.0.0")
            assert client.image_digest(f"docker.io/library/{name}:1.0.0") == image.digest
            client.pull(f"{name}:1.0.0")  # again, by its short name: served from the cache
    stats = emulator.stats()
    assert stats["blob_gets"] and max(stats["blob_gets"].values()) == 1
    assert stats["stats"].get("HEAD manifest", 0) == 0  # pinned tags are never revalidated
    assert '"GET /v2/library/single/blobs/' in cache.log()  # the client came to regcache


def test_containerd_pulls_all_platforms(hub, cache, tmp_path) -> None:
    emulator, images = hub
    multi = images["multi"]
    with Containerd(tmp_path / "ctr", cache.url) as client:
        client.pull("docker.io/library/multi:1.0.0", all_platforms=True)
        assert client.image_digest("docker.io/library/multi:1.0.0") == multi.digest
    fetched = set(emulator.stats()["blob_gets"])
    assert fetched == {blob.digest for blob in multi.blobs}

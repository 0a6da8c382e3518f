"""Tests of the test tooling: generated OCI layouts, and the real peers that consume them."""

from __future__ import annotations

import hashlib
import json
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tooling.images import (
    CHUNK,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    REF_NAME,
    Image,
    make_artifact,
    make_image,
    make_index,
)
from tooling.peers import (
    AccessEntry,
    DockerRegistry,
    PeerError,
    blob_gets,
    http_request,
    layout_blob_digests,
    pull_to_layout,
    push_layout,
    skopeo_copy,
    verify_layout,
)


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def blob_json(layout: Path, digest: str) -> dict[str, Any]:
    return json.loads(blob(layout, digest))


def tagged(layout: Path) -> dict[str, str]:
    """Tag -> digest, from the layout's index.json."""
    index = json.loads((layout / "index.json").read_bytes())
    return {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]}


def test_image_layout(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1", layers=2, layer_size=CHUNK + 1, platform="linux/arm64/v8")

    assert (tmp_path / "oci-layout").read_text() == '{"imageLayoutVersion":"1.0.0"}'
    assert tagged(tmp_path) == {"v1": image.digest}
    assert image.media_type == OCI_MANIFEST and image.children == ()
    assert image.digest == "sha256:" + hashlib.sha256(image.manifest).hexdigest()
    assert blob(tmp_path, image.digest) == image.manifest and image.size == len(image.manifest)
    manifest = json.loads(image.manifest)
    config = blob_json(tmp_path, manifest["config"]["digest"])
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER}
    assert config["rootfs"] == {"type": "layers", "diff_ids": layers}
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["config"]["Cmd"] and len(config["history"]) == 2
    for n, digest in enumerate(layers):
        path = tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")
        with tarfile.open(path) as tar:
            member = tar.getmember(f"data/layer{n}.bin")
            assert member.size == CHUNK + 1
            assert len(tar.extractfile(member).read()) == CHUNK + 1  # type: ignore[union-attr]
    assert [b.digest for b in image.blobs] == [manifest["config"]["digest"], *layers]
    assert image.total_bytes == image.size + sum(b.size for b in image.blobs)
    verify_layout(tmp_path)


def test_index_platforms_and_shared_base(tmp_path: Path) -> None:
    platforms = ("linux/amd64", "linux/arm64", "linux/arm/v7")
    index = make_index(
        tmp_path, "multi", platforms=platforms, layers=3, layer_size=100, shared_base=True
    )

    body = json.loads(index.manifest)
    assert index.media_type == body["mediaType"] == OCI_INDEX
    assert [m["digest"] for m in body["manifests"]] == list(index.children)
    assert [m["platform"]["architecture"] for m in body["manifests"]] == ["amd64", "arm64", "arm"]
    layer_lists = [
        [layer["digest"] for layer in blob_json(tmp_path, child)["layers"]]
        for child in index.children
    ]
    assert len({layers[0] for layers in layer_lists}) == 1  # the shared base
    assert len({d for layers in layer_lists for d in layers[1:]}) == 2 * len(platforms)
    assert len(index.blobs) == 1 + 3 * 2 + 3  # base, own layers, configs
    child_bytes = sum(len(blob(tmp_path, child)) for child in index.children)
    assert index.total_bytes == index.size + child_bytes + sum(b.size for b in index.blobs)
    verify_layout(tmp_path)


def test_artifact_with_subject(tmp_path: Path) -> None:
    image = make_image(tmp_path, "app", layers=1, layer_size=10)
    sbom = make_artifact(tmp_path, "app-sbom", subject=image.descriptor, size=1000)

    body = json.loads(sbom.manifest)
    assert body["artifactType"] == "application/vnd.example.sbom.v1"
    assert body["config"]["mediaType"] == OCI_EMPTY
    assert blob(tmp_path, body["config"]["digest"]) == b"{}"
    assert [layer["size"] for layer in body["layers"]] == [1000]
    assert body["subject"] == {
        "mediaType": OCI_MANIFEST,
        "digest": image.digest,
        "size": image.size,
    }
    assert tagged(tmp_path) == {"app": image.digest, "app-sbom": sbom.digest}


def test_docker_flavour(tmp_path: Path) -> None:
    index = make_index(tmp_path, "d", layers=1, layer_size=10, flavour="docker")

    assert json.loads(index.manifest)["mediaType"] == DOCKER_LIST
    for child in index.children:
        manifest = blob_json(tmp_path, child)
        assert manifest["mediaType"] == DOCKER_MANIFEST
        assert manifest["config"]["mediaType"] == DOCKER_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER]


def test_retag_replaces_the_index_entry(tmp_path: Path) -> None:
    make_image(tmp_path, "latest", layers=1, layer_size=10)
    newer = make_image(tmp_path, "latest", layers=1, layer_size=10)
    assert tagged(tmp_path) == {"latest": newer.digest}


def test_verify_layout_detects_corruption(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1", layers=1, layer_size=10)
    path = tmp_path / "blobs" / "sha256" / image.blobs[-1].digest.removeprefix("sha256:")
    path.write_bytes(b"tampered")
    with pytest.raises(AssertionError, match=path.name):
        verify_layout(tmp_path)


def test_access_entry_parse() -> None:
    line = (
        '127.0.0.1 - - [28/Nov/2026:02:06:54 +0000] "GET /v2/library/x/blobs/sha256:'
        + "a" * 64
        + ' HTTP/1.1" 200 3072 "" "skopeo/1.9.3"'
    )
    entry = AccessEntry.parse(line)
    assert entry == AccessEntry(
        "GET", f"/v2/library/x/blobs/sha256:{'a' * 64}", 200, 3072, "skopeo/1.9.3"
    )
    assert entry.blob_digest == f"sha256:{'a' * 64}"
    assert AccessEntry.parse('time="2026-11-28" level=info msg="response completed"') is None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    with DockerRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Image]]:
    """One layout with a single-arch image, a two-platform index and an artifact on the index."""
    layout = tmp_path_factory.mktemp("source")
    image = make_image(layout, "single", layers=2, layer_size=200_000)
    index = make_index(layout, "multi", layers=2, layer_size=100_000, shared_base=True)
    sbom = make_artifact(layout, "multi-sbom", subject=index.descriptor)
    return layout, [image, index, sbom]


@pytest.mark.peers
def test_roundtrip_through_docker_registry(
    registry: DockerRegistry, source: tuple[Path, list[Image]], tmp_path: Path
) -> None:
    layout, images = source
    for image in images:
        push_layout(layout, image.tag, registry.url, "library/roundtrip")
    registry.reset_log_position()
    for image in images:
        pull_to_layout(registry.url, "library/roundtrip", image.tag, tmp_path, image.tag)

    assert tagged(tmp_path) == {image.tag: image.digest for image in images}
    for image in images:
        assert blob(tmp_path, image.digest) == image.manifest
    assert layout_blob_digests(tmp_path) == layout_blob_digests(layout)
    verify_layout(tmp_path)
    every_blob = {b.digest for image in images for b in image.blobs}
    assert blob_gets(registry.requests()) == dict.fromkeys(every_blob, 1)


@pytest.mark.peers
def test_pull_by_digest(
    registry: DockerRegistry, source: tuple[Path, list[Image]], tmp_path: Path
) -> None:
    layout, images = source
    push_layout(layout, "single", registry.url, "library/bydigest")
    pull_to_layout(registry.url, "library/bydigest", images[0].digest, tmp_path, "copy")
    assert tagged(tmp_path) == {"copy": images[0].digest}


@pytest.mark.peers
def test_docker_flavour_push(registry: DockerRegistry, tmp_path: Path) -> None:
    index = make_index(tmp_path, "d", layers=1, layer_size=1000, flavour="docker")
    push_layout(tmp_path, "d", registry.url, "library/docker")
    registry.reset_log_position()

    url = f"{registry.url}/v2/library/docker/manifests"
    status, headers, body = http_request("GET", f"{url}/d", headers={"Accept": DOCKER_LIST})
    assert (status, headers["Content-Type"], body) == (200, DOCKER_LIST, index.manifest)
    assert headers["Docker-Content-Digest"] == index.digest
    for child in index.children:
        status, headers, body = http_request(
            "GET", f"{url}/{child}", headers={"Accept": DOCKER_MANIFEST}
        )
        assert (status, headers["Content-Type"]) == (200, DOCKER_MANIFEST)
        assert body == blob(tmp_path, child)
    assert [(e.method, e.status) for e in registry.requests()] == [("GET", 200)] * 3


@pytest.mark.peers
def test_proxy_mode_counts_upstream_requests(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    image = make_image(layout, "v1", layers=2, layer_size=50_000)
    with (
        DockerRegistry(tmp_path / "upstream") as upstream,
        DockerRegistry(tmp_path / "proxy", proxy_remote=upstream.url) as proxy,
    ):
        push_layout(layout, "v1", upstream.url, "library/app")
        upstream.reset_log_position()
        pull_to_layout(proxy.url, "library/app", "v1", tmp_path / "back", "v1")
        fetched = blob_gets(upstream.requests())
    assert tagged(tmp_path / "back") == {"v1": image.digest}
    verify_layout(tmp_path / "back")
    assert set(fetched) == {b.digest for b in image.blobs}


@pytest.mark.peers
def test_failures_raise_peer_error(tmp_path: Path, registry: DockerRegistry) -> None:
    with pytest.raises(PeerError, match="manifest unknown"):
        skopeo_copy(f"docker://{registry.host}/library/none:x", f"oci:{tmp_path / 'out'}:x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = DockerRegistry(tmp_path / "busy", port=taken.getsockname()[1])
        with pytest.raises(PeerError, match="address already in use"):
            busy.start()

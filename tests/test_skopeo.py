"""Real clients: skopeo pushes locally generated images into regcache and pulls them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tooling.images import make_artifact, make_image, make_index
from tooling.oci import Client
from tooling.peers import layout_blob_digests, pull_to_layout, push_layout, verify_layout
from tooling.server import PeakRss, Regcache

pytestmark = pytest.mark.peers
MiB = 1024 * 1024


def _tagged_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_bytes())
    (entry,) = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]  # fmt: skip
    return entry["digest"]


def test_single_arch_multi_arch_and_artifact_round_trip(regcache: Regcache, tmp_path: Path) -> None:
    source, back = tmp_path / "source", tmp_path / "back"
    image = make_image(source, "single", layers=3, layer_size=300_000)
    index = make_index(source, "multi", layers=2, layer_size=200_000)
    docker = make_index(source, "docker", layers=2, layer_size=100_000, flavour="docker")
    artifact = make_artifact(source, "sbom", subject=image.descriptor)
    for built in (image, index, docker, artifact):
        push_layout(source, built.tag, regcache.url, "skopeo/app")
    for built in (image, index, artifact):  # skopeo cannot write a Docker list to a layout
        pull_to_layout(regcache.url, "skopeo/app", built.tag, back, built.tag)
        assert _tagged_digest(back, built.tag) == built.digest
        pull_to_layout(regcache.url, "skopeo/app", built.digest, back, f"{built.tag}-by-digest")
        assert _tagged_digest(back, f"{built.tag}-by-digest") == built.digest
    verify_layout(back)
    docker_blobs = {d.digest for d in docker.blobs} | set(docker.children) | {docker.digest}
    assert layout_blob_digests(back) == layout_blob_digests(source) - docker_blobs
    client = Client(regcache.url)
    for blob in docker.blobs:
        assert client.get(f"skopeo/app/blobs/{blob.digest}").status_code == 200
    for built in (image, index, docker, artifact):
        got = client.get(f"skopeo/app/manifests/{built.tag}")
        assert got.content == built.manifest
        assert got.headers["Content-Type"] == built.media_type
    referrers = client.get(f"skopeo/app/referrers/{image.digest}").json()["manifests"]
    assert [(r["digest"], r["artifactType"]) for r in referrers] == [
        (artifact.digest, "application/vnd.example.sbom.v1")
    ]


def test_500_mib_image_in_and_out_with_bounded_memory(
    fresh_regcache: Regcache, tmp_path: Path
) -> None:
    source, back = tmp_path / "source", tmp_path / "back"
    image = make_image(source, "big", layers=8, layer_size=500 * MiB // 8)
    assert image.total_bytes > 500 * MiB
    with PeakRss(fresh_regcache.pid) as rss:
        push_layout(source, "big", fresh_regcache.url, "large/image")
        pull_to_layout(fresh_regcache.url, "large/image", "big", back, "big")
    assert _tagged_digest(back, "big") == image.digest
    verify_layout(back)
    assert layout_blob_digests(back) == layout_blob_digests(source)
    print(f"regcache peak RSS during a 500 MiB push and pull: {rss.peak / MiB:.1f} MiB")
    assert rss.peak < 150 * MiB

"""Tests of tooling.clients: dockerd, podman and containerd pull through a docker-registry mirror.

The mirror is Debian's docker-registry holding generated images as `library/NAME:1.0`; each
client pulls `docker.io/library/NAME:1.0`, and the mirror's access log shows it served them.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from tooling.clients import (
    Containerd,
    Dockerd,
    MirrorClient,
    Podman,
    client_snippets,
    mounts_under,
)
from tooling.images import Image, make_image, make_index
from tooling.peers import AccessEntry, DockerRegistry, PeerError, push_layout

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
HOST_PLATFORM = f"linux/{_ARCH}"
OTHER_PLATFORM = "linux/arm64" if _ARCH == "amd64" else "linux/amd64"
CLIENTS: list[type[MirrorClient]] = [Dockerd, Podman, Containerd]
USER_AGENTS = {"dockerd": "docker/", "podman": "containers/", "containerd": "containerd/"}
DAEMONS = {"dockerd", "containerd", "podman", "ctr"}
TAG = "1.0"


@dataclass(frozen=True)
class Pushed:
    """A generated image on the mirror as `library/NAME:1.0`."""

    ref: str
    image: Image
    host_manifests: frozenset[str]  # the tag, and the host platform's manifest of an index
    host_blobs: frozenset[str]  # the config and layers of the host platform's image


@dataclass(frozen=True)
class Mirror:
    """The docker-registry standing in for a mirror, and what was pushed to it."""

    registry: DockerRegistry
    images: dict[str, Pushed]  # by NAME: oci-single, oci-index, docker-single, docker-index


def _manifest_blobs(layout: Path, digest: str) -> frozenset[str]:
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    return frozenset(d["digest"] for d in [manifest["config"], *manifest["layers"]])


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """A docker-registry with a single-arch image and a two-platform index of each flavour."""
    root = tmp_path_factory.mktemp("mirror")
    with DockerRegistry(root / "registry") as registry:
        images = {}
        for flavour in ("oci", "docker"):
            single, index = root / f"{flavour}-single", root / f"{flavour}-index"
            image = make_image(
                single, TAG, layers=2, layer_size=1 << 20, platform=HOST_PLATFORM, flavour=flavour
            )
            images[single.name] = Pushed(
                f"library/{single.name}:{TAG}",
                image,
                frozenset({TAG}),
                _manifest_blobs(single, image.digest),
            )
            image = make_index(
                index,
                TAG,
                platforms=(HOST_PLATFORM, OTHER_PLATFORM),
                layers=2,
                layer_size=1 << 20,
                flavour=flavour,
            )
            images[index.name] = Pushed(
                f"library/{index.name}:{TAG}",
                image,
                frozenset({TAG, image.children[0]}),
                _manifest_blobs(index, image.children[0]),
            )
            for layout in (single, index):
                push_layout(layout, TAG, registry.url, f"library/{layout.name}")
        yield Mirror(registry, images)


def _assert_served(
    entries: list[AccessEntry],
    pushed: Pushed,
    user_agent: str,
    manifests: frozenset[str],
    blobs: frozenset[str],
) -> None:
    """The mirror answered the client's requests for `manifests` and `blobs` of `pushed`."""
    assert entries, "the mirror saw no requests"
    assert {e.user_agent.split("/")[0] + "/" for e in entries} == {user_agent}
    repo = pushed.ref.split(":")[0]
    ok = [e for e in entries if e.status == 200]
    assert {f"/v2/{repo}/manifests/{m}" for m in manifests} <= {e.path.split("?")[0] for e in ok}
    assert blobs <= {e.blob_digest for e in ok if e.method == "GET"}


def _our_daemons() -> list[str]:
    """Client daemons and commands still running below this test process."""
    return [p.name() for p in psutil.Process().children(recursive=True) if p.name() in DAEMONS]


def test_snippets_point_each_client_at_the_mirror() -> None:
    snippets = client_snippets("http://127.0.0.1:5000/")
    assert json.loads(snippets["dockerd"]) == {
        "registry-mirrors": ["http://127.0.0.1:5000"],
        "insecure-registries": ["127.0.0.1:5000"],
    }
    registries = tomllib.loads(snippets["podman"])
    assert registries["unqualified-search-registries"] == ["docker.io"]
    assert registries["registry"] == [
        {
            "prefix": "docker.io",
            "location": "docker.io",
            "mirror": [{"location": "127.0.0.1:5000", "insecure": True}],
        }
    ]
    hosts = tomllib.loads(snippets["containerd"])
    assert hosts == {
        "server": "https://registry-1.docker.io",
        "host": {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}},
    }


@pytest.mark.peers
@pytest.mark.parametrize("client_type", CLIENTS, ids=lambda client_type: client_type.name)
def test_client_pulls_every_image_from_the_mirror(
    mirror: Mirror, tmp_path: Path, client_type: type[MirrorClient]
) -> None:
    user_agent = USER_AGENTS[client_type.name]
    workdir = tmp_path / client_type.name
    pulls: dict[str, float] = {}
    began = time.monotonic()
    with client_type(workdir, mirror.registry.url) as client:
        started = time.monotonic()
        for name, pushed in mirror.images.items():
            mirror.registry.reset_log_position()
            pull_began = time.monotonic()
            client.pull(pushed.ref)
            pulls[name] = time.monotonic() - pull_began
            assert client.image_digest(pushed.ref) == pushed.image.digest
            entries = mirror.registry.requests()
            _assert_served(entries, pushed, user_agent, pushed.host_manifests, pushed.host_blobs)
        client.remove_all_images()
        first = mirror.images["oci-single"]
        mirror.registry.reset_log_position()
        client.pull(first.ref)  # cold again: every blob comes from the mirror once more
        entries = mirror.registry.requests()
        _assert_served(entries, first, user_agent, first.host_manifests, first.host_blobs)
        stopping = time.monotonic()
    stopped = time.monotonic()
    assert not workdir.exists()
    assert not _our_daemons()
    print(
        f"\n{client_type.name}: start {started - began:.2f} s, start + first pull "
        f"{started - began + pulls['oci-single']:.2f} s, stop {stopped - stopping:.2f} s; pulls: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in pulls.items())
    )


@pytest.mark.peers
def test_containerd_pulls_every_platform_of_an_index(mirror: Mirror, tmp_path: Path) -> None:
    pushed = mirror.images["oci-index"]
    with Containerd(tmp_path / "containerd", mirror.registry.url) as containerd:
        mirror.registry.reset_log_position()
        containerd.pull(pushed.ref, all_platforms=True)
        assert containerd.image_digest(f"docker.io/{pushed.ref}") == pushed.image.digest
        entries = mirror.registry.requests()
    every_blob = frozenset(blob.digest for blob in pushed.image.blobs)
    manifests = frozenset({TAG, *pushed.image.children})
    _assert_served(entries, pushed, "containerd/", manifests, every_blob)
    assert all(e.path.endswith("?ns=docker.io") for e in entries if e.path != "/v2/")


@pytest.mark.peers
def test_podman_login_keeps_credentials_in_its_workdir(mirror: Mirror, tmp_path: Path) -> None:
    pushed = mirror.images["docker-index"]
    with Podman(tmp_path / "podman", mirror.registry.url) as podman:
        podman.login(mirror.registry.url, "alice", "s3cret")
        auths = json.loads((podman.workdir / "auth.json").read_text())["auths"]
        assert base64.b64decode(auths[mirror.registry.host]["auth"]) == b"alice:s3cret"
        podman.pull(pushed.ref)
        assert podman.image_digest(pushed.ref) == pushed.image.digest


@pytest.mark.peers
def test_cleanup_after_a_daemon_crash_and_an_error_in_the_block(
    mirror: Mirror, tmp_path: Path
) -> None:
    workdir = tmp_path / "dockerd"
    with (
        pytest.raises(RuntimeError, match="error in the block"),
        Dockerd(workdir, mirror.registry.url) as docker,
    ):
        docker.pull(mirror.images["oci-single"].ref)
        rundir, pids = docker.rundir, docker.pids
        os.kill(pids[-1], signal.SIGKILL)  # dockerd, leaving its mounts and containerd behind
        stray = workdir / "docker-root" / "stray"
        stray.mkdir()
        subprocess.run(["mount", "--bind", str(stray), str(stray)], check=True)
        assert mounts_under(workdir)
        raise RuntimeError("an error in the block")
    assert rundir is not None
    assert not rundir.exists()
    assert not workdir.exists()
    assert not mounts_under(workdir)
    assert not [pid for pid in pids if psutil.pid_exists(pid)]


@pytest.mark.peers
def test_a_daemon_failing_to_start_is_reported_with_its_log(mirror: Mirror, tmp_path: Path) -> None:
    workdir = tmp_path / "dockerd"
    with (
        pytest.raises(PeerError, match=r"(?s)dockerd exited \d+:.*invalid mirror"),
        Dockerd(workdir, f"{mirror.registry.url}/not-a-mirror-root"),
    ):
        pass
    assert not workdir.exists()
    assert not _our_daemons()

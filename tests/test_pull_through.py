"""The pull-through cache against real peers: Debian's docker-registry as the upstream,
behind the Docker Hub emulator where Docker Hub's behaviour matters, and skopeo as a client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from tooling.dockerhub import DockerHub
from tooling.images import make_artifact, make_image, make_index
from tooling.oci import OCI_MANIFEST, Client, errors_of
from tooling.peers import (
    DockerRegistry,
    layout_blob_digests,
    pull_to_layout,
    push_layout,
    self_signed_certificate,
)
from tooling.server import Regcache

pytestmark = pytest.mark.peers
PASSWORD = "s3cret-Pa55word-never-shown"
ACCEPT = {
    "Accept": ", ".join([
        "application/vnd.oci.image.index.v1+json", OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ])
}  # fmt: skip


class Images:
    """The images pushed upstream, by name."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.alpine = make_image(layout, "alpine", layers=2, layer_size=200_000)
        self.multi = make_index(layout, "multi", layers=2, layer_size=100_000, shared_base=True)
        self.app = make_image(layout, "app", layers=3, layer_size=150_000)
        self.sbom = make_artifact(layout, "sbom", subject=self.app.descriptor)
        self.mutable = make_image(layout, "mutable", layers=1, layer_size=50_000)
        self.never = make_image(layout, "never", layers=1, layer_size=10_000)


def write_config(path: Path, hub: DockerHub, upstream: DockerRegistry, ttl: float = 1) -> Path:
    (path.parent / "hub-password").write_text(PASSWORD + "\n")
    config = {
        "log_level": "debug",
        "upstreams": [
            {"name": "dockerhub", "url": hub.url, "prefix": "docker.io", "mirror": True,
             "docker_hub": True, "username": "acme-robot",
             "password_file": str(path.parent / "hub-password"), "tag_ttl": ttl, "retries": 1,
             "timeout": 5},
            {"name": "plain", "url": upstream.url, "prefix": "registry.local", "tag_ttl": ttl},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DockerRegistry, DockerHub, Images]]:
    work = tmp_path_factory.mktemp("upstream")
    images = Images(work / "images")
    with DockerRegistry(work / "registry") as upstream:
        for repo, image, tag in [
            ("library/alpine", images.alpine, "3.19.1"), ("library/multi", images.multi, "1.0.0"),
            ("org/app", images.app, "1.0.0"), ("org/app", images.sbom, "sbom"),
            ("library/mutable", images.mutable, "latest"),
        ]:  # fmt: skip
            push_layout(images.layout, image.tag, upstream.url, repo)
            requests.put(
                f"{upstream.url}/v2/{repo}/manifests/{tag}", data=image.manifest,
                headers={"Content-Type": image.media_type},
            ).raise_for_status()  # fmt: skip
        with DockerHub(work, upstream.url, username="acme-robot", password=PASSWORD) as hub:
            yield upstream, hub, images


@pytest.fixture
def cache(world, tmp_path: Path) -> Iterator[Regcache]:
    upstream, hub, _ = world
    hub.set_mode("normal")
    hub.reset()
    with Regcache(tmp_path, config=write_config(tmp_path / "regcache.json", hub, upstream)) as rc:
        yield rc


def pull(url: str, repo: str, ref: str) -> str:
    """Pull an image the way a client does (manifest, then every blob, digests checked);
    return the manifest digest."""
    top = requests.get(f"{url}/v2/{repo}/manifests/{ref}", headers=ACCEPT, timeout=60)
    assert top.status_code == 200, top.text
    digest = top.headers["Docker-Content-Digest"]
    assert "sha256:" + hashlib.sha256(top.content).hexdigest() == digest
    doc = top.json()
    for child in doc.get("manifests", []):
        pull(url, repo, child["digest"])
    for blob in [doc["config"], *doc["layers"]] if "config" in doc else []:
        got = requests.get(f"{url}/v2/{repo}/blobs/{blob['digest']}", timeout=60)
        assert got.status_code == 200, got.text
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == blob["digest"]
    return digest


def test_skopeo_pulls_through_the_mirror_and_the_prefixed_path(world, cache, tmp_path) -> None:
    _, hub, images = world
    back = tmp_path / "back"
    pull_to_layout(cache.url, "library/multi", "1.0.0", back, "mirror")
    pull_to_layout(cache.url, "docker.io/library/multi", "1.0.0", back, "prefixed")
    pull_to_layout(cache.url, "docker.io/alpine", "3.19.1", back, "one-word")
    pull_to_layout(cache.url, "registry.local/org/app", "1.0.0", back, "plain")
    index = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
             for m in json.loads((back / "index.json").read_text())["manifests"]}  # fmt: skip
    assert index == {"mirror": images.multi.digest, "prefixed": images.multi.digest,
                     "one-word": images.alpine.digest, "plain": images.app.digest}  # fmt: skip
    expected = {d.digest for i in (images.multi, images.alpine, images.app) for d in i.blobs}
    expected |= {
        images.multi.digest,
        images.alpine.digest,
        images.app.digest,
        *images.multi.children,
    }
    assert layout_blob_digests(back) == expected
    # Each blob crossed from the upstream once, though two paths asked for the index.
    assert max(hub.stats()["blob_gets"].values()) == 1


def test_referrers_and_artifacts_are_preserved(world, cache) -> None:
    _, _, images = world
    client = Client(cache.url)
    got = client.get(f"registry.local/org/app/manifests/{images.sbom.digest}")
    assert got.content == images.sbom.manifest
    referrers = client.get(f"registry.local/org/app/referrers/{images.app.digest}").json()
    assert [m["digest"] for m in referrers["manifests"]] == [images.sbom.digest]


def test_class_of_50_costs_one_counted_pull_per_image(world, cache) -> None:
    _, hub, images = world
    wanted = [("library/alpine", "3.19.1"), ("docker.io/org/app", "1.0.0"),
              ("library/multi", "1.0.0")]  # fmt: skip
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: pull(cache.url, *wanted[i % 3]), range(150)))
    assert set(results) == {images.alpine.digest, images.app.digest, images.multi.digest}
    # alpine, app and the one platform child of multi that the test pulled per session
    # (this client pulls both platforms of multi: two counted pulls for it, as on Docker Hub)
    assert hub.counted_pulls() == 4
    assert hub.stats()["stats"].get("HEAD manifest", 0) == 0  # pinned: never revalidated


def test_mutable_tag_is_revalidated_by_head_only(world, cache) -> None:
    _, hub, images = world
    assert pull(cache.url, "library/mutable", "latest") == images.mutable.digest
    assert hub.counted_pulls() == 1
    assert pull(cache.url, "library/mutable", "latest") == images.mutable.digest  # within TTL
    assert hub.stats()["stats"].get("HEAD manifest", 0) == 0
    time.sleep(1.2)
    for _ in range(3):
        assert pull(cache.url, "library/mutable", "latest") == images.mutable.digest
    stats = hub.stats()["stats"]
    assert hub.counted_pulls() == 1 and stats["GET manifest"] == 1
    assert stats["HEAD manifest"] == 1  # one check per TTL, then fresh again


def test_stale_copies_are_served_when_upstream_says_429_or_fails(world, cache) -> None:
    _, hub, images = world
    pull(cache.url, "library/mutable", "latest")
    pull(cache.url, "library/alpine", "3.19.1")
    time.sleep(1.2)
    for mode in ("429", "500"):
        hub.set_mode(mode)
        got = requests.get(f"{cache.url}/v2/library/mutable/manifests/latest", headers=ACCEPT)
        assert got.status_code == 200 and "Stale" in got.headers["Warning"]
        assert pull(cache.url, "library/mutable", images.mutable.digest) == images.mutable.digest
        assert pull(cache.url, "library/alpine", "3.19.1") == images.alpine.digest
    hub.set_mode("429")
    missing = requests.get(f"{cache.url}/v2/library/never/manifests/1.0.0", headers=ACCEPT)
    assert missing.status_code == 429 and errors_of(missing) == ["TOOMANYREQUESTS"]
    assert missing.headers["Retry-After"] == "60"
    hub.set_mode("500")
    missing = requests.get(f"{cache.url}/v2/library/never/manifests/1.0.0", headers=ACCEPT)
    assert missing.status_code == 502 and "not cached" in missing.text


def test_stale_copies_are_served_when_upstream_is_down(world, tmp_path) -> None:
    _, _, images = world
    work = tmp_path / "own"
    local = images.layout
    with DockerRegistry(work / "registry") as upstream:
        push_layout(local, "alpine", upstream.url, "library/alpine")
        hub = DockerHub(work, upstream.url, username="acme-robot", password=PASSWORD)
        (work / "rc").mkdir()
        config = write_config(work / "rc" / "config.json", hub, upstream)
        with hub, Regcache(work / "rc", config=config) as cache:
            pull(cache.url, "registry.local/library/alpine", "alpine")
            pull(cache.url, "library/alpine", "alpine")
            hub.stop()
            upstream.stop()
            time.sleep(1.2)
            for repo in ("registry.local/library/alpine", "library/alpine"):
                assert pull(cache.url, repo, "alpine") == images.alpine.digest
                assert pull(cache.url, repo, images.alpine.digest) == images.alpine.digest
            missing = requests.get(f"{cache.url}/v2/library/other/manifests/1.0.0")
            assert (
                missing.status_code == 502
                and "unavailable" in missing.json()["errors"][0]["message"]
            )


def test_an_https_upstream_is_checked_against_its_own_ca(world, tmp_path) -> None:
    """Manifests and blob bodies (which a worker thread reads) both come over TLS, trusting
    the configured CA file, and fail cleanly without it."""
    _, _, images = world
    with DockerRegistry(tmp_path / "upstream") as plain:
        push_layout(images.layout, "app", plain.url, "org/app")
    cert, key = self_signed_certificate(tmp_path)
    with DockerRegistry(tmp_path / "upstream", tls=(cert, key)) as upstream:
        assert upstream.url.startswith("https://")
        for trusted in (True, False):
            work = tmp_path / f"rc-{trusted}"
            work.mkdir()
            tls = {"name": "tls", "url": upstream.url, "prefix": "tls.local", "retries": 0}
            if trusted:
                tls["ca_file"] = str(cert)
            (work / "config.json").write_text(json.dumps({"upstreams": [tls]}))
            with Regcache(work, config=work / "config.json") as cache:
                upstream.reset_log_position()
                layer = images.app.blobs[-1].digest
                if trusted:
                    assert pull(cache.url, "tls.local/org/app", "app") == images.app.digest
                    got = {e.blob_digest for e in upstream.requests() if e.method == "GET"}
                    assert got >= {blob.digest for blob in images.app.blobs}
                    continue
                for path in ("manifests/app", f"blobs/{layer}"):
                    refused = requests.get(f"{cache.url}/v2/tls.local/org/app/{path}", timeout=30)
                    assert refused.status_code == 502, path
                    message = refused.json()["errors"][0]["message"]
                    assert "unavailable" in message and "Cert" in message, message
                assert upstream.requests() == []  # no request got past the TLS handshake


def test_blobs_are_served_under_uvloop_without_sendfile(world, tmp_path) -> None:
    """uvloop's transports have no sendfile: downloads followed and stored blobs are then
    copied in chunks, whole and by range."""
    upstream, hub, images = world
    config = write_config(tmp_path / "regcache.json", hub, upstream)
    config.write_text(json.dumps({**json.loads(config.read_text()), "event_loop": "uvloop"}))
    with Regcache(tmp_path, config=config) as cache:
        for _ in range(2):  # cold, through the download; then warm, from the store
            assert pull(cache.url, "registry.local/org/app", "1.0.0") == images.app.digest
        layer = images.app.blobs[-1]
        whole = requests.get(f"{cache.url}/v2/registry.local/org/app/blobs/{layer.digest}")
        part = requests.get(
            f"{cache.url}/v2/registry.local/org/app/blobs/{layer.digest}",
            headers={"Range": "bytes=1000-70999"},
        )
        assert part.status_code == 206 and part.content == whole.content[1000:71000]


def test_routing_rules(world, cache) -> None:
    _, hub, images = world
    client = Client(cache.url)
    # containerd's ?ns= is honoured, other queries are ignored
    assert client.get("library/alpine/manifests/3.19.1", params={"ns": "docker.io"},
                      headers=ACCEPT).status_code == 200  # fmt: skip
    assert client.get("org/app/manifests/1.0.0", params={"ns": "registry.local", "x": "y"},
                      headers=ACCEPT).status_code == 200  # fmt: skip
    before = hub.stats()["stats"]
    unknown = client.get("library/alpine/manifests/3.19.1", params={"ns": "quay.io"})
    assert unknown.status_code == 404 and errors_of(unknown) == ["NAME_UNKNOWN"]
    assert hub.stats()["stats"] == before  # nothing was asked upstream
    # a push into a proxied prefix is denied; hosted repositories work beside the cache
    denied = requests.post(f"{cache.url}/v2/docker.io/library/alpine/blobs/uploads/")
    assert denied.status_code == 403 and errors_of(denied) == ["DENIED"]
    denied = client.put_manifest("docker.io/library/alpine", "x", b"{}")
    assert denied.status_code == 403
    doc = client.manifest_doc("session/app", [b"hosted layer"])
    assert client.put_manifest("session/app", "v1", doc).status_code == 201
    assert client.get("session/app/manifests/v1").status_code == 200
    # a hosted repository of an unprefixed name wins over the mirror for pulls
    doc = client.manifest_doc("library/alpine", [b"hosted layer"])
    assert client.put_manifest("library/alpine", "3.19.1", doc).status_code == 201
    hosted = client.get("library/alpine/manifests/3.19.1", headers=ACCEPT)
    assert hosted.headers["Docker-Content-Digest"] != images.alpine.digest


def test_rate_limits_are_tracked_per_upstream(world, cache) -> None:
    pull(cache.url, "library/alpine", "3.19.1")
    status = requests.get(f"{cache.url}/_regcache/upstreams").json()["upstreams"]
    hub = next(u for u in status if u["name"] == "dockerhub")
    assert hub["credential"] == "acme-robot"
    assert hub["ratelimit"]["limit"] == 100 and hub["ratelimit"]["window_seconds"] == 21600
    assert hub["ratelimit"]["remaining"] == 99
    assert hub["ratelimit"]["source"] == "acme-robot"


def test_tokens_are_cached_per_scope(world, cache) -> None:
    _, hub, _ = world
    for _ in range(3):
        pull(cache.url, "library/alpine", "3.19.1")
        pull(cache.url, "library/multi", "1.0.0")
    assert hub.stats()["stats"]["token_requests"] == 2  # one per repository scope


def test_corrupt_upstream_content_is_cut_off_and_never_cached(world, cache) -> None:
    _, hub, images = world
    hub.set_mode("corrupt")
    layer = images.app.blobs[-1]
    url = f"{cache.url}/v2/docker.io/org/app/blobs/{layer.digest}"

    def fetch(_: int) -> str:
        try:
            return "sha256:" + hashlib.sha256(requests.get(url, timeout=30).content).hexdigest()
        except requests.RequestException:
            return "cut off"

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(fetch, range(4))) == {"cut off"}
    assert not list((cache.data_dir / "blobs").rglob(layer.digest.split(":")[1]))
    hub.set_mode("normal")
    assert fetch(0) == layer.digest
    # the client has every byte once they verified; storing the blob durably follows
    deadline = time.monotonic() + 30
    while not list((cache.data_dir / "blobs").rglob(layer.digest.split(":")[1])):
        assert time.monotonic() < deadline, "the verified blob was never stored"
        time.sleep(0.05)


def test_upstream_password_never_appears(world, tmp_path) -> None:
    upstream, hub, images = world
    hub.reset()
    config = json.loads(write_config(tmp_path / "regcache.json", hub, upstream).read_text())
    wrong = {**config["upstreams"][0], "name": "wronghub", "prefix": "wrong.io", "mirror": False,
             "password_file": None, "password_env": "WRONG_HUB_PASSWORD"}  # fmt: skip
    config["upstreams"].append(wrong)
    (tmp_path / "regcache.json").write_text(json.dumps(config))
    secrets = [PASSWORD, PASSWORD + "-wrong"]
    encoded = [base64.b64encode(f"acme-robot:{s}".encode()).decode() for s in secrets]
    seen: list[str] = []
    with Regcache(tmp_path, config=tmp_path / "regcache.json",
                  env={"WRONG_HUB_PASSWORD": secrets[1]}) as cache:  # fmt: skip

        def record(method: str, path: str, **kwargs: object) -> requests.Response:
            response = requests.request(method, f"{cache.url}{path}", timeout=30, **kwargs)
            seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
            return response

        assert record("GET", "/v2/library/alpine/manifests/3.19.1").status_code == 200
        assert record("GET", "/v2/library/nothere/manifests/1.0.0").status_code == 404
        assert record("GET", "/v2/wrong.io/library/alpine/manifests/3.19.1").status_code == 403
        assert record("GET", f"/v2/wrong.io/library/alpine/blobs/{images.alpine.blobs[0].digest}"
                      ).status_code == 403  # fmt: skip
        for mode in ("429", "500", "corrupt"):
            hub.set_mode(mode)
            record("GET", "/v2/library/multi/manifests/1.0.0")
            with contextlib.suppress(requests.exceptions.ChunkedEncodingError):  # corrupt: cut off
                record("GET", f"/v2/library/multi/blobs/{images.multi.blobs[0].digest}")
        hub.set_mode("normal")
        record("GET", "/_regcache/upstreams")
        record("PUT", "/v2/docker.io/library/alpine/manifests/x", data=b"{}")
    seen.append(cache.log())
    assert "Bearer" not in cache.log() and "Authorization" not in cache.log()
    assert hub.stats()["authorizations"]  # the credentials were really sent upstream
    for text in seen:
        for secret in secrets + encoded:
            assert secret not in text

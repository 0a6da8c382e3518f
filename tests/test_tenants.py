"""Tenants over one shared store: hidden hosted namespaces, shared and charged cached images,
quotas kept within each tenant's own share, allow-lists enforced before any upstream contact,
rate limits, client authentication (also with docker and podman `login`), trusted redirects,
the cap on downloads at once, and TLS. Upstream: a real docker-registry behind the Docker Hub
emulator, which counts what it is asked."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from tooling.clients import Dockerd, Podman
from tooling.dockerhub import DockerHub
from tooling.images import Image, make_image
from tooling.oci import Client, errors_of
from tooling.peers import DockerRegistry, PeerError, free_port, push_layout, self_signed_certificate
from tooling.server import Regcache

pytestmark = pytest.mark.peers
HOST = f"linux/{ {'x86_64': 'amd64', 'aarch64': 'arm64'}[platform.machine()] }"
IMAGES = ("img0", "img1", "img2", "img3", "img4", "evil", "big")
ADMIN = {"Authorization": "Bearer admin-token"}
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3", "dave": "dave-pw-4"}
CI_TOKEN = "ci-token-0123456789"
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def htpasswd(path: Path, users: list[str]) -> Path:
    """An htpasswd file as `htpasswd -B` writes it ($2y$ bcrypt entries)."""
    lines = []
    for user in users:
        hashed = bcrypt.hashpw(PASSWORDS[user].encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{user}:{hashed.replace('$2b$', '$2y$', 1)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def session(user: str | None = None, token: str | None = None) -> requests.Session:
    http = requests.Session()
    if user is not None:
        http.auth = (user, PASSWORDS[user])
    if token is not None:
        http.headers["Authorization"] = f"Bearer {token}"
    return http


class World:
    """The upstream, the emulator and images, shared by the tests of this module."""

    def __init__(self, root: Path, registry: DockerRegistry, hub: DockerHub) -> None:
        self.root, self.registry, self.hub = root, registry, hub
        layout = root / "layout"
        self.images: dict[str, Image] = {
            name: make_image(layout, name, layers=2, layer_size=(1 << 20 if name == "big" else
                             100_000), platform=HOST)
            for name in IMAGES
        }  # fmt: skip
        for name, image in self.images.items():
            push_layout(layout, name, registry.url, f"library/{name}")
            for tag in ("1.0.0", "latest"):
                requests.put(
                    f"{registry.url}/v2/library/{name}/manifests/{tag}", data=image.manifest,
                    headers={"Content-Type": image.media_type},
                ).raise_for_status()  # fmt: skip

    def size(self, name: str) -> int:
        """Bytes an image is charged for: its manifest, config and layers."""
        manifest = json.loads(self.images[name].manifest)
        parts = [manifest["config"], *manifest["layers"]]
        return len(self.images[name].manifest) + sum(part["size"] for part in parts)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tenants")
    with DockerRegistry(root / "registry") as registry, DockerHub(root, registry.url) as hub:
        yield World(root, registry, hub)


def configured(
    world: World, workdir: Path, tenants: list[dict[str, Any]], **extra: Any
) -> Regcache:
    """A regcache (not started) with these tenants in front of the emulator."""
    world.hub.reset()
    upstream = {"name": "dockerhub", "url": world.hub.url, "prefix": "docker.io", "mirror": True,
                "docker_hub": True, **extra.pop("upstream", {})}  # fmt: skip
    config = {"admin_token": "admin-token", "upstreams": [upstream], "tenants": tenants, **extra}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config))
    ca_file = extra.get("tls_cert")
    return Regcache(workdir, config=workdir / "config.json", ca_file=ca_file)


@pytest.fixture(scope="module")
def fleet(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One regcache with three tenants on three ports (gamma is also the default, and
    limits each client to 5 requests and then one per 100 s)."""
    work = tmp_path_factory.mktemp("fleet")
    ports = {"alpha": free_port(), "beta": free_port(), "gamma": free_port()}
    beta_quota = int(world.size("img1") * 2.5)
    tenants = [
        {"name": "alpha", "ports": [ports["alpha"]], "anonymous": "none",
         "htpasswd": str(htpasswd(work / "alpha.htpasswd", ["alice", "bob"])),
         "push_users": ["alice"], "tokens": [{"name": "ci", "token": CI_TOKEN, "push": True}],
         "allow": {"docker.io": ["library/img*"]}, "tag_policy": "deny"},
        {"name": "beta", "ports": [ports["beta"]], "anonymous": "push", "quota_bytes": beta_quota,
         "tag_policy": "warn", "max_image_bytes": 1 << 20},
        {"name": "gamma", "ports": [ports["gamma"]], "default": True,
         "htpasswd": str(htpasswd(work / "gamma.htpasswd", ["carol", "dave"])),
         "client_limits": {"requests": {"rate": 0.01, "burst": 5}}},
    ]  # fmt: skip
    server = configured(world, work / "rc", tenants).start()
    try:
        yield {"server": server, "quota": beta_quota,
               **{name: f"http://127.0.0.1:{port}" for name, port in ports.items()}}  # fmt: skip
    finally:
        server.stop()


def pull(url: str, name: str, http: requests.Session | None = None, tag: str = "1.0.0") -> None:
    """Pull an image's manifest and every blob through `url`, checking each blob's digest."""
    http = http or requests.Session()
    response = http.get(f"{url}/v2/docker.io/library/{name}/manifests/{tag}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    manifest = response.json()
    for part in [manifest["config"], *manifest["layers"]]:
        blob = http.get(f"{url}/v2/docker.io/library/{name}/blobs/{part['digest']}")
        assert blob.status_code == 200
        assert len(blob.content) == part["size"]


def admin(server: Regcache, method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{server.url}/admin/{path}", headers=ADMIN, **kwargs)
    assert response.ok, response.text
    return response.json()


def tenant_usage(server: Regcache) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in admin(server, "GET", "tenants")["tenants"]}


def upstream_asked(world: World) -> dict[str, int]:
    return {k: v for k, v in world.hub.stats()["stats"].items() if k != "most_blobs_at_once"}


def test_hosted_images_are_invisible_to_other_tenants(fleet: dict[str, Any]) -> None:
    alpha = Client(fleet["alpha"], session("alice"))
    layer = b"alpha's secret layer"
    doc = alpha.manifest_doc("secret/app", [layer])
    assert alpha.put_manifest("secret/app", "v1", doc).status_code == 201
    digest = alpha.get("secret/app/manifests/v1").headers["Docker-Content-Digest"]
    layer_digest = doc["layers"][0]["digest"]
    beta = requests.Session()

    def both(method: str, path: str, **kwargs: Any) -> tuple[requests.Response, ...]:
        """The same request for alpha's repository and for one that never existed."""
        return tuple(
            beta.request(method, f"{fleet['beta']}/v2/{name}/{path}", **kwargs)
            for name in ("secret/app", "never/existed")
        )

    for method, path in [("GET", "manifests/v1"), ("HEAD", "manifests/v1"),
                         ("GET", f"manifests/{digest}"), ("GET", "tags/list"),
                         ("GET", f"blobs/{layer_digest}"), ("HEAD", f"blobs/{layer_digest}"),
                         ("DELETE", f"manifests/{digest}"), ("DELETE", f"blobs/{layer_digest}"),
                         ("GET", f"referrers/{digest}")]:  # fmt: skip
        mine, never = both(method, path)
        assert mine.status_code == never.status_code, (method, path)
        assert mine.text.replace("secret/app", "X") == never.text.replace("never/existed", "X")
        if "referrers" not in path:  # the referrers of anything unknown: an empty index
            assert mine.status_code >= 400, (method, path)
    mount = beta.post(f"{fleet['beta']}/v2/mine/blobs/uploads/",
                      params={"mount": layer_digest, "from": "secret/app"})  # fmt: skip
    assert mount.status_code == 202  # not mounted: a new upload session instead
    anonymous_mount = beta.post(f"{fleet['beta']}/v2/mine/blobs/uploads/",
                                params={"mount": layer_digest})  # fmt: skip
    assert anonymous_mount.status_code == 202
    assert "secret/app" not in beta.get(f"{fleet['beta']}/v2/_catalog").json()["repositories"]

    # beta's repository of the same name is its own; alpha's is untouched
    own = Client(fleet["beta"])
    assert own.put_manifest("secret/app", "v1", own.manifest_doc("secret/app", [b"beta"])).ok
    assert alpha.get("secret/app/manifests/v1").headers["Docker-Content-Digest"] == digest
    assert alpha.get(f"secret/app/blobs/{layer_digest}").content == layer
    catalog = alpha.get("_catalog").json()["repositories"]
    assert catalog == ["secret/app"]
    stored = {i["repository"] for i in admin(fleet["server"], "GET", "images")["images"]}
    assert {"+alpha/secret/app", "+beta/secret/app"} <= stored


def test_shared_image_downloaded_once_and_charged_to_both(
    world: World, fleet: dict[str, Any]
) -> None:
    world.hub.reset()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda args: pull(*args), [
            (fleet["alpha"], "img0", session("alice")), (fleet["beta"], "img0"),
            (fleet["alpha"], "img0", session(token=CI_TOKEN)), (fleet["beta"], "img0"),
        ]))  # fmt: skip
    blob_gets = world.hub.stats()["blob_gets"]
    manifest = json.loads(world.images["img0"].manifest)
    digests = [p["digest"] for p in [manifest["config"], *manifest["layers"]]]
    assert {d: blob_gets.get(d) for d in digests} == dict.fromkeys(digests, 1)
    usage = tenant_usage(fleet["server"])
    for name in ("alpha", "beta"):
        assert any("docker.io/library/img0@" in image for image in usage[name]["images"])
        assert usage[name]["used"] >= world.size("img0")


def test_quota_evicts_only_within_the_tenants_own_share(
    world: World, fleet: dict[str, Any]
) -> None:
    server, quota = fleet["server"], fleet["quota"]
    alice = session("alice")
    for name in ("img1", "img2"):
        pull(fleet["alpha"], name, alice)
    admin(server, "POST", "pin", json={"repository": "docker.io/library/img1", "ref": "1.0.0"})
    for name in ("img1", "img2", "img3", "img4", "img0"):
        pull(fleet["beta"], name)
        assert tenant_usage(server)["beta"]["used"] <= quota
    beta_images = tenant_usage(server)["beta"]["images"]
    assert len(beta_images) < 5 and any("img0@" in i for i in beta_images)
    world.hub.reset()
    for name in ("img1", "img2"):  # alpha's images stayed in the store: no upstream request
        pull(fleet["alpha"], name, alice)
    assert world.hub.stats()["blob_gets"] == {}
    alpha_images = tenant_usage(server)["alpha"]["images"]
    assert sum("img1@" in i or "img2@" in i for i in alpha_images) == 2


def test_denied_pull_never_reaches_the_upstream(world: World, fleet: dict[str, Any]) -> None:
    world.hub.reset()
    world.registry.reset_log_position()
    alice = session("alice")
    blob = f"docker.io/library/evil/blobs/sha256:{'a' * 64}"
    for path in ("docker.io/library/evil/manifests/1.0.0", "library/evil/manifests/1.0.0",
                 "evil/manifests/1.0.0", blob):  # fmt: skip
        response = alice.get(f"{fleet['alpha']}/v2/{path}")
        assert response.status_code == 403 and errors_of(response) == ["DENIED"]
        assert "allowed: docker.io/library/img*" in response.json()["errors"][0]["message"]
    assert upstream_asked(world) == {}
    assert not [e for e in world.registry.requests() if "evil" in e.path]
    pull(fleet["alpha"], "img0", alice)  # an allowed one still pulls


def test_client_over_its_rate_gets_429_while_others_are_served(fleet: dict[str, Any]) -> None:
    carol, dave = session("carol"), session("dave")
    statuses = [carol.get(f"{fleet['gamma']}/v2/").status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    refused = carol.get(f"{fleet['gamma']}/v2/")
    assert errors_of(refused) == ["TOOMANYREQUESTS"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert dave.get(f"{fleet['gamma']}/v2/").status_code == 200
    anonymous = requests.get(f"{fleet['gamma']}/v2/")  # counted by address, apart from users
    assert anonymous.status_code == 200


def test_credentials_and_rights(fleet: dict[str, Any]) -> None:
    url = fleet["alpha"]
    challenge = requests.get(f"{url}/v2/")
    assert challenge.status_code == 401 and errors_of(challenge) == ["UNAUTHORIZED"]
    assert challenge.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = requests.get(f"{url}/v2/", auth=("alice", "not-her-password"))
    assert wrong.status_code == 401
    assert requests.get(f"{url}/v2/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert session("alice").get(f"{url}/v2/").status_code == 200
    assert session(token=CI_TOKEN).get(f"{url}/v2/").status_code == 200
    assert requests.get(f"{url}/v2/", auth=("anyone", CI_TOKEN)).status_code == 200
    bob = session("bob")  # pull only
    assert bob.get(f"{url}/v2/").status_code == 200
    refused = bob.post(f"{url}/v2/bobs/blobs/uploads/")
    assert refused.status_code == 403 and errors_of(refused) == ["DENIED"]
    assert session("carol").get(f"{url}/v2/").status_code == 401  # gamma's user, not alpha's
    # without a port of its own, credentials choose the tenant; none at all: the default
    main = fleet["server"].url
    assert session("alice").get(f"{main}/v2/_catalog").json()["repositories"] == ["secret/app"]
    assert requests.get(f"{main}/v2/_catalog").json()["repositories"] == []


def test_tag_policy_and_image_size_limit(world: World, fleet: dict[str, Any]) -> None:
    world.hub.reset()
    alice = session("alice")
    denied = alice.get(f"{fleet['alpha']}/v2/docker.io/library/img0/manifests/latest")
    assert denied.status_code == 403 and "mutable tag" in denied.text
    assert upstream_asked(world) == {}
    pull(fleet["alpha"], "img0", alice)  # a full version is fine
    warned = requests.get(f"{fleet['beta']}/v2/docker.io/library/img0/manifests/latest")
    assert warned.status_code == 200 and "mutable tag" in warned.headers["Warning"]
    world.hub.reset()
    too_big = requests.get(f"{fleet['beta']}/v2/docker.io/library/big/manifests/1.0.0")
    assert too_big.status_code == 403 and "image size limit" in too_big.text
    assert world.hub.stats()["blob_gets"] == {}  # refused before any layer was fetched


def test_redirects_only_to_trusted_hosts(world: World, tmp_path: Path) -> None:
    """Mode `cdn` redirects blob GETs to `localhost`, a host regcache must not contact
    unless the upstream is trusted to redirect there."""
    world.hub.set_mode("cdn")
    try:
        with configured(world, tmp_path / "untrusted", []) as server:
            manifest = requests.get(f"{server.url}/v2/library/img3/manifests/1.0.0").json()
            layer = manifest["layers"][0]["digest"]
            refused = requests.get(f"{server.url}/v2/library/img3/blobs/{layer}")
            assert refused.status_code == 502 and "untrusted host localhost" in refused.text
            assert world.hub.stats()["stats"].get("GET cdn", 0) == 0
        trusted = configured(world, tmp_path / "trusted", [],
                        upstream={"redirect_hosts": ["localhost"]})  # fmt: skip
        with trusted as server:
            world.hub.set_mode("cdn")
            pull(server.url, "img3")
            assert world.hub.stats()["stats"]["GET cdn"] == 3
    finally:
        world.hub.set_mode("normal")


def test_downloads_at_once_are_capped_per_upstream(world: World, tmp_path: Path) -> None:
    blobs = [f"library/{n}/blobs/{p['digest']}" for n in ("img1", "img2", "img3")
             for p in json.loads(world.images[n].manifest)["layers"]]  # fmt: skip
    most = {}
    for cap in (1, 6):
        with configured(world, tmp_path / str(cap), [], upstream={"max_downloads": cap}) as server:
            world.hub.set_mode("slow")
            try:
                with ThreadPoolExecutor(len(blobs)) as pool:
                    got = list(pool.map(lambda path, url=server.url: requests.get(
                        f"{url}/v2/{path}").status_code, blobs))  # fmt: skip
            finally:
                world.hub.set_mode("normal")
            assert got == [200] * len(blobs)
            most[cap] = world.hub.stats()["stats"]["most_blobs_at_once"]
    assert most[1] == 1 and most[6] > 1


def test_tls_serving(world: World, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with configured(world, tmp_path / "rc", [], tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.url.startswith("https://")
        response = requests.get(f"{server.url}/v2/", verify=str(cert))
        assert response.status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url.replace("https:", "http:") + "/v2/", timeout=5)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/v2/")  # not a CA the system trusts


@pytest.mark.parametrize("kind", ["docker", "podman"])
def test_login_then_pull(world: World, tmp_path: Path, kind: str) -> None:
    """`docker login` / `podman login` with htpasswd credentials, then a pull, against a
    tenant that admits no anonymous client."""
    port = free_port()
    tenant = {"name": "classroom", "ports": [port], "anonymous": "none",
              "htpasswd": str(htpasswd(tmp_path / "htpasswd", ["alice"]))}  # fmt: skip
    with configured(world, tmp_path / "rc", [tenant]):
        host = f"127.0.0.1:{port}"
        image = f"{host}/docker.io/library/img4:1.0.0"
        client_type = Dockerd if kind == "docker" else Podman
        with client_type(tmp_path / kind, f"http://{host}") as client:
            run = client.docker if isinstance(client, Dockerd) else client.podman
            pull_args = ["pull"] if kind == "docker" else ["pull", "--tls-verify=false"]
            refused = r"(?i)unauthorized|authentication required|no basic auth credentials"
            with pytest.raises(PeerError, match=refused):
                run(*pull_args, image)
            client.login(f"http://{host}", "alice", PASSWORDS["alice"])
            run(*pull_args, image)
            digest = world.images["img4"].descriptor.digest
            listed = run("image", "inspect", "--format", "{{json .RepoDigests}}", image)
            assert digest in listed

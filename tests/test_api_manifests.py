"""Manifests, tags, referrers and catalog over HTTP against a real regcache process."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import requests
from conftest import BACKENDS
from tooling.oci import OCI_INDEX, OCI_MANIFEST, Client, descriptor, errors_of, sha256

# The core's behaviour on both back ends: files and SQLite, SeaweedFS (S3) and PostgreSQL.
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True, scope="module")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_put_and_get_by_tag_and_digest_returns_the_same_bytes(client: Client) -> None:
    doc = client.manifest_doc("man/basic", [os.urandom(1000)])
    body = json.dumps(doc, indent=3).encode()  # unusual formatting must survive byte for byte
    put = client.put_manifest("man/basic", "v1.0.0", body)
    assert put.status_code == 201, put.text
    digest = sha256(body)
    assert put.headers["Docker-Content-Digest"] == digest
    assert put.headers["Location"].endswith(f"/v2/man/basic/manifests/{digest}")
    for ref in ("v1.0.0", digest):
        got = client.get(f"man/basic/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.content == body
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = requests.head(f"{client.url}/v2/man/basic/manifests/{ref}")
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(body)
        assert head.headers["Docker-Content-Digest"] == digest


def test_docker_media_types_are_kept(client: Client) -> None:
    layer = os.urandom(500)
    client.push_blob("man/docker", layer)
    client.push_blob("man/docker", b'{"architecture":"amd64"}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(
            b'{"architecture":"amd64"}', "application/vnd.docker.container.image.v1+json"
        ),
        "layers": [descriptor(layer, "application/vnd.docker.image.rootfs.diff.tar.gzip")],
    }
    put = client.put_manifest("man/docker", "amd64", manifest, DOCKER_MANIFEST)
    assert put.status_code == 201, put.text
    child = {"mediaType": DOCKER_MANIFEST, "digest": put.headers["Docker-Content-Digest"]}
    child["size"] = len(json.dumps(manifest).encode())
    child["platform"] = {"architecture": "amd64", "os": "linux"}
    listing = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [child]}
    assert client.put_manifest("man/docker", "multi", listing, DOCKER_LIST).status_code == 201
    got = client.get("man/docker/manifests/multi")
    assert got.headers["Content-Type"] == DOCKER_LIST
    assert json.loads(got.content) == listing


def test_index_needs_its_children(client: Client) -> None:
    doc = client.manifest_doc("man/index", [b"layer"])
    missing = {"mediaType": OCI_MANIFEST, "digest": sha256(b"no such manifest"), "size": 16}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [missing]}
    refused = client.put_manifest("man/index", "all", index, OCI_INDEX)
    assert refused.status_code == 404 and errors_of(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    child = client.put_manifest("man/index", "amd64", doc)
    index["manifests"] = [
        {"mediaType": OCI_MANIFEST, "digest": child.headers["Docker-Content-Digest"],
         "size": len(json.dumps(doc).encode())}
    ]  # fmt: skip
    assert client.put_manifest("man/index", "all", index, OCI_INDEX).status_code == 201


def test_subject_header_and_referrers_with_filter(client: Client) -> None:
    image = client.put_manifest("man/ref", "base", client.manifest_doc("man/ref", [b"base"]))
    subject = {
        "mediaType": OCI_MANIFEST,
        "digest": image.headers["Docker-Content-Digest"],
        "size": int(
            requests.head(f"{client.url}/v2/man/ref/manifests/base").headers["Content-Length"]
        ),
    }
    digests = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.sig"):
        doc = client.manifest_doc(
            "man/ref", [kind.encode()], artifactType=kind, subject=subject,
            annotations={"org.example.kind": kind},
        )  # fmt: skip
        put = client.put_manifest("man/ref", sha256(json.dumps(doc).encode()), doc)
        assert put.status_code == 201, put.text
        assert put.headers["OCI-Subject"] == subject["digest"]
        digests[kind] = put.headers["Docker-Content-Digest"]
    listing = client.get(f"man/ref/referrers/{subject['digest']}")
    assert listing.status_code == 200 and listing.headers["Content-Type"] == OCI_INDEX
    found = {m["digest"]: m for m in listing.json()["manifests"]}
    assert set(found) == set(digests.values())
    sbom = found[digests["application/vnd.example.sbom"]]
    assert sbom["artifactType"] == "application/vnd.example.sbom"
    assert sbom["annotations"] == {"org.example.kind": "application/vnd.example.sbom"}
    filtered = client.get(
        f"man/ref/referrers/{subject['digest']}",
        params={"artifactType": "application/vnd.example.sig"},
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [
        digests["application/vnd.example.sig"]
    ]
    none = client.get(f"man/ref/referrers/{sha256(b'lonely')}")
    assert none.status_code == 200 and none.json()["manifests"] == []


def test_subject_may_be_absent(client: Client) -> None:
    ghost = {"mediaType": OCI_MANIFEST, "digest": sha256(b"not pushed yet"), "size": 14}
    doc = client.manifest_doc(
        "man/ghost", [b"sig"], artifactType="application/x.sig", subject=ghost
    )
    put = client.put_manifest("man/ghost", "sig", doc)
    assert put.status_code == 201 and put.headers["OCI-Subject"] == ghost["digest"]
    assert len(client.get(f"man/ghost/referrers/{ghost['digest']}").json()["manifests"]) == 1


def test_delete_tag_then_manifest(client: Client) -> None:
    doc = client.manifest_doc("man/del", [b"x"])
    digest = client.put_manifest("man/del", "a", doc).headers["Docker-Content-Digest"]
    client.put_manifest("man/del", "b", doc)
    assert requests.delete(f"{client.url}/v2/man/del/manifests/a").status_code == 202
    assert client.get("man/del/manifests/a").status_code == 404
    assert client.get("man/del/manifests/b").status_code == 200
    assert requests.delete(f"{client.url}/v2/man/del/manifests/{digest}").status_code == 202
    gone = client.get("man/del/manifests/b")
    assert gone.status_code == 404 and errors_of(gone) == ["MANIFEST_UNKNOWN"]
    assert client.get(f"man/del/manifests/{digest}").status_code == 404
    again = requests.delete(f"{client.url}/v2/man/del/manifests/{digest}")
    assert again.status_code == 404 and errors_of(again) == ["MANIFEST_UNKNOWN"]


def test_tag_list_pagination(client: Client) -> None:
    doc = client.manifest_doc("man/tags", [b"t"])
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in reversed(tags):
        assert client.put_manifest("man/tags", tag, doc).status_code == 201
    assert client.get("man/tags/tags/list").json() == {"name": "man/tags", "tags": tags}
    seen, url = [], f"{client.url}/v2/man/tags/tags/list?n=3"
    while url:
        page = requests.get(url)
        seen += page.json()["tags"]
        link = page.headers.get("Link")
        url = client.absolute(link.split(";")[0].strip("<>")) if link else ""
    assert seen == tags
    after = client.get("man/tags/tags/list", params={"n": 2, "last": "t04"}).json()["tags"]
    assert after == ["t05", "t06"]
    assert client.get("man/tags/tags/list", params={"n": 0}).json()["tags"] == []
    unknown = client.get("man/never/tags/list")
    assert unknown.status_code == 404 and errors_of(unknown) == ["NAME_UNKNOWN"]


def test_catalog_pagination(client: Client) -> None:
    for name in ("cat/c", "cat/a", "cat/b"):
        client.push_blob(name, b"catalog")
    names = client.get("_catalog").json()["repositories"]
    assert [n for n in names if n.startswith("cat/")] == ["cat/a", "cat/b", "cat/c"]
    page = client.get("_catalog", params={"n": 1, "last": "cat/a"})
    assert page.json()["repositories"] == ["cat/b"]
    assert 'rel="next"' in page.headers["Link"]


def test_push_by_digest_with_tag_parameters(client: Client) -> None:
    doc = client.manifest_doc("man/tagparam", [b"tp"])
    body = json.dumps(doc).encode()
    response = requests.put(
        f"{client.url}/v2/man/tagparam/manifests/{sha256(body)}",
        params=[("tag", "1.2.3"), ("tag", "1.2"), ("tag", "latest")],
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert response.raw.headers.getlist("OCI-Tag") == ["1.2.3", "1.2", "latest"]
    assert client.get("man/tagparam/tags/list").json()["tags"] == ["1.2", "1.2.3", "latest"]
    for tag in ("1.2.3", "1.2", "latest"):
        assert client.get(f"man/tagparam/manifests/{tag}").content == body


def test_sha512_manifest_by_digest(client: Client) -> None:
    doc = client.manifest_doc("man/sha512", [b"five-twelve"])
    body = json.dumps(doc).encode()
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    response = requests.put(
        f"{client.url}/v2/man/sha512/manifests/{digest}", params={"tag": "v1"}, data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )  # fmt: skip
    assert response.status_code == 201 and response.headers["Docker-Content-Digest"] == digest
    assert client.get("man/sha512/manifests/v1").headers["Docker-Content-Digest"] == digest
    assert client.get(f"man/sha512/manifests/{digest}").content == body

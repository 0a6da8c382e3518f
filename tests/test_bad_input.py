"""Bad input gets the spec's error JSON with the right status and leaves the store unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import requests
from tooling.oci import Client, errors_of, sha256, store_snapshot
from tooling.server import Regcache


@contextmanager
def unchanged(server: Regcache) -> Iterator[None]:
    before = store_snapshot(server.data_dir)
    yield
    assert store_snapshot(server.data_dir) == before


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as written (no client-side path clean-up); return status and body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def seeded(client: Client) -> Client:
    client.put_manifest("bad/seed", "v1.0.0", client.manifest_doc("bad/seed", [b"seed"]))
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/tags/list",
        "/v2/a..b/tags/list",
        "/v2/../../etc/tags/list",
        "/v2/bad/../../../etc/blobs/uploads/",
        "/v2/%2e%2e/%2e%2e/tags/list",
        "/v2/-lead/tags/list",
        "/v2/trail-/manifests/latest",
        "/v2/" + "a" * 300 + "/tags/list",
    ],
)
def test_malformed_names(regcache: Regcache, seeded: Client, path: str) -> None:
    with unchanged(regcache):
        for method in ("GET", "POST"):
            request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            status, body = raw_request(
                regcache.url, (request + "Connection: close\r\n\r\n").encode()
            )
            assert status in (400, 404), body
            if status == 400:
                assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert not any(p.name == "etc" for p in regcache.workdir.rglob("etc"))


@pytest.mark.parametrize(
    "digest",
    ["sha256:zzz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + "a" * 63,
     "sha256:" + "A" * 64, "nonsense", "sha512:" + "b" * 64],
)  # fmt: skip
def test_wrong_or_unsupported_digests(regcache: Regcache, seeded: Client, digest: str) -> None:
    with unchanged(regcache):
        for response in (
            seeded.get(f"bad/seed/blobs/{digest}"),
            requests.post(
                f"{seeded.url}/v2/bad/seed/blobs/uploads/", params={"digest": digest}, data=b"x"
            ),
            seeded.get(f"bad/seed/referrers/{digest}"),
        ):
            assert response.status_code == 400, response.text
            assert errors_of(response) == ["DIGEST_INVALID"]


def test_digest_mismatch(regcache: Regcache, seeded: Client) -> None:
    with unchanged(regcache):
        response = requests.post(
            f"{seeded.url}/v2/bad/seed/blobs/uploads/",
            params={"digest": sha256(b"something else")},
            data=b"actual content",
        )
        assert response.status_code == 400 and errors_of(response) == ["DIGEST_INVALID"]
    assert seeded.get(f"bad/seed/blobs/{sha256(b'actual content')}").status_code == 404


def test_truncated_upload_leaves_the_session_as_it_was(regcache: Regcache, seeded: Client) -> None:
    location = urlsplit(seeded.start_upload("bad/seed")).path
    with unchanged(regcache):
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            "Content-Range: 0-99999\r\n\r\n"
        ).encode()
        parts = urlsplit(regcache.url)
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            sock.sendall(head + os.urandom(40_000))
        status = requests.get(seeded.url + location)
        assert status.status_code == 204 and status.headers["Range"] == "0-0"
    data = os.urandom(1000)
    redo = requests.put(seeded.url + location, params={"digest": sha256(data)}, data=data)
    assert redo.status_code == 201  # the session held nothing of the broken chunk
    assert seeded.get(f"bad/seed/blobs/{sha256(data)}").content == data


def test_out_of_order_chunks(regcache: Regcache, seeded: Client) -> None:
    location = seeded.start_upload("bad/seed")
    first = requests.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    location = seeded.absolute(first.headers["Location"])
    with unchanged(regcache):
        for content_range in ("0-3", "8-11", "2-5", "7-3", "nonsense"):
            response = requests.patch(
                location, data=b"efgh", headers={"Content-Range": content_range}
            )
            assert response.status_code == 416, (content_range, response.text)
        assert requests.get(location).headers["Range"] == "0-3"
        short = requests.patch(location, data=b"ef", headers={"Content-Range": "4-7"})
        assert short.status_code == 416
        assert requests.get(location).headers["Range"] == "0-3"


def test_oversized_manifest(regcache: Regcache, seeded: Client) -> None:
    doc = seeded.manifest_doc("bad/seed", [b"seed"])
    doc["annotations"] = {"padding": "x" * (4 * 1024 * 1024)}
    with unchanged(regcache):
        response = seeded.put_manifest("bad/seed", "huge", doc)
        assert response.status_code == 413 and errors_of(response) == ["MANIFEST_INVALID"]


def test_manifest_with_missing_blobs(regcache: Regcache, seeded: Client) -> None:
    doc = seeded.manifest_doc("bad/seed", [b"seed"])
    doc["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                          "digest": sha256(b"never uploaded"), "size": 14})  # fmt: skip
    with unchanged(regcache):
        response = seeded.put_manifest("bad/seed", "broken", doc)
        assert response.status_code == 404 and errors_of(response) == ["MANIFEST_BLOB_UNKNOWN"]
        assert sha256(b"never uploaded") in response.text


def test_blob_of_another_repository_does_not_satisfy_a_manifest(
    regcache: Regcache, seeded: Client
) -> None:
    seeded.push_blob("bad/elsewhere", b"foreign layer")
    doc = seeded.manifest_doc("bad/seed", [b"seed"])
    doc["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                          "digest": sha256(b"foreign layer"), "size": 13})  # fmt: skip
    with unchanged(regcache):
        assert seeded.put_manifest("bad/seed", "mixed", doc).status_code == 404


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", "application/vnd.oci.image.manifest.v1+json"),
        (b"[1, 2]", "application/vnd.oci.image.manifest.v1+json"),
        (b'{"schemaVersion": 1}', "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",'
         b' "manifests": []}', "application/vnd.oci.image.manifest.v1+json"),
        (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:1", "size": 1},'
         b' "layers": []}', "application/vnd.oci.image.manifest.v1+json"),
        (b'{"schemaVersion": 2, "config": {"mediaType": "x"}, "layers": []}',
         "application/vnd.oci.image.manifest.v1+json"),
    ],
)  # fmt: skip
def test_invalid_manifests(
    regcache: Regcache, seeded: Client, body: bytes, content_type: str
) -> None:
    with unchanged(regcache):
        response = seeded.put_manifest("bad/seed", "invalid", body, content_type)
        assert response.status_code == 400 and errors_of(response) == ["MANIFEST_INVALID"]


def test_manifest_put_by_wrong_digest(regcache: Regcache, seeded: Client) -> None:
    doc = seeded.manifest_doc("bad/seed", [b"seed"])
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with unchanged(regcache):
        response = seeded.put_manifest("bad/seed", wrong, doc)
        assert response.status_code == 400 and errors_of(response) == ["DIGEST_INVALID"]


def test_invalid_tag(regcache: Regcache, seeded: Client) -> None:
    doc = seeded.manifest_doc("bad/seed", [b"seed"])
    with unchanged(regcache):
        for tag in (".hidden", "a" * 129, "-dash"):
            response = seeded.put_manifest("bad/seed", tag, doc)
            assert response.status_code == 400 and errors_of(response) == ["MANIFEST_INVALID"]


def test_unsupported_method_and_unknown_endpoint(regcache: Regcache, seeded: Client) -> None:
    with unchanged(regcache):
        response = requests.post(f"{seeded.url}/v2/bad/seed/manifests/v1.0.0")
        assert response.status_code == 405 and errors_of(response) == ["UNSUPPORTED"]
        response = requests.get(f"{seeded.url}/v2/bad/seed/nothing/here")
        assert response.status_code == 404 and errors_of(response) == ["UNSUPPORTED"]

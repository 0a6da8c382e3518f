"""Blob download and the upload protocol, over HTTP against a real regcache process."""

from __future__ import annotations

import hashlib
import os

import pytest
import requests
from conftest import BACKENDS
from tooling.oci import Client, errors_of, sha256

# The core's behaviour on both back ends: files and SQLite, SeaweedFS (S3) and PostgreSQL.
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True, scope="module")


def test_version_check(client: Client) -> None:
    response = client.get("")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_monolithic_upload_then_get_head_and_ranges(client: Client) -> None:
    data = os.urandom(100_000)
    digest = client.push_blob("blobs/mono", data)
    got = client.get(f"blobs/mono/blobs/{digest}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["Docker-Content-Digest"] == digest
    head = requests.head(f"{client.url}/v2/blobs/mono/blobs/{digest}")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(data)
    part = client.get(f"blobs/mono/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    past_end = client.get(f"blobs/mono/blobs/{digest}", headers={"Range": "bytes=200000-"})
    assert past_end.status_code == 416


def test_empty_blob_on_one_kept_alive_connection(client: Client) -> None:
    digest = client.push_blob("blobs/empty", b"")
    with requests.Session() as session:  # a wrong body would break the next answer
        url = f"{client.url}/v2/blobs/empty/blobs/{digest}"
        for method in ("GET", "HEAD", "GET"):
            got = session.request(method, url)
            assert got.status_code == 200 and got.content == b"", method
            assert got.headers["Content-Length"] == "0"
            assert got.headers["Docker-Content-Digest"] == digest
        assert session.get(f"{client.url}/v2/").status_code == 200


def test_unknown_blob_is_blob_unknown(client: Client) -> None:
    response = client.get(f"blobs/none/blobs/{sha256(b'absent')}")
    assert response.status_code == 404 and errors_of(response) == ["BLOB_UNKNOWN"]


def test_blob_is_visible_only_in_its_repository(client: Client) -> None:
    digest = client.push_blob("blobs/owner", b"mine")
    assert client.get(f"blobs/other/blobs/{digest}").status_code == 404


def test_chunked_upload_with_status_and_out_of_order_chunk(client: Client) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    first, second = data[:2_000_000], data[2_000_000:]
    location = client.start_upload("blobs/chunked")
    patched = requests.patch(
        location,
        data=first,
        headers={
            "Content-Range": f"0-{len(first) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert patched.status_code == 202
    assert patched.headers["Range"] == f"0-{len(first) - 1}"
    location = client.absolute(patched.headers["Location"])
    status = requests.get(location)
    assert status.status_code == 204 and status.headers["Range"] == f"0-{len(first) - 1}"
    wrong = requests.patch(location, data=second, headers={"Content-Range": f"5-{len(second) + 4}"})
    assert wrong.status_code == 416
    assert requests.get(location).headers["Range"] == f"0-{len(first) - 1}"
    end = len(data) - 1
    patched = requests.patch(
        location, data=second, headers={"Content-Range": f"{len(first)}-{end}"}
    )
    assert patched.status_code == 202
    digest = sha256(data)
    done = requests.put(client.absolute(patched.headers["Location"]), params={"digest": digest})
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest
    assert done.headers["Location"].endswith(f"/v2/blobs/chunked/blobs/{digest}")
    assert client.get(f"blobs/chunked/blobs/{digest}").content == data


def test_put_with_last_chunk_and_sha512(client: Client) -> None:
    data = os.urandom(50_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = client.start_upload("blobs/sha512")
    done = requests.put(location, params={"digest": digest}, data=data)
    assert done.status_code == 201, done.text
    got = client.get(f"blobs/sha512/blobs/{digest}")
    assert got.content == data and got.headers["Docker-Content-Digest"] == digest


def test_streamed_patch_without_content_range(client: Client) -> None:
    data = os.urandom(300_000)
    location = client.start_upload("blobs/stream")
    patched = requests.patch(location, data=iter([data[:100_000], data[100_000:]]))
    assert patched.status_code == 202 and patched.headers["Range"] == f"0-{len(data) - 1}"
    done = requests.put(
        client.absolute(patched.headers["Location"]), params={"digest": sha256(data)}
    )
    assert done.status_code == 201


def test_cancel_upload(client: Client) -> None:
    location = client.start_upload("blobs/cancel")
    assert requests.delete(location).status_code == 204
    assert requests.get(location).status_code == 404
    assert errors_of(requests.patch(location, data=b"x")) == ["BLOB_UPLOAD_UNKNOWN"]


def test_cross_repository_mount_and_fallback(client: Client) -> None:
    digest = client.push_blob("blobs/source", b"shared layer")
    mounted = requests.post(
        f"{client.url}/v2/blobs/target/blobs/uploads/",
        params={"mount": digest, "from": "blobs/source"},
    )
    assert mounted.status_code == 201
    assert mounted.headers["Location"].endswith(f"/v2/blobs/target/blobs/{digest}")
    assert client.get(f"blobs/target/blobs/{digest}").content == b"shared layer"
    unknown = requests.post(
        f"{client.url}/v2/blobs/target/blobs/uploads/",
        params={"mount": sha256(b"nowhere"), "from": "blobs/source"},
    )
    assert unknown.status_code == 202 and "/blobs/uploads/" in unknown.headers["Location"]


def test_delete_blob(client: Client) -> None:
    digest = client.push_blob("blobs/del", b"to delete")
    assert requests.delete(f"{client.url}/v2/blobs/del/blobs/{digest}").status_code == 202
    assert client.get(f"blobs/del/blobs/{digest}").status_code == 404
    again = requests.delete(f"{client.url}/v2/blobs/del/blobs/{digest}")
    assert again.status_code == 404 and errors_of(again) == ["BLOB_UNKNOWN"]


def test_deleting_from_one_repository_keeps_the_other(client: Client) -> None:
    data = b"kept elsewhere"
    digest = client.push_blob("blobs/one", data)
    client.push_blob("blobs/two", data)
    assert requests.delete(f"{client.url}/v2/blobs/one/blobs/{digest}").status_code == 202
    assert client.get(f"blobs/two/blobs/{digest}").content == data


def test_mount_without_from_finds_a_hosted_blob(client: Client) -> None:
    digest = client.push_blob("blobs/anon-source", b"mount me anywhere")
    mounted = requests.post(f"{client.url}/v2/blobs/anon-target/blobs/uploads/",
                            params={"mount": digest})  # fmt: skip
    assert mounted.status_code == 201
    assert client.get(f"blobs/anon-target/blobs/{digest}").content == b"mount me anywhere"

"""Blobs in S3-compatible object storage, against a real SeaweedFS on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml
from pydantic import SecretStr
from tooling.images import make_image
from tooling.oci import Client, sha256
from tooling.peers import layout_blob_digests, pull_to_layout, push_layout, verify_layout
from tooling.seaweed import SeaweedFS
from tooling.server import PeakRss, Regcache

from regcache.config import ObjectStorage, Settings
from regcache.digest import Digest
from regcache.registry import Registry
from regcache.store import objects
from regcache.store.gc import collect_garbage, rehash, verify
from regcache.store.objects import ObjectBlobStore, ObjectStoreError

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def _bucket(request: pytest.FixtureRequest) -> str:
    """A bucket name of the test's own (S3 names: 3-63 lower-case letters, digits, '-')."""
    name = request.node.name.lower().replace("_", "-")
    return "t-" + hashlib.sha256(name.encode()).hexdigest()[:12] + "-" + name[5:40].strip("-")


@pytest.fixture
def storage(seaweed: SeaweedFS, request: pytest.FixtureRequest) -> ObjectStorage:
    return ObjectStorage(
        endpoint_url=seaweed.endpoint,
        bucket=_bucket(request),
        prefix="cache/",
        access_key=seaweed.access_key,
        secret_key=SecretStr(seaweed.secret_key),
    )


@pytest.fixture
def store(tmp_path: Path, storage: ObjectStorage) -> ObjectBlobStore:
    blobs = ObjectBlobStore(tmp_path / "data", storage)
    blobs.open()  # creates the missing bucket
    return blobs


def _temp_file(store: ObjectBlobStore, size: int) -> tuple[Path, Digest]:
    """A temp file of `size` random bytes, written in 1 MiB chunks, and its digest."""
    path, hasher = store.temp_path(), hashlib.sha256()
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            chunk = os.urandom(min(MiB, size - offset))
            f.write(chunk)
            hasher.update(chunk)
    return path, Digest("sha256", hasher.hexdigest())


def _uploads(store: ObjectBlobStore) -> list[dict[str, Any]]:
    """Multipart uploads in progress in the store's bucket."""
    return store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def test_commit_size_read_range_list_delete(store: ObjectBlobStore) -> None:
    temp, digest = _temp_file(store, 20 * MiB + 3)  # three parts
    data = temp.read_bytes()
    store.commit(temp, digest)
    assert not temp.exists()
    assert store.size(digest) == len(data)
    assert store.key(digest) == f"cache/blobs/sha256/{digest.hex[:2]}/{digest.hex}"
    head = store.s3.head_object(Bucket=store.bucket, Key=store.key(digest))
    assert head["ContentLength"] == len(data)
    with store.reader(digest, 10 * MiB - 5, 11) as stream:
        assert stream.read(MiB) == data[10 * MiB - 5 : 10 * MiB + 6]
    small = b'{"config": {}}'
    store.write(small, Digest.of(small))
    store.write(b"", Digest.of(b""))
    assert store.read(Digest.of(small)) == small
    assert store.read(Digest.of(b"")) == b""
    listed = {blob.digest: blob.size for blob in store.list_blobs()}
    assert listed == {digest: len(data), Digest.of(small): len(small), Digest.of(b""): 0}
    assert store.local_path(digest) is None and store.redirect_url(digest) is None
    store.delete(digest)
    assert store.size(digest) is None
    store.delete(digest)  # absent: no error
    with pytest.raises(FileNotFoundError):
        store.read(digest)
    store.delete_all([Digest.of(small), Digest.of(b""), digest])
    assert list(store.list_blobs()) == []
    assert _uploads(store) == []


def test_commit_of_100_mib_with_bounded_memory(store: ObjectBlobStore) -> None:
    temp, digest = _temp_file(store, 100 * MiB)
    baseline = psutil.Process().memory_info().rss
    with PeakRss(os.getpid(), interval=0.005) as rss:
        store.commit(temp, digest)
    growth = rss.peak - baseline
    print(f"peak RSS growth during a 100 MiB commit: {growth / MiB:.1f} MiB")
    assert growth < 60 * MiB
    assert store.size(digest) == 100 * MiB
    baseline = psutil.Process().memory_info().rss
    with PeakRss(os.getpid(), interval=0.005) as rss:
        result = rehash(store, digest)
    growth = rss.peak - baseline
    print(f"peak RSS growth while re-hashing it from the store: {growth / MiB:.1f} MiB")
    assert result == (digest, 100 * MiB)
    assert growth < 60 * MiB


def test_streaming_upload_sends_parts_as_bytes_arrive(store: ObjectBlobStore) -> None:
    data = os.urandom(20 * MiB + 12345)
    digest = Digest.of(data)
    upload = store.upload(digest)
    for offset in range(0, 9 * MiB, 256 * 1024 + 7):  # a download's uneven chunks
        upload.add(data[offset : min(offset + 256 * 1024 + 7, 9 * MiB)])
    (pending,) = _uploads(store)
    parts = store.s3.list_parts(
        Bucket=store.bucket, Key=pending["Key"], UploadId=pending["UploadId"]
    )
    assert [p["PartNumber"] for p in parts["Parts"]] == [1]  # sent while the blob still grows
    assert store.size(digest) is None  # nothing visible before complete()
    upload.add(data[9 * MiB :])
    assert store.size(digest) is None
    upload.complete()
    assert store.size(digest) == len(data)
    assert store.read(digest) == data
    assert _uploads(store) == []
    upload.abort()  # after complete(): no effect
    assert store.size(digest) == len(data)


def test_aborted_upload_leaves_nothing(store: ObjectBlobStore) -> None:
    data = os.urandom(17 * MiB)
    digest = Digest.of(data)
    upload = store.upload(digest)
    upload.add(data)
    assert len(_uploads(store)) == 1
    upload.abort()
    assert _uploads(store) == []
    assert store.size(digest) is None
    assert list(store.list_blobs()) == []


def test_commit_failing_midway_leaves_nothing(
    store: ObjectBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp, digest = _temp_file(store, 25 * MiB)
    real = store.s3.upload_part
    calls = []

    def failing(**kwargs: Any) -> Any:
        calls.append(kwargs["PartNumber"])
        if len(calls) == 3:
            raise ObjectStoreError("network gone")
        return real(**kwargs)

    monkeypatch.setattr(store.s3, "upload_part", failing)
    with pytest.raises(ObjectStoreError):
        store.commit(temp, digest)
    assert calls == [1, 2, 3]
    assert store.size(digest) is None
    assert _uploads(store) == []  # aborted
    assert temp.exists()  # the caller still owns the verified file


_KILLED_UPLOADER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pydantic import SecretStr
    from regcache.config import ObjectStorage
    from regcache.digest import Digest
    from regcache.store.objects import ObjectBlobStore
    endpoint, bucket, access, secret, data_dir = sys.argv[1:]
    store = ObjectBlobStore(Path(data_dir), ObjectStorage(
        endpoint_url=endpoint, bucket=bucket, prefix="cache/", access_key=access,
        secret_key=SecretStr(secret)))
    data = os.urandom(20 * 1024 * 1024)
    upload = store.upload(Digest.of(data))
    upload.add(data[: 16 * 1024 * 1024])
    print(Digest.of(data), flush=True)
    time.sleep(600)
    """
)


def test_process_killed_before_complete_leaves_nothing_visible(
    store: ObjectBlobStore, seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [seaweed.endpoint, store.bucket, seaweed.access_key, seaweed.secret_key]
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_UPLOADER, *args, str(store.root)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        digest = Digest.parse(process.stdout.readline().strip())
        assert len(_uploads(store)) == 1  # two parts sent
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert store.size(digest) is None
    assert list(store.list_blobs()) == []
    monkeypatch.setattr(objects, "STALE_UPLOAD", -60.0)  # everything counts as stale
    store.open()
    assert _uploads(store) == []


def test_errors_are_short_and_hold_no_secret(
    store: ObjectBlobStore, storage: ObjectStorage
) -> None:
    wrong = storage.model_copy(update={"secret_key": SecretStr("not-the-secret-at-all")})
    bad = ObjectBlobStore(store.root, wrong)
    with pytest.raises(ObjectStoreError) as caught:
        bad.size(Digest.of(b"x"))
    message = str(caught.value)
    assert message.startswith("object storage: HEAD cache/blobs/sha256/")
    assert "403" in message
    secret = storage.secret()
    assert secret is not None and secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_gc_deletes_orphan_objects(tmp_path: Path, storage: ObjectStorage) -> None:
    orphan, kept = b"left by a crash", b"pushed"

    async def body() -> AsyncIterator[bytes]:
        yield kept

    async def run() -> tuple[int, int | None, int | None]:
        registry = Registry(Settings(data_dir=tmp_path / "data", object_storage=storage))
        registry.open()
        try:
            await asyncio.to_thread(registry.blobs.write, orphan, Digest.of(orphan))
            upload = registry.uploads.create("gc/kept")
            await registry.uploads.append(upload, body(), length=len(kept))
            await registry.finish_upload(upload, Digest.of(kept))
            report = await collect_garbage(registry, now=time.time() + 3600)
            blobs = registry.blobs
            return report.orphan_files, blobs.size(Digest.of(orphan)), blobs.size(Digest.of(kept))
        finally:
            registry.close()

    assert asyncio.run(run()) == (1, None, len(kept))


# end to end: a regcache process on SeaweedFS


def _regcache(tmp_path: Path, storage: ObjectStorage, **extra: Any) -> Regcache:
    """A regcache (not started yet) with its blobs in `storage`, secret key in a file."""
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(f"{storage.secret()}\n")
    settings = {
        "endpoint_url": storage.endpoint_url,
        "bucket": storage.bucket,
        "prefix": storage.prefix,
        "access_key": storage.access_key,
        "secret_key_file": str(secret_file),
        **extra,
    }
    config = tmp_path / "regcache.yaml"
    config.write_text(yaml.safe_dump({"object_storage": settings, "log_level": "debug"}))
    return Regcache(tmp_path, config=config)


def test_push_pull_range_restart(tmp_path: Path, storage: ObjectStorage) -> None:
    layer = os.urandom(20 * MiB)
    server = _regcache(tmp_path, storage).start()
    try:
        client = Client(server.url)
        doc = client.manifest_doc("s3/app", [layer])
        assert client.put_manifest("s3/app", "v1", doc).status_code == 201
        for _ in range(2):
            got = client.get(f"s3/app/blobs/{sha256(layer)}")
            assert got.status_code == 200
            assert got.headers["Content-Length"] == str(len(layer))
            assert got.headers["Docker-Content-Digest"] == sha256(layer)
            assert got.headers["Accept-Ranges"] == "bytes"
            assert got.content == layer
            ranged = client.get(
                f"s3/app/blobs/{sha256(layer)}", headers={"Range": "bytes=1000-2000999"}
            )
            assert ranged.status_code == 206
            assert ranged.headers["Content-Range"] == f"bytes 1000-2000999/{len(layer)}"
            assert ranged.content == layer[1000:2001000]
            suffix = client.get(f"s3/app/blobs/{sha256(layer)}", headers={"Range": "bytes=-10"})
            assert suffix.status_code == 206 and suffix.content == layer[-10:]
            outside = client.get(
                f"s3/app/blobs/{sha256(layer)}", headers={"Range": f"bytes={len(layer)}-"}
            )
            assert outside.status_code == 416
            head = client.http.head(f"{server.url}/v2/s3/app/blobs/{sha256(layer)}")
            assert head.status_code == 200 and head.headers["Content-Length"] == str(len(layer))
            manifest = client.get("s3/app/manifests/v1")
            assert manifest.status_code == 200 and manifest.json() == doc
            server.stop()
            server.start()  # a restart: everything is still there
        assert not (server.data_dir / "blobs").exists()
        missing = client.get(f"s3/app/blobs/{sha256(b'never pushed')}")
        assert missing.status_code == 404
    finally:
        server.stop()
    log = server.log()
    assert storage.secret() not in log
    bucket = ObjectBlobStore(tmp_path / "check", storage)
    stored = {str(blob.digest) for blob in bucket.list_blobs()}
    assert {sha256(layer), sha256(b"{}")} <= stored


def test_presigned_redirect(tmp_path: Path, storage: ObjectStorage) -> None:
    layer = os.urandom(3 * MiB)
    server = _regcache(tmp_path, storage, redirect=True, redirect_ttl=120).start()
    try:
        client = Client(server.url)
        client.push_blob("s3/redirected", layer)
        url = f"s3/redirected/blobs/{sha256(layer)}"
        answer = client.get(url, allow_redirects=False)
        assert answer.status_code == 307
        location = answer.headers["Location"]
        assert location.startswith(f"{storage.endpoint_url}/{storage.bucket}/cache/blobs/sha256/")
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=120" in location
        assert storage.secret() not in location
        assert requests.get(location, timeout=30).content == layer
        followed = client.get(url)
        assert followed.status_code == 200 and followed.content == layer
        ranged = client.get(url, headers={"Range": "bytes=5-14"})
        assert ranged.status_code == 206 and ranged.content == layer[5:15]
        head = client.http.head(f"{server.url}/v2/{url}")  # HEAD is answered, not redirected
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(layer))
    finally:
        server.stop()


def test_verify_finds_corrupt_and_missing_objects_and_repairs(
    tmp_path: Path, storage: ObjectStorage
) -> None:
    good, bad, gone = (os.urandom(2 * MiB) for _ in range(3))
    with _regcache(tmp_path, storage) as server:
        client = Client(server.url)
        for layer in (good, bad, gone):
            client.push_blob("s3/verify", layer)
    store = ObjectBlobStore(tmp_path / "verify", storage)
    key = store.key(Digest.parse(sha256(bad)))
    store.s3.put_object(Bucket=storage.bucket, Key=key, Body=bad[:-1] + b"!")  # same size
    store.delete(Digest.parse(sha256(gone)))
    store.write(b"unrecorded", Digest.of(b"unrecorded"))
    result = verify(server.data_dir, object_storage=storage)
    assert (result.corrupt, result.missing) == ([sha256(bad)], [sha256(gone)])
    assert result.checked == 1 and result.bytes == len(good) and result.orphan_files == 1
    assert not result.ok
    repaired = verify(server.data_dir, repair=True, object_storage=storage)
    assert repaired.corrupt == [sha256(bad)] and repaired.repaired
    assert store.size(Digest.parse(sha256(bad))) is None
    again = verify(server.data_dir, object_storage=storage)
    assert again.ok and again.checked == 1
    with _regcache(tmp_path, storage) as server:
        client = Client(server.url)
        assert client.get(f"s3/verify/blobs/{sha256(bad)}").status_code == 404
        assert client.get(f"s3/verify/blobs/{sha256(good)}").content == good


@pytest.mark.peers
def test_skopeo_in_and_out_streamed_and_redirected(tmp_path: Path, storage: ObjectStorage) -> None:
    source = tmp_path / "source"
    image = make_image(source, "app", layers=3, layer_size=6 * MiB)
    for redirect, back in ((False, tmp_path / "back"), (True, tmp_path / "back-redirected")):
        with _regcache(tmp_path, storage, redirect=redirect) as server:
            if not redirect:
                push_layout(source, "app", server.url, "s3/skopeo")
            pull_to_layout(server.url, "s3/skopeo", "app", back, "app")
            pull_to_layout(server.url, "s3/skopeo", image.digest, back, "by-digest")
        verify_layout(back)
        assert layout_blob_digests(back) == layout_blob_digests(source)


def test_bad_credentials_stop_start_up_with_a_short_message(
    tmp_path: Path, storage: ObjectStorage
) -> None:
    wrong = storage.model_copy(update={"secret_key": SecretStr("definitely-wrong-secret")})
    with pytest.raises(RuntimeError):
        _regcache(tmp_path, wrong).start()
    log = (tmp_path / "regcache.log").read_text()
    assert "definitely-wrong-secret" not in log
    assert "object storage: HEAD bucket" in log

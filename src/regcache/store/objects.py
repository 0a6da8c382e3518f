"""Blobs in S3-compatible object storage (boto3; blocking calls, made from worker threads).

Content is spooled and verified in local temp files as with the filesystem store, then
uploaded straight to its final key `<prefix>blobs/<algorithm>/<xx>/<hex>`. No staging key
and copy are needed: S3 makes an object visible only when its PutObject or
CompleteMultipartUpload succeeds, whole, so a crash or an abort mid-upload leaves nothing
visible. Before that point the server has checked every part against its SHA-256
(`ChecksumSHA256`), and the stored parts' sizes are listed and added up against the bytes
sent; after it, a HEAD confirms the object's size. Abandoned multipart uploads are aborted at
start-up once they are older than `STALE_UPLOAD`.

A multipart upload can also be fed while a download is still arriving (`ObjectUpload`).
Error messages name the operation, the key and the S3 error code, never a credential.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from regcache.config import ObjectStorage
from regcache.digest import Digest
from regcache.errors import RegistryError
from regcache.store.blobs import BlobBackend, StoredBlob

PART_SIZE = 8 * 1024 * 1024  # bytes per part (S3 wants at least 5 MiB but for the last)
MAX_PARTS = 10_000  # S3's limit of parts per upload
DELETE_BATCH = 1000  # S3's limit of keys per DeleteObjects
STALE_UPLOAD = 24 * 3600.0  # seconds after which an unfinished multipart upload is aborted
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}

for _name in ("boto3", "botocore", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # their debug logs show signed headers


class ObjectStoreError(OSError):
    """An object storage request failed; the message holds no credential."""


def part_size(size: int | None) -> int:
    """Bytes per part so that a blob of `size` bytes fits in S3's part limit."""
    return max(PART_SIZE, math.ceil((size or 0) / MAX_PARTS))


def _checksum(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class ObjectBlobStore(BlobBackend):
    """Blobs as objects in one bucket, under an optional key prefix."""

    def __init__(self, root: Path, config: ObjectStorage) -> None:
        super().__init__(root)
        self.config = config
        self.bucket = config.bucket
        self.prefix = f"{config.prefix.strip('/')}/" if config.prefix.strip("/") else ""
        self._secret = config.secret()
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key,
            aws_secret_access_key=self._secret,
            verify=config.tls_verify,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=64,
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    @contextmanager
    def errors(self, action: str, key: str = "") -> Iterator[None]:
        """Turn boto errors into short `ObjectStoreError`s (FileNotFoundError for a 404)."""
        where = f"{action} {key or self.bucket}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "error"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND:
                raise FileNotFoundError(f"object storage: {where}: not found") from None
            detail = f"HTTP {status}" if code == str(status) else f"{code} (HTTP {status})"
            raise ObjectStoreError(f"object storage: {where}: {detail}") from None
        except BotoCoreError as exc:
            text = str(exc)[:200]
            if self._secret:
                text = text.replace(self._secret, "***")
            raise ObjectStoreError(f"object storage: {where}: {text}") from None

    def key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def open(self) -> None:
        """Create the bucket if it is missing, abort stale uploads, empty local `tmp/`."""
        super().open()
        try:
            with self.errors("HEAD bucket"):
                self.s3.head_bucket(Bucket=self.bucket)
        except FileNotFoundError:
            try:
                with self.errors("create bucket"):
                    self.s3.create_bucket(Bucket=self.bucket)
            except ObjectStoreError:
                with self.errors("HEAD bucket"):  # another replica may have just created it
                    self.s3.head_bucket(Bucket=self.bucket)
        self._abort_stale_uploads(time.time() - STALE_UPLOAD)

    def _abort_stale_uploads(self, before: float) -> None:
        with self.errors("list uploads"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < before:
                        self.s3.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )

    def local_path(self, digest: Digest) -> None:
        return None

    def redirect_url(self, digest: Digest) -> str | None:
        """A presigned GET URL when the operator allows redirects (computed locally)."""
        if not self.config.redirect:
            return None
        with self.errors("presign", self.key(digest)):
            return cast(
                str,
                self.s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self.key(digest)},
                    ExpiresIn=self.config.redirect_ttl,
                ),
            )

    def size(self, digest: Digest) -> int | None:
        try:
            with self.errors("HEAD", self.key(digest)):
                answer = self.s3.head_object(Bucket=self.bucket, Key=self.key(digest))
            return int(answer["ContentLength"])
        except FileNotFoundError:
            return None

    def upload(self, digest: Digest, size: int | None = None) -> ObjectUpload:
        """A multipart upload of `digest` to feed part by part; `size`, if known, sets the
        part size (at least 8 MiB). Nothing is visible before `complete()`."""
        return ObjectUpload(self, digest, part_size(size))

    def commit(self, temp: Path, digest: Digest) -> None:
        """Upload a verified temp file to the blob's key, then delete the file."""
        upload = self.upload(digest, temp.stat().st_size)
        try:
            with temp.open("rb") as f:
                while data := f.read(upload.part_size):
                    upload.add(data)
            upload.complete()
        except BaseException:
            with suppress(OSError):
                upload.abort()
            raise
        temp.unlink()

    def write(self, data: bytes, digest: Digest) -> None:
        if self.size(digest) == len(data):
            return
        upload = self.upload(digest, len(data))
        upload.add(data)
        upload.complete()

    def read(self, digest: Digest) -> bytes:
        key = self.key(digest)
        with self.errors("GET", key):
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return cast(bytes, body.read())
            finally:
                body.close()

    def reader(self, digest: Digest, start: int = 0, length: int | None = None) -> BinaryIO:
        """The object's body from `start` (a ranged GET when not the whole object)."""
        key = self.key(digest)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            params["Range"] = f"bytes={start}-{end}"
        with self.errors("GET", key):
            return cast(BinaryIO, _Body(self, key, self.s3.get_object(**params)["Body"]))

    def delete(self, digest: Digest) -> None:
        with self.errors("DELETE", self.key(digest)):
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(digest))

    def delete_all(self, digests: list[Digest]) -> None:
        for first in range(0, len(digests), DELETE_BATCH):
            keys = [{"Key": self.key(d)} for d in digests[first : first + DELETE_BATCH]]
            with self.errors("DELETE objects"):
                result = self.s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
            failed = [e for e in result.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
            if failed:
                raise ObjectStoreError(
                    f"object storage: DELETE {failed[0].get('Key')}: {failed[0].get('Code')} "
                    f"({len(failed)} of {len(keys)} deletions failed)"
                )

    def list_blobs(self) -> Iterator[StoredBlob]:
        start = f"{self.prefix}blobs/"
        with self.errors("list", start):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            for page in pages:
                for item in page.get("Contents", []):
                    algorithm, _, name = item["Key"][len(start) :].partition("/")
                    try:
                        digest = Digest.parse(f"{algorithm}:{name.rpartition('/')[2]}")
                    except RegistryError:
                        continue
                    if item["Key"] == self.key(digest):
                        yield StoredBlob(digest, item["Size"], item["LastModified"].timestamp())


class _Body:
    """An object's streaming body whose read errors are `ObjectStoreError`s."""

    def __init__(self, store: ObjectBlobStore, key: str, body: Any) -> None:
        self._store, self._key, self._body = store, key, body

    def read(self, size: int = -1) -> bytes:
        with self._store.errors("GET", self._key):
            return cast(bytes, self._body.read(None if size < 0 else size))

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ObjectUpload:
    """One blob's upload to its final key, fed with `add()` as bytes become available.

    Bytes are buffered up to `part_size` and sent as one part each, with its SHA-256 for the
    server to check. A blob that fits in one part is sent with one PutObject at `complete()`.
    Call `complete()` only after the whole content's digest has been verified locally, and
    `abort()` on any failure (it is safe to call at any time, also after `complete()`).
    Blocking: call every method from a worker thread.
    """

    def __init__(self, store: ObjectBlobStore, digest: Digest, part_size: int) -> None:
        self.store = store
        self.digest = digest
        self.key = store.key(digest)
        self.part_size = part_size
        self.sent = 0  # bytes uploaded as parts so far
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def size(self) -> int:
        """Bytes added so far."""
        return self.sent + len(self._buffer)

    def add(self, data: bytes) -> None:
        """Append bytes; sends a part whenever `part_size` bytes are buffered."""
        if not self._buffer and len(data) >= self.part_size:
            self._send_part(data)
            return
        self._buffer += data
        if len(self._buffer) >= self.part_size:
            self._send_part(self._buffer)
            self._buffer = bytearray()

    def _send_part(self, data: bytes | memoryview | bytearray) -> None:
        s3, bucket = self.store.s3, self.store.bucket
        if self._upload_id is None:
            with self.store.errors("start upload", self.key):
                self._upload_id = s3.create_multipart_upload(
                    Bucket=bucket, Key=self.key, ChecksumAlgorithm="SHA256"
                )["UploadId"]
        number = len(self._parts) + 1
        checksum = _checksum(data)
        with self.store.errors(f"upload part {number} of", self.key):
            answer = s3.upload_part(
                Bucket=bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
                Body=bytes(data), ChecksumSHA256=checksum,
            )  # fmt: skip
        part = {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
        self._parts.append(part)
        self.sent += len(data)

    def complete(self) -> None:
        """Make the blob visible at its key, whole, once the server holds every byte."""
        s3, bucket = self.store.s3, self.store.bucket
        if self._upload_id is None:
            with self.store.errors("PUT", self.key):
                s3.put_object(
                    Bucket=bucket, Key=self.key, Body=bytes(self._buffer),
                    ChecksumSHA256=_checksum(self._buffer),
                )  # fmt: skip
        else:
            if self._buffer:
                self._send_part(self._buffer)
                self._buffer = bytearray()
            stored = self._stored_part_bytes()
            if stored != self.sent:
                raise ObjectStoreError(
                    f"object storage: {self.key}: the server holds {stored} of {self.sent} bytes"
                )
            with self.store.errors("complete upload", self.key):
                s3.complete_multipart_upload(
                    Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )  # fmt: skip
            self._upload_id = None
        with self.store.errors("HEAD", self.key):
            length = int(s3.head_object(Bucket=bucket, Key=self.key)["ContentLength"])
        if length != self.size:
            self.store.delete(self.digest)
            raise ObjectStoreError(
                f"object storage: {self.key} has {length} bytes, not {self.size}; deleted"
            )

    def _stored_part_bytes(self) -> int:
        with self.store.errors("list parts of", self.key):
            pages = self.store.s3.get_paginator("list_parts").paginate(
                Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id
            )
            return sum(part["Size"] for page in pages for part in page.get("Parts", []))

    def abort(self) -> None:
        """Give up: the parts sent so far are deleted and nothing becomes visible."""
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with self.store.errors("abort upload", self.key):
                self.store.s3.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
                )

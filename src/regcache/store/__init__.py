"""Durable storage: content-addressed blobs (on disk or in object storage), upload
sessions, metadata in SQLite."""

from pathlib import Path

from regcache.config import ObjectStorage
from regcache.store.blobs import BlobBackend, BlobStore, BlobUpload, read_blob
from regcache.store.metadata import Metadata, StoredManifest
from regcache.store.uploads import Upload, Uploads


def make_blob_store(data_dir: Path, object_storage: ObjectStorage | None) -> BlobBackend:
    """The blob store the settings choose: files in `data_dir`, or a bucket when
    `object_storage` is set (temp files stay in `data_dir` either way)."""
    if object_storage is None:
        return BlobStore(data_dir)
    from regcache.store.objects import ObjectBlobStore  # imports boto3: only when used

    return ObjectBlobStore(data_dir, object_storage)


__all__ = [
    "BlobBackend",
    "BlobStore",
    "BlobUpload",
    "Metadata",
    "StoredManifest",
    "Upload",
    "Uploads",
    "make_blob_store",
    "read_blob",
]  # fmt: skip

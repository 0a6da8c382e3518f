"""Durable storage: content-addressed blobs on disk, upload sessions, metadata in SQLite."""

from regcache.store.blobs import BlobStore
from regcache.store.metadata import Metadata, StoredManifest
from regcache.store.uploads import Upload, Uploads

__all__ = ["BlobStore", "Metadata", "StoredManifest", "Upload", "Uploads"]

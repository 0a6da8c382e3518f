"""Online garbage collection, and `verify`: re-hash every blob against its digest.

Garbage collection runs beside serving: it deletes recorded content nothing refers to,
stored blobs with no record (left by a crash between a metadata commit and a blob deletion),
and upload sessions abandoned for longer than `upload_max_age`. Nothing being written is
touched, and a blob younger than `ORPHAN_GRACE` is left alone. Both work on any blob store.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import SecretStr

from regcache.config import ObjectStorage
from regcache.digest import CHUNK, Digest
from regcache.registry import Registry
from regcache.store import BlobBackend, make_blob_store
from regcache.store.database import database_for
from regcache.store.metadata import Metadata

ORPHAN_GRACE = 60.0  # seconds


@dataclass
class Collected:
    """What one garbage collection removed."""

    unreferenced: int = 0
    orphan_files: int = 0
    uploads: int = 0
    bytes_freed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def collect_garbage(registry: Registry, now: float | None = None) -> Collected:
    now = time.time() if now is None else now
    meta, blobs, budget = registry.meta, registry.blobs, registry.budget
    report = Collected()
    for digest in meta.unreferenced_blobs():
        if digest in registry.busy:
            continue
        size = meta.blob_size(digest) or 0
        budget.deleted(digest)
        await asyncio.to_thread(blobs.delete, digest)
        report.unreferenced += 1
        report.bytes_freed += size
    for index, blob in enumerate(await asyncio.to_thread(lambda: list(blobs.list_blobs()))):
        if index % 256 == 0:
            await asyncio.sleep(0)
        if now - blob.modified <= ORPHAN_GRACE:
            continue
        if blob.digest in registry.busy or meta.blob_size(blob.digest) is not None:
            continue
        await asyncio.to_thread(blobs.delete, blob.digest)
        report.orphan_files += 1
        report.bytes_freed += blob.size
    report.uploads = registry.uploads.expire(registry.settings.upload_max_age, now)
    return report


@dataclass
class Verification:
    """The result of re-hashing every blob."""

    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphan_files: int = 0
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def rehash(blobs: BlobBackend, digest: Digest) -> tuple[Digest, int]:
    """The digest and size of a stored blob's content, read in bounded chunks (blocking);
    FileNotFoundError if it is absent."""
    hasher = digest.hasher()
    with closing(blobs.reader(digest)) as stream:
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
    return hasher.digest(), hasher.size


def verify(
    data_dir: Path,
    repair: bool = False,
    object_storage: ObjectStorage | None = None,
    database_url: SecretStr | None = None,
) -> Verification:
    """Re-hash every recorded blob; with `repair`, forget and delete the bad ones."""
    blobs = make_blob_store(data_dir, object_storage)
    meta = Metadata(database_for(data_dir, database_url))
    meta.open()
    result = Verification(repaired=repair)
    try:
        recorded = set()
        for digest, _size in list(meta.all_blobs()):
            recorded.add(digest)
            try:
                actual, size = rehash(blobs, digest)
            except FileNotFoundError:
                result.missing.append(str(digest))
                continue
            if actual != digest:
                result.corrupt.append(str(digest))
            else:
                result.checked += 1
                result.bytes += size
        result.orphan_files = sum(1 for b in blobs.list_blobs() if b.digest not in recorded)
        if repair:
            for text in result.corrupt + result.missing:
                digest = Digest.parse(text)
                meta.forget_content(digest)
                blobs.delete(digest)
    finally:
        meta.close()
    return result

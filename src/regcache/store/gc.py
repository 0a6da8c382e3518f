"""Online garbage collection, and `verify`: re-hash every blob against its digest.

Garbage collection runs beside serving: it deletes recorded content nothing refers to,
blob files with no record (left by a crash between a metadata commit and a file deletion),
and upload sessions abandoned for longer than `upload_max_age`. Nothing being written is
touched, and a file younger than `ORPHAN_GRACE` is left alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from regcache.digest import Digest, hash_file
from regcache.errors import RegistryError
from regcache.registry import Registry
from regcache.store.blobs import BlobStore
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


def blob_files(blobs: BlobStore) -> list[tuple[Digest, Path]]:
    """Every blob file on disk with the digest its path names (blocking)."""
    found = []
    for path in blobs.blob_dir.glob("*/*/*"):
        try:
            found.append((Digest.parse(f"{path.parent.parent.name}:{path.name}"), path))
        except RegistryError:
            continue
    return found


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
    for index, (digest, path) in enumerate(await asyncio.to_thread(blob_files, blobs)):
        if index % 256 == 0:
            await asyncio.sleep(0)
        if digest in registry.busy or meta.blob_size(digest) is not None:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if now - stat.st_mtime > ORPHAN_GRACE:
            path.unlink(missing_ok=True)
            report.orphan_files += 1
            report.bytes_freed += stat.st_size
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


def verify(data_dir: Path, repair: bool = False) -> Verification:
    """Re-hash every recorded blob; with `repair`, forget and delete the bad ones."""
    blobs = BlobStore(data_dir)
    meta = Metadata(data_dir / "metadata.db")
    meta.open()
    result = Verification(repaired=repair)
    try:
        recorded = set()
        for digest, _size in list(meta.all_blobs()):
            recorded.add(digest)
            path = blobs.path(digest)
            if not path.exists():
                result.missing.append(str(digest))
            elif hash_file(path, digest.algorithm) != digest:
                result.corrupt.append(str(digest))
            else:
                result.checked += 1
                result.bytes += path.stat().st_size
        result.orphan_files = sum(1 for d, _ in blob_files(blobs) if d not in recorded)
        if repair:
            for text in result.corrupt + result.missing:
                digest = Digest.parse(text)
                meta.forget_content(digest)
                blobs.delete(digest)
    finally:
        meta.close()
    return result

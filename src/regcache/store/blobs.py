"""Content-addressed blob files.

A blob becomes visible only by an atomic rename of a complete, fsynced, verified file into
`blobs/<algorithm>/<xx>/<hex>`, so a crash at any moment never exposes a partial blob.
Everything not yet verified lives under `tmp/`, which is emptied at start-up.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from regcache.digest import Digest


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blob files under one data directory. Methods that touch the disk are blocking."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"

    def open(self) -> None:
        """Create the directories and drop whatever a previous process left unfinished."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    def path(self, digest: Digest) -> Path:
        return self.blob_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def size(self, digest: Digest) -> int | None:
        """The stored blob's size, or None if it is absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def temp_path(self) -> Path:
        """A fresh path under `tmp/` for content that is not verified yet."""
        return self.tmp_dir / uuid.uuid4().hex

    def commit(self, temp: Path, digest: Digest) -> None:
        """Move a verified file into place atomically (the caller checked its digest)."""
        with temp.open("rb") as f:
            os.fsync(f.fileno())
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        fsync_dir(target.parent)

    def write(self, data: bytes, digest: Digest) -> None:
        """Store a small blob (a manifest) held in memory."""
        if self.size(digest) == len(data):
            return
        temp = self.temp_path()
        temp.write_bytes(data)
        self.commit(temp, digest)

    def read(self, digest: Digest) -> bytes:
        """Read a small blob (a manifest) whole."""
        return self.path(digest).read_bytes()

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def delete_all(self, digests: list[Digest]) -> None:
        for digest in digests:
            self.delete(digest)

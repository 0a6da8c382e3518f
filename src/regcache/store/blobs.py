"""Content-addressed blobs: the interface every blob store offers, and the filesystem store.

A blob becomes visible only by an atomic rename of a complete, fsynced, verified file into
`blobs/<algorithm>/<xx>/<hex>`, so a crash at any moment never exposes a partial blob.
Everything not yet verified lives under `tmp/`, which is emptied at start-up; every store
spools and verifies content there, whatever holds the blobs themselves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from regcache.digest import CHUNK, Digest
from regcache.errors import RegistryError


class StoredBlob(NamedTuple):
    """A stored blob as a listing sees it."""

    digest: Digest
    size: int
    modified: float  # seconds since the epoch


class BlobUpload(Protocol):
    """A blob stored while it is being written (see `BlobBackend.upload`). Blocking."""

    def add(self, data: bytes) -> None:
        """Send the next bytes of the blob."""

    def complete(self) -> None:
        """Make the blob visible, whole; call only once its digest has been verified."""

    def abort(self) -> None:
        """Give up; nothing becomes visible. Safe at any time."""


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobBackend(ABC):
    """Where blobs live. Temporary files are always local, under `root/tmp`.

    Methods are blocking: call them from a worker thread (`asyncio.to_thread`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def open(self) -> None:
        """Drop whatever a previous process left unfinished in `tmp/`."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    def temp_path(self) -> Path:
        """A fresh path under `tmp/` for content that is not verified yet."""
        return self.tmp_dir / uuid.uuid4().hex

    def upload(self, digest: Digest, size: int | None = None) -> BlobUpload | None:
        """An upload to feed while a download is being written, if this store is remote;
        None means: write the temp file, then `commit` it."""
        return None

    @abstractmethod
    def local_path(self, digest: Digest) -> Path | None:
        """The local file holding the blob (to send with sendfile), or None if not a file."""

    @abstractmethod
    def redirect_url(self, digest: Digest) -> str | None:
        """A URL clients may fetch the blob from directly, or None to serve it ourselves."""

    @abstractmethod
    def size(self, digest: Digest) -> int | None:
        """The stored blob's size, or None if it is absent."""

    @abstractmethod
    def commit(self, temp: Path, digest: Digest) -> None:
        """Make a verified temp file the blob `digest`, atomically, and consume the file."""

    @abstractmethod
    def write(self, data: bytes, digest: Digest) -> None:
        """Store a small verified blob (a manifest) held in memory."""

    @abstractmethod
    def read(self, digest: Digest) -> bytes:
        """Read a small blob (a manifest) whole; FileNotFoundError if absent."""

    @abstractmethod
    def reader(self, digest: Digest, start: int = 0, length: int | None = None) -> BinaryIO:
        """A stream of the blob from `start`; read at most `length` bytes from it (a store
        may stop there). Close it after use. FileNotFoundError if absent."""

    @abstractmethod
    def delete(self, digest: Digest) -> None:
        """Delete a blob; deleting an absent blob is no error."""

    def delete_all(self, digests: list[Digest]) -> None:
        for digest in digests:
            self.delete(digest)

    @abstractmethod
    def list_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob (for garbage collection and `verify`)."""


class BlobStore(BlobBackend):
    """Blob files under one data directory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.blob_dir = root / "blobs"

    def open(self) -> None:
        """Create the directories and drop whatever a previous process left unfinished."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        super().open()

    def path(self, digest: Digest) -> Path:
        return self.blob_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def local_path(self, digest: Digest) -> Path:
        return self.path(digest)

    def redirect_url(self, digest: Digest) -> None:
        return None

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def commit(self, temp: Path, digest: Digest) -> None:
        """Move a verified file into place atomically (the caller checked its digest)."""
        with temp.open("rb") as f:
            os.fsync(f.fileno())
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        fsync_dir(target.parent)

    def write(self, data: bytes, digest: Digest) -> None:
        if self.size(digest) == len(data):
            return
        temp = self.temp_path()
        temp.write_bytes(data)
        self.commit(temp, digest)

    def read(self, digest: Digest) -> bytes:
        return self.path(digest).read_bytes()

    def reader(self, digest: Digest, start: int = 0, length: int | None = None) -> BinaryIO:
        f = self.path(digest).open("rb")
        f.seek(start)
        return f

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def list_blobs(self) -> Iterator[StoredBlob]:
        for path in self.blob_dir.glob("*/*/*"):
            try:
                digest = Digest.parse(f"{path.parent.parent.name}:{path.name}")
                stat = path.stat()
            except (RegistryError, FileNotFoundError):
                continue
            yield StoredBlob(digest, stat.st_size, stat.st_mtime)


async def read_blob(
    blobs: BlobBackend, digest: Digest, start: int, end: int | None = None
) -> AsyncIterator[bytes]:
    """A stored blob's bytes from `start` (up to `end`), read in chunks from a worker thread,
    from whichever store holds it."""
    length = None if end is None else end - start
    stream = await asyncio.to_thread(blobs.reader, digest, start, length)
    try:
        while length is None or length > 0:
            data = await asyncio.to_thread(
                stream.read, CHUNK if length is None else min(CHUNK, length)
            )
            if not data:
                if length:
                    raise OSError(f"stored blob {digest} ended {length} bytes early")
                return
            if length is not None:
                length -= len(data)
            yield data
    finally:
        await asyncio.to_thread(stream.close)

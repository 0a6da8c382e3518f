"""Blob upload sessions: data streamed to a temporary file, hashed as it arrives.

A session is a folder `tmp/uploads/<id>/` holding the repository name and the data so far,
so its state is on disk, not in one process. The running sha256 is kept in memory while it
matches the file; otherwise the file is hashed again when the upload finishes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from regcache.digest import CHUNK, Digest, Hasher, hash_file
from regcache.errors import ErrorCode, RegistryError
from regcache.store.blobs import BlobStore

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def range_header(size: int) -> str:
    """The `Range` header for `size` bytes received (`0-0` before the first byte)."""
    return f"0-{max(size - 1, 0)}"


@dataclass(frozen=True)
class Upload:
    """One upload session of a repository."""

    id: str
    repo: str
    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def size(self) -> int:
        return self.data.stat().st_size


def _write(f: BinaryIO, hasher: Hasher | None, data: bytes) -> None:
    f.write(data)
    if hasher is not None:
        hasher.update(data)


class Uploads:
    """Creates, appends to, finishes and cancels upload sessions."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.root = blobs.tmp_dir / "uploads"
        self._hashers: dict[str, Hasher] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, repo: str) -> Upload:
        upload_id = uuid.uuid4().hex
        upload = Upload(upload_id, repo, self.root / upload_id)
        upload.folder.mkdir()
        (upload.folder / "repo").write_text(repo)
        upload.data.touch()
        self._hashers[upload.id] = Hasher()
        return upload

    def get(self, repo: str, upload_id: str) -> Upload:
        """The session `upload_id` of `repo`, or BLOB_UPLOAD_UNKNOWN."""
        folder = self.root / upload_id
        try:
            if _ID_RE.fullmatch(upload_id) and (folder / "repo").read_text() == repo:
                return Upload(upload_id, repo, folder)
        except FileNotFoundError:
            pass
        raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id[:64]!r} unknown")

    def _lock(self, upload: Upload) -> asyncio.Lock:
        return self._locks.setdefault(upload.id, asyncio.Lock())

    async def append(
        self,
        upload: Upload,
        chunks: AsyncIterable[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> int:
        """Append a chunk; `start` and `length` come from `Content-Range`. Returns the new size.

        A chunk that does not start where the data ends, or does not hold the bytes it
        announced, is refused and leaves the session as it was.
        """
        async with self._lock(upload):
            size = upload.size()
            if start is not None and start != size:
                raise RegistryError(
                    ErrorCode.RANGE_INVALID,
                    f"chunk starts at {start} but the upload holds {size} bytes",
                    headers={"Range": range_header(size)},
                )
            hasher = self._hashers.pop(upload.id, None)
            if hasher is not None and hasher.size != size:
                hasher = None
            written = await self._stream_to(upload.data, size, chunks, hasher)
            if length is not None and written != length:
                os.truncate(upload.data, size)
                raise RegistryError(
                    ErrorCode.RANGE_INVALID,
                    f"Content-Range announced {length} bytes, received {written}",
                    headers={"Range": range_header(size)},
                )
            if hasher is not None:
                self._hashers[upload.id] = hasher
            return size + written

    @staticmethod
    async def _stream_to(
        path: Path, size: int, chunks: AsyncIterable[bytes], hasher: Hasher | None
    ) -> int:
        written = 0
        pending = bytearray()
        with path.open("r+b") as f:
            f.seek(size)
            try:
                async for chunk in chunks:
                    pending += chunk
                    if len(pending) >= CHUNK:
                        await asyncio.to_thread(_write, f, hasher, bytes(pending))
                        written += len(pending)
                        pending.clear()
                if pending:
                    await asyncio.to_thread(_write, f, hasher, bytes(pending))
                    written += len(pending)
            except BaseException:
                f.truncate(size)
                raise
        return written

    async def finish(self, upload: Upload, digest: Digest) -> int:
        """Verify the whole content against `digest` and commit it as a blob."""
        async with self._lock(upload):
            size = upload.size()
            hasher = self._hashers.get(upload.id)
            if hasher is not None and hasher.algorithm == digest.algorithm and hasher.size == size:
                actual = hasher.digest()
            else:
                actual = await asyncio.to_thread(hash_file, upload.data, digest.algorithm)
            if actual != digest:
                self.cancel(upload)
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    f"uploaded content has digest {actual}, not {digest}",
                )
            await asyncio.to_thread(self.blobs.commit, upload.data, digest)
            self.cancel(upload)
        return size

    def expire(self, max_age: float, now: float) -> int:
        """Cancel sessions that received nothing for `max_age` seconds; how many."""
        expired = 0
        for folder in list(self.root.iterdir()):
            try:
                idle = now - (folder / "data").stat().st_mtime
            except FileNotFoundError:
                continue
            lock = self._locks.get(folder.name)
            if idle > max_age and not (lock is not None and lock.locked()):
                shutil.rmtree(folder, ignore_errors=True)
                self._hashers.pop(folder.name, None)
                expired += 1
        return expired

    def cancel(self, upload: Upload) -> None:
        """Forget the session and its data."""
        self._hashers.pop(upload.id, None)
        self._locks.pop(upload.id, None)
        shutil.rmtree(upload.folder, ignore_errors=True)

"""Single-flight blob downloads, streamed to every reader while they are written.

One `Download` per digest fetches from the upstream into a temporary file, hashing as it
goes, on a worker thread; readers follow the file as it grows (with sendfile). The last byte
of any response is held back until the digest is verified, so a download that turns out wrong
cuts every reader off instead of completing a corrupt body. The download runs as its own task:
a reader that goes away does not stop it for the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO

from regcache.digest import CHUNK, Digest, Hasher
from regcache.errors import RegistryError, TransferFailed
from regcache.registry import Registry
from regcache.store import BlobBackend, BlobUpload, read_blob
from regcache.store.metadata import CACHED
from regcache.upstream import UpstreamError
from regcache.upstream.blocking import BlockingResponse

log = logging.getLogger("regcache.download")
FOLLOW_CHUNK = 256 * 1024  # bytes per read for a reader following a download

Fetch = Callable[[], AbstractAsyncContextManager[BlockingResponse]]


def _write_all(fd: int, data: memoryview) -> None:
    """Append all of `data` to the file."""
    while data:
        data = data[os.write(fd, data) :]


class DownloadFailed(TransferFailed):
    """The download stopped before its content was verified."""


class Download:
    """One upstream blob download in flight."""

    def __init__(
        self, digest: Digest, temp: Path, blobs: BlobBackend, received: Callable[[int], None]
    ) -> None:
        self.digest = digest
        self.received = received  # told of every upstream byte as it arrives
        self.temp = temp
        self.blobs = blobs
        self.size: int | None = None
        self.written = 0
        self.verified = False
        self.error: BaseException | None = None
        self.readers = 0
        self._changed = asyncio.Event()
        self.started = asyncio.Event()  # set once the size is known, or on failure
        self.done = asyncio.Event()  # set once stored, or on failure
        self.done_callbacks: list[Callable[[], None]] = []

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_started(self) -> int | None:
        """Wait for the upstream's answer; the blob's size, or raise why it failed."""
        await self.started.wait()
        if self.error is not None and self.size is None:
            raise self.error
        return self.size

    async def available(self, position: int, end: int) -> int:
        """Wait until bytes past `position` may be read; return how far reading may go.

        The final byte of a response (`end`) is released only once the whole blob verified;
        the blob is then being stored, and a failure to store it no longer stops readers.
        Raises `DownloadFailed` if the download failed before it verified.
        """
        while True:
            if self.verified:
                return end
            if self.error is not None:
                raise DownloadFailed(str(self.error))
            limit = min(self.written, end - 1)
            if limit > position:
                return limit
            await self._changed.wait()

    def open(self) -> BinaryIO | None:
        """The file being written, to follow; None once the download has finished with it."""
        try:
            return self.temp.open("rb")
        except FileNotFoundError:
            return None

    async def spans(self, start: int, end: int) -> AsyncIterator[tuple[int, int]]:
        """The spans of `start` to `end`, each as soon as the file holds it and it may be sent."""
        position = start
        while position < end:
            limit = await self.available(position, end)
            yield position, limit
            position = limit

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes `start` to `end` as they are written (`FOLLOW_CHUNK` at a time: memory
        stays bounded however many readers there are); once the download has finished and
        its file is gone, from the store."""
        file = self.open()
        if file is None:
            await self.stored()
            async for data in read_blob(self.blobs, self.digest, start, end):
                yield data
            return
        with file:
            async for position, limit in self.spans(start, end):
                while position < limit:
                    data = os.pread(file.fileno(), min(FOLLOW_CHUNK, limit - position), position)
                    if not data:
                        raise DownloadFailed("blob file ended early")
                    position += len(data)
                    yield data

    async def run(self, response: BlockingResponse, registry: Registry) -> None:
        """Copy the upstream body to disk within the budget, verify it, commit it."""
        reserved = response.content_length or 0
        await registry.make_room(reserved, CACHED)
        try:
            with registry.writing(self.digest):
                await self._copy(response, registry.blobs)
                registry.budget.stored(self.digest, self.written)
        finally:
            registry.budget.release(reserved)

    async def _copy(self, response: BlockingResponse, blobs: BlobBackend) -> None:
        """Write the body to the temp file (and, with object storage, upload it in parts as it
        comes), verify it, release readers, then store it."""
        self.size = response.content_length
        hasher = self.digest.hasher()
        upload = await asyncio.to_thread(blobs.upload, self.digest, self.size)
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.started.set()  # readers may open the file now
        try:
            try:
                self.written = await self._receive(response, fd, hasher, upload)
            finally:
                os.close(fd)
            if self.size is not None and self.written != self.size:
                raise DownloadFailed(f"upstream sent {self.written} of {self.size} bytes")
            if hasher.digest() != self.digest:
                raise DownloadFailed(f"upstream content has digest {hasher.digest()}")
            self.size = self.written
            self.verified = True  # readers may finish now; storing it durably takes a while
            self._notify()
            if upload is None:
                await asyncio.to_thread(blobs.commit, self.temp, self.digest)
            else:
                await asyncio.to_thread(upload.complete)
        except BaseException:
            if upload is not None:
                await asyncio.to_thread(upload.abort)
            raise

    async def _receive(
        self, response: BlockingResponse, fd: int, hasher: Hasher, upload: BlobUpload | None
    ) -> int:
        """Read, hash and write the body on a worker thread, telling readers how far it got;
        the bytes never pass through the event loop. Returns how many bytes came."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def advance(total: int) -> None:
            self.received(total - self.written)
            self.written = total
            self._notify()

        def copy() -> int:
            buffer, total = memoryview(bytearray(CHUNK)), 0
            while not stop.is_set() and (size := response.readinto(buffer)):
                data = buffer[:size]
                hasher.update(data)
                _write_all(fd, data)
                if upload is not None:
                    upload.add(bytes(data))
                total += size
                loop.call_soon_threadsafe(advance, total)
            return total

        worker = asyncio.ensure_future(asyncio.to_thread(copy))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            response.release()  # a read in progress returns now
            await asyncio.gather(worker, return_exceptions=True)  # the file stays open till then
            raise

    async def stored(self) -> None:
        """Wait until the blob is stored in its final place; raise why it was not."""
        await self.done.wait()
        if self.error is not None:
            raise DownloadFailed(str(self.error))

    def finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.error = error
        self.temp.unlink(missing_ok=True)  # gone already when the file store took it
        self.done.set()
        self.started.set()
        for callback in self.done_callbacks:
            try:
                callback()
            except Exception:
                log.exception("after the download of %s", self.digest)
        self._notify()


class Downloads:
    """The downloads in flight, at most one per digest."""

    def __init__(self, registry: Registry, received: Callable[[int], None]) -> None:
        self.registry = registry
        self.received = received
        self.blobs = registry.blobs
        self.active: dict[Digest, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def join(
        self,
        digest: Digest,
        fetch: Fetch,
        on_commit: Callable[[], None],
    ) -> Download:
        """The download of `digest`: the one in flight, or a new one started with `fetch`."""
        download = self.active.get(digest)
        if download is None:
            download = Download(digest, self.blobs.temp_path(), self.blobs, self.received)
            self.active[digest] = download
            task = asyncio.create_task(self._run(download, fetch, on_commit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return download

    async def _run(self, download: Download, fetch: Fetch, on_commit: Callable[[], None]) -> None:
        error: BaseException | None = None
        try:
            async with fetch() as response:
                await download.run(response, self.registry)
            on_commit()
        except (UpstreamError, RegistryError, DownloadFailed, OSError) as exc:
            log.warning("download of %s failed: %s", download.digest, exc)
            error = exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.active.pop(download.digest, None)
            download.finish(error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

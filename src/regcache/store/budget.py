"""The storage budget: a byte quota and a free-disk watermark, kept by LRU eviction.

`used` counts every stored blob and manifest (cached and hosted); `reserved` counts content
being written. Before new content is written, room is made for it by evicting the least
recently pulled cached images that are not pinned; content being read or written is never
deleted, and hosted repositories are never evicted. Eviction deletes metadata in one
transaction first and the files after it, so a crash leaves at worst orphan files, which
garbage collection removes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from regcache.digest import Digest
from regcache.store.blobs import BlobStore
from regcache.store.leases import Ledger
from regcache.store.metadata import Metadata

log = logging.getLogger("regcache.budget")
BATCH = 64  # eviction candidates read at a time


class OverBudget(Exception):
    """No room can be made for content of this size."""


class Budget:
    """Accounting of stored bytes against the quota, and the eviction that keeps it."""

    def __init__(
        self,
        meta: Metadata,
        blobs: BlobStore,
        *,
        quota: int,
        min_free: int,
        in_use: Callable[[], set[Digest]],
        before_eviction: Callable[[], None],
        ledger: Ledger | None = None,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.quota = quota
        self.min_free = min_free
        self.in_use = in_use
        self.before_eviction = before_eviction
        self.ledger = ledger  # reservations of every replica, when several share the store
        self.used = 0
        self.reserved = 0
        self.evictions = 0
        self._lock = asyncio.Lock()

    def load(self) -> None:
        self.used, _ = self.meta.stored_bytes()

    def free_disk(self) -> int:
        stat = os.statvfs(self.blobs.root)
        return stat.f_bavail * stat.f_frsize

    def describe(self) -> str:
        return (
            f"quota {self.quota} bytes, {self.used} used, {self.reserved} being written, "
            f"{self.free_disk()} free on disk (keeping {self.min_free} free)"
        )

    def _claim(self, size: int) -> bool:
        """Reserve `size` bytes if they fit now. Replicas sharing the store decide in one
        transaction of the shared database, counting every replica's reservations."""
        if self.free_disk() - size < self.min_free:
            return False
        if self.ledger is None:
            if self.used + self.reserved + size > self.quota:
                return False
        else:
            fits, self.used = self.ledger.reserve(self.reserved, size, self.quota)
            if not fits:
                return False
        self.reserved += size
        return True

    async def reserve(self, size: int, *, evict: bool = True) -> None:
        """Hold `size` bytes for content about to be written, evicting cached images as
        needed; raises `OverBudget` when that cannot be done."""
        if size > self.quota:
            raise OverBudget(f"{size} bytes is larger than the whole quota of {self.quota} bytes")
        async with self._lock:
            claimed = self._claim(size)
            if not claimed and evict:
                outcome: list[bool] = []

                def done() -> bool:
                    if not outcome and self._claim(size):
                        outcome.append(True)
                    return bool(outcome)

                await self._evict_until(done)
                claimed = bool(outcome)
            if not claimed:
                raise OverBudget(f"no room for {size} bytes: {self.describe()}")

    def release(self, size: int) -> None:
        self.reserved -= size
        if self.ledger is not None:
            self.ledger.hold(self.reserved)

    def stored(self, digest: Digest, size: int) -> None:
        """Content was committed: count it once."""
        if self.meta.add_blob(digest, size):
            self.used += size

    def deleted(self, digest: Digest) -> None:
        """Content is being deleted: stop counting it."""
        self.used -= self.meta.remove_blob(digest)

    async def _evict_until(self, done: Callable[[], bool]) -> int:
        """Evict LRU cached images until `done()`; the number evicted."""
        self.before_eviction()
        evicted, tried = 0, set()
        while not done():
            candidates = [
                c for c in self.meta.eviction_candidates(BATCH + len(tried)) if c not in tried
            ]
            if not candidates:
                break
            for repo, digest in candidates:
                tried.add((repo, digest))
                await self.evict(repo, digest)
                evicted += 1
                await asyncio.sleep(0)  # let pulls run between evictions
                if done():
                    break
        return evicted

    async def evict(self, repo: str, digest: Digest) -> int:
        """Delete one image and whatever content only it used; the bytes freed."""
        freed = self.meta.evict_image(repo, digest, self.in_use())
        sizes = sum(size for _, size in freed)
        self.used -= sizes
        if freed:
            await asyncio.to_thread(self.blobs.delete_all, [content for content, _ in freed])
        self.evictions += 1
        log.info("evicted %s@%s, freed %d bytes", repo, digest, sizes)
        return sizes

    async def evict_now(self, repo: str, digest: Digest) -> int:
        """Evict one image, between other evictions."""
        async with self._lock:
            return await self.evict(repo, digest)

    async def shrink_to(self, target: int, keep: Callable[[str, Digest], bool]) -> int:
        """Evict LRU cached images not kept by `keep` until at most `target` bytes are used."""
        async with self._lock:
            self.before_eviction()
            count = 0
            skipped: set[tuple[str, Digest]] = set()
            while self.used > target:
                batch = [
                    c for c in self.meta.eviction_candidates(BATCH + len(skipped))
                    if c not in skipped
                ]  # fmt: skip
                if not batch:
                    break
                for repo, digest in batch:
                    if keep(repo, digest):
                        skipped.add((repo, digest))
                        continue
                    await self.evict(repo, digest)
                    count += 1
                    await asyncio.sleep(0)
                    if self.used <= target:
                        break
            return count

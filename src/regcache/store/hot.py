"""A small in-memory cache of hot manifests, bounded in bytes.

Content is addressed by digest, so an entry can never be stale; it is only ever evicted.
"""

from __future__ import annotations

from collections import OrderedDict

from regcache.digest import Digest


class HotManifests:
    """Least-recently-used manifest bytes, at most `capacity` bytes in all."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def get(self, digest: Digest) -> bytes | None:
        data = self._entries.get(digest)
        if data is not None:
            self._entries.move_to_end(digest)
        return data

    def put(self, digest: Digest, data: bytes) -> None:
        if len(data) > self.capacity or digest in self._entries:
            return
        self._entries[digest] = data
        self._size += len(data)
        while self._size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self._size -= len(evicted)

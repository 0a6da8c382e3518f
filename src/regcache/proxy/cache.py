"""Pull-through logic: manifests by digest from cache, tags revalidated by HEAD only after
their TTL, stale copies served when the upstream is unavailable, blobs fetched once."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, parse_manifest
from regcache.metrics import Metrics
from regcache.policy import is_pinned_tag
from regcache.proxy.download import Download, Downloads
from regcache.proxy.fleet import Fleet, Relay, Source
from regcache.proxy.router import Remote
from regcache.registry import Registry
from regcache.store import StoredManifest, read_blob
from regcache.store.metadata import CACHED
from regcache.upstream import UpstreamError

log = logging.getLogger("regcache.cache")
ACCEPT = {"Accept": ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])}


class PullThrough:
    """Serves cached repositories, filling them from their upstream on demand."""

    def __init__(self, registry: Registry, metrics: Metrics, fleet: Fleet | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.fleet = fleet
        self.downloads = Downloads(registry, metrics.bytes.labels("upstream").inc)
        self._manifest_fetches: dict[tuple[str, str], asyncio.Task[StoredManifest]] = {}

    # manifests

    async def manifest(self, remote: Remote, reference: str | Digest) -> tuple[StoredManifest, str]:
        """The manifest and how it was served: `hit` (from cache), `revalidated` (cache,
        confirmed by a HEAD), `stale` (cache, upstream unavailable), `miss` or `joined`."""
        meta = self.registry.meta
        if isinstance(reference, Digest):
            stored = meta.manifest(remote.local, reference)
            if stored is not None:
                return stored, "hit"
            return await self._fetch(remote, str(reference), None)
        state = meta.tag_state(remote.local, reference)
        stored = meta.manifest(remote.local, state[0]) if state else None
        if state is None or stored is None:
            return await self._fetch(remote, reference, reference)
        digest, checked = state
        config = remote.upstream.config
        if is_pinned_tag(reference, config) or time.time() - checked < config.tag_ttl:
            return stored, "hit"
        try:
            current = await self._head(remote, reference)
        except UpstreamError as exc:
            if not exc.unavailable:
                raise exc.to_registry_error(f"manifest {reference}") from None
            log.info("serving %s:%s stale: %s", remote.local, reference, exc)
            return stored, "stale"
        if current == digest:
            meta.set_tag(remote.local, reference, digest)
            return stored, "revalidated"
        changed = meta.manifest(remote.local, current) if current else None
        if changed is not None:
            meta.set_tag(remote.local, reference, current)
            return changed, "revalidated"
        return await self._fetch(remote, reference, reference)

    async def _head(self, remote: Remote, tag: str) -> Digest | None:
        """The digest a tag points at upstream, asked with a HEAD (never counted as a pull)."""
        async with remote.upstream.request(
            "HEAD", remote.name, f"manifests/{tag}", ACCEPT
        ) as response:
            value = response.headers.get("Docker-Content-Digest")
        return Digest.parse(value) if value else None

    async def _fetch(
        self, remote: Remote, reference: str, tag: str | None
    ) -> tuple[StoredManifest, str]:
        """GET a manifest once, however many clients ask for it at the same time."""
        key = (remote.local, reference)
        task = self._manifest_fetches.get(key)
        outcome = "joined" if task is not None else "miss"
        if task is None:
            task = asyncio.create_task(self._get_manifest(remote, reference, tag))
            self._manifest_fetches[key] = task
            task.add_done_callback(lambda _: self._manifest_fetches.pop(key, None))
        try:
            return await asyncio.shield(task), outcome
        except UpstreamError as exc:
            raise exc.to_registry_error(f"manifest {reference}") from None

    async def _get_manifest(
        self, remote: Remote, reference: str, tag: str | None
    ) -> StoredManifest:
        limit = self.registry.settings.manifest_max_bytes
        async with remote.upstream.request(
            "GET", remote.name, f"manifests/{reference}", ACCEPT
        ) as response:
            body = await response.content.read(limit + 1)
            content_type = response.headers.get("Content-Type")
        self.metrics.bytes.labels("upstream").inc(len(body))
        if len(body) > limit:
            raise UpstreamError(f"{remote.upstream.name}: manifest larger than {limit} bytes")
        expected = Digest.parse(reference) if tag is None else None
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamError(f"{remote.upstream.name}: manifest content has digest {digest}")
        manifest = parse_manifest(body, content_type)
        tags = [tag] if tag is not None else []
        await self.registry.store_manifest(remote.local, digest, body, manifest, tags, CACHED)
        stored = self.registry.meta.manifest(remote.local, digest)
        assert stored is not None
        return stored

    # blobs

    def blob(self, remote: Remote, digest: Digest) -> tuple[Digest | Download | Relay, str]:
        """A cached blob (`hit`: its digest, to serve from the store), the download that
        brings it, started now (`miss`) or earlier (`joined`), or another replica's download
        of it (`relayed`). Content that only hosted repositories hold is not served here:
        which tenant pushed what must not show through a cached name."""
        meta = self.registry.meta
        if digest not in self.downloads.active and meta.blob_cached(digest):
            return digest, "hit"
        declared = meta.known_size(digest) or 0
        if declared > self.registry.budget.quota:
            raise RegistryError(
                ErrorCode.DENIED,
                f"blob {digest} has {declared} bytes, more than the whole storage quota of "
                f"{self.registry.budget.quota} bytes",
            )
        if digest in self.downloads.active:
            return self.downloads.active[digest], "joined"
        if self.fleet is None or not declared:
            return self._download(remote, digest), "miss"
        claimed = self._claim(remote, digest)
        if isinstance(claimed, str):
            takeover = partial(self._takeover, remote, digest)
            return Relay(self.fleet, digest, claimed, declared, takeover), "relayed"
        if claimed is None:
            return digest, "hit"
        return claimed, "miss"

    def _claim(self, remote: Remote, digest: Digest) -> str | Download | None:
        """Claim the fleet's one download of `digest`: the address of the replica that holds
        it, this replica's new download, or None when it was stored meanwhile."""
        assert self.fleet is not None
        address = self.fleet.claim(digest)
        if address is not None:
            return address
        if self.registry.meta.blob_cached(digest):  # a replica stored it and let go just now
            self.fleet.release(digest)
            return None
        return self._download(remote, digest)

    def _download(self, remote: Remote, digest: Digest) -> Download:
        """Start the one download of `digest` from the upstream."""
        meta = self.registry.meta
        download = self.downloads.join(
            digest,
            lambda: remote.upstream.download(remote.name, digest),
            lambda: meta.link_blob(remote.local, digest, CACHED),
        )
        if self.fleet is not None:
            fleet = self.fleet
            download.done_callbacks.append(lambda: fleet.release(digest))
        return download

    async def _takeover(self, remote: Remote, digest: Digest, relay: Relay) -> Source | None:
        """After the replica a relay read from failed: the stored blob, this replica's own
        download, or None (the relay reads from the replica that claimed it now)."""
        assert self.fleet is not None
        if self.registry.meta.blob_cached(digest):
            return partial(read_blob, self.registry.blobs, digest)
        download = self.downloads.active.get(digest)
        if download is None:
            claimed = self._claim(remote, digest)
            if isinstance(claimed, str):
                relay.address = claimed
                return None
            if claimed is None:
                return partial(read_blob, self.registry.blobs, digest)
            download = claimed
        return lambda position: download.read(position, relay.size)

    async def blob_size(self, remote: Remote, digest: Digest) -> int | None:
        """A blob's size by HEAD upstream, for a HEAD of a blob that is not cached."""
        try:
            async with remote.upstream.request("HEAD", remote.name, f"blobs/{digest}") as response:
                return response.content_length
        except UpstreamError as exc:
            raise exc.to_registry_error(f"blob {digest}") from None

    async def close(self) -> None:
        await self.downloads.close()

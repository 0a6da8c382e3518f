"""The hosted registry: the distribution API's operations over the store, with its rules.

HTTP handlers call this; it never sees a request. It keeps the store consistent: content
is committed before metadata points at it, and deleted only when nothing points at it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from regcache.config import Settings
from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.manifest import Manifest, parse_manifest
from regcache.store import Metadata, StoredManifest, Upload, Uploads, make_blob_store
from regcache.store.budget import Budget, OverBudget
from regcache.store.hot import HotManifests
from regcache.store.metadata import HOSTED


class Registry:
    """Repositories of pushed content in one data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.blobs = make_blob_store(settings.data_dir, settings.object_storage)
        self.uploads = Uploads(self.blobs)
        self.meta = Metadata.for_settings(settings)
        self.hot = HotManifests(settings.hot_manifest_bytes)
        self.busy: Counter[Digest] = Counter()  # content being written: never deleted
        self.budget = Budget(
            self.meta, self.blobs, quota=settings.quota_bytes, min_free=settings.min_free_bytes,
            in_use=lambda: set(self.busy), before_eviction=self.flush_pulls,
        )  # fmt: skip
        self._pulls: dict[tuple[str, str], tuple[int, float]] = {}

    def open(self) -> None:
        self.blobs.open()
        self.uploads.open()
        self.meta.open()
        self.budget.load()

    def close(self) -> None:
        self.flush_pulls()
        self.meta.close()

    @contextmanager
    def writing(self, digest: Digest) -> Iterator[None]:
        """Mark content as being written, so that nothing deletes it meanwhile."""
        self.busy[digest] += 1
        try:
            yield
        finally:
            self.busy[digest] -= 1
            if not self.busy[digest]:
                del self.busy[digest]

    async def make_room(self, size: int, origin: str) -> None:
        """Reserve `size` bytes, or refuse: DENIED for a push, 507 for a cache fill."""
        try:
            await self.budget.reserve(size)
        except OverBudget as exc:
            message = f"storage quota exceeded: {exc}"
            status = 403 if origin == HOSTED else 507
            raise RegistryError(ErrorCode.DENIED, message, status=status) from None

    # pulls, for LRU eviction and reports (buffered: a GET must not wait for a disk write)

    def note_pull(self, repo: str, digest: Digest) -> None:
        key = (repo, str(digest))
        count, _ = self._pulls.get(key, (0, 0.0))
        self._pulls[key] = (count + 1, time.time())

    def flush_pulls(self) -> None:
        if self._pulls:
            pulls, self._pulls = self._pulls, {}
            self.meta.record_pulls(pulls)

    # blobs

    async def blob_size(self, repo: str, digest: Digest) -> int:
        """The stored size of a blob linked to `repo`, or BLOB_UNKNOWN."""
        linked = self.meta.blob_linked(repo, digest)
        size = await asyncio.to_thread(self.blobs.size, digest) if linked else None
        if size is not None:
            return size
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to {repo}")

    async def finish_upload(self, upload: Upload, digest: Digest) -> None:
        """Verify and commit an upload within the quota, then link it to its repository."""
        size = upload.size()
        reserved = 0 if self.meta.blob_size(digest) is not None else size
        if reserved:
            await self.make_room(reserved, HOSTED)
        try:
            with self.writing(digest):
                await self.uploads.finish(upload, digest)
                self.budget.stored(digest, size)
                self.meta.link_blob(upload.repo, digest)
        finally:
            self.budget.release(reserved)

    def mount(self, repo: str, digest: Digest, source: str | None, within: str = "") -> bool:
        """Link a blob of `source` into `repo`; False when `source` does not hold it.

        Without a `source`, any hosted repository whose name starts with `within` will do.
        """
        if source is None:
            source = self.meta.blob_hosted(digest, within)
        if source is None or not self.meta.blob_linked(source, digest):
            return False
        if self.blobs.size(digest) is None:
            return False
        self.meta.link_blob(repo, digest)
        return True

    async def delete_blob(self, repo: str, digest: Digest) -> None:
        if not self.meta.unlink_blob(repo, digest):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to {repo}")
        await self._collect(digest)

    async def _collect(self, digest: Digest) -> None:
        """Delete content that no repository refers to any more."""
        if digest not in self.busy and not self.meta.content_referenced(digest):
            self.budget.deleted(digest)
            await asyncio.to_thread(self.blobs.delete, digest)

    # manifests

    def _resolve(self, repo: str, reference: str | Digest) -> Digest:
        self._require_repo(repo)
        if isinstance(reference, Digest):
            return reference
        digest = self.meta.resolve_tag(repo, reference)
        if digest is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"tag {reference!r} unknown to {repo}")
        return digest

    def manifest(self, repo: str, reference: str | Digest) -> StoredManifest:
        """The stored manifest a tag or digest names in `repo`, or MANIFEST_UNKNOWN."""
        digest = self._resolve(repo, reference)
        stored = self.meta.manifest(repo, digest)
        if stored is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} unknown to {repo}")
        return stored

    async def manifest_bytes(self, stored: StoredManifest) -> bytes:
        data = self.hot.get(stored.digest)
        if data is None:
            data = await asyncio.to_thread(self.blobs.read, stored.digest)
            self.hot.put(stored.digest, data)
        return data

    async def put_manifest(
        self,
        repo: str,
        reference: str | Digest,
        body: bytes,
        content_type: str | None,
        tags: list[str],
    ) -> tuple[Digest, Manifest]:
        """Validate and store a manifest; tag it with `reference` if that is a tag, and with
        `tags` (the `?tag=` parameters of a push by digest)."""
        manifest = parse_manifest(body, content_type)
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        digest = Digest.of(body, algorithm)
        if isinstance(reference, Digest) and digest != reference:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID, f"manifest digest is {digest}, not {reference}"
            )
        self._check_references(repo, manifest)
        tags = tags if isinstance(reference, Digest) else [reference]
        await self.store_manifest(repo, digest, body, manifest, tags, HOSTED)
        return digest, manifest

    async def store_manifest(
        self,
        repo: str,
        digest: Digest,
        body: bytes,
        manifest: Manifest,
        tags: list[str],
        origin: str,
    ) -> None:
        """Write a verified manifest's bytes, then record it (and its tags) in `repo`."""
        reserved = 0 if self.meta.blob_size(digest) is not None else len(body)
        if reserved:
            await self.make_room(reserved, origin)
        try:
            with self.writing(digest):
                await asyncio.to_thread(self.blobs.write, body, digest)
                self.budget.stored(digest, len(body))
                self.meta.put_manifest(repo, digest, len(body), manifest, tags, origin)
        finally:
            self.budget.release(reserved)

    def _check_references(self, repo: str, manifest: Manifest) -> None:
        missing = [
            str(d.digest)
            for d in manifest.blobs
            if not d.external and not self.meta.blob_linked(repo, d.digest)
        ]
        missing += [
            str(d.digest) for d in manifest.children if self.meta.manifest(repo, d.digest) is None
        ]
        if missing:
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"manifest references content unknown to {repo}",
                detail={"missing": missing[:20]},
            )

    async def delete_manifest(self, repo: str, reference: str | Digest) -> None:
        """Delete a tag, or a manifest with every tag that points at it."""
        if not isinstance(reference, Digest):
            if not self.meta.delete_tag(repo, reference):
                raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"tag {reference!r} unknown")
            return
        if not self.meta.delete_manifest(repo, reference):
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} unknown")
        await self._collect(reference)

    # listings

    def _require_repo(self, repo: str) -> None:
        if not self.meta.repo_exists(repo):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repo!r} unknown")

    def tags(self, repo: str, last: str | None, limit: int) -> list[str]:
        self._require_repo(repo)
        return self.meta.tags(repo, last, limit)

    def repositories(self, last: str | None, limit: int, prefix: str = "") -> list[str]:
        return self.meta.repositories(last, limit, prefix)

    def referrers(
        self, repo: str, subject: Digest, artifact_type: str | None
    ) -> list[StoredManifest]:
        found = self.meta.referrers(repo, subject)
        if artifact_type is not None:
            found = [m for m in found if m.artifact_type == artifact_type]
        return found

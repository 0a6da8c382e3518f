"""`regcache copy`: an image from one registry to another, every digest unchanged.

Order: blobs, then the manifests that use them, then the index, then referrers (and their
referrers). Blobs and child manifests already at the destination are not sent again, which
makes an interrupted copy resumable by running it again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from regcache.digest import Digest
from regcache.errors import RegistryError
from regcache.manifest import INDEX_TYPES, OCI_INDEX, parse_manifest
from regcache.manifest import Manifest as Parsed
from regcache.transfer.progress import Progress, Task
from regcache.transfer.registry_client import (
    Location,
    Manifest,
    Referrers,
    RegistryClient,
    TransferError,
    open_session,
    referrers_tag,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Platform:
    """`os/arch[/variant]`; a variant left out matches any."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise TransferError(f"a platform is os/arch[/variant], not {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, platform: dict[str, Any]) -> bool:
        return (
            platform.get("os") == self.os
            and platform.get("architecture") == self.architecture
            and self.variant in (None, platform.get("variant"))
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def select_children(doc: dict[str, Any], platforms: list[Platform] | None) -> list[dict[str, Any]]:
    """The entries of an index for `platforms` (all of them when None), in index order."""
    children = [c for c in doc.get("manifests") or [] if isinstance(c, dict)]
    if platforms is None:
        return children
    chosen = [c for c in children if any(p.matches(c.get("platform") or {}) for p in platforms)]
    if not chosen:
        wanted = ", ".join(map(str, platforms))
        raise TransferError(f"the index has no image for {wanted}")
    return chosen


def is_valid(digest: Any) -> bool:
    """Whether `digest` is a digest string of a supported algorithm."""
    try:
        Digest.parse(digest if isinstance(digest, str) else "")
    except RegistryError:
        return False
    return True


def parse(manifest: Manifest) -> Parsed:
    """Validate a manifest of a supported media type."""
    try:
        return parse_manifest(manifest.body, manifest.media_type)
    except RegistryError as exc:
        raise TransferError(f"manifest {manifest.digest}: {exc.message}") from None


def filtered_index(index: Manifest, children: list[dict[str, Any]]) -> Manifest:
    """`index` with only `children` left in it: a new manifest with a new digest."""
    doc = {**index.json(), "manifests": children}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Manifest(body, index.media_type, str(Digest.of(body)))


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all, then raise the first failure: every task runs to its end, none is left
    with an unretrieved exception."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


async def counted(chunks: AsyncIterable[bytes], task: Task) -> AsyncIterator[bytes]:
    """Pass chunks through, advancing `task` by each one's size."""
    async for chunk in chunks:
        task.advance(len(chunk))
        yield chunk


@dataclass
class CopyResult:
    """What a copy did."""

    digest: str  # of the top manifest as stored at the destination
    sent: int = 0  # blobs uploaded
    sent_bytes: int = 0
    present: int = 0  # blobs already at the destination
    mounted: int = 0  # blobs mounted from the source repository
    referrers: int = 0

    def summary(self) -> str:
        return (
            f"{self.sent} blobs sent, {self.present} already there, {self.mounted} mounted, "
            f"{self.referrers} referrers"
        )


class Copier:
    """Copies manifests and blobs from one repository to another."""

    def __init__(
        self,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        progress: Progress,
        jobs: int,
    ) -> None:
        self.src, self.src_repo, self.dst, self.dst_repo = src, src_repo, dst, dst_repo
        self.progress = progress
        self.limit = asyncio.Semaphore(jobs)
        self.blobs: dict[str, asyncio.Future[None]] = {}
        self.manifests: set[str] = set()
        self.subjects: set[str] = set()
        self.result = CopyResult("")

    async def copy(
        self, reference: str, tag: str | None, platforms: list[Platform] | None
    ) -> CopyResult:
        """Copy the manifest `reference` names, and all it needs, to `tag` (or its digest)."""
        top = await self.src.get_manifest(self.src_repo, reference)
        if top is None:
            raise TransferError(f"{self.src.host}/{self.src_repo}:{reference} not found")
        parsed = parse(top)
        subjects = [top.digest]
        if parsed.media_type in INDEX_TYPES:
            children = select_children(top.json(), platforms)
            await gather_all(self.copy_manifest(c["digest"]) for c in children)
            if len(children) != len(top.json().get("manifests") or []):
                top = filtered_index(top, children)
                self.progress.line(f"index filtered to {len(children)} platforms: {top.digest}")
                subjects = []
            subjects += [c["digest"] for c in children]
        else:
            await self.copy_blobs(parsed)
        await self.dst.put_manifest(self.dst_repo, tag or top.digest, top)
        self.manifests.add(top.digest)
        self.result.digest = top.digest
        await gather_all(self.copy_referrers(digest) for digest in subjects)
        return self.result

    async def copy_manifest(self, digest: str) -> None:
        """Copy a manifest by digest, with its children and blobs, unless it is there."""
        if digest in self.manifests:
            return
        self.manifests.add(digest)
        if await self.dst.has_manifest(self.dst_repo, digest):
            self.progress.line(f"manifest {digest[:19]}: exists")
            return
        manifest = await self.src.get_manifest(self.src_repo, digest)
        if manifest is None:
            raise TransferError(f"{self.src.host}/{self.src_repo}@{digest} not found")
        parsed = parse(manifest)
        await gather_all(self.copy_manifest(str(c.digest)) for c in parsed.children)
        await self.copy_blobs(parsed)
        await self.dst.put_manifest(self.dst_repo, digest, manifest)
        self.progress.line(f"manifest {digest[:19]}: copied")

    async def copy_blobs(self, parsed: Parsed) -> None:
        """Copy a manifest's blobs (not foreign layers, which live elsewhere), each once."""
        for blob in parsed.blobs:
            digest = str(blob.digest)
            if not blob.external and digest not in self.blobs:
                self.blobs[digest] = asyncio.ensure_future(self.copy_blob(digest, blob.size))
        await gather_all(self.blobs[str(b.digest)] for b in parsed.blobs if not b.external)

    async def copy_blob(self, digest: str, size: int) -> None:
        """HEAD at the destination, mount when on the same registry, else stream it over."""
        async with self.limit:
            task = self.progress.task(f"blob {digest[:19]}", size)
            if await self.dst.has_blob(self.dst_repo, digest):
                self.result.present += 1
                task.finish("exists")
                return
            same_registry = self.src.url == self.dst.url and self.src_repo != self.dst_repo
            mount = (digest, self.src_repo) if same_registry else None
            location = await self.dst.start_upload(self.dst_repo, mount)
            if location is None:
                self.result.mounted += 1
                task.finish("mounted")
                return
            async with self.src.open_blob(self.src_repo, digest) as chunks:
                await self.dst.finish_upload(
                    self.dst_repo, location, digest, size, counted(chunks, task)
                )
            self.result.sent += 1
            self.result.sent_bytes += size
            task.finish("copied")

    async def copy_referrers(self, subject: str) -> None:
        """Copy the manifests whose subject is `subject`, and theirs in turn; index them in
        the destination's referrers tag when it has no referrers API."""
        if subject in self.subjects:
            return
        self.subjects.add(subject)
        found = await self.src.referrers(self.src_repo, subject)
        wanted = [d for d in found.descriptors if isinstance(d, dict) and is_valid(d.get("digest"))]
        if not wanted:
            return
        for descriptor in wanted:
            await self.copy_manifest(descriptor["digest"])
            self.result.referrers += 1
            await self.copy_referrers(descriptor["digest"])
        await self.index_referrers(subject, Referrers(wanted, found.tag_index))

    async def index_referrers(self, subject: str, found: Referrers) -> None:
        """Add the referrers to the `sha256-<hex>` tag's index at the destination (the source's
        own index, unchanged, when the destination has none yet)."""
        if await self.dst.supports_referrers(self.dst_repo, subject):
            return
        tag = referrers_tag(subject)
        existing = await self.dst.get_manifest(self.dst_repo, tag)
        if existing is None and found.tag_index is not None:
            await self.dst.put_manifest(self.dst_repo, tag, found.tag_index)
            return
        doc = existing.json() if existing else {"schemaVersion": 2, "mediaType": OCI_INDEX}
        listed = doc.get("manifests") or []
        known = {d.get("digest") for d in listed}
        missing = [d for d in found.descriptors if d["digest"] not in known]
        if missing:
            body = json.dumps({**doc, "manifests": listed + missing}).encode()
            index = Manifest(body, OCI_INDEX, str(Digest.of(body)))
            await self.dst.put_manifest(self.dst_repo, tag, index)


def destination_tag(src: Location, dst: Location) -> str | None:
    """DST's tag, else SRC's, else none when SRC names a digest (the copy is untagged)."""
    if dst.ref.digest:
        raise TransferError("the destination takes a tag, not a digest")
    return dst.ref.tag or src.ref.tag or (None if src.ref.digest else "latest")


async def copy_image(
    src: Location,
    dst: Location,
    *,
    platforms: list[Platform] | None,
    jobs: int,
    progress: Progress,
) -> CopyResult:
    """Copy the image at `src` to `dst` (all platforms when `platforms` is None)."""
    tag = destination_tag(src, dst)
    async with open_session() as session:
        copier = Copier(
            RegistryClient(session, src.endpoint), src.repository,
            RegistryClient(session, dst.endpoint), dst.repository, progress, jobs,
        )  # fmt: skip
        return await copier.copy(src.ref.reference, tag, platforms)

"""`regcache warm`: pull images through a regcache so that it holds them before a class.

Each image is asked for by the cache's prefixed name (`nginx:1.25.3` is
`/v2/docker.io/library/nginx/...`): its manifest, its platforms' manifests and every blob,
whose bytes are read and dropped. A blob shared by several images is pulled once per
repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from regcache.image_ref import ImageRef, parse_image
from regcache.manifest import INDEX_TYPES
from regcache.transfer.copy import Platform, gather_all, parse, select_children
from regcache.transfer.progress import Progress
from regcache.transfer.registry_client import (
    Endpoint,
    Manifest,
    RegistryClient,
    TransferError,
    open_session,
)


def parse_images(texts: Iterable[str]) -> list[ImageRef]:
    """Image references as given on the command line."""
    refs = []
    for text in texts:
        ref = parse_image(text)
        if ref is None or ref.templated:
            raise TransferError(f"not an image reference: {text!r}")
        refs.append(ref)
    return refs


def workshop_images(paths: list[Path]) -> list[ImageRef]:
    """The images a workshop mentions, as the workshop scanner finds them; references with
    template variables are left out (they name no image until the workshop runs)."""
    if not paths:
        return []
    from regcache.workshop.scan import find_images  # only `warm --from` needs the scanner

    for path in paths:
        if not path.exists():
            raise TransferError(f"{path}: no such file or directory")
    return [m.image for m in find_images(paths) if m.image and not m.image.templated]


def unique(refs: Iterable[ImageRef]) -> list[ImageRef]:
    """`refs` without repeats, Docker Hub aliases counting as one, in first-seen order."""
    return list({str(ref): ref for ref in refs}.values())


@dataclass
class WarmResult:
    """What a warm did."""

    images: int = 0
    blobs: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)


class Warmer:
    """Pulls images through one regcache, at most `jobs` requests at a time."""

    def __init__(
        self,
        cache: RegistryClient,
        progress: Progress,
        jobs: int,
        platforms: list[Platform] | None,
    ) -> None:
        self.cache = cache
        self.progress = progress
        self.platforms = platforms
        self.limit = asyncio.Semaphore(jobs)
        self.blobs: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.result = WarmResult()

    async def warm(self, ref: ImageRef) -> None:
        """Pull one image, recording a failure instead of raising."""
        try:
            digest = await self.pull(ref)
        except (TransferError, aiohttp.ClientError, TimeoutError) as exc:
            self.result.failures.append(f"{ref}: {exc or type(exc).__name__}")
            self.progress.line(f"{ref}: failed: {exc or type(exc).__name__}")
            return
        self.result.images += 1
        self.progress.line(f"{ref}: warmed ({digest})")

    async def pull(self, ref: ImageRef) -> str:
        """Pull the manifest(s) and blobs of `ref`; return the top manifest's digest."""
        repo = ref.name
        top = await self.manifest(repo, ref.reference)
        images = [top]
        if parse(top).media_type in INDEX_TYPES:
            children = select_children(top.json(), self.platforms)
            images = await gather_all(self.manifest(repo, c["digest"]) for c in children)
        blobs = {str(b.digest): b.size for m in images for b in parse(m).blobs if not b.external}
        for digest, size in blobs.items():
            if (repo, digest) not in self.blobs:
                pulling = self.blob(repo, digest, size, f"{ref} {digest[:19]}")
                self.blobs[repo, digest] = asyncio.ensure_future(pulling)
        await gather_all(self.blobs[repo, digest] for digest in blobs)
        return top.digest

    async def manifest(self, repo: str, reference: str) -> Manifest:
        async with self.limit:
            manifest = await self.cache.get_manifest(repo, reference)
        if manifest is None:
            raise TransferError(f"{self.cache.host} has no {repo}:{reference}")
        return manifest

    async def blob(self, repo: str, digest: str, size: int, label: str) -> None:
        """GET a blob through the cache, dropping the bytes."""
        async with self.limit:
            task = self.progress.task(label, size)
            async with self.cache.open_blob(repo, digest) as chunks:
                async for chunk in chunks:
                    task.advance(len(chunk))
            self.result.blobs += 1
            self.result.bytes += size
            task.finish("pulled")


async def warm_images(
    refs: list[ImageRef],
    cache: Endpoint,
    *,
    platforms: list[Platform] | None,
    jobs: int,
    progress: Progress,
) -> WarmResult:
    """Pull every image in `refs` through the regcache at `cache`, images concurrently."""
    async with open_session() as session:
        warmer = Warmer(RegistryClient(session, cache), progress, jobs, platforms)
        await asyncio.gather(*(warmer.warm(ref) for ref in unique(refs)))
        return warmer.result

"""`regcache pin PATH…`: rewrite a workshop's mutable tags to `tag@sha256:…`.

The workshop scanner says where every image reference is written; each one with a mutable
tag (see `regcache.policy.is_pinned_tag`) is resolved with a single HEAD request, through a
regcache by its prefixed name or at the image's own registry, and the exact characters at that
position are replaced. Nothing else in a file changes: not YAML comments, quoting, order or
indentation, nor line endings. With a mirror host, Docker Hub references are also rewritten to
the cache's prefixed form (`HOST/docker.io/library/nginx:1.25@sha256:…`).
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from regcache.image_ref import ImageRef, parse_image
from regcache.policy import is_pinned_tag
from regcache.transfer.registry_client import (
    Endpoint,
    Location,
    RegistryClient,
    TransferError,
    open_session,
    parse_location,
)
from regcache.workshop.manifests import load_documents
from regcache.workshop.scan import Mention, find_images

JOBS = 8  # HEAD requests in flight at once
_LINE_END = re.compile(r"(\r\n|\r|\n)")  # as universal newlines, which the scanner counts by
_YAML_SUFFIXES = frozenset({".yaml", ".yml"})
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
Key = tuple[str, str]  # a reference's name and tag: what is asked for


class PinError(ValueError):
    """The options make no sense; nothing was read or written."""


@dataclass(frozen=True)
class Options:
    """Where references are resolved, and where Docker Hub references are moved to."""

    url: str  # the regcache asked by default
    direct: bool = False  # ask each reference's own registry instead
    plain_http: bool = False  # with `direct`: http for registries other than Docker Hub
    mirror: str | None = None  # HOST[:PORT] of the cache, for Docker Hub references


@dataclass(frozen=True)
class Edit:
    """One reference rewritten: `before` at (line, column) becomes `after`."""

    mention: Mention
    after: str

    def to_json(self) -> dict[str, object]:
        m = self.mention
        return {"file": str(m.path), "line": m.line, "column": m.column,
                "before": m.text, "after": self.after}  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """A reference left as it was, and why."""

    mention: Mention
    reason: str

    def __str__(self) -> str:
        m = self.mention
        return f"{m.path}:{m.line}:{m.column}: {m.text}: {self.reason}"


@dataclass(frozen=True)
class FileChange:
    """A file's text before and after its edits."""

    path: Path
    before: str
    after: str
    edits: tuple[Edit, ...]

    def diff(self) -> str:
        """A unified diff of the change."""
        lines = difflib.unified_diff(
            self.before.splitlines(keepends=True),
            self.after.splitlines(keepends=True),
            f"{self.path}",
            f"{self.path}",
        )
        return "".join(line if line.endswith("\n") else f"{line}\n" for line in lines)


@dataclass
class Plan:
    """What pinning would do: the files to change, and the references that cannot be."""

    changes: list[FileChange] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def mirror_host(text: str) -> str:
    """`--to-mirror`'s HOST[:PORT], checked: docker must take it for a registry host."""
    host = text.strip().rstrip("/")
    ref = parse_image(f"{host}/docker.io/library/nginx:1")
    if "/" in host or "://" in text or ref is None or ref.registry != host:
        raise PinError(
            f"--to-mirror takes a registry host such as cache.example:5000, not {text!r}"
        )
    return host


def _needs_digest(image: ImageRef) -> bool:
    return image.digest is None and not is_pinned_tag(image.tag)


def _moves(image: ImageRef, options: Options) -> bool:
    return options.mirror is not None and image.is_docker_hub


def _wanted(mention: Mention, options: Options) -> bool:
    """Whether to rewrite a reference: a parsed, untemplated image (not a helm chart) that
    needs a digest or moves to the mirror."""
    image = mention.image
    if image is None or image.templated or mention.where.startswith("helm"):
        return False
    return _needs_digest(image) or _moves(image, options)


def _key(image: ImageRef) -> Key:
    """What a reference asks a registry for: Docker Hub's spellings count as one name."""
    return image.name, image.tag or "latest"


def _location(image: ImageRef, options: Options) -> Location:
    """Where to HEAD a reference: the regcache by its prefixed name (`docker.io/library/
    nginx`), or by the name itself for references already at the cache; else the image's own
    registry."""
    tag = image.tag or "latest"
    if options.direct:
        return parse_location(f"{image.name}:{tag}", plain_http=options.plain_http)
    url = options.url.rstrip("/")
    at_cache = image.registry in {urlsplit(url).netloc, options.mirror}
    return parse_location(f"{url}/{image.repository if at_cache else image.name}:{tag}")


async def _resolve_all(
    locations: dict[Key, Location | TransferError],
) -> dict[Key, str | TransferError]:
    """The digest of each reference, or why it could not be had: HEAD requests only, at most
    JOBS at a time, one client (and its tokens) per registry."""
    limit = asyncio.Semaphore(JOBS)
    async with open_session() as session:
        clients: dict[Endpoint, RegistryClient] = {}

        async def one(location: Location | TransferError) -> str | TransferError:
            if isinstance(location, TransferError):
                return location
            endpoint = location.endpoint
            client = clients.setdefault(endpoint, RegistryClient(session, endpoint))
            try:
                async with limit:
                    digest = await client.resolve(location.repository, location.ref.reference)
            except (TransferError, aiohttp.ClientError, TimeoutError) as exc:
                return TransferError(str(exc) or type(exc).__name__)
            if digest is None:
                return TransferError(f"{client.host} does not know it")
            if not _SHA256.fullmatch(digest):
                return TransferError(f"{client.host} answered an unexpected digest {digest!r}")
            return digest

        found = await asyncio.gather(*(one(location) for location in locations.values()))
    return dict(zip(locations, found, strict=True))


def resolve(mentions: Iterable[Mention], options: Options) -> dict[Key, str | TransferError]:
    """Resolve each distinct reference that needs a digest, once: its digest, or the error."""
    locations: dict[Key, Location | TransferError] = {}
    for mention in mentions:
        image = mention.image
        if image is None or not _needs_digest(image) or _key(image) in locations:
            continue
        try:
            locations[_key(image)] = _location(image, options)
        except TransferError as exc:
            locations[_key(image)] = exc
    return asyncio.run(_resolve_all(locations)) if locations else {}


def rewritten(mention: Mention, digest: str | None, options: Options) -> str:
    """The new text of a reference: as written plus `@digest` (`:latest@digest` when it had
    no tag), or, for a Docker Hub reference and a mirror, the mirror's prefixed form."""
    written = mention.image
    assert written is not None
    image = written
    if digest is not None:
        image = ImageRef(written.registry, written.repository, written.tag or "latest", digest)
    if _moves(image, options):
        return f"{options.mirror}/{image}"
    return f"{mention.text}{'' if written.tag else ':latest'}@{digest}"


def _edit_text(text: str, edits: list[Edit]) -> tuple[str, list[Edit], list[Failure]]:
    """`text` with the edits made at their positions; edits whose position does not hold the
    reference as written are refused."""
    parts = _LINE_END.split(text)  # line, end, line, end, …, last line
    made: list[Edit] = []
    refused: list[Failure] = []
    for edit in sorted(edits, key=lambda e: (e.mention.line, -e.mention.column)):
        m = edit.mention
        index, start = 2 * (m.line - 1), m.column - 1
        line = parts[index] if index < len(parts) else ""
        if line[start : start + len(m.text)] != m.text:
            refused.append(Failure(m, "not written at this position as parsed; left unchanged"))
            continue
        parts[index] = line[:start] + edit.after + line[start + len(m.text) :]
        made.append(edit)
    made.sort(key=lambda e: (e.mention.line, e.mention.column))
    return "".join(parts), made, refused


def parse_problem(path: Path, before: str, after: str) -> str | None:
    """Why the edited text of a YAML file must not be written: it no longer parses (all
    documents, round-trip), though the original did (one that did not, such as a Helm
    template, is edited as plain text). Other files have no parser here."""
    if path.suffix.lower() not in _YAML_SUFFIXES or load_documents(before) is None:
        return None
    if load_documents(after) is None:
        return "the rewritten YAML would not parse; file left unchanged"
    return None


def plan(paths: Iterable[Path], options: Options) -> Plan:
    """Find the references to rewrite, resolve them, and compute each file's new text."""
    mentions = [m for m in find_images(paths) if _wanted(m, options)]
    digests = resolve(mentions, options)
    result = Plan()
    by_file: dict[Path, list[Edit]] = {}
    for mention in mentions:
        assert mention.image is not None
        digest = digests.get(_key(mention.image)) if _needs_digest(mention.image) else None
        if isinstance(digest, TransferError):
            result.failures.append(Failure(mention, f"not resolved: {digest}"))
            continue
        edit = Edit(mention, rewritten(mention, digest, options))
        by_file.setdefault(mention.path, []).append(edit)
    for path, edits in by_file.items():
        before = path.read_bytes().decode("utf-8")
        after, made, refused = _edit_text(before, edits)
        result.failures += refused
        problem = parse_problem(path, before, after) if made else None
        if problem is not None:
            result.failures += [Failure(edit.mention, problem) for edit in made]
        elif made:
            result.changes.append(FileChange(path, before, after, tuple(made)))
    result.failures.sort(key=lambda f: (str(f.mention.path), f.mention.line, f.mention.column))
    return result


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's content by renaming a complete temporary file over it, keeping its
    mode (through a symbolic link, the file it points at)."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".pin")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

"""Manifests: the media types regcache stores, and what a manifest refers to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MEDIA_TYPES = IMAGE_TYPES | INDEX_TYPES


@dataclass(frozen=True)
class Descriptor:
    """The parts of an OCI descriptor that regcache acts on."""

    media_type: str
    digest: Digest
    size: int
    external: bool = False  # a foreign layer with `urls`, not expected in the registry

    @classmethod
    def parse(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise _invalid(f"{where} is not a descriptor object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise _invalid(f"{where}.mediaType must be a string")
        if not isinstance(digest, str):
            raise _invalid(f"{where}.digest must be a string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _invalid(f"{where}.size must be a non-negative integer")
        try:
            parsed = Digest.parse(digest)
        except RegistryError as exc:
            raise _invalid(f"{where}.digest: {exc.message}") from exc
        return cls(media_type, parsed, size, external=bool(value.get("urls")))


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest."""

    media_type: str
    blobs: list[Descriptor] = field(default_factory=list)
    children: list[Descriptor] = field(default_factory=list)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)


def _infer_media_type(doc: dict[str, Any]) -> str | None:
    """OCI manifests may omit `mediaType`; tell an index from an image by its fields."""
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc:
        return OCI_MANIFEST
    return None


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Validate `body` as a manifest of a supported media type, or raise MANIFEST_INVALID."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    declared = doc.get("mediaType")
    header = (content_type or "").split(";")[0].strip() or None
    if declared is not None and header in MEDIA_TYPES and declared != header:
        raise _invalid(f"Content-Type {header} does not match the manifest's mediaType {declared}")
    media_type = header if header in MEDIA_TYPES else declared or _infer_media_type(doc)
    if media_type not in MEDIA_TYPES:
        raise _invalid(
            f"unsupported manifest media type {media_type or header!r}; "
            f"supported: {', '.join(sorted(MEDIA_TYPES))}"
        )
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    subject = Descriptor.parse(doc["subject"], "subject") if "subject" in doc else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise _invalid("annotations must be an object")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _invalid("an index must have a manifests list")
        children = [Descriptor.parse(d, f"manifests[{i}]") for i, d in enumerate(entries)]
        return Manifest(media_type, [], children, subject, artifact_type, annotations)
    config = Descriptor.parse(doc.get("config"), "config")
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise _invalid("layers must be a list")
    blobs = [config] + [Descriptor.parse(d, f"layers[{i}]") for i, d in enumerate(layers)]
    return Manifest(media_type, blobs, [], subject, artifact_type or config.media_type, annotations)

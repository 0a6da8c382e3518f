"""Generate test images as OCI image layouts on disk from random bytes; nothing is downloaded.

Each layer is an uncompressed tar holding one file of ``os.urandom`` bytes under ``/data``; blobs
are written and sha256-hashed in 1 MiB chunks, so a GiB image never sits in memory. The
``docker`` flavour uses Docker schema 2 media types with the *uncompressed* layer type
``application/vnd.docker.image.rootfs.diff.tar`` (distribution's
``schema2.MediaTypeUncompressedLayer``; dockerd, containerd and containers/image accept it):
gzip would dominate generation time and random bytes do not compress anyway. Several images can
share one layout; ``index.json`` names each by its ``org.opencontainers.image.ref.name``
annotation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

CHUNK = 1 << 20
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-01-01T00:00:00Z"
_MTIME = 1704067200  # CREATED as a Unix time, for the tar headers

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

Flavour = Literal["oci", "docker"]


@dataclass(frozen=True)
class MediaTypes:
    """The media types of one image flavour."""

    manifest: str
    index: str
    config: str
    layer: str


MEDIA_TYPES: dict[str, MediaTypes] = {
    "oci": MediaTypes(OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER),
    "docker": MediaTypes(DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER),
}


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor; `platform` is set only for the entries of an index."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True)
class Image:
    """A tagged top-level manifest (image, index or artifact) written into a layout."""

    tag: str
    digest: str
    media_type: str
    size: int
    manifest: bytes
    blobs: tuple[Descriptor, ...]  # configs and layers of every child, each once
    children: tuple[str, ...]  # child manifest digests of an index, in order
    total_bytes: int  # every manifest plus every distinct blob

    @property
    def descriptor(self) -> Descriptor:
        """A descriptor of the top manifest, e.g. for an artifact's `subject`."""
        return Descriptor(self.media_type, self.digest, self.size)


def dumps(obj: Any) -> bytes:
    """Deterministic compact JSON, the exact bytes that are written and hashed."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_platform(platform: str) -> dict[str, str]:
    """`os/arch[/variant]` as an OCI platform object."""
    os_name, arch, *variant = platform.split("/")
    out = {"architecture": arch, "os": os_name}
    if variant:
        out["variant"] = variant[0]
    return out


def random_chunks(size: int) -> Iterator[bytes]:
    """`size` random bytes in chunks of at most 1 MiB."""
    for start in range(0, size, CHUNK):
        yield os.urandom(min(CHUNK, size - start))


def _tar_header(name: str, kind: bytes, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, _MTIME
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.USTAR_FORMAT)


def layer_chunks(name: str, size: int) -> Iterator[bytes]:
    """A tar archive with directory `data/` and file `data/<name>` of `size` random bytes."""
    yield _tar_header("data", tarfile.DIRTYPE, 0, 0o755)
    yield _tar_header(f"data/{name}", tarfile.REGTYPE, size, 0o644)
    yield from random_chunks(size)
    yield bytes(-size % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)  # padding, end of archive


class _Layout:
    """Writes blobs and tags into an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        marker = root / "oci-layout"
        if not marker.exists():
            marker.write_bytes(dumps({"imageLayoutVersion": "1.0.0"}))

    def put_stream(self, chunks: Iterable[bytes], media_type: str) -> Descriptor:
        """Write a blob from `chunks`, hashing as it goes."""
        hasher, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".blob-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            tmp.replace(self.blob_dir / hasher.hexdigest())
        finally:
            tmp.unlink(missing_ok=True)
        return Descriptor(media_type, f"sha256:{hasher.hexdigest()}", size)

    def put(self, data: bytes, media_type: str) -> Descriptor:
        """Write a small blob held in memory."""
        return self.put_stream([data], media_type)

    def layers(self, media_type: str, count: int, size: int, first: int = 0) -> list[Descriptor]:
        """`count` random layers holding `data/layer<first + i>.bin`."""
        return [
            self.put_stream(layer_chunks(f"layer{first + i}.bin", size), media_type)
            for i in range(count)
        ]

    def manifest(
        self, platform: str, layers: Sequence[Descriptor], types: MediaTypes
    ) -> tuple[Descriptor, bytes, list[Descriptor]]:
        """Write a config and an image manifest for `layers`; returns it, its bytes, its blobs."""
        plat = parse_platform(platform)
        config = self.put(
            dumps(
                {
                    "created": CREATED,
                    **plat,
                    "config": {"Cmd": ["/bin/sh"]},
                    "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                    "history": [
                        {"created": CREATED, "created_by": f"regcache tests: layer {i}"}
                        for i in range(len(layers))
                    ],
                }
            ),
            types.config,
        )
        data = dumps(
            {
                "schemaVersion": 2,
                "mediaType": types.manifest,
                "config": config.to_json(),
                "layers": [layer.to_json() for layer in layers],
            }
        )
        return replace(self.put(data, types.manifest), platform=plat), data, [config, *layers]

    def tag(
        self,
        tag: str,
        top: Descriptor,
        manifest: bytes,
        blobs: Iterable[Descriptor],
        children: Sequence[Descriptor] = (),
    ) -> Image:
        """Name `top` as `tag` in index.json (replacing an older entry) and describe it."""
        index_path = self.root / "index.json"
        index = (
            json.loads(index_path.read_bytes())
            if index_path.exists()
            else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        )
        entry = {**top.to_json(), "annotations": {REF_NAME: tag}}
        index["manifests"] = [
            m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
        ] + [entry]
        index_path.write_bytes(dumps(index))
        unique = tuple({blob.digest: blob for blob in blobs}.values())
        return Image(
            tag=tag,
            digest=top.digest,
            media_type=top.media_type,
            size=top.size,
            manifest=manifest,
            blobs=unique,
            children=tuple(child.digest for child in children),
            total_bytes=top.size + sum(d.size for d in (*children, *unique)),
        )


def make_image(
    layout: Path,
    tag: str,
    *,
    layers: int,
    layer_size: int,
    platform: str = "linux/amd64",
    flavour: Flavour = "oci",
) -> Image:
    """A single-platform image of `layers` random layers of `layer_size` file bytes each."""
    out, types = _Layout(layout), MEDIA_TYPES[flavour]
    manifest, data, blobs = out.manifest(
        platform, out.layers(types.layer, layers, layer_size), types
    )
    return out.tag(tag, replace(manifest, platform=None), data, blobs)


def make_index(
    layout: Path,
    tag: str,
    *,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    layers: int,
    layer_size: int,
    shared_base: bool = False,
    flavour: Flavour = "oci",
) -> Image:
    """An index with one image of `layers` layers per platform, in the order given.

    Layers are distinct per platform, except that with `shared_base` every platform's first
    layer is the same blob.
    """
    if layers < 1:
        raise ValueError("an index's images need at least one layer")
    out, types = _Layout(layout), MEDIA_TYPES[flavour]
    base = out.layers(types.layer, 1, layer_size) if shared_base else []
    children: list[Descriptor] = []
    blobs: list[Descriptor] = []
    for platform in platforms:
        own = out.layers(types.layer, layers - len(base), layer_size, first=len(base))
        child, _, child_blobs = out.manifest(platform, [*base, *own], types)
        children.append(child)
        blobs += child_blobs
    data = dumps(
        {
            "schemaVersion": 2,
            "mediaType": types.index,
            "manifests": [child.to_json() for child in children],
        }
    )
    return out.tag(tag, out.put(data, types.index), data, blobs, children)


def make_artifact(
    layout: Path,
    tag: str,
    *,
    subject: Descriptor,
    artifact_type: str = "application/vnd.example.sbom.v1",
    size: int = 4096,
    blob_media_type: str = "application/octet-stream",
) -> Image:
    """An OCI artifact: empty config, one random blob of `size` bytes, `subject` as referrer."""
    out = _Layout(layout)
    config = out.put(b"{}", OCI_EMPTY)
    blob = out.put_stream(random_chunks(size), blob_media_type)
    data = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.to_json(),
            "layers": [blob.to_json()],
            "subject": replace(subject, platform=None).to_json(),
        }
    )
    return out.tag(tag, out.put(data, OCI_MANIFEST), data, [config, blob])

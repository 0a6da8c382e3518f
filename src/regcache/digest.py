"""Content digests: parsing, the supported algorithms, and streaming verification."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from regcache.errors import ErrorCode, RegistryError

# The spec's grammar: algorithm ":" encoded.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[a-f0-9]+$")

ALGORITHMS = tuple(_HEX_LENGTH)
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest of a supported algorithm."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `text`, raising DIGEST_INVALID for a malformed or unsupported digest."""
        match = _DIGEST_RE.fullmatch(text)
        if not match:
            raise RegistryError(ErrorCode.DIGEST_INVALID, f"malformed digest {text[:150]!r}")
        algorithm, encoded = match.groups()
        length = _HEX_LENGTH.get(algorithm)
        if length is None:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(ALGORITHMS)}",
            )
        if len(encoded) != length or not _HEX_RE.fullmatch(encoded):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"{algorithm} digest must be {length} lower-case hex characters",
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of `data`."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Hasher:
        """A fresh streaming hasher of this digest's algorithm."""
        return Hasher(self.algorithm)


def is_digest(text: str) -> bool:
    """Whether a manifest reference looks like a digest rather than a tag."""
    return ":" in text


class Hasher:
    """Incremental hashing that counts bytes too."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


def hash_file(path: Path, algorithm: str = "sha256") -> Digest:
    """Hash a file in bounded chunks (blocking: call from a worker thread)."""
    hasher = Hasher(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.digest()

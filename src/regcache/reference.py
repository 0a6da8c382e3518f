"""Repository names, tags and manifest references, validated by the distribution grammar."""

from __future__ import annotations

import re

from regcache.digest import Digest, is_digest
from regcache.errors import ErrorCode, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError(
            ErrorCode.NAME_INVALID, f"invalid repository name {name[:MAX_NAME_LENGTH]!r}"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag, else raise MANIFEST_INVALID (the spec has no TAG code)."""
    if not TAG_RE.fullmatch(tag):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:130]!r}")
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a `Digest` or a validated tag."""
    if is_digest(reference):
        return Digest.parse(reference)
    return validate_tag(reference)

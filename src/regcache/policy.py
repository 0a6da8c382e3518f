"""Tag policy: which tags can change under a client (mutable) and which are pinned."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from regcache.config import Upstream

MUTABLE_NAMES = frozenset({"latest", "main", "master", "develop"})
# A full patch version, optionally with a suffix: 1.25.3, v2.1.0, 1.25.3-alpine, 8.0.1+build.
_PINNED_VERSION = re.compile(r"v?\d+\.\d+\.\d+(?:[-+._][A-Za-z0-9._+-]*)?")


def is_pinned_tag(tag: str | None, upstream: Upstream | None = None) -> bool:
    """Whether a tag is treated as never changing (served from cache without revalidation).

    Configured patterns win; otherwise only a full patch version is pinned. `latest`,
    `main`, `master`, `develop`, a missing tag, `7`, `1.25` and names such as `alpine` are
    mutable.
    """
    if not tag:
        return False
    if upstream is not None:
        if any(fnmatchcase(tag, pattern) for pattern in upstream.mutable_tags):
            return False
        if any(fnmatchcase(tag, pattern) for pattern in upstream.immutable_tags):
            return True
    return tag not in MUTABLE_NAMES and _PINNED_VERSION.fullmatch(tag) is not None

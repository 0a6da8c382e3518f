"""Image references as clients write them (`nginx:1.25`, `ghcr.io/org/app@sha256:…`),
normalised the way docker does: Docker Hub by default, `library/` for one-word names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.reference import NAME_RE, TAG_RE

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# Template variables of Educates, Hugo, Jinja and the shell: `$(registry_host)`,
# `{{< param registry_host >}}`, `{{ registry_host }}`, `$REGISTRY_HOST`, `${REGISTRY_HOST}`.
TEMPLATE_RE = re.compile(r"\$\([^)]*\)|\{\{.*?\}\}|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def has_template(text: str) -> bool:
    """Whether `text` contains a template or shell variable."""
    return TEMPLATE_RE.search(text) is not None


def _is_host(component: str) -> bool:
    """Docker's rule: the first component names a registry when it has a dot or a port,
    or is `localhost` (it may also hold template variables such as `$(registry_host)`)."""
    return (
        "." in component or ":" in component or component == "localhost" or has_template(component)
    )


@dataclass(frozen=True)
class ImageRef:
    """A fully qualified image reference: registry host, repository, tag and/or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_docker_hub(self) -> bool:
        return self.registry in DOCKER_HUB_ALIASES

    @property
    def templated(self) -> bool:
        """Whether any part is a template variable (and so cannot be judged)."""
        return has_template(f"{self.registry}/{self.repository}:{self.tag or ''}")

    @property
    def name(self) -> str:
        """`registry/repository`, with Docker Hub spelt `docker.io`."""
        return f"{DOCKER_HUB if self.is_docker_hub else self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image(text: str) -> ImageRef | None:
    """Parse a reference as docker does; None when `text` is not one.

    Template variables are allowed anywhere; the parts holding them are not validated.
    """
    text = text.strip()
    if not text or any(c.isspace() for c in TEMPLATE_RE.sub("", text)) or "://" in text:
        return None
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        return None
    first, slash, remainder = rest.partition("/")
    if slash and _is_host(first):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag: str | None = None
    head, colon, tail = path.rpartition(":")
    if colon and "/" not in tail:
        path, tag = head, tail
    if registry in DOCKER_HUB_ALIASES and "/" not in path:
        path = f"library/{path}"
    if not has_template(path) and not NAME_RE.fullmatch(path):
        return None
    if tag is not None and not has_template(tag) and not TAG_RE.fullmatch(tag):
        return None
    return ImageRef(registry, path, tag, digest or None)

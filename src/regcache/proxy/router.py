"""Which upstream, if any, a repository name belongs to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from regcache.upstream import UpstreamClient


@dataclass(frozen=True)
class Remote:
    """A cached repository: its upstream, the upstream's name for it, and our name for it."""

    upstream: UpstreamClient
    name: str  # e.g. library/nginx
    local: str  # e.g. docker.io/library/nginx


class Router:
    """Maps `/v2/<name>` to an upstream by prefix, or to the mirror upstream by default."""

    def __init__(self, upstreams: list[UpstreamClient]) -> None:
        self.upstreams = upstreams
        self.mirror = next((u for u in upstreams if u.config.mirror), None)

    def _remote(self, upstream: UpstreamClient, name: str) -> Remote:
        remote = upstream.remote_name(name)
        return Remote(upstream, remote, f"{upstream.config.prefix}/{remote}")

    def by_prefix(self, name: str) -> Remote | None:
        """The upstream whose prefix starts `name` (`docker.io/library/nginx`)."""
        for upstream in self.upstreams:
            prefix = upstream.config.prefix + "/"
            if name.startswith(prefix):
                return self._remote(upstream, name[len(prefix) :])
        return None

    def by_mirror(self, name: str, query: Mapping[str, str]) -> Remote | None:
        """The mirror upstream for an unprefixed name (dockerd's `/v2/library/nginx`).

        containerd says which registry it mirrors with `?ns=`; a namespace that is not the
        mirror's prefix selects the upstream with that prefix, or none.
        """
        namespace = query.get("ns")
        if namespace is not None:
            for upstream in self.upstreams:
                if upstream.config.prefix == namespace:
                    return self._remote(upstream, name)
            return None
        return self._remote(self.mirror, name) if self.mirror is not None else None

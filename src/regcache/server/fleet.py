"""The endpoint through which replicas send each other blobs they are downloading."""

from __future__ import annotations

import hmac

from aiohttp import web

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.server.blobs import blob_response
from regcache.server.keys import PULL_THROUGH, REGISTRY
from regcache.server.proxied import follow


async def fleet_blob(request: web.Request) -> web.StreamResponse:
    """A blob this replica is downloading (followed as it arrives) or has stored."""
    pull = request.app[PULL_THROUGH]
    fleet = pull.fleet
    given = request.headers.get("Authorization", "").encode()
    if fleet is None or not hmac.compare_digest(given, f"Bearer {fleet.token}".encode()):
        raise RegistryError(ErrorCode.UNAUTHORIZED, "replicas only")
    digest = Digest.parse(request.match_info["digest"])
    download = pull.downloads.active.get(digest)
    if download is not None:
        return await follow(request, download)
    registry = request.app[REGISTRY]
    if registry.meta.blob_cached(digest):
        size = registry.meta.blob_size(digest)
        return await blob_response(request, registry.blobs, digest, size)
    raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"{digest} is not here")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_regcache/fleet/blobs/{digest}", fleet_blob)

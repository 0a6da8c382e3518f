"""Listings: tags and catalog with `n` / `last` pagination, and the referrers API."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.manifest import OCI_INDEX
from regcache.server.access import tenant_of
from regcache.server.keys import REGISTRY

MAX_PAGE = 10_000


def _page_size(request: web.Request) -> int:
    value = request.query.get("n")
    if value is None:
        return MAX_PAGE
    if not value.isdigit():
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, f"n must be a number, not {value[:20]!r}"
        )
    return min(int(value), MAX_PAGE)


def _paginated(
    request: web.Request, key: str, items: list[str], limit: int, extra: dict[str, object]
) -> web.Response:
    """A page of `items` (fetched with one extra to tell whether more follow)."""
    headers = {}
    if len(items) > limit > 0:
        query = urlencode({"n": limit, "last": items[limit - 1]})
        headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    items = items[:limit]
    return web.json_response({**extra, key: items}, headers=headers)


async def tags(request: web.Request, repo: str, _: str) -> web.StreamResponse:
    limit = _page_size(request)
    found = request.app[REGISTRY].tags(repo, request.query.get("last"), limit + 1)
    return _paginated(request, "tags", found, limit, {"name": request["name"]})


async def catalog(request: web.Request) -> web.StreamResponse:
    """The repositories of the store; a tenant sees only its own hosted ones."""
    limit = _page_size(request)
    tenant = tenant_of(request)
    last = request.query.get("last")
    stored = request.app[REGISTRY].repositories(
        tenant.internal(last) if last is not None else None, limit + 1, tenant.prefix
    )
    found = [name for name in map(tenant.external, stored) if name is not None]
    return _paginated(request, "repositories", found, limit, {})


async def referrers(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    return referrers_response(request, repo, Digest.parse(arg))


def referrers_response(request: web.Request, repo: str, subject: Digest) -> web.Response:
    """The referrers API's index of the manifests in `repo` whose subject is `subject`."""
    artifact_type = request.query.get("artifactType")
    found = request.app[REGISTRY].referrers(repo, subject, artifact_type)
    headers = {"Content-Type": OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    manifests = [m.descriptor() for m in found]
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return web.Response(body=json.dumps(body).encode(), headers=headers)

"""The /v2/ routes: one catch-all route, parsed here, dispatched by resource and method.

Repository names contain slashes, so the path is matched from its end, the way the spec
lays it out: `<name>/blobs/uploads/<id>`, `<name>/blobs/<digest>`, `<name>/manifests/<ref>`,
`<name>/tags/list`, `<name>/referrers/<digest>`. A name under an upstream's prefix, or an
unprefixed name pulled through the mirror upstream, goes to the cached endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from regcache.digest import Digest, is_digest
from regcache.errors import ErrorCode, RegistryError
from regcache.proxy.router import Remote
from regcache.reference import validate_name
from regcache.server import blobs, listings, manifests, proxied
from regcache.server.access import client_of, tenant_of
from regcache.server.keys import REGISTRY, ROUTER, SHARES
from regcache.store.metadata import HOSTED

Hosted = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]
Cached = Callable[[web.Request, Remote, str], Awaitable[web.StreamResponse]]
PULL_METHODS = ("GET", "HEAD")
PUSH_METHODS = ("POST", "PATCH", "PUT")


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    hosted: dict[str, Hosted]
    cached: dict[str, Cached]


_UPLOADS = {
    "POST": blobs.start_upload,
    "PATCH": blobs.patch_upload,
    "PUT": blobs.finish_upload,
    "GET": blobs.upload_status,
    "DELETE": blobs.cancel_upload,
}
_ROUTES = [
    Route(
        "uploads",
        re.compile(r"(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)"),
        _UPLOADS,
        dict.fromkeys(_UPLOADS, proxied.deny_push),
    ),
    Route(
        "blobs",
        re.compile(r"(?P<name>.+)/blobs/(?P<arg>[^/]+)"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
        {"GET": proxied.get_blob, "HEAD": proxied.get_blob, "DELETE": proxied.deny_push},
    ),
    Route(
        "manifests",
        re.compile(r"(?P<name>.+)/manifests/(?P<arg>[^/]+)"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
        {
            "GET": proxied.get_manifest,
            "HEAD": proxied.get_manifest,
            "PUT": proxied.deny_push,
            "DELETE": proxied.deny_push,
        },
    ),
    Route(
        "tags",
        re.compile(r"(?P<name>.+)/tags/(?P<arg>list)"),
        {"GET": listings.tags},
        {"GET": proxied.tags},
    ),
    Route(
        "referrers",
        re.compile(r"(?P<name>.+)/referrers/(?P<arg>[^/]+)"),
        {"GET": listings.referrers},
        {"GET": proxied.referrers},
    ),
]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route a /v2/ request to its endpoint, validating the repository name first."""
    path = request.match_info["path"]
    request["route"] = "version" if path == "" else "catalog" if path == "_catalog" else "other"
    if path == "":
        if request.method not in PULL_METHODS:
            raise _unsupported(request)
        return web.json_response({})
    if path == "_catalog":
        if request.method != "GET":
            raise _unsupported(request)
        return await listings.catalog(request)
    for route in _ROUTES:
        match = route.pattern.fullmatch(path)
        if match:
            request["route"] = route.name
            return await _endpoint(request, route, match["name"], match["arg"])
    raise RegistryError(ErrorCode.UNSUPPORTED, f"no such endpoint: /v2/{path[:200]}", status=404)


async def _endpoint(request: web.Request, route: Route, name: str, arg: str) -> web.StreamResponse:
    """Call a repository's endpoint: a cached one within the tenant's allow-list, or the
    tenant's own hosted one under its name in the store. Rates of pulls and downloaded
    bytes are counted here."""
    tenant = tenant_of(request)
    name = validate_name(name)
    request["name"] = name
    remote = _remote(request, name)
    request["log"]["repository"] = remote.local if remote else name
    if route.name in ("manifests", "blobs"):
        request["log"]["reference"] = arg
    endpoints: dict[str, Any] = route.cached if remote else route.hosted
    endpoint = endpoints.get(request.method)
    if endpoint is None:
        raise _unsupported(request)
    if remote is not None:
        tenant.check_upstream(remote)
    if request.method == "GET" and route.name == "manifests":
        tenant.throttle("pulls", client_of(request))
    if request.method == "GET" and route.name == "blobs" and is_digest(arg):
        size = request.app[REGISTRY].meta.known_size(Digest.parse(arg)) or 0
        tenant.throttle("bytes", client_of(request), size)
    if remote is None and request.method in PUSH_METHODS:
        request.app[SHARES].check_push(tenant, request.content_length or 0)
    try:
        return await endpoint(request, remote or tenant.internal(name), arg)
    except RegistryError as error:
        if tenant.prefix:
            error.message = error.message.replace(tenant.prefix, "")
        raise


def _remote(request: web.Request, name: str) -> Remote | None:
    """The cached repository `name` stands for, or None for a hosted repository.

    A prefixed name is always cached. An unprefixed pull goes through the mirror upstream
    unless the tenant has a hosted repository of that name; pushes always go to hosted
    repositories.
    """
    router = request.app[ROUTER]
    remote = router.by_prefix(name)
    hosted = request.app[REGISTRY].meta.repo_exists(tenant_of(request).internal(name), HOSTED)
    if remote is None and request.method in PULL_METHODS and not hosted:
        remote = router.by_mirror(name, request.query)
    return remote


def _unsupported(request: web.Request) -> RegistryError:
    return RegistryError(
        ErrorCode.UNSUPPORTED, f"{request.method} is not supported on {request.path[:200]}"
    )


async def dispatch_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/v2/")


def add_routes(app: web.Application) -> None:
    # [\s\S], not `.`: a decoded path may hold a newline (`%0A`), and still gets error JSON.
    app.router.add_route("*", r"/v2/{path:[\s\S]*}", dispatch)
    app.router.add_route("*", "/v2", dispatch_root)

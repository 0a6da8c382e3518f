"""The /v2/ routes: one catch-all route, parsed here, dispatched by resource and method.

Repository names contain slashes, so the path is matched from its end, the way the spec
lays it out: `<name>/blobs/uploads/<id>`, `<name>/blobs/<digest>`, `<name>/manifests/<ref>`,
`<name>/tags/list`, `<name>/referrers/<digest>`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from regcache.errors import ErrorCode, RegistryError
from regcache.reference import validate_name
from regcache.server import blobs, listings, manifests

Endpoint = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]

_ROUTES: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = [
    (
        re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)$"),
        {
            "POST": blobs.start_upload,
            "PATCH": blobs.patch_upload,
            "PUT": blobs.finish_upload,
            "GET": blobs.upload_status,
            "DELETE": blobs.cancel_upload,
        },
    ),
    (
        re.compile(r"^(?P<name>.+)/blobs/(?P<arg>[^/]+)$"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    (
        re.compile(r"^(?P<name>.+)/manifests/(?P<arg>[^/]+)$"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    (re.compile(r"^(?P<name>.+)/tags/(?P<arg>list)$"), {"GET": listings.tags}),
    (re.compile(r"^(?P<name>.+)/referrers/(?P<arg>[^/]+)$"), {"GET": listings.referrers}),
]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route a /v2/ request to its endpoint, validating the repository name first."""
    path = request.match_info["path"]
    if path == "":
        if request.method not in ("GET", "HEAD"):
            raise _unsupported(request)
        return web.json_response({})
    if path == "_catalog":
        if request.method != "GET":
            raise _unsupported(request)
        return await listings.catalog(request)
    for pattern, methods in _ROUTES:
        match = pattern.match(path)
        if match:
            name = validate_name(match["name"])
            endpoint = methods.get(request.method)
            if endpoint is None:
                raise _unsupported(request)
            return await endpoint(request, name, match["arg"])
    raise RegistryError(ErrorCode.UNSUPPORTED, f"no such endpoint: /v2/{path[:200]}", status=404)


def _unsupported(request: web.Request) -> RegistryError:
    return RegistryError(
        ErrorCode.UNSUPPORTED, f"{request.method} is not supported on {request.path[:200]}"
    )


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/v2/{path:.*}", dispatch)
    app.router.add_route("*", "/v2", dispatch_root)


async def dispatch_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/v2/")

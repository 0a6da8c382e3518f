"""`/_regcache/upstreams`: each upstream's rate-limit budget as it last reported it."""

from __future__ import annotations

from aiohttp import web

from regcache.server.keys import ROUTER


def upstream_status(request: web.Request) -> list[dict[str, object]]:
    """Name, prefix, URL, credential name and rate-limit figures; never a secret."""
    return [
        {
            "name": client.name,
            "prefix": client.config.prefix,
            "url": client.config.url,
            "mirror": client.config.mirror,
            "credential": client.auth.credential,
            "ratelimit": client.ratelimit.as_dict(),
        }
        for client in request.app[ROUTER].upstreams
    ]


async def upstreams(request: web.Request) -> web.Response:
    return web.json_response({"upstreams": upstream_status(request)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_regcache/upstreams", upstreams)

"""The aiohttp application: wiring, error middleware and common headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import aiohttp
from aiohttp import web

from regcache.config import Settings
from regcache.errors import RegistryError
from regcache.proxy.cache import PullThrough
from regcache.proxy.router import Router
from regcache.registry import Registry
from regcache.server import admin, distribution, status
from regcache.server.keys import PULL_THROUGH, REGISTRY, ROUTER
from regcache.server.proxied import ResponseAborted
from regcache.store.gc import collect_garbage
from regcache.upstream import UpstreamClient

log = logging.getLogger("regcache.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(error: RegistryError) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body(),
        headers={"Content-Type": "application/json", **API_VERSION, **error.headers},
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn `RegistryError` into the spec's JSON; never let a traceback reach a client."""
    try:
        response = await handler(request)
    except RegistryError as error:
        return error_response(error)
    except (web.HTTPException, ResponseAborted):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.Response(
            status=500,
            body=json.dumps({"errors": [{"code": "UNKNOWN", "message": "internal error"}]}),
            headers={"Content-Type": "application/json", **API_VERSION},
        )
    response.headers.update(API_VERSION)
    return response


PULL_FLUSH_INTERVAL = 2.0  # seconds between writes of buffered pull counts


async def _every(seconds: float, chore: Callable[[], object]) -> None:
    """Run `chore` (a function or coroutine function) every `seconds`, logging failures."""
    while True:
        await asyncio.sleep(seconds)
        try:
            result = chore()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("background chore failed")


async def _gc(registry: Registry) -> None:
    report = await collect_garbage(registry)
    log.info("garbage collection: %s", report.as_dict())


def create_app(settings: Settings) -> web.Application:
    """The whole server for `settings`; the store opens on start-up."""
    app = web.Application(
        middlewares=[errors_middleware, admin.admin_auth],
        client_max_size=settings.manifest_max_bytes,
    )
    registry = Registry(settings)
    pull_through = PullThrough(registry)
    app[REGISTRY] = registry
    app[PULL_THROUGH] = pull_through

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        registry.open()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False, trust_env=False
        ) as session:
            app[ROUTER] = Router([UpstreamClient(u, session) for u in settings.upstreams])
            chores = [
                asyncio.create_task(_every(PULL_FLUSH_INTERVAL, registry.flush_pulls)),
                asyncio.create_task(_every(settings.gc_interval, partial(_gc, registry))),
            ]
            yield
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            await pull_through.close()
        registry.close()

    app.cleanup_ctx.append(lifecycle)
    distribution.add_routes(app)
    status.add_routes(app)
    admin.add_routes(app)
    return app

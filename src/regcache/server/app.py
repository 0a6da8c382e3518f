"""The aiohttp application: wiring, error middleware and common headers."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import aiohttp
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from regcache.config import Settings
from regcache.errors import ErrorCode, RegistryError
from regcache.metrics import Metrics, gauge
from regcache.proxy.cache import PullThrough
from regcache.proxy.fleet import Fleet
from regcache.proxy.router import Router
from regcache.registry import Registry
from regcache.server import access, admin, dashboard, distribution, observability, status
from regcache.server import fleet as fleet_routes
from regcache.server.blobs import ResponseAborted
from regcache.server.keys import METRICS, PULL_THROUGH, REGISTRY, ROUTER, SHARES, TENANTS
from regcache.store.gc import collect_garbage
from regcache.store.leases import Leases, Ledger
from regcache.store.shares import Shares
from regcache.tenants import Tenants
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
    except Exception as exc:
        gone = request.transport is None or request.transport.is_closing()
        if isinstance(exc, ConnectionResetError) and gone:
            # The client hung up mid-request (a body cut short): nobody to answer, no error.
            log.info("client left during %s %s", request.method, request.path)
            return error_response(RegistryError(ErrorCode.SIZE_INVALID, "request cut off"))
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.Response(
            status=500,
            body=json.dumps({"errors": [{"code": "UNKNOWN", "message": "internal error"}]}),
            headers={"Content-Type": "application/json", **API_VERSION},
        )
    response.headers.update(API_VERSION)
    return response


PULL_FLUSH_INTERVAL = 2.0  # seconds between writes of buffered pull counts
SHORT_CALL_THREADS = 8  # threads for blocking calls other than download bodies


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


async def _gc(registry: Registry, metrics: Metrics) -> None:
    report = await collect_garbage(registry)
    metrics.gc_runs.inc()
    log.info("garbage collection: %s", report.as_dict())


def _live_gauges(app: web.Application) -> Iterator[GaugeMetricFamily]:
    """Gauges read from the state itself when /metrics is scraped."""
    registry, budget = app[REGISTRY], app[REGISTRY].budget
    downloads = app[PULL_THROUGH].downloads.active.values()
    yield gauge("regcache_storage_used_bytes", "Bytes stored", budget.used)
    yield gauge("regcache_storage_reserved_bytes", "Bytes being written", budget.reserved)
    yield gauge("regcache_storage_quota_bytes", "Storage quota", budget.quota)
    yield gauge("regcache_storage_free_disk_bytes", "Free space on the volume", budget.free_disk())
    yield gauge("regcache_evictions", "Cached images evicted since start", budget.evictions)
    yield gauge("regcache_downloads_in_flight", "Upstream blob downloads running", len(downloads))
    yield gauge("regcache_download_waiters", "Clients reading downloads in flight",
                sum(d.readers for d in downloads))  # fmt: skip
    yield gauge("regcache_hot_manifest_bytes", "Manifest bytes held in memory", registry.hot.size)
    if ROUTER not in app:
        return
    remaining = GaugeMetricFamily("regcache_upstream_ratelimit_remaining",
                                  "Pulls left as the upstream last said",
                                  labels=["upstream", "credential"])  # fmt: skip
    limit = GaugeMetricFamily("regcache_upstream_ratelimit_limit", "Pull limit of the window",
                              labels=["upstream", "credential"])  # fmt: skip
    for client in app[ROUTER].upstreams:
        labels = [client.name, client.auth.credential]
        if client.ratelimit.remaining is not None:
            remaining.add_metric(labels, client.ratelimit.remaining)
        if client.ratelimit.limit is not None:
            limit.add_metric(labels, client.ratelimit.limit)
    yield remaining
    yield limit


def create_app(settings: Settings) -> web.Application:
    """The whole server for `settings`; the store opens on start-up."""
    app = web.Application(
        middlewares=[observability.measure, errors_middleware, admin.admin_auth, access.access],
        client_max_size=settings.manifest_max_bytes,
    )
    registry = Registry(settings)
    metrics = Metrics()
    leases = Leases(registry.meta)
    fleet = None
    if settings.fleet is not None:
        ledger = Ledger(registry.meta, uuid.uuid4().hex[:12], settings.fleet.lease_seconds)
        registry.budget.ledger = ledger
        fleet = Fleet(leases, ledger, settings.fleet)
    pull_through = PullThrough(registry, metrics, fleet)
    app[REGISTRY] = registry
    app[PULL_THROUGH] = pull_through
    app[METRICS] = metrics
    app[TENANTS] = Tenants(settings)
    app[SHARES] = shares = Shares(registry.meta, registry.budget)
    metrics.add_collector(partial(_live_gauges, app))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # A download holds a thread for as long as its body takes: room for every upstream's
        # most downloads at once, besides the short blocking calls everything else makes.
        threads = sum(u.max_downloads for u in settings.upstreams) + SHORT_CALL_THREADS
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(threads, thread_name_prefix="regcache")
        )
        registry.open()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False, trust_env=False
        ) as session:
            app[ROUTER] = Router([UpstreamClient(u, session, metrics) for u in settings.upstreams])
            chores = [
                asyncio.create_task(_every(PULL_FLUSH_INTERVAL, registry.flush_pulls)),
                asyncio.create_task(_every(PULL_FLUSH_INTERVAL, shares.flush)),
                asyncio.create_task(_every(settings.gc_interval, partial(_gc, registry, metrics))),
            ]
            if fleet is not None:
                chores.append(asyncio.create_task(fleet.run()))
            yield
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            await pull_through.close()
            if fleet is not None:
                await fleet.close()
        registry.close()

    app.cleanup_ctx.append(lifecycle)
    distribution.add_routes(app)
    status.add_routes(app)
    admin.add_routes(app)
    dashboard.add_routes(app)
    fleet_routes.add_routes(app)
    observability.add_routes(app)
    return app

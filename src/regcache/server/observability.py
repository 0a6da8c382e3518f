"""Request metrics and log lines, `/metrics`, `/healthz` and `/readyz`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from regcache.server.keys import METRICS, REGISTRY, ROUTER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route, method and status, and time it."""
    request["log"] = {}
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.get("route") or ("admin" if request.path.startswith("/admin/") else "other")
        metrics = request.app[METRICS]
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


class AccessLogger(AbstractAccessLogger):
    """One line per request: who, what, the cache's outcome, status, bytes and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields = dict(request.get("log") or {})
        sent = response.body_length + request.get("sent", 0)  # the writer's bytes + sendfile's
        fields.update(
            client=request.remote, tenant="default", method=request.method, path=request.path,
            status=response.status, bytes=sent, duration=round(time, 6),
        )  # fmt: skip
        self.logger.info(
            '%s "%s %s" %s %s', request.remote, request.method, request.path, response.status,
            sent, extra=fields,
        )  # fmt: skip


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def healthz(_: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store is writable and the database answers; upstream reachability is
    reported (as last seen) but never makes regcache unready: it serves from cache."""
    registry = request.app[REGISTRY]
    checks: dict[str, object] = {}
    try:
        probe = registry.blobs.temp_path()
        probe.write_bytes(b"ok")
        probe.unlink()
        checks["store"] = "writable"
    except OSError as exc:
        checks["store"] = f"not writable: {exc.strerror}"
    try:
        registry.meta.db.execute("SELECT 1").fetchone()
        checks["database"] = "open"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"failed: {type(exc).__name__}"
    failures = {f["upstream"]: f for f in reversed(request.app[METRICS].failures())}
    checks["upstreams"] = {
        client.name: ("last request failed" if client.name in failures else "ok")
        for client in request.app[ROUTER].upstreams
    }
    ready = checks["store"] == "writable" and checks["database"] == "open"
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

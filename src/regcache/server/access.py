"""Who may use /v2/: the tenant a request is for, its client's credentials, rights and
request rate. Everything under /v2/ passes here before it is routed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from regcache.server.keys import TENANTS
from regcache.tenants import Tenant

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PULL_METHODS = ("GET", "HEAD")


def tenant_of(request: web.Request) -> Tenant:
    return request["tenant"]


def client_of(request: web.Request) -> str:
    """The client a rate is counted for: its user or token, else its address."""
    return request["client"]


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Select the tenant, authenticate and authorize the client, count its request."""
    if not request.path.startswith("/v2"):
        return await handler(request)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if isinstance(sockname, tuple) else None
    authorization = request.headers.get("Authorization")
    tenant = request.app[TENANTS].select(port, request.host, authorization)
    principal = await tenant.authenticate(authorization)
    tenant.authorize(principal, push=request.method not in PULL_METHODS)
    client = principal.name if principal.authenticated else (request.remote or "unknown")
    request["tenant"], request["client"] = tenant, client
    request["log"]["tenant"] = tenant.name
    tenant.throttle("requests", client)
    return await handler(request)

"""Typed keys for what the application holds."""

from aiohttp import web

from regcache.metrics import Metrics
from regcache.proxy.cache import PullThrough
from regcache.proxy.router import Router
from regcache.registry import Registry
from regcache.store.shares import Shares
from regcache.tenants import Tenants

REGISTRY = web.AppKey("registry", Registry)
PULL_THROUGH = web.AppKey("pull_through", PullThrough)
ROUTER = web.AppKey("router", Router)
METRICS = web.AppKey("metrics", Metrics)
TENANTS = web.AppKey("tenants", Tenants)
SHARES = web.AppKey("shares", Shares)

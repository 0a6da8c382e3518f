"""Typed keys for what the application holds."""

from aiohttp import web

from regcache.registry import Registry

REGISTRY = web.AppKey("registry", Registry)

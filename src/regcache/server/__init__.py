"""The HTTP server: the /v2/ distribution API on aiohttp."""

from regcache.server.app import create_app

__all__ = ["create_app"]

"""Talking to upstream registries: auth challenges, tokens, rate-limit headers, retries."""

from regcache.upstream.client import UpstreamClient, UpstreamError
from regcache.upstream.ratelimit import RateLimit

__all__ = ["RateLimit", "UpstreamClient", "UpstreamError"]

"""Token buckets that keep clients and tenants within their request and download rates."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable

from regcache.config import Rate
from regcache.errors import ErrorCode, RegistryError

MAX_BUCKETS = 50_000  # the least recently used buckets (full by then) are forgotten


class Bucket:
    """`rate` tokens a second, holding at most `burst`; it may run into debt, for bytes
    that are charged after they were sent."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate.burst, self.tokens + (now - self.stamp) * self.rate.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` tokens are there (0 when they are now)."""
        self._refill()
        missing = min(amount, self.rate.burst) - self.tokens
        return max(missing, 0) / self.rate.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.tokens -= amount


class Throttle:
    """Buckets by key (a client, a tenant) for one kind of limit, e.g. requests."""

    def __init__(self, kind: str, rate: Rate | None) -> None:
        self.kind = kind
        self.rate = rate
        self._buckets: OrderedDict[Hashable, Bucket] = OrderedDict()

    def _bucket(self, key: Hashable) -> Bucket | None:
        if self.rate is None:
            return None
        bucket = self._buckets.pop(key, None) or Bucket(self.rate)
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return bucket

    def check(self, key: Hashable, who: str, amount: float = 1) -> None:
        """Raise TOOMANYREQUESTS with `Retry-After` if `key` cannot have `amount` now."""
        bucket = self._bucket(key)
        if bucket is None:
            return
        wait = bucket.wait_for(amount)
        if wait > 0:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                f"{who} is over its {self.kind} rate of {self.rate.rate:g}/s "
                f"(burst {self.rate.burst:g}); retry in {math.ceil(wait)} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    def take(self, key: Hashable, amount: float = 1) -> None:
        bucket = self._bucket(key)
        if bucket is not None:
            bucket.take(amount)

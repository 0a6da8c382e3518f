"""Tenants' shares of the one shared store.

A tenant is charged for the distinct content of the cached images it pulled and of its
hosted repositories: content stored once is charged in full to every tenant that uses it.
A tenant over its quota gives up its own least recently pulled images; an image leaves the
store only when no other tenant holds it and it is not pinned.
"""

from __future__ import annotations

import asyncio
import time

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.store.budget import Budget
from regcache.store.metadata import Metadata
from regcache.tenants import Tenant


class Shares:
    """Charges of cached images to tenants, and each tenant's quota."""

    def __init__(self, meta: Metadata, budget: Budget) -> None:
        self.meta = meta
        self.budget = budget
        self._charged: set[tuple[str, str, Digest]] = set()
        self._pulls: dict[tuple[str, str, Digest], float] = {}
        self._lock = asyncio.Lock()

    def usage(self, tenant: Tenant) -> int:
        """Bytes charged to a tenant."""
        content = self.meta.hosted_content(tenant.prefix)
        for repo, digest, _ in self.meta.charged_images(tenant.name):
            content.update(self.meta.image_content(repo, digest))
        return sum(content.values())

    def flush(self) -> None:
        """Write the buffered times of tenants' pulls."""
        pulls, self._pulls = self._pulls, {}
        for (tenant, repo, digest), when in pulls.items():
            self.meta.charge(tenant, repo, digest, when)

    async def charge(self, tenant: Tenant, repo: str, digest: Digest) -> None:
        """Charge a pulled image to `tenant`, giving up its older images to stay within
        its quota; DENIED if the image does not fit even then."""
        if not tenant.namespaced:
            return
        key = (tenant.name, repo, digest)
        self._pulls[key] = time.time()
        if key in self._charged:
            return
        quota = tenant.settings.quota_bytes
        async with self._lock:
            self.flush()
            if quota is not None and self.usage(tenant) > quota:
                await self._shrink(tenant, quota, keep=(repo, digest))
            if quota is not None and (usage := self.usage(tenant)) > quota:
                self.meta.uncharge(tenant.name, repo, digest)
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"{repo}@{digest} does not fit in {tenant.name}'s quota of {quota} bytes "
                    f"({usage} bytes with it, after giving up every unpinned older image)",
                )
            self._charged.add(key)

    async def _shrink(self, tenant: Tenant, quota: int, keep: tuple[str, Digest]) -> None:
        for repo, digest, pinned in self.meta.charged_images(tenant.name):
            if pinned or (repo, digest) == keep:
                continue
            self.meta.uncharge(tenant.name, repo, digest)
            self._charged.discard((tenant.name, repo, digest))
            if not self.meta.charged_to_others(tenant.name, repo, digest):
                await self.budget.evict_now(repo, digest)
            if self.usage(tenant) <= quota:
                return

    def check_push(self, tenant: Tenant, incoming: int) -> None:
        """DENIED for a push that would take a tenant over its quota."""
        quota = tenant.settings.quota_bytes
        if quota is not None and tenant.namespaced:
            usage = self.usage(tenant)
            if usage + incoming > quota:
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"{tenant.name}'s quota of {quota} bytes is used ({usage} bytes); "
                    "delete images or ask for more",
                )

"""Replicas that share one database and one blob store: one upstream download per digest.

A replica claims a blob's download in the shared database with a lease it renews while the
download runs. A client of another replica is sent the bytes from the downloading replica as
they arrive (a `Relay`). If that replica dies, its lease runs out, the first replica to claim
the blob again downloads it, and every relay resumes where it was. A relay of a whole blob
hashes what it sends and holds back its last byte until that matches the digest, so a body
pieced together from two downloads is never completed wrongly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from regcache.config import Fleet as FleetSettings
from regcache.digest import CHUNK, Digest
from regcache.errors import TransferFailed
from regcache.store.leases import Leases, Ledger

log = logging.getLogger("regcache.fleet")
RETRY_PAUSE = 0.2  # seconds between tries to reach a blob's download after its replica failed


class RelayFailed(TransferFailed):
    """A relayed blob could not be completed correctly."""


class Fleet:
    """This replica's leases on downloads, and its way to the other replicas."""

    def __init__(self, leases: Leases, ledger: Ledger, settings: FleetSettings) -> None:
        self.leases = leases
        self.ledger = ledger
        self.settings = settings
        self.replica = ledger.replica
        self.address = settings.address
        self.token = settings.token.get_secret_value()
        self._owned: set[Digest] = set()
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Renew this replica's leases until cancelled."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                self.ledger.renew()
                if self._owned:
                    self.leases.renew(self.replica, time.time())
            except Exception:
                log.exception("could not renew this replica's leases")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=30),
            )  # fmt: skip
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        for digest in list(self._owned):
            self.release(digest)

    def claim(self, digest: Digest) -> str | None:
        """Claim the download of `digest`: None when it is ours now, else the address of the
        replica that holds it."""
        owner, address = self.leases.claim(
            str(digest), self.replica, self.address, time.time(), self.settings.lease_seconds
        )
        if owner == self.replica:
            self._owned.add(digest)
            log.info("this replica downloads %s", digest)
            return None
        return address

    def release(self, digest: Digest) -> None:
        self._owned.discard(digest)
        self.leases.release(str(digest), self.replica)
        log.info("this replica let go of %s", digest)

    async def read(self, address: str, digest: Digest, start: int) -> AsyncIterator[bytes]:
        """Bytes of `digest` from `start`, as the replica at `address` has them."""
        async with self.session.get(
            f"{address}/_regcache/fleet/blobs/{digest}",
            headers={"Authorization": f"Bearer {self.token}", "Range": f"bytes={start}-"},
        ) as response:
            if response.status not in (200, 206):
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="not there"
                )
            async for chunk in response.content.iter_chunked(CHUNK):
                yield chunk


Source = Callable[[int], AsyncIterator[bytes]]


class Relay:
    """A blob that another replica is downloading, sent on to a client of this one."""

    def __init__(
        self,
        fleet: Fleet,
        digest: Digest,
        address: str,
        size: int,
        takeover: Callable[[Relay], Awaitable[Source | None]],
    ) -> None:
        self.fleet = fleet
        self.digest = digest
        self.address = address
        self.size = size
        self._takeover = takeover  # another source once the owner is gone (None: try again)

    async def _source(self, position: int) -> AsyncIterator[bytes]:
        async for chunk in self.fleet.read(self.address, self.digest, position):
            yield chunk

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes `start` to `end`. A whole blob is verified before its last byte goes
        out; a part of one is not resumed from another download."""
        whole = (start, end) == (0, self.size)
        hasher = self.digest.hasher() if whole else None
        position, held = start, b""
        source: Source = self._source
        deadline = time.monotonic() + 4 * self.fleet.settings.lease_seconds + 30
        while position < end:
            try:
                async for chunk in source(position):
                    chunk = chunk[: end - position]
                    if hasher is not None:
                        hasher.update(chunk)
                    position += len(chunk)
                    out, held = held + chunk[:-1], chunk[-1:]
                    if out:
                        yield out
                    if position >= end:
                        break
            except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                if not whole or time.monotonic() > deadline:
                    raise RelayFailed(f"relay of {self.digest} stopped: {exc}") from None
                log.info("relay of %s from %s broke at %d: %s", self.digest, self.address,
                         position, type(exc).__name__)  # fmt: skip
                await asyncio.sleep(RETRY_PAUSE)
                source = await self._takeover(self) or self._source
        if hasher is not None and hasher.digest() != self.digest:
            raise RelayFailed(f"relayed content of {self.digest} has digest {hasher.digest()}")
        if held:
            yield held

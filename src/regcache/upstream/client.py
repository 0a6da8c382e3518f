"""One upstream registry: requests with auth, retries on connection errors and 5xx (never on
429), and rate-limit tracking. Nothing here ever puts a credential into a message."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.message import Message
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp

from regcache.config import Upstream
from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.metrics import Metrics
from regcache.upstream.auth import Authenticator, AuthError, Challenge
from regcache.upstream.blocking import BlockingResponse
from regcache.upstream.ratelimit import RateLimit

log = logging.getLogger("regcache.upstream")
BACKOFF = 0.25  # seconds before the first retry, doubled each time
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


class Response(Protocol):
    """What the request logic reads of a response, from aiohttp or from a blocking client."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str] | Message: ...

    def release(self) -> None: ...


R = TypeVar("R", bound=Response)
Send = Callable[[str, str, dict[str, str]], Awaitable[R]]  # method, URL, headers
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)  # TimeoutError is an OSError


def _request_id(response: Response) -> str | None:
    """The upstream's id for a request, where it gives one."""
    for header in ("X-Request-Id", "Docker-Request-Id", "X-Amz-Cf-Id"):
        if header in response.headers:
            return response.headers[header]
    return None


class UpstreamError(Exception):
    """The upstream could not give us what we asked for."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def unavailable(self) -> bool:
        """True when the upstream is down, overloaded or rate-limiting (serve stale)."""
        return self.status is None or self.status == 429 or self.status >= 500

    def to_registry_error(self, what: str) -> RegistryError:
        if self.status == 429:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                f"upstream rate limit reached and {what} is not cached",
                headers=headers,
            )
        if self.status == 404:
            code = ErrorCode.BLOB_UNKNOWN if what.startswith("blob") else ErrorCode.MANIFEST_UNKNOWN
            return RegistryError(code, f"{what} unknown upstream")
        if self.status in (401, 403):
            return RegistryError(ErrorCode.DENIED, f"the upstream refused access to {what}")
        return RegistryError(
            ErrorCode.UNSUPPORTED, f"upstream unavailable and {what} is not cached: {self}",
            status=502 if self.status is None or self.status >= 500 else 404,
        )  # fmt: skip


class UpstreamClient:
    """Requests to one configured upstream registry over a shared connection pool; blob
    downloads over connections of their own, read by a worker thread."""

    def __init__(self, config: Upstream, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.config = config
        self.session = session
        self.metrics = metrics
        self.auth = Authenticator(config.username, config.secret())
        self.ratelimit = RateLimit()
        self.download_slots = asyncio.Semaphore(config.max_downloads)
        self.ssl = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None
        )
        if not config.tls_verify:
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=config.timeout, sock_connect=config.timeout,
            sock_read=config.timeout,
        )  # fmt: skip

    @property
    def name(self) -> str:
        return self.config.name

    def remote_name(self, name: str) -> str:
        """The upstream's name for a repository: Docker Hub puts one-word names in library/."""
        if self.config.is_docker_hub and "/" not in name:
            return f"library/{name}"
        return name

    def redirect_allowed(self, url: str) -> bool:
        """Whether a redirect may go to `url`: the upstream's own host, or one it is trusted
        to send clients to (its blob storage)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https"):
            return False
        if host == urlsplit(self.config.url).hostname:
            return True
        return any(fnmatchcase(host, glob) for glob in self.config.trusted_redirects)

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.session.request(
            method, url, headers=headers, ssl=self.ssl, timeout=self.timeout,
            allow_redirects=False,
        )  # fmt: skip

    async def _send_blocking(
        self, method: str, url: str, headers: dict[str, str]
    ) -> BlockingResponse:
        return await asyncio.to_thread(
            BlockingResponse.open, method, url, headers, self.ssl, self.config.timeout
        )

    async def _follow_redirects(self, send: Send[R], response: R, method: str, url: str) -> R:
        """Follow redirects to trusted hosts only, without our credentials."""
        for _ in range(MAX_REDIRECTS):
            if response.status not in REDIRECTS:
                return response
            url = urljoin(url, response.headers.get("Location", ""))
            response.release()
            if not self.redirect_allowed(url):
                host = urlsplit(url).hostname
                raise UpstreamError(f"{self.name}: redirect to untrusted host {host} refused")
            response = await send(method, url, {})
        response.release()
        raise UpstreamError(f"{self.name}: too many redirects")

    @asynccontextmanager
    async def download(self, repo: str, digest: Digest) -> AsyncIterator[BlockingResponse]:
        """GET a blob, within the upstream's limit of downloads at once; its body is read
        with blocking calls (from a worker thread)."""
        path = f"blobs/{digest}"
        async with (
            self.download_slots,
            self._exchange("GET", repo, path, {}, self._send_blocking) as response,
        ):
            yield response

    @asynccontextmanager
    async def request(
        self, method: str, repo: str, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An upstream response with status 2xx; anything else raises `UpstreamError`."""
        async with self._exchange(method, repo, path, headers or {}, self._send) as response:
            yield response

    @asynccontextmanager
    async def _exchange(
        self, method: str, repo: str, path: str, headers: dict[str, str], send: Send[R]
    ) -> AsyncIterator[R]:
        """`request`, over whichever client `send` uses."""
        url = f"{self.config.url}/v2/{repo}/{path}"
        scope = f"repository:{repo}:pull"
        attempt, answered_challenge = 0, False
        while True:
            try:
                response = await send(method, url, {**headers, **self.auth.header(scope)})
            except TRANSPORT_ERRORS as exc:
                reason = type(exc).__name__
                if attempt < self.config.retries:
                    attempt += 1
                    await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
                    continue
                log.warning("upstream %s %s %s failed: %s", self.name, method, url, reason)
                self.metrics.observe_upstream(self.name, method, path, None, "")
                self.metrics.upstream_failed(self.name, None, reason)
                raise UpstreamError(f"{self.name}: {reason}") from None
            try:
                response = await self._follow_redirects(send, response, method, url)
            except TRANSPORT_ERRORS as exc:
                reason = type(exc).__name__
                raise UpstreamError(f"{self.name}: redirected request failed: {reason}") from None
            self.ratelimit.observe(response.headers)
            self.metrics.observe_upstream(
                self.name, method, path, response.status, response.headers.get("Content-Type", "")
            )
            log.info(
                "upstream %s %s %s -> %d", self.name, method, url, response.status,
                extra={"upstream": self.name, "status": response.status,
                       "upstream_request_id": _request_id(response)},
            )  # fmt: skip
            if response.status >= 400 and response.status != 401:
                self.metrics.upstream_failed(
                    self.name, response.status, f"{method} {repo}/{path}: {response.status}"
                )
            if response.status == 401 and not answered_challenge:
                answered_challenge = True
                challenge = Challenge.parse(response.headers.get("WWW-Authenticate", ""))
                response.release()
                try:
                    if await self.auth.answer(self.session, challenge, scope, self.ssl):
                        continue
                except AuthError as exc:
                    raise UpstreamError(
                        f"{self.name}: authentication failed: {exc}", status=exc.status
                    ) from None
                except TRANSPORT_ERRORS as exc:
                    reason = type(exc).__name__
                    raise UpstreamError(f"{self.name}: token service failed: {reason}") from None
                raise UpstreamError(f"{self.name}: authentication required", status=401)
            if response.status >= 500 and attempt < self.config.retries:
                response.release()
                attempt += 1
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
                continue
            if response.status >= 300:
                response.release()
                raise UpstreamError(
                    f"{self.name}: {method} answered {response.status}",
                    status=response.status, retry_after=response.headers.get("Retry-After"),
                )  # fmt: skip
            try:
                yield response
            finally:
                response.release()
            return

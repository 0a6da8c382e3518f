"""Endpoints of cached repositories: pull from cache or through the upstream; no push."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.proxy.download import Download, DownloadFailed
from regcache.proxy.fleet import Relay, RelayFailed
from regcache.proxy.router import Remote
from regcache.reference import parse_reference
from regcache.server.access import tenant_of
from regcache.server.blobs import blob_response, byte_range
from regcache.server.keys import METRICS, PULL_THROUGH, REGISTRY, SHARES
from regcache.server.listings import referrers_response
from regcache.server.manifests import manifest_response
from regcache.upstream import UpstreamError


class ResponseAborted(Exception):
    """A response was cut off after its headers went out; the connection is closed."""


Chunks = Callable[[int, int], AsyncIterator[bytes]]
STALE_WARNING = '110 regcache "Response is Stale: upstream unavailable"'


def _note(request: web.Request, kind: str, outcome: str, cached_bytes: int = 0) -> None:
    """Record a pull's cache outcome for the metrics and the request's log line."""
    metrics = request.app[METRICS]
    metrics.cache.labels(kind, outcome).inc()
    if cached_bytes:
        metrics.bytes.labels("cache").inc(cached_bytes)
    request["log"]["cache"] = outcome


async def get_manifest(request: web.Request, remote: Remote, arg: str) -> web.StreamResponse:
    """A cached manifest within the tenant's tag policy, image size limit and quota."""
    tenant, registry = tenant_of(request), request.app[REGISTRY]
    reference = parse_reference(arg)
    warning = tenant.check_tag(remote, reference) if isinstance(reference, str) else None
    stored, outcome = await request.app[PULL_THROUGH].manifest(remote, reference)
    if tenant.settings.max_image_bytes is not None:
        image_size = sum(registry.meta.image_content(remote.local, stored.digest).values())
        tenant.check_size(remote.local, image_size)
    if request.method == "GET":
        await request.app[SHARES].charge(tenant, remote.local, stored.digest)
    response = await manifest_response(request, registry, remote.local, stored)
    cached = outcome in ("hit", "revalidated", "stale") and request.method == "GET"
    _note(request, "manifest", outcome, stored.size if cached else 0)
    if outcome == "stale":
        response.headers.add("Warning", STALE_WARNING)
    if warning is not None:
        response.headers.add("Warning", warning)
    return response


async def get_blob(request: web.Request, remote: Remote, arg: str) -> web.StreamResponse:
    digest = Digest.parse(arg)
    pull = request.app[PULL_THROUGH]
    if request.method == "HEAD" and not pull.registry.meta.blob_cached(digest):
        size = await pull.blob_size(remote, digest)
        headers = {"Docker-Content-Digest": str(digest), "Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    source, outcome = pull.blob(remote, digest)
    if isinstance(source, Digest):
        registry = request.app[REGISTRY]
        size = registry.meta.blob_size(digest)
        response = await blob_response(request, registry.blobs, digest, size)
        _note(request, "blob", outcome, _served_bytes(request, size or 0))
        return response
    _note(request, "blob", outcome)
    if isinstance(source, Relay):
        return await _stream(request, digest, source.size, source.chunks)
    return await follow(request, source)  # the download records the blob once it is stored


def _served_bytes(request: web.Request, size: int) -> int:
    """How many bytes of a stored blob a GET will send (its `Range`, or all of it)."""
    if request.method != "GET":
        return 0
    try:
        start, end = byte_range(request, size)
    except web.HTTPRequestRangeNotSatisfiable:
        return 0
    return end - start


def _failed(download: Download, exc: Exception) -> RegistryError:
    if isinstance(exc, UpstreamError):
        return exc.to_registry_error(f"blob {download.digest}")
    if isinstance(exc, RegistryError):
        return exc
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN, f"download of {download.digest} failed: {exc}", status=502
    )


async def follow(request: web.Request, download: Download) -> web.StreamResponse:
    """Stream a blob while it downloads, from the first byte or from a `Range`."""
    download.readers += 1
    try:
        try:
            size = await download.wait_started()
            if size is None:  # no Content-Length upstream: serve once stored
                await download.stored()
                blobs = request.app[REGISTRY].blobs
                return await blob_response(request, blobs, download.digest, download.written)
        except (UpstreamError, RegistryError, DownloadFailed) as exc:
            raise _failed(download, exc) from None
        return await _stream(request, download.digest, size, download.read)
    finally:
        download.readers -= 1


async def _stream(
    request: web.Request, digest: Digest, size: int, chunks: Chunks
) -> web.StreamResponse:
    """Send `chunks(start, end)` of a blob of `size` bytes, as a whole or for a `Range`.
    A source that fails after the headers went out cuts the connection: the client must see
    a cut-off body, never a wrong one."""
    start, end = byte_range(request, size)
    response = web.StreamResponse(
        status=206 if (start, end) != (0, size) else 200,
        headers={
            "Docker-Content-Digest": str(digest),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        },
    )
    response.content_length = end - start
    if response.status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    if request.method != "HEAD":
        try:
            async for data in chunks(start, end):
                await response.write(data)
        except (DownloadFailed, RelayFailed, OSError) as exc:
            if request.transport is not None:
                request.transport.abort()
            raise ResponseAborted(str(exc)) from None
    await response.write_eof()
    return response


async def tags(request: web.Request, remote: Remote, _: str) -> web.StreamResponse:
    """Tags as the upstream lists them (a GET of a tag list is not a counted pull)."""
    try:
        query = f"?{request.query_string}" if request.query_string else ""
        async with remote.upstream.request("GET", remote.name, f"tags/list{query}") as upstream:
            body = await upstream.json(content_type=None)
            link = upstream.headers.get("Link")
    except UpstreamError as exc:
        raise exc.to_registry_error(f"the tag list of {remote.local}") from None
    body["name"] = remote.local
    response = web.json_response(body)
    if link:
        response.headers["Link"] = link.replace(f"/v2/{remote.name}/", f"/v2/{remote.local}/")
    return response


async def referrers(request: web.Request, remote: Remote, arg: str) -> web.StreamResponse:
    """Referrers of a cached subject, among the cached manifests."""
    return referrers_response(request, remote.local, Digest.parse(arg))


async def deny_push(request: web.Request, remote: Remote, _: str) -> web.StreamResponse:
    raise RegistryError(
        ErrorCode.DENIED,
        f"{remote.local} is a cache of {remote.upstream.name}; push to a hosted repository",
    )

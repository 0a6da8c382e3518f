"""Endpoints of cached repositories: pull from cache or through the upstream; no push."""

from __future__ import annotations

from functools import partial
from typing import BinaryIO

from aiohttp import web

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.proxy.download import Download, DownloadFailed
from regcache.proxy.fleet import Relay
from regcache.proxy.router import Remote
from regcache.reference import parse_reference
from regcache.server.access import tenant_of
from regcache.server.blobs import blob_response, byte_range, chunk_writer, respond, send_file
from regcache.server.keys import METRICS, PULL_THROUGH, REGISTRY, SHARES
from regcache.server.listings import referrers_response
from regcache.server.manifests import manifest_response
from regcache.upstream import UpstreamError

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
        return await respond(request, digest, source.size, chunk_writer(source.chunks))
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
    """Stream a blob while it downloads, from the first byte or from a `Range`; once the
    download has finished, serve the stored blob."""
    download.readers += 1
    try:
        try:
            size = await download.wait_started()
            if size is None or (file := download.open()) is None:
                # no Content-Length upstream, or stored already: serve the stored blob
                await download.stored()
                blobs = request.app[REGISTRY].blobs
                return await blob_response(request, blobs, download.digest, download.written)
        except (UpstreamError, RegistryError, DownloadFailed) as exc:
            raise _failed(download, exc) from None
        with file:
            return await respond(
                request, download.digest, size, partial(_follow_file, download, file)
            )
    finally:
        download.readers -= 1


async def _follow_file(
    download: Download, file: BinaryIO, request: web.Request, response: web.StreamResponse,
    start: int, end: int,
) -> None:  # fmt: skip
    """Send the download's file with sendfile, each span as soon as it may go."""
    async for position, limit in download.spans(start, end):
        await send_file(file, request, response, position, limit)


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

"""Blob endpoints: download (with Range), delete, and the upload protocol."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import BinaryIO

from aiohttp import web

from regcache.digest import CHUNK, Digest
from regcache.errors import ErrorCode, RegistryError, TransferFailed
from regcache.reference import validate_name
from regcache.server.access import tenant_of
from regcache.server.keys import REGISTRY
from regcache.store import BlobBackend, Upload, read_blob
from regcache.store.uploads import range_header

log = logging.getLogger("regcache.blobs")
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes )?(\d+)-(\d+)$")
Chunks = Callable[[int, int], AsyncIterator[bytes]]  # the bytes from `start` to `end`
Send = Callable[[web.Request, web.StreamResponse, int, int], Awaitable[None]]


def _blob_headers(repo: str, digest: Digest) -> dict[str, str]:
    return {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": str(digest)}


def _upload_headers(request: web.Request, upload: Upload, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{request['name']}/blobs/uploads/{upload.id}",
        "Range": range_header(size),
        "Docker-Upload-UUID": upload.id,
    }


def _has_body(request: web.Request) -> bool:
    return request.body_exists and request.content_length != 0


def byte_range(request: web.Request, size: int) -> tuple[int, int]:
    """The `[start, end)` of a blob of `size` bytes that a request's `Range` asks for (all of
    it without one); 416 for a range that is malformed or that none of the blob satisfies,
    as aiohttp answers for a file."""
    try:
        wanted = request.http_range
    except ValueError:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"}
        ) from None
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return 0, size
    if start is not None and start < 0:  # a suffix: the last -start bytes
        start, stop = max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop


class ResponseAborted(Exception):
    """A response was cut off after its headers went out; the connection is closed."""


async def respond(
    request: web.Request, digest: Digest, size: int, send: Send
) -> web.StreamResponse:
    """Answer with the bytes of a blob of `size` bytes that `send` sends, as a whole or for
    a `Range`. A source that fails after the headers went out cuts the connection: the
    client must see a cut-off body, never a wrong one."""
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
            await send(request, response, start, end)
        except (TransferFailed, OSError) as exc:
            log.warning("%s %s cut off: %s", request.method, request.path, exc)
            if request.transport is not None:
                request.transport.abort()
            raise ResponseAborted(str(exc)) from None
        except BaseException:  # a bug: an error answer now would land in the middle of a body
            if request.transport is not None:
                request.transport.abort()
            raise
    await response.write_eof()
    return response


async def send_file(
    file: BinaryIO, request: web.Request, response: web.StreamResponse, start: int, end: int
) -> None:
    """Send the bytes `start` to `end` of an open file with sendfile (no copy through this
    process; uvloop has none: there, in chunks read from a worker thread)."""
    if request.transport is None:
        raise ConnectionResetError("the client went away")
    if start == end:
        return  # an empty blob (sendfile wants at least one byte)
    loop = asyncio.get_running_loop()
    try:
        sent = await loop.sendfile(request.transport, file, start, end - start)
    except NotImplementedError:
        await chunk_writer(partial(_file_chunks, file))(request, response, start, end)
        return
    request["sent"] = request.get("sent", 0) + sent  # the writer does not see these bytes


async def _file_chunks(file: BinaryIO, start: int, end: int) -> AsyncIterator[bytes]:
    while start < end:
        data = await asyncio.to_thread(os.pread, file.fileno(), min(CHUNK, end - start), start)
        if not data:
            raise OSError(f"file ended {end - start} bytes early")
        start += len(data)
        yield data


def chunk_writer(chunks: Chunks) -> Send:
    """Send what a source of chunks yields, through the response."""

    async def send(_: web.Request, response: web.StreamResponse, start: int, end: int) -> None:
        async for data in chunks(start, end):
            await response.write(data)

    return send


async def blob_response(
    request: web.Request, store: BlobBackend, digest: Digest, size: int | None = None
) -> web.StreamResponse:
    """A stored blob: a local file with sendfile; otherwise, for a GET the store allows to
    redirect, a 307 to a presigned URL; otherwise streamed from the store in bounded chunks.
    `Range` is honoured. `size`, when the caller knows it, saves asking the store."""
    path = store.local_path(digest)
    if path is not None:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise _unknown(digest) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            return await respond(request, digest, size, partial(send_file, file))
    url = store.redirect_url(digest) if request.method == "GET" else None
    if url is not None:
        return web.Response(
            status=307, headers={"Docker-Content-Digest": str(digest), "Location": url}
        )
    if size is None:
        size = await asyncio.to_thread(store.size, digest)
    if size is None:
        raise _unknown(digest)
    return await respond(request, digest, size, chunk_writer(partial(read_blob, store, digest)))


def _unknown(digest: Digest) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to registry")


async def get_blob(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    digest = Digest.parse(arg)
    registry = request.app[REGISTRY]
    size = await registry.blob_size(repo, digest)
    return await blob_response(request, registry.blobs, digest, size)


async def delete_blob(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    await request.app[REGISTRY].delete_blob(repo, Digest.parse(arg))
    return web.Response(status=202)


async def start_upload(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    """POST: mount from another repository, upload whole (`?digest=`), or open a session."""
    if arg:
        raise RegistryError(ErrorCode.UNSUPPORTED, "POST goes to /blobs/uploads/", status=404)
    registry = request.app[REGISTRY]
    query = request.query
    if "mount" in query:
        digest = Digest.parse(query["mount"])
        tenant = tenant_of(request)
        source = query.get("from")
        source = tenant.internal(validate_name(source)) if source is not None else None
        if registry.mount(repo, digest, source, within=tenant.prefix):
            return web.Response(status=201, headers=_blob_headers(request["name"], digest))
    # Parsed before the session exists: a malformed digest must not leave one behind.
    wanted = Digest.parse(query["digest"]) if "digest" in query else None
    upload = registry.uploads.create(repo)
    if wanted is not None:
        try:
            await registry.uploads.append(
                upload, request.content.iter_any(), length=request.content_length
            )
            await registry.finish_upload(upload, wanted)
        finally:
            registry.uploads.cancel(upload)
        return web.Response(status=201, headers=_blob_headers(request["name"], wanted))
    return web.Response(status=202, headers=_upload_headers(request, upload, 0))


def _content_range(request: web.Request) -> tuple[int | None, int | None]:
    value = request.headers.get("Content-Range")
    if value is None:
        return None, None
    match = _CONTENT_RANGE_RE.match(value.strip())
    if not match or int(match[2]) < int(match[1]):
        raise RegistryError(ErrorCode.RANGE_INVALID, f"malformed Content-Range {value[:80]!r}")
    start, end = int(match[1]), int(match[2])
    return start, end - start + 1


async def patch_upload(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    uploads = request.app[REGISTRY].uploads
    upload = uploads.get(repo, arg)
    start, length = _content_range(request)
    if length is None:
        length = request.content_length
    size = await uploads.append(upload, request.content.iter_any(), start=start, length=length)
    return web.Response(status=202, headers=_upload_headers(request, upload, size))


async def finish_upload(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    """PUT: append an optional last chunk, verify against `?digest=`, commit."""
    registry = request.app[REGISTRY]
    upload = registry.uploads.get(repo, arg)
    if "digest" not in request.query:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    digest = Digest.parse(request.query["digest"])
    if _has_body(request):
        start, length = _content_range(request)
        await registry.uploads.append(
            upload,
            request.content.iter_any(),
            start=start,
            length=length if length is not None else request.content_length,
        )
    await registry.finish_upload(upload, digest)
    return web.Response(status=201, headers=_blob_headers(request["name"], digest))


async def upload_status(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    upload = request.app[REGISTRY].uploads.get(repo, arg)
    return web.Response(status=204, headers=_upload_headers(request, upload, upload.size()))


async def cancel_upload(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    uploads = request.app[REGISTRY].uploads
    uploads.cancel(uploads.get(repo, arg))
    return web.Response(status=204)

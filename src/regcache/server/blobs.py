"""Blob endpoints: download (with Range), delete, and the upload protocol."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from regcache.digest import CHUNK, Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.reference import validate_name
from regcache.server.access import tenant_of
from regcache.server.keys import REGISTRY
from regcache.store import Upload
from regcache.store.uploads import range_header

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes )?(\d+)-(\d+)$")


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


def file_response(path: Path, digest: Digest) -> web.FileResponse:
    """A stored blob, sent with sendfile; aiohttp answers `Range` with 206 or 416."""
    return web.FileResponse(
        path,
        chunk_size=CHUNK,
        headers={"Docker-Content-Digest": str(digest), "Content-Type": "application/octet-stream"},
    )


async def get_blob(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    digest = Digest.parse(arg)
    return file_response(request.app[REGISTRY].blob_path(repo, digest), digest)


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
    upload = registry.uploads.create(repo)
    if "digest" in query:
        digest = Digest.parse(query["digest"])
        try:
            await registry.uploads.append(
                upload, request.content.iter_any(), length=request.content_length
            )
            await registry.finish_upload(upload, digest)
        finally:
            registry.uploads.cancel(upload)
        return web.Response(status=201, headers=_blob_headers(request["name"], digest))
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

"""Manifest endpoints: the stored bytes and media type, returned unchanged."""

from __future__ import annotations

from aiohttp import web

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.reference import parse_reference, validate_tag
from regcache.registry import Registry
from regcache.server.keys import REGISTRY
from regcache.store import StoredManifest

MAX_TAG_PARAMS = 100


async def get_manifest(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    stored = registry.manifest(repo, parse_reference(arg))
    return await manifest_response(request, registry, repo, stored)


async def manifest_response(
    request: web.Request, registry: Registry, repo: str, stored: StoredManifest
) -> web.Response:
    """The stored manifest's bytes and media type, unchanged (headers only for HEAD)."""
    headers = {"Content-Type": stored.media_type, "Docker-Content-Digest": str(stored.digest)}
    if request.method == "HEAD":
        headers["Content-Length"] = str(stored.size)
        return web.Response(headers=headers)
    registry.note_pull(repo, stored.digest)
    return web.Response(body=await registry.manifest_bytes(stored), headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> RegistryError:
    return RegistryError(ErrorCode.PAYLOAD_TOO_LARGE, f"manifest is larger than {limit} bytes")


async def put_manifest(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    reference = parse_reference(arg)
    tags = [validate_tag(tag) for tag in request.query.getall("tag", [])]
    if len(tags) > MAX_TAG_PARAMS:
        raise RegistryError(ErrorCode.UNSUPPORTED, "too many tag parameters", status=414)
    body = await _read_limited(request, registry.settings.manifest_max_bytes)
    digest, manifest = await registry.put_manifest(
        repo, reference, body, request.headers.get("Content-Type"), tags
    )
    response = web.Response(status=201)
    response.headers["Location"] = f"/v2/{request['name']}/manifests/{digest}"
    response.headers["Docker-Content-Digest"] = str(digest)
    if manifest.subject is not None:
        response.headers["OCI-Subject"] = str(manifest.subject.digest)
    if isinstance(reference, Digest):
        for tag in tags:
            response.headers.add("OCI-Tag", tag)
    return response


async def delete_manifest(request: web.Request, repo: str, arg: str) -> web.StreamResponse:
    await request.app[REGISTRY].delete_manifest(repo, parse_reference(arg))
    return web.Response(status=202)

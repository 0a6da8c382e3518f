"""The admin API under `/admin/`, behind a bearer token: storage, images, delete, prune,
pin and unpin, garbage collection. It is closed unless a token is set or `admin_open`."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from regcache.digest import Digest
from regcache.errors import ErrorCode, RegistryError
from regcache.reference import parse_reference, validate_name
from regcache.registry import Registry
from regcache.server.keys import METRICS, PULL_THROUGH, REGISTRY, SHARES, TENANTS
from regcache.server.status import upstream_status
from regcache.store.gc import collect_garbage
from regcache.store.metadata import CACHED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every `/admin/` request needs `Authorization: Bearer <admin_token>`."""
    if request.path.startswith("/admin/"):
        settings = request.app[REGISTRY].settings
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        if token is None and not settings.admin_open:
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                "the admin API is disabled: set admin_token (or admin_open: true)",
            )
        if token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}".encode()
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
                raise RegistryError(
                    ErrorCode.UNAUTHORIZED, "a valid admin token is required",
                    headers={"WWW-Authenticate": 'Bearer realm="regcache-admin"'},
                )  # fmt: skip
    return await handler(request)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RegistryError(ErrorCode.UNSUPPORTED, "the body must be a JSON object", status=400)
    return body


def _image(registry: Registry, row: Any) -> dict[str, Any]:
    digest = Digest.parse(row["digest"])
    content = registry.meta.image_content(row["repo"], digest)
    return {
        "repository": row["repo"],
        "digest": row["digest"],
        "tags": registry.meta.tags_of(row["repo"], digest),
        "media_type": row["media_type"],
        "size": sum(content.values()),
        "created": row["created"],
        "last_pull": row["last_pull"],
        "pulls": row["pulls"],
        "pinned": bool(row["pinned"]),
        "origin": "cached" if row["origin"] == CACHED else "hosted",
    }


def _matches(image: dict[str, Any], pattern: str | None) -> bool:
    if pattern is None:
        return True
    names = [image["repository"]] + [f"{image['repository']}:{t}" for t in image["tags"]]
    return any(fnmatchcase(name, pattern) for name in names)


def _images(request: web.Request, pattern: str | None = None) -> list[dict[str, Any]]:
    registry = request.app[REGISTRY]
    registry.flush_pulls()
    return [
        image for image in (_image(registry, row) for row in registry.meta.images())
        if _matches(image, pattern)
    ]  # fmt: skip


def _storage(registry: Registry) -> dict[str, int]:
    budget = registry.budget
    _, count = registry.meta.stored_bytes()
    return {
        "used": budget.used, "reserved": budget.reserved, "quota": budget.quota,
        "free_disk": budget.free_disk(), "min_free": budget.min_free, "blobs": count,
        "evictions": budget.evictions,
    }  # fmt: skip


async def storage(request: web.Request) -> web.Response:
    return web.json_response(_storage(request.app[REGISTRY]))


def _counter(metric: Counter) -> dict[tuple[str, ...], float]:
    """A labelled counter's current values by label tuple."""
    return {
        tuple(sample.labels.values()): sample.value
        for family in metric.collect() for sample in family.samples
        if sample.name.endswith("_total")
    }  # fmt: skip


async def overview(request: web.Request) -> web.Response:
    """Everything the dashboard shows, in one request."""
    metrics, registry = request.app[METRICS], request.app[REGISTRY]
    outcomes: dict[str, float] = {}
    for (_, outcome), value in _counter(metrics.cache).items():
        outcomes[outcome] = outcomes.get(outcome, 0) + value
    by_source = {labels[0]: value for labels, value in _counter(metrics.bytes).items()}
    served = sum(outcomes.values())
    hits = outcomes.get("hit", 0) + outcomes.get("revalidated", 0) + outcomes.get("stale", 0)
    everything = _images(request)
    downloads = request.app[PULL_THROUGH].downloads.active.values()
    return web.json_response({
        "storage": _storage(registry),
        "traffic": {
            "hits": hits, "misses": outcomes.get("miss", 0), "stale": outcomes.get("stale", 0),
            "joined": outcomes.get("joined", 0),
            "bytes_from_cache": by_source.get("cache", 0),
            "bytes_from_upstream": by_source.get("upstream", 0),
            "hit_ratio": hits / served if served else 0.0,
        },
        "upstreams": upstream_status(request),
        "downloads": [
            {"digest": str(d.digest), "size": d.size, "written": d.written, "readers": d.readers}
            for d in downloads
        ],
        "recent_errors": metrics.failures(),
        "top_by_pulls": sorted(everything, key=lambda i: -i["pulls"])[:10],
        "top_by_size": sorted(everything, key=lambda i: -i["size"])[:10],
    })  # fmt: skip


async def images(request: web.Request) -> web.Response:
    return web.json_response({"images": _images(request, request.query.get("pattern"))})


async def repositories(request: web.Request) -> web.Response:
    summary: dict[str, dict[str, Any]] = {}
    for image in _images(request):
        entry = summary.setdefault(
            image["repository"],
            {"repository": image["repository"], "origin": image["origin"], "images": 0, "size": 0},
        )
        entry["images"] += 1
        entry["size"] += image["size"]
    return web.json_response({"repositories": list(summary.values())})


def _target(registry: Registry, repo: str | None, ref: str | None) -> tuple[str, Digest]:
    if not repo or not ref:
        raise RegistryError(ErrorCode.NAME_INVALID, "repository and reference are required")
    repo = validate_name(repo)
    return repo, registry.manifest(repo, parse_reference(ref)).digest


async def delete_image(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    repo, digest = _target(registry, request.query.get("repository"), request.query.get("ref"))
    freed = await registry.budget.evict(repo, digest)
    return web.json_response({"deleted": f"{repo}@{digest}", "freed": freed})


async def _set_pin(request: web.Request, pinned: bool) -> web.Response:
    registry = request.app[REGISTRY]
    body = await _json_body(request)
    repo, digest = _target(registry, body.get("repository"), body.get("ref"))
    registry.meta.set_pinned(repo, digest, pinned)
    return web.json_response({"repository": repo, "digest": str(digest), "pinned": pinned})


async def pin(request: web.Request) -> web.Response:
    return await _set_pin(request, True)


async def unpin(request: web.Request) -> web.Response:
    return await _set_pin(request, False)


async def prune(request: web.Request) -> web.Response:
    """Evict cached, unpinned images: by `pattern`, by `older_than` seconds since the last
    pull, and least recently pulled first until `down_to` bytes are used."""
    registry = request.app[REGISTRY]
    body = await _json_body(request)
    pattern, older_than, down_to = body.get("pattern"), body.get("older_than"), body.get("down_to")
    dry_run = bool(body.get("dry_run"))
    if pattern is None and older_than is None and down_to is None:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, "say what to prune: pattern, older_than or down_to", status=400
        )
    cutoff = time.time() - float(older_than) if older_than is not None else None
    if pattern is None and cutoff is None and not dry_run:  # only a size: no listing needed
        before = registry.budget.used
        count = await registry.budget.shrink_to(int(down_to), keep=lambda repo, digest: False)
        return web.json_response({"evicted": count, "freed": before - registry.budget.used})
    chosen = [
        image for image in _images(request, pattern)
        if image["origin"] == "cached" and not image["pinned"]
        and (cutoff is None or (image["last_pull"] or image["created"]) < cutoff)
    ]  # fmt: skip
    before = registry.budget.used
    if down_to is not None:
        if dry_run:
            raise RegistryError(ErrorCode.UNSUPPORTED, "dry_run cannot be combined with down_to")
        allowed = {(image["repository"], image["digest"]) for image in chosen}
        count = await registry.budget.shrink_to(
            int(down_to), keep=lambda repo, digest: (repo, str(digest)) not in allowed
        )
        return web.json_response({"evicted": count, "freed": before - registry.budget.used})
    if not dry_run:
        for image in chosen:
            await registry.budget.evict(image["repository"], Digest.parse(image["digest"]))
    return web.json_response({
        "evicted": len(chosen), "freed": before - registry.budget.used, "dry_run": dry_run,
        "images": [f"{i['repository']}@{i['digest']}" for i in chosen],
    })  # fmt: skip


async def gc(request: web.Request) -> web.Response:
    return web.json_response((await collect_garbage(request.app[REGISTRY])).as_dict())


async def tenants(request: web.Request) -> web.Response:
    """Each tenant's charged bytes against its quota, and the cached images charged to it."""
    shares, meta = request.app[SHARES], request.app[REGISTRY].meta
    shares.flush()
    return web.json_response({"tenants": [
        {"name": tenant.name, "used": shares.usage(tenant),
         "quota": tenant.settings.quota_bytes,
         "images": [f"{repo}@{digest}" for repo, digest, _ in meta.charged_images(tenant.name)]}
        for tenant in request.app[TENANTS].all
    ]})  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/storage", storage)
    app.router.add_get("/admin/overview", overview)
    app.router.add_get("/admin/images", images)
    app.router.add_get("/admin/repositories", repositories)
    app.router.add_get("/admin/tenants", tenants)
    app.router.add_delete("/admin/images", delete_image)
    app.router.add_post("/admin/pin", pin)
    app.router.add_post("/admin/unpin", unpin)
    app.router.add_post("/admin/prune", prune)
    app.router.add_post("/admin/gc", gc)

"""The operator dashboard: three static files under `/dashboard/`, served without a token.

The page holds no data of its own: it asks for the admin token and reads `/admin/`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

FOLDER = Path(__file__).with_name("dashboard")
FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def redirect(request: web.Request) -> web.StreamResponse:
    """`/dashboard` → `/dashboard/`, so the page's relative links resolve."""
    raise web.HTTPPermanentRedirect("/dashboard/")


async def static_file(request: web.Request) -> web.StreamResponse:
    """One of `FILES` (the page itself for `/dashboard/`); anything else is 404."""
    name = request.match_info.get("name") or "index.html"
    if name not in FILES:
        raise web.HTTPNotFound(text="not found\n")
    return web.FileResponse(
        FOLDER / name, headers={"Content-Type": FILES[name], **HEADERS}, chunk_size=64 * 1024
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", redirect)
    app.router.add_get("/dashboard/", static_file)
    app.router.add_get("/dashboard/{name}", static_file)

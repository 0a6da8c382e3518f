"""A Docker Hub emulator in front of a real registry, for tests.

It behaves as Docker Hub does where regcache cares: a token realm that checks credentials
and issues scoped bearer tokens; `/v2/` answering 401 with the Bearer challenge without one;
rate-limit accounting per client (manifest GETs of images count, an index does not, HEADs
and blobs never); `ratelimit-*` headers; 429 TOOMANYREQUESTS once the budget is spent.
Like Docker Hub, it can send blob GETs to its blob storage (mode `cdn`: a 307 redirect to
`localhost`, another host name for the same emulator, served under `/_cdn/`); mode `slow`
holds each blob response for a moment, so downloads at once can be counted; mode `trickle`
sends blobs at about 25 MB/s, so a download can be interrupted midway. Control
endpoints under `/_emulator/` switch modes and report what was asked.

Run: python -m tooling.dockerhub --port P --backend http://127.0.0.1:R [--limit N]
         [--username U --password W]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tooling.peers import free_port, http_request

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
SERVICE = "registry.docker.io"
TRICKLE_CHUNK, TRICKLE_PAUSE = 256 * 1024, 0.01  # mode `trickle`: blobs at about 25 MB/s
PASSED_HEADERS = ("Content-Type", "Content-Length", "Docker-Content-Digest", "Content-Range")


class Emulator:
    """State of the emulated Docker Hub."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.backend = args.backend.rstrip("/")
        self.limit, self.window = args.limit, args.window
        self.username, self.password = args.username, args.password
        self.tokens: dict[str, tuple[str, str, float]] = {}  # token -> scope, user, expiry
        self.pulls: dict[str, list[float]] = defaultdict(list)  # who -> counted pull times
        self.mode = "normal"
        self.stats: Counter[str] = Counter()
        self.blob_gets: Counter[str] = Counter()
        self.authorizations: list[str] = []
        self.session: aiohttp.ClientSession | None = None
        self.streaming = 0  # blob responses being sent now

    def remaining(self, who: str) -> int:
        now = time.time()
        self.pulls[who] = [t for t in self.pulls[who] if now - t < self.window]
        return self.limit - len(self.pulls[who])

    def ratelimit_headers(self, who: str) -> dict[str, str]:
        return {
            "ratelimit-limit": f"{self.limit};w={self.window}",
            "ratelimit-remaining": f"{max(self.remaining(who), 0)};w={self.window}",
            "docker-ratelimit-source": who,
        }


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


async def token(request: web.Request) -> web.Response:
    hub: Emulator = request.app["hub"]
    hub.stats["token_requests"] += 1
    user = "anonymous"
    header = request.headers.get("Authorization", "")
    if header:
        hub.authorizations.append(header)
        if not header.startswith("Basic "):
            return _error(401, "UNAUTHORIZED", "basic auth expected")
        login, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if (login, password) != (hub.username, hub.password):
            return _error(401, "UNAUTHORIZED", "incorrect username or password")
        user = login
    if request.query.get("service") != SERVICE:
        return _error(400, "DENIED", "unknown service")
    issued = secrets.token_hex(16)
    hub.tokens[issued] = (request.query.get("scope", ""), user, time.time() + 300)
    return web.json_response({"token": issued, "access_token": issued, "expires_in": 300})


def _challenge(request: web.Request, scope: str | None) -> dict[str, str]:
    value = f'Bearer realm="http://{request.host}/token",service="{SERVICE}"'
    if scope:
        value += f',scope="{scope}"'
    return {"WWW-Authenticate": value}


async def registry(request: web.Request) -> web.StreamResponse:
    hub: Emulator = request.app["hub"]
    path = request.match_info["path"]
    kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "other"
    if hub.mode != "normal":
        hub.stats[f"{request.method} {kind} ({hub.mode})"] += 1
    if hub.mode == "429":
        return _error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.",
                      {"Retry-After": "60"})  # fmt: skip
    if hub.mode == "500":
        return _error(500, "UNKNOWN", "emulated outage")
    name = path.rsplit("/manifests/", 1)[0].rsplit("/blobs/", 1)[0].rsplit("/tags/", 1)[0]
    scope = f"repository:{name}:pull" if path else None
    header = request.headers.get("Authorization", "")
    grant = hub.tokens.get(header[7:]) if header.startswith("Bearer ") else None
    if grant is None or grant[2] < time.time() or (scope and grant[0] != scope):
        return _error(401, "UNAUTHORIZED", "authentication required", _challenge(request, scope))
    who = grant[1] if grant[1] != "anonymous" else request.remote or "unknown"
    hub.stats[f"{request.method} {kind}"] += 1
    extra = hub.ratelimit_headers(who) if kind == "manifest" else {}
    if kind == "manifest" and request.method == "GET" and hub.remaining(who) <= 0:
        return _error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.",
                      {**extra, "Retry-After": "3600"})  # fmt: skip
    if kind == "blob" and request.method == "GET" and hub.mode == "cdn":
        location = f"http://localhost:{request.url.port}/_cdn/{path}"
        return web.Response(status=307, headers={"Location": location})
    return await _relay(request, hub, path, kind, who, extra)


async def _relay(
    request: web.Request, hub: Emulator, path: str, kind: str, who: str, extra: dict[str, str]
) -> web.StreamResponse:
    """Answer from the backend registry, counting pulls and blob downloads."""
    assert hub.session is not None
    forwarded = {k: v for k, v in request.headers.items() if k in ("Accept", "Range")}
    async with hub.session.request(
        request.method, f"{hub.backend}/v2/{path}", params=request.query, headers=forwarded,
        allow_redirects=False,
    ) as upstream:  # fmt: skip
        content_type = upstream.headers.get("Content-Type", "")
        if kind == "manifest" and request.method == "GET" and upstream.status == 200:
            if content_type not in INDEX_TYPES:
                hub.pulls[who].append(time.time())
                hub.stats["counted_pulls"] += 1
            extra = hub.ratelimit_headers(who)
        blob = kind == "blob" and request.method == "GET"
        if blob:
            hub.blob_gets[path.rsplit("/", 1)[1]] += 1
            hub.streaming += 1
            hub.stats["most_blobs_at_once"] = max(hub.stats["most_blobs_at_once"], hub.streaming)
        try:
            if blob and hub.mode == "slow":
                await asyncio.sleep(0.3)
            headers = {k: upstream.headers[k] for k in PASSED_HEADERS if k in upstream.headers}
            response = web.StreamResponse(status=upstream.status, headers={**headers, **extra})
            await response.prepare(request)
            corrupt = hub.mode == "corrupt" and kind == "blob"
            trickle = blob and hub.mode == "trickle"
            chunks = (
                upstream.content.iter_chunked(TRICKLE_CHUNK)
                if trickle
                else upstream.content.iter_any()
            )
            async for chunk in chunks:
                if corrupt and chunk:
                    chunk, corrupt = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                await response.write(chunk)
                if trickle:
                    await asyncio.sleep(TRICKLE_PAUSE)
            await response.write_eof()
        finally:
            if blob:
                hub.streaming -= 1
        return response


async def cdn(request: web.Request) -> web.StreamResponse:
    """The blob storage that mode `cdn` redirects to (no credentials needed, as a signed URL)."""
    hub: Emulator = request.app["hub"]
    hub.stats[f"{request.method} cdn"] += 1
    return await _relay(request, hub, request.match_info["path"], "blob", "cdn", {})


async def control(request: web.Request) -> web.Response:
    hub: Emulator = request.app["hub"]
    action = request.match_info["action"]
    if action == "mode":
        hub.mode = (await request.json())["mode"]
    elif action == "reset":
        hub.stats.clear()
        hub.blob_gets.clear()
        hub.pulls.clear()
        hub.authorizations.clear()
    return web.json_response(
        {"mode": hub.mode, "stats": dict(hub.stats), "blob_gets": dict(hub.blob_gets),
         "authorizations": hub.authorizations}
    )  # fmt: skip


def make_app(args: argparse.Namespace) -> web.Application:
    app = web.Application()
    hub = Emulator(args)
    app["hub"] = hub

    async def session(_: web.Application) -> AsyncIterator[None]:
        hub.session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await hub.session.close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/token", token)
    app.router.add_route("*", "/_emulator/{action}", control)
    app.router.add_route("*", "/v2/{path:.*}", registry)
    app.router.add_get("/_cdn/{path:.*}", cdn)
    return app


class DockerHub:
    """The emulator as a process of its own, for tests: start, control, read its counters."""

    def __init__(
        self,
        workdir: Path,
        backend: str,
        *,
        limit: int = 100,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tooling.dockerhub", "--port", str(self.port),
                   "--backend", backend, "--limit", str(limit)]  # fmt: skip
        if username is not None:
            command += ["--username", username, "--password", password or ""]
        self._command = command
        self._log = workdir / "dockerhub.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> DockerHub:
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(self._command, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                http_request("GET", f"{self.url}/_emulator/stats", timeout=1)
                return self
            except OSError:
                if self._process.poll() is not None:
                    raise RuntimeError(self._log.read_text()[-2000:]) from None
                time.sleep(0.05)
        raise RuntimeError("the Docker Hub emulator did not start")

    def _control(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, answer = http_request("POST", f"{self.url}/_emulator/{action}", data)
        assert status == 200, answer
        return json.loads(answer)

    def stats(self) -> dict[str, Any]:
        return self._control("stats")

    def counted_pulls(self) -> int:
        return self.stats()["stats"].get("counted_pulls", 0)

    def set_mode(self, mode: str) -> None:
        self._control("mode", {"mode": mode})

    def reset(self) -> None:
        self._control("reset")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def __enter__(self) -> DockerHub:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--window", type=int, default=21600)
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()
    web.run_app(make_app(args), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()

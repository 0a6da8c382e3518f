"""A small client for any OCI registry: auth, manifests, streamed blobs, referrers.

Addresses: `[http://|https://]HOST/REPO[:TAG][@DIGEST]` or a docker-style short name
(`nginx:1.25.3`, which means Docker Hub). Without a scheme a registry is reached over https,
unless plain http is asked for. Credentials come from `USER:PASS` or a docker `config.json`;
they are sent only in `Authorization` headers and never appear in a message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from regcache.digest import Digest
from regcache.image_ref import DOCKER_HUB, DOCKER_HUB_ALIASES, ImageRef, parse_image
from regcache.manifest import MEDIA_TYPES, OCI_INDEX
from regcache.upstream.auth import Authenticator, AuthError, Challenge

DOCKER_HUB_API = "https://registry-1.docker.io"
ACCEPT = ", ".join(sorted(MEDIA_TYPES))
MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
RETRIES = 2
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class TransferError(Exception):
    """A registry refused or failed; the message is one line and holds no secret."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """`USER:PASS`."""
        username, colon, password = text.partition(":")
        if not colon or not username:
            raise TransferError("credentials must be given as USER:PASS")
        return cls(username, password)


def _auth_key(key: str) -> str:
    """A config.json `auths` key as a bare host (`https://index.docker.io/v1/` → docker.io)."""
    host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def default_authfile() -> Path:
    """`$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else ~/.docker/config.json."""
    if "REGISTRY_AUTH_FILE" in os.environ:
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    return Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def load_authfile(path: Path) -> dict[str, Credentials]:
    """The credentials of a docker `config.json`, by registry host; {} if there is no file.

    Only inline `auth` or `username`/`password` entries are read (not credential helpers).
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot read auth file {path}: {type(exc).__name__}") from None
    found: dict[str, Credentials] = {}
    for key, entry in (doc.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                text = base64.b64decode(entry["auth"]).decode()
            except ValueError:
                raise TransferError(f"auth file {path}: bad auth entry for {key}") from None
            found[_auth_key(key)] = Credentials.parse(text)
        elif entry.get("username"):
            found[_auth_key(key)] = Credentials(entry["username"], entry.get("password", ""))
    return found


@dataclass(frozen=True)
class Endpoint:
    """Where a registry answers and how to talk to it."""

    url: str  # scheme://host[:port]
    tls_verify: bool = True
    credentials: Credentials | None = None


@dataclass(frozen=True)
class Location:
    """An image at a registry: the endpoint, and the reference as parsed."""

    endpoint: Endpoint
    ref: ImageRef

    @property
    def repository(self) -> str:
        return self.ref.repository

    def __str__(self) -> str:
        return str(self.ref)


def parse_location(
    text: str,
    *,
    plain_http: bool = False,
    tls_verify: bool = True,
    credentials: Credentials | None = None,
    authfile: Path | None = None,
) -> Location:
    """An image address: `http://` or `https://` says the scheme, else https unless
    `plain_http`; Docker Hub's names are reached at registry-1.docker.io. Credentials not
    given are looked up in the auth file by registry host."""
    scheme = "http" if plain_http else "https"
    for prefix in ("http://", "https://", "docker://"):
        if text.startswith(prefix):
            scheme = prefix[:-3] if prefix != "docker://" else scheme
            text = text[len(prefix) :]
    ref = parse_image(text)
    if ref is None or ref.templated:
        raise TransferError(f"not an image reference: {text!r}")
    url = DOCKER_HUB_API if ref.is_docker_hub else f"{scheme}://{ref.registry}"
    if credentials is None:
        host = DOCKER_HUB if ref.is_docker_hub else ref.registry
        credentials = load_authfile(authfile or default_authfile()).get(host)
    return Location(Endpoint(url, tls_verify, credentials), ref)


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` parsed as a JSON object, else a TransferError naming `what`."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise TransferError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes, its media type and digest."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        return json_object(self.body, f"manifest {self.digest}")


@dataclass(frozen=True)
class Referrers:
    """The descriptors of manifests whose subject is a digest, and how they were found."""

    descriptors: list[dict[str, Any]]
    tag_index: Manifest | None = None  # the `sha256-<hex>` tag's index, when the API is absent


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for a subject: `sha256-<hex>`."""
    return digest.replace(":", "-", 1)


def _scope(repo: str, push: bool) -> str:
    return f"repository:{repo}:{'pull,push' if push else 'pull'}"


async def _failure(response: aiohttp.ClientResponse, what: str) -> TransferError:
    """A one-line error naming `what`, the status and the registry's first error code."""
    detail = ""
    try:
        errors = json.loads(await response.content.read(64 << 10)).get("errors") or []
        if errors:
            detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except (ValueError, AttributeError, aiohttp.ClientError):
        pass
    return TransferError(f"{what}: HTTP {response.status}{detail}"[:300])


class RegistryClient:
    """Requests to one registry, with its credentials, over a shared session."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        self.session = session
        self.endpoint = endpoint
        self.url = endpoint.url.rstrip("/")
        self.host = urlsplit(self.url).netloc
        creds = endpoint.credentials
        self.auth = Authenticator(
            creds.username if creds else None, creds.password if creds else None
        )
        self.ssl = endpoint.tls_verify

    @asynccontextmanager
    async def request(
        self,
        method: str,
        repo: str,
        path: str,
        *,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response, after answering one auth challenge; `path` is under /v2/<repo>/ unless
        it is a URL or starts with `/`. Requests whose body can be sent again are retried on
        connection errors (a streamed body cannot)."""
        if path.startswith(("http://", "https://", "/")):
            url = urljoin(self.url + "/", path)
        else:
            url = f"{self.url}/v2/{repo}/{path}"
        replayable = data is None or isinstance(data, bytes)
        scope = scope or _scope(repo, push=False)
        attempt, challenged = 0, False
        while True:
            try:
                response = await self.session.request(
                    method, url, params=params, data=data, ssl=self.ssl, allow_redirects=True,
                    headers={**(headers or {}), **self.auth.header(scope)},
                )  # fmt: skip
            except (aiohttp.ClientError, TimeoutError) as exc:
                if replayable and attempt < RETRIES:
                    attempt += 1
                    await asyncio.sleep(0.5 * attempt)
                    continue
                raise TransferError(f"{method} {url}: {type(exc).__name__}") from None
            if response.status == 401 and not challenged and replayable:
                challenged = True
                challenge = Challenge.parse(response.headers.get("WWW-Authenticate", ""))
                response.release()
                try:
                    answered = await self.auth.answer(self.session, challenge, scope, self.ssl)
                except AuthError as exc:
                    raise TransferError(f"{self.host}: authentication failed: {exc}") from None
                except (aiohttp.ClientError, TimeoutError) as exc:
                    reason = type(exc).__name__
                    raise TransferError(f"{self.host}: token service: {reason}") from None
                if answered:
                    continue
                raise TransferError(f"{self.host}: authentication required for {repo}")
            try:
                yield response
            finally:
                response.release()
            return

    async def _read_manifest(self, response: aiohttp.ClientResponse, what: str) -> Manifest:
        buffer = bytearray()
        async for chunk in response.content.iter_any():
            buffer += chunk
            if len(buffer) > MAX_MANIFEST:
                raise TransferError(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
        body = bytes(buffer)
        digest = str(Digest.of(body))
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise TransferError(f"{what}: content does not match its digest {claimed}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MEDIA_TYPES:
            media_type = str(json_object(body, what).get("mediaType", media_type))
        return Manifest(body, media_type, digest)

    async def get_manifest(self, repo: str, reference: str) -> Manifest | None:
        """The manifest `reference` names (tag or digest), or None when the registry has none."""
        what = f"{self.host}/{repo}:{reference}"
        async with self.request(
            "GET", repo, f"manifests/{reference}", headers={"Accept": ACCEPT}
        ) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await _failure(response, f"GET manifest {what}")
            manifest = await self._read_manifest(response, what)
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise TransferError(f"{what}: content does not match the digest asked for")
        return manifest

    async def resolve(self, repo: str, reference: str) -> str | None:
        """The digest a tag (or digest) names now, by one HEAD; None when it is unknown."""
        what = f"{self.host}/{repo}:{reference}"
        async with self.request(
            "HEAD", repo, f"manifests/{reference}", headers={"Accept": ACCEPT}
        ) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await _failure(response, f"HEAD manifest {what}")
            digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise TransferError(f"{what}: the registry sent no Docker-Content-Digest on HEAD")
        return digest

    async def has_manifest(self, repo: str, digest: str) -> bool:
        return await self.resolve(repo, digest) == digest

    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> None:
        """Store `manifest` under a tag or its digest, byte for byte."""
        async with self.request(
            "PUT", repo, f"manifests/{reference}", scope=_scope(repo, push=True),
            headers={"Content-Type": manifest.media_type}, data=manifest.body,
        ) as response:  # fmt: skip
            if response.status not in (200, 201):
                raise await _failure(response, f"PUT manifest {self.host}/{repo}:{reference}")

    async def has_blob(self, repo: str, digest: str) -> bool:
        """Whether the registry holds the blob in `repo` (HEAD)."""
        async with self.request("HEAD", repo, f"blobs/{digest}") as response:
            if response.status in (200, 404):
                return response.status == 200
            raise await _failure(response, f"HEAD blob {self.host}/{repo}@{digest}")

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[AsyncIterable[bytes]]:
        """The blob's bytes, read in chunks of at most 1 MiB as they arrive."""
        async with self.request("GET", repo, f"blobs/{digest}") as response:
            if response.status != 200:
                raise await _failure(response, f"GET blob {self.host}/{repo}@{digest}")
            yield response.content.iter_chunked(CHUNK)

    async def start_upload(self, repo: str, mount: tuple[str, str] | None = None) -> str | None:
        """Open an upload session and return its URL; with `mount` (digest, from-repo), try a
        cross-repository mount first and return None when it succeeded."""
        scope = _scope(repo, push=True)
        params = {"mount": mount[0], "from": mount[1]} if mount else None
        async with self.request(
            "POST", repo, "blobs/uploads/", scope=scope, params=params
        ) as response:
            if response.status == 201 and mount:
                return None
            if response.status != 202 or "Location" not in response.headers:
                raise await _failure(response, f"POST upload {self.host}/{repo}")
            return urljoin(self.url + "/", response.headers["Location"])

    async def finish_upload(
        self, repo: str, location: str, digest: str, size: int, chunks: AsyncIterable[bytes]
    ) -> None:
        """Stream `chunks` into the session as one monolithic PUT; the registry checks the
        digest."""
        separator = "&" if "?" in location else "?"
        async with self.request(
            "PUT", repo, f"{location}{separator}digest={digest}", scope=_scope(repo, push=True),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            data=chunks,
        ) as response:  # fmt: skip
            if response.status not in (201, 204):
                raise await _failure(response, f"PUT blob {self.host}/{repo}@{digest}")

    async def supports_referrers(self, repo: str, digest: str) -> bool:
        """Whether the registry answers the referrers API (else the tag schema is used)."""
        async with self.request("GET", repo, f"referrers/{digest}") as response:
            return response.status == 200

    async def _referrers_api(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        """The referrers API's descriptors, following `Link` pages; None when it is 404."""
        found: list[dict[str, Any]] = []
        path: str | None = f"referrers/{digest}"
        while path is not None:
            async with self.request("GET", repo, path, headers={"Accept": OCI_INDEX}) as response:
                if response.status == 404 and path.startswith("referrers/"):
                    return None
                if response.status != 200:
                    raise await _failure(response, f"GET referrers {self.host}/{repo}@{digest}")
                page = json_object(await response.read(), f"referrers of {digest}")
                found += page.get("manifests") or []
                link = _NEXT_LINK.search(response.headers.get("Link", ""))
                path = link[1] if link else None
        return found

    async def referrers(self, repo: str, digest: str) -> Referrers:
        """Manifests whose subject is `digest`: from the referrers API or, where that is 404,
        from the referrers tag schema's `sha256-<hex>` index."""
        found = await self._referrers_api(repo, digest)
        if found is not None:
            return Referrers(found)
        index = await self.get_manifest(repo, referrers_tag(digest))
        if index is None:
            return Referrers([])
        return Referrers(index.json().get("manifests") or [], index)


def open_session() -> aiohttp.ClientSession:
    """A session for registry traffic: no total timeout (blobs may be large), bytes as sent."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    return aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True)


async def resolve(location: Location) -> str:
    """The digest an image reference names now, asked with a single HEAD request.

    `location` comes from `parse_location` (e.g. `parse_location("nginx:1.25")`, or a
    regcache's prefixed name `http://127.0.0.1:5000/docker.io/library/nginx:1.25`).
    """
    async with open_session() as session:
        client = RegistryClient(session, location.endpoint)
        digest = await client.resolve(location.repository, location.ref.reference)
    if digest is None:
        raise TransferError(f"{location} is not known to {client.host}")
    return digest

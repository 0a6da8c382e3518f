"""Real peers on loopback: CNCF distribution's ``docker-registry`` and ``skopeo``.

Commands and configuration follow /work/shared/PEERS.md. Every client process gets a dead
HTTP(S) proxy with loopback exempted, so a fallback to a public registry fails instead of
leaving the machine.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml

from tooling.images import REF_NAME

_DEAD_PROXY = "http://127.0.0.1:9"
_NO_PROXY = "127.0.0.1,localhost"
_SYNC_PREFIX = "/v2/_tooling/sync/"
# Gorilla's combined log format, as docker-registry 2.8 writes it to stdout:
# 127.0.0.1 - - [28/Nov/2026:02:06:54 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo/1.9.3"
_ACCESS_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+) "[^"]*" "(?P<agent>[^"]*)"$'
)
_BLOB_PATH_RE = re.compile(r"^/v2/.+/blobs/(?P<digest>sha256:[0-9a-f]{64})(?:\?.*)?$")


class PeerError(RuntimeError):
    """A peer failed to start or a client command failed."""


def client_env() -> dict[str, str]:
    """The environment for client processes: a dead proxy for everything but loopback."""
    env = dict(os.environ)
    for name, value in (
        ("HTTP_PROXY", _DEAD_PROXY),
        ("HTTPS_PROXY", _DEAD_PROXY),
        ("NO_PROXY", _NO_PROXY),
    ):
        env[name] = env[name.lower()] = value
    return env


def run_client(cmd: Sequence[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a client command in `client_env()`, raising PeerError with its stderr on failure."""
    proc = subprocess.run(
        list(cmd), env=client_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise PeerError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no system CA signed, and its key: `cert.pem`, `key.pem`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def http_request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One proxy-free HTTP request on its own connection: status, headers, body. An https
    peer's certificate is not checked (test peers have certificates of their own)."""
    parts = urlsplit(url)
    conn = (
        http.client.HTTPSConnection(
            parts.netloc, timeout=timeout, context=ssl._create_unverified_context()
        )
        if parts.scheme == "https"
        else http.client.HTTPConnection(parts.netloc, timeout=timeout)
    )
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class AccessEntry:
    """One line of docker-registry's access log."""

    method: str
    path: str  # with the query string
    status: int
    size: int  # response body bytes sent
    user_agent: str

    @classmethod
    def parse(cls, line: str) -> AccessEntry | None:
        """The entry of an access-log line, or None for any other line."""
        match = _ACCESS_RE.match(line)
        if not match:
            return None
        return cls(
            match["method"], match["path"], int(match["status"]), int(match["size"]), match["agent"]
        )

    @property
    def blob_digest(self) -> str | None:
        """The digest if this is a request for a blob (not an upload), else None."""
        match = _BLOB_PATH_RE.match(self.path)
        return match["digest"] if match else None


def blob_gets(entries: Iterable[AccessEntry]) -> Counter[str]:
    """How many GETs each blob digest received, whatever their status."""
    return Counter(e.blob_digest for e in entries if e.method == "GET" and e.blob_digest)


class DockerRegistry:
    """docker-registry serving from `workdir`, optionally as a pull-through proxy."""

    def __init__(
        self,
        workdir: Path,
        *,
        proxy_remote: str | None = None,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.proxy_remote = proxy_remote
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls  # certificate and key: serve https
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.config_path = workdir / "registry.yml"
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __enter__(self) -> DockerRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> None:
        """Write the config, start the registry and wait until `GET /v2/` answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host},
        }
        if self.tls is not None:
            cert, key = self.tls
            config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        if self.proxy_remote:
            config["proxy"] = {"remoteurl": self.proxy_remote}
        self.config_path.write_text(yaml.safe_dump(config))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["docker-registry", "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=client_env(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if (code := self._proc.poll()) is not None:
                raise PeerError(f"docker-registry exited {code}:\n{self.log_tail()}")
            if self._answers():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise PeerError(f"docker-registry not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.reset_log_position()

    def _answers(self) -> bool:
        try:
            return http_request("GET", f"{self.url}/v2/", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the registry (kill it after 10 s)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the registry's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def reset_log_position(self) -> None:
        """Make `requests()` report only requests made from now on."""
        self._log_offset = self.log_path.stat().st_size

    def requests(self, timeout: float = 10) -> list[AccessEntry]:
        """Access-log entries since the last `reset_log_position()` (or start).

        A sentinel request is sent and awaited in the log first, so every request that completed
        before this call is included.
        """
        sentinel = f"{_SYNC_PREFIX}{uuid.uuid4().hex}"
        http_request("GET", self.url + sentinel)
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()
            entries = [e for e in map(AccessEntry.parse, lines) if e]
            if any(e.path == sentinel for e in entries):
                return [e for e in entries if not e.path.startswith(_SYNC_PREFIX)]
            if time.monotonic() > deadline:
                raise PeerError(f"sentinel {sentinel} never reached the access log")
            time.sleep(0.02)


def skopeo_copy(
    src: str,
    dst: str,
    *,
    all_platforms: bool = True,
    preserve_digests: bool = True,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`skopeo copy` between transports; TLS verification is off for docker:// refs."""
    cmd = ["skopeo", "copy"]
    if all_platforms:
        cmd.append("--all")
    if preserve_digests:
        cmd.append("--preserve-digests")
    if src.startswith("docker://"):
        cmd.append("--src-tls-verify=false")
    if dst.startswith("docker://"):
        cmd.append("--dest-tls-verify=false")
    return run_client([*cmd, *extra, src, dst])


def _docker_ref(registry_url: str, repo: str, ref: str) -> str:
    """docker://HOST/REPO:TAG, or docker://HOST/REPO@DIGEST."""
    return f"docker://{urlsplit(registry_url).netloc}/{repo}{'@' if ':' in ref else ':'}{ref}"


def push_layout(layout: Path, tag: str, registry_url: str, repo: str) -> None:
    """Push `tag` from `layout` to `registry_url`/`repo`:`tag`, keeping every digest.

    skopeo 1.9.3's oci: transport ignores index.json entries of Docker media types ("no
    descriptor found"), so Docker-flavoured images are uploaded over the registry API instead.
    """
    entry = _layout_entry(layout, tag)
    if entry["mediaType"].startswith("application/vnd.oci."):
        skopeo_copy(f"oci:{layout}:{tag}", _docker_ref(registry_url, repo, tag))
    else:
        _upload_manifest(layout, entry, registry_url, repo, tag)


def pull_to_layout(registry_url: str, repo: str, ref: str, layout: Path, tag: str) -> None:
    """Copy `repo`:`ref` (a tag or a digest), all platforms, into `layout` as `tag`."""
    skopeo_copy(_docker_ref(registry_url, repo, ref), f"oci:{layout}:{tag}")


def _layout_entry(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_bytes())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return dict(entry)
    raise KeyError(f"{tag!r} is not in {layout}/index.json")


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hex_digest


def _upload_manifest(
    layout: Path, desc: dict[str, Any], registry_url: str, repo: str, ref: str
) -> None:
    """Upload a manifest's blobs and child manifests (by digest), then the manifest as `ref`."""
    data = _blob_path(layout, desc["digest"]).read_bytes()
    manifest = json.loads(data)
    for child in manifest.get("manifests", []):
        _upload_manifest(layout, child, registry_url, repo, child["digest"])
    for blob in [manifest.get("config"), *manifest.get("layers", [])]:
        if blob:
            _upload_blob(layout, blob, registry_url, repo)
    url = f"{registry_url}/v2/{repo}/manifests/{ref}"
    status, _, body = http_request("PUT", url, data, {"Content-Type": desc["mediaType"]})
    if status != 201:
        raise PeerError(f"PUT {url}: {status} {body[:500]!r}")


def _upload_blob(layout: Path, blob: dict[str, Any], registry_url: str, repo: str) -> None:
    """A two-request monolithic upload: POST for a session, PUT of the whole blob."""
    status, headers, body = http_request("POST", f"{registry_url}/v2/{repo}/blobs/uploads/")
    if status != 202:
        raise PeerError(f"starting an upload to {repo}: {status} {body[:500]!r}")
    location = urljoin(registry_url, headers["Location"])
    url = f"{location}{'&' if '?' in location else '?'}digest={blob['digest']}"
    with _blob_path(layout, blob["digest"]).open("rb") as data:
        status, _, body = http_request(
            "PUT",
            url,
            data,
            {"Content-Length": str(blob["size"]), "Content-Type": "application/octet-stream"},
        )
    if status != 201:
        raise PeerError(f"uploading {blob['digest']}: {status} {body[:500]!r}")


def layout_blob_digests(layout: Path) -> set[str]:
    """The digests of every blob file in `layout`."""
    return {f"sha256:{path.name}" for path in (layout / "blobs" / "sha256").iterdir()}


def verify_layout(layout: Path) -> None:
    """Re-hash every blob and check it against its file name; check index.json's targets exist.

    Raises AssertionError naming every mismatch.
    """
    problems = []
    for path in (layout / "blobs" / "sha256").iterdir():
        with path.open("rb") as blob:
            actual = hashlib.file_digest(blob, "sha256").hexdigest()
        if actual != path.name:
            problems.append(f"{path} hashes to sha256:{actual}")
    for entry in json.loads((layout / "index.json").read_bytes())["manifests"]:
        if not _blob_path(layout, entry["digest"]).is_file():
            problems.append(f"index.json names missing blob {entry['digest']}")
    if problems:
        raise AssertionError("\n".join(problems))

"""Load generators: a verifying pull client (threads), curl for blob streams, wrk for manifests."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHUNK = 1 << 20
SOCKET_TIMEOUT = 60  # seconds any connect or read may wait
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)


class LoadError(RuntimeError):
    """A request failed, returned the wrong bytes, or a load tool failed."""


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[HTTPConnection, HTTPResponse]:
    """Send a GET; the connection and the response, whose body is still to be read."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    connection.request("GET", parts.path, headers=headers)
    return connection, connection.getresponse()


def _fetch_blob(base: str, repo: str, blob: dict[str, Any]) -> None:
    """GET a blob into sha256, checking its digest and size."""
    url = f"{base}/v2/{repo}/blobs/{blob['digest']}"
    connection, response = _get(url, {}, SOCKET_TIMEOUT)
    try:
        if response.status != 200:
            raise LoadError(f"GET {url}: HTTP {response.status}")
        hasher, size, buffer = hashlib.sha256(), 0, memoryview(bytearray(CHUNK))
        while received := response.readinto(buffer):
            hasher.update(buffer[:received])
            size += received
    finally:
        connection.close()
    if f"sha256:{hasher.hexdigest()}" != blob["digest"] or size != blob["size"]:
        raise LoadError(f"GET {url}: {size} bytes hashing to sha256:{hasher.hexdigest()}")


def _pull(base: str, repo: str, ref: str, blob_concurrency: int) -> None:
    """One client pulls an image manifest, then all its blobs, `blob_concurrency` at a time."""
    url = f"{base}/v2/{repo}/manifests/{ref}"
    connection, response = _get(url, {"Accept": ACCEPT}, SOCKET_TIMEOUT)
    try:
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise LoadError(f"GET {url}: HTTP {response.status} {body[:200].decode(errors='replace')}")
    manifest = json.loads(body)
    if "layers" not in manifest:
        raise LoadError(f"GET {url}: not an image manifest")
    with ThreadPoolExecutor(blob_concurrency) as blobs:
        for done in [
            blobs.submit(_fetch_blob, base, repo, blob)
            for blob in [manifest["config"], *manifest["layers"]]
        ]:
            done.result()


def pull(
    base: str | Sequence[str],
    repo: str,
    ref: str,
    *,
    clients: int,
    blob_concurrency: int,
    timeout: float,
) -> float:
    """Wall seconds for `clients` concurrent verifying pulls of `repo:ref`, each on its own
    connections; given several base URLs, client `i` pulls from the `i`-th, round robin.

    Every client is a set of blocking threads, like the separate processes real clients are:
    hashing and socket reads release the GIL, so the load spreads over every core. (One event
    loop hashing for all 32 clients saturated a core before the servers did.)"""
    bases = [base] if isinstance(base, str) else list(base)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        pulls = [
            pool.submit(_pull, bases[i % len(bases)], repo, ref, blob_concurrency)
            for i in range(clients)
        ]
        done, pending = wait(pulls, timeout=timeout)
        seconds = time.perf_counter() - start
        if pending:  # the stragglers end at their socket timeout
            raise LoadError(f"{clients} pulls of {repo}:{ref} took over {timeout} s")
        for future in done:
            try:
                future.result()
            except OSError as exc:
                raise LoadError(f"pulling {repo}:{ref}: {exc!r}") from exc
    return seconds


@dataclass(frozen=True)
class Stream:
    """Concurrent whole-blob GETs: bytes received and the slowest client's time."""

    clients: int
    total_bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        """Aggregate throughput."""
        return self.total_bytes / self.seconds / (1 << 20)


def stream_blob(url: str, size: int, *, clients: int, timeout: float) -> Stream:
    """`clients` curl processes GET `url` to /dev/null at once; each must receive `size` bytes.

    The time is the slowest transfer as curl measures it (process start-up excluded).
    """
    cmd = [
        "curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "--max-time", str(timeout),
        "-w", "%{http_code} %{size_download} %{time_total}", url,
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    times = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout + 10)
            status, received, seconds = out.split() if out.count(" ") == 2 else ("?", "0", "0")
            if proc.returncode != 0 or status != "200" or int(received) != size:
                raise LoadError(
                    f"GET {url}: curl exit {proc.returncode}, HTTP {status}, "
                    f"{received} of {size} bytes; {err.strip()}"
                )
            times.append(float(seconds))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Stream(clients, clients * size, max(times))


@dataclass(frozen=True)
class Wrk:
    """One wrk run."""

    requests: int
    requests_per_s: float
    p99_ms: float
    socket_errors: int  # connect, read, write and timeout errors together


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_P99_RE = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_TOTAL_RE = re.compile(r"^\s*(\d+) requests in ", re.M)
_RATE_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_BAD_RE = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)", re.M)
_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk(url: str, script: Path, *, seconds: int, connections: int, threads: int) -> Wrk:
    """Run `wrk --latency` against `url`; every response must be 2xx or 3xx."""
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    out = proc.stdout
    rate, p99, total = _RATE_RE.search(out), _P99_RE.search(out), _TOTAL_RE.search(out)
    if proc.returncode != 0 or not (rate and p99 and total):
        raise LoadError(f"wrk exited {proc.returncode}: {(proc.stderr or out).strip()[-300:]}")
    if bad := _BAD_RE.search(out):
        raise LoadError(f"{bad[1]} of {total[1]} responses were not 2xx/3xx")
    errors = _ERRORS_RE.search(out)
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    return Wrk(int(total[1]), float(rate[1]), float(p99[1]) * _UNITS_MS[p99[2]], socket_errors)


def write_accept_script(path: Path) -> Path:
    """A wrk Lua script that asks for any OCI or Docker manifest type."""
    path.write_text(f'wrk.headers["Accept"] = "{ACCEPT}"\n')
    return path

"""The servers of the benchmark: one upstream registry and the targets that serve its content.

Needs /work/main/tests on sys.path (bench/run.py puts it there) for the test tooling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
import yaml
from load import LoadError
from tooling.images import Descriptor, Image, make_image
from tooling.peers import (
    AccessEntry,
    DockerRegistry,
    blob_gets,
    free_port,
    http_request,
    push_layout,
)
from tooling.server import Regcache

TAG = "1.0.0"


class TargetError(RuntimeError):
    """A server failed to start."""


@dataclass(frozen=True)
class Published:
    """An image pushed to the upstream as `library/NAME:TAG`."""

    repo: str
    image: Image

    @property
    def blob_bytes(self) -> int:
        """The bytes of the image's config and layers."""
        return sum(blob.size for blob in self.image.blobs)

    @property
    def largest(self) -> Descriptor:
        """The largest blob: the layer used for blob streaming."""
        return max(self.image.blobs, key=lambda blob: blob.size)


@dataclass(frozen=True)
class Traffic:
    """What the upstream served since it was last marked."""

    requests: int
    blob_gets: Counter[str]
    blob_bytes: int

    @classmethod
    def of(cls, entries: list[AccessEntry]) -> Traffic:
        """Summarise access-log entries."""
        sent = sum(e.size for e in entries if e.method == "GET" and e.blob_digest)
        return cls(len(entries), blob_gets(entries), sent)


class Upstream:
    """Debian's docker-registry on loopback, holding the generated images."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.registry = DockerRegistry(workdir / "upstream")
        self.url = self.registry.url

    def start(self) -> None:
        """Start the registry."""
        self.registry.start()

    def stop(self) -> None:
        """Stop the registry."""
        self.registry.stop()

    @property
    def blob_root(self) -> Path:
        """The directory holding `blobs/sha256/XX/HEX/data` files."""
        return self.registry.workdir / "data" / "docker" / "registry" / "v2"

    def publish(self, name: str, *, total_bytes: int, layers: int) -> Published:
        """Generate a random image of `layers` layers and push it as `library/NAME:TAG`."""
        layout = self.workdir / "layouts" / name
        image = make_image(layout, TAG, layers=layers, layer_size=total_bytes // layers)
        repo = f"library/{name}"
        push_layout(layout, TAG, self.url, repo)
        shutil.rmtree(layout)
        return Published(repo, image)

    def mark(self) -> None:
        """Count traffic from now on."""
        self.registry.reset_log_position()

    def traffic(self, settle: float = 0.3, timeout: float = 10) -> Traffic:
        """Traffic since `mark()`, once the access log has stopped growing for `settle` s."""
        entries = self.registry.requests()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(settle)
            later = self.registry.requests()
            if len(later) == len(entries):
                break
            entries = later
        return Traffic.of(entries)


class Target(ABC):
    """A server under test, started fresh in its own directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @property
    @abstractmethod
    def url(self) -> str:
        """The base URL."""

    @property
    @abstractmethod
    def pid(self) -> int:
        """The process to watch for memory."""

    @abstractmethod
    def start(self) -> None:
        """Start the server; raise TargetError if it does not answer."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server."""

    def blob_url(self, repo: str, digest: str) -> str:
        """Where a blob of `repo` is served."""
        return f"{self.url}/v2/{repo}/blobs/{digest}"

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RegcacheTarget(Target):
    """regcache as a pull-through mirror of the upstream."""

    def __init__(self, workdir: Path, upstream_url: str) -> None:
        super().__init__(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "regcache.yml"
        upstream = {"name": "upstream", "url": upstream_url, "prefix": "upstream.local"}
        config.write_text(yaml.safe_dump({"upstreams": [{**upstream, "mirror": True}]}))
        self._server = Regcache(workdir, config=config)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def pid(self) -> int:
        return self._server.pid

    def start(self) -> None:
        try:
            self._server.start()
        except RuntimeError as exc:
            self._server.stop()
            raise TargetError(f"regcache did not start: {_last_line(str(exc))}") from exc

    def stop(self) -> None:
        self._server.stop()


class RegistryProxyTarget(Target):
    """Debian's docker-registry in proxy mode (`proxy.remoteurl`) of the upstream."""

    def __init__(self, workdir: Path, upstream_url: str) -> None:
        super().__init__(workdir)
        self._registry = DockerRegistry(workdir, proxy_remote=upstream_url)
        self._pid = 0

    @property
    def url(self) -> str:
        return self._registry.url

    @property
    def pid(self) -> int:
        return self._pid

    def start(self) -> None:
        self._registry.start()
        config = str(self._registry.config_path)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if config in (proc.info["cmdline"] or []):
                self._pid = proc.info["pid"]
                return
        self._registry.stop()
        raise TargetError(f"no docker-registry process serving {config}")

    def stop(self) -> None:
        self._registry.stop()


class NginxTarget(Target):
    """nginx with sendfile serving the upstream's blob files: the physical limit."""

    def __init__(self, workdir: Path, blob_root: Path) -> None:
        super().__init__(workdir)
        self.blob_root = blob_root
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def blob_url(self, repo: str, digest: str) -> str:
        hex_digest = digest.removeprefix("sha256:")
        return f"{self.url}/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"

    def _config(self) -> str:
        temp = self.workdir / "temp"
        temp_paths = "\n".join(
            f"  {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # Worker processes started by root would drop to `nobody`, who cannot read 0700 dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}daemon off;
worker_processes auto;
pid {self.workdir / "nginx.pid"};
error_log {self.workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
{temp_paths}
  server {{
    listen 127.0.0.1:{self.port};
    root {self.blob_root};
  }}
}}
"""

    def start(self, timeout: float = 10) -> None:
        (self.workdir / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._config())
        log = self.workdir / "error.log"
        cmd = ["nginx", "-p", str(self.workdir), "-e", str(log), "-c", str(conf)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise TargetError(f"nginx exited {self._proc.returncode}: {_last_line(text)}")
            try:
                http_request("GET", f"{self.url}/", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TargetError(f"nginx did not answer in {timeout} s")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def wait_warm(
    upstream: Upstream, urls: Iterable[str], repo: str, digests: Iterable[str], timeout: float
) -> None:
    """Wait until every server at `urls` answers a HEAD for every blob without asking upstream.

    docker-registry's proxy stores a blob with a second upstream download of its own, in the
    background, and serves every request from upstream again until that download is stored.
    """
    deadline = time.monotonic() + timeout
    while True:
        upstream.mark()
        for url in urls:
            for digest in digests:
                blob_url = f"{url}/v2/{repo}/blobs/{digest}"
                if (status := http_request("HEAD", blob_url)[0]) != 200:
                    raise LoadError(f"HEAD {blob_url}: HTTP {status}")
        if not upstream.traffic().requests:
            return
        if time.monotonic() > deadline:
            raise LoadError(f"blobs of {repo} not stored after {timeout} s")
        time.sleep(0.5)

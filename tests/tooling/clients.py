"""Clients of a Docker Hub mirror: private dockerd, podman and containerd instances on loopback.

Commands and configuration follow /work/shared/PEERS.md; the mirror configuration is the text of
`client_snippets()`, so the files written here are what the docs show. Each client is a context
manager keeping its state under `workdir`, plus a short directory in /tmp for unix sockets (a
socket path must fit in 108 bytes). On exit, even after a failure, daemons are stopped with
everything they spawned, mounts under both directories are detached and both are deleted.

Every process runs in `client_env()` plus `TMPDIR` under `workdir`, so a fallback from the mirror
to the public registry fails, and temporary files and mounts stay private. State that cannot be
moved: podman (like skopeo) updates /var/lib/containers/cache/blob-info-cache-v1.boltdb and
opens the shared lock segment /dev/shm/libpod_lock (a pull takes no locks from it).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import psutil

from tooling.peers import PeerError, client_env

HUB = "docker.io"
DOCKER = "/usr/bin/docker"  # Debian's client; a newer one may come first on PATH
DOCKERD = "/usr/sbin/dockerd"


def client_snippets(mirror_url: str) -> dict[str, str]:
    """The mirror configuration of each client, keyed by client, as the text of its file.

    `dockerd`: /etc/docker/daemon.json; `podman`: /etc/containers/registries.conf;
    `containerd`: docker.io/hosts.toml in a hosts directory (/etc/containerd/certs.d, or
    `ctr images pull --hosts-dir`).
    """
    url = mirror_url.rstrip("/")
    host = urlsplit(url).netloc
    daemon_json = json.dumps({"registry-mirrors": [url], "insecure-registries": [host]}, indent=2)
    registries_conf = f"""\
unqualified-search-registries = ["{HUB}"]

[[registry]]
prefix = "{HUB}"
location = "{HUB}"

[[registry.mirror]]
location = "{host}"
insecure = true
"""
    hosts_toml = f"""\
server = "https://registry-1.docker.io"

[host."{url}"]
  capabilities = ["pull", "resolve"]
"""
    return {"dockerd": daemon_json + "\n", "podman": registries_conf, "containerd": hosts_toml}


def _hub_ref(image: str) -> str:
    """`alpine:3`, `library/alpine:3` or `docker.io/library/alpine:3` as the last form."""
    path = image.removeprefix(f"{HUB}/")
    if "/" not in path.split("@")[0]:
        path = f"library/{path}"
    return f"{HUB}/{path}"


def _repository(ref: str) -> str:
    """The repository of a fully qualified Docker Hub reference (no registry port to confuse)."""
    return ref.split("@")[0].rsplit(":", 1)[0]


def _toml_str(value: Path | str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(str(value))


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first, one entry per stacked mount."""
    root = str(path)
    points = [
        _unescape_mountinfo(line.split()[4])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    inside = [p for p in points if p == root or p.startswith(f"{root}/")]
    return sorted(inside, key=lambda p: p.count("/"), reverse=True)


def _socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _docker_pings(path: Path) -> bool:
    """Whether the Docker API answers `GET /_ping` with 200 on unix socket `path`."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n")[0]
        except OSError:
            return False
    return status_line.split(b" ")[1:2] == [b"200"]


class _Daemon:
    """A background process logging to a file, stopped together with its descendants."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self.env = env
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start the process and poll `ready` until it holds; PeerError with the log if not."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the tests, not it
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while not ready():
            if (code := self._proc.poll()) is not None:
                raise PeerError(f"{self.name} exited {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PeerError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (SIGKILL after `timeout`), then SIGKILL whatever it spawned that is left."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()  # psutil checks that the pid still names the same process
        psutil.wait_procs(children, timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class MirrorClient(ABC):
    """A client of the Docker Hub mirror at `mirror_url` with all of its state under `workdir`.

    `workdir` must be empty or absent; it is created on entry and deleted on exit. `image`
    arguments name a Docker Hub image with a tag or digest: `alpine:3`, `library/alpine:3` or
    `docker.io/library/alpine:3`.
    """

    name = "client"

    def __init__(self, workdir: Path, mirror_url: str, *, start_timeout: float = 15) -> None:
        self.workdir = workdir.absolute()
        self.mirror_url = mirror_url.rstrip("/")
        self.snippet = client_snippets(self.mirror_url)[self.name]
        self.start_timeout = start_timeout
        self.env = {**client_env(), "TMPDIR": str(self.workdir / "tmp")}
        self.rundir: Path | None = None  # the short directory for sockets, once made
        self._daemons: list[_Daemon] = []

    def __enter__(self) -> Self:
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise PeerError(f"{self.workdir} is not empty, and would be deleted on exit")
        try:
            (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def _start(self) -> None:
        """Write the configuration and start any daemons."""

    @abstractmethod
    def pull(self, image: str) -> None:
        """Pull `image` for this machine's platform through the mirror."""

    @abstractmethod
    def image_digest(self, image: str) -> str:
        """The digest of the top-level manifest (image or index) that `image` was pulled as."""

    @abstractmethod
    def remove_all_images(self) -> None:
        """Delete every image and its blobs, so the next pull fetches everything again."""

    @property
    def pids(self) -> list[int]:
        """The process ids of the running daemons, in start order."""
        return [d.pid for d in self._daemons if d.pid is not None]

    def close(self) -> None:
        """Stop the daemons (last started first), detach mounts and delete both directories."""
        for daemon in reversed(self._daemons):
            daemon.stop()
        self._daemons.clear()
        for path in (self.rundir, self.workdir):
            if path is None or not path.exists():
                continue
            for point in mounts_under(path):
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
            if left := mounts_under(path):
                raise PeerError(f"could not unmount {left}")
            shutil.rmtree(path)
        self.rundir = None

    def _socket_dir(self) -> Path:
        if self.rundir is None:
            self.rundir = Path(tempfile.mkdtemp(prefix=f"regcache-{self.name}-", dir="/tmp"))
        return self.rundir

    def _start_daemon(self, name: str, cmd: Sequence[str], ready: Callable[[], bool]) -> None:
        daemon = _Daemon(name, cmd, self.workdir / f"{name}.log", self.env)
        self._daemons.append(daemon)
        daemon.start(ready, self.start_timeout)

    def _start_containerd(self) -> Path:
        """Start a private containerd without CRI; returns its socket."""
        sock = self._socket_dir() / "containerd.sock"
        config = self.workdir / "containerd.toml"
        config.write_text(
            f"""\
version = 2
root = {_toml_str(self.workdir / "containerd-root")}
state = {_toml_str(self._socket_dir() / "containerd-state")}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = {_toml_str(sock)}
[ttrpc]
  address = {_toml_str(f"{sock}.ttrpc")}
[plugins."io.containerd.internal.v1.opt"]
  path = {_toml_str(self.workdir / "containerd-opt")}
"""
        )  # the opt plugin would otherwise create /opt/containerd
        self._start_daemon(
            "containerd", ["containerd", "--config", str(config)], lambda: _socket_accepts(sock)
        )
        return sock

    def _run(self, *cmd: str, stdin: str | None = None, timeout: float = 300) -> str:
        """Run a client command; its stdout, or PeerError with its stderr and daemon logs."""
        proc = subprocess.run(
            cmd,
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            logs = "".join(f"\n--- {d.name} log ---\n{d.log_tail()}" for d in self._daemons)
            raise PeerError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{logs}")
        return proc.stdout


class Dockerd(MirrorClient):
    """A private dockerd (vfs, no networking) configured by the snippet's daemon.json.

    It gets a containerd of its own through `--containerd`: dockerd 20.10 otherwise attaches to a
    system containerd at /run/containerd/containerd.sock if there is one (a fresh Debian install
    runs one), or starts a managed one whose opt plugin creates /opt/containerd. The daemon.json
    also moves the trust key, which would otherwise be written to /etc/docker/key.json.
    """

    name = "dockerd"

    def _start(self) -> None:
        containerd = self._start_containerd()
        self.socket = self._socket_dir() / "docker.sock"
        config = {**json.loads(self.snippet), "deprecated-key-path": str(self.workdir / "key.json")}
        config_path = self.workdir / "daemon.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.env["DOCKER_CONFIG"] = str(self.workdir / "docker-cli")  # not ~/.docker
        cmd = [
            DOCKERD, "--config-file", str(config_path), "--containerd", str(containerd),
            "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
            "-H", f"unix://{self.socket}", "--data-root", str(self.workdir / "docker-root"),
            "--exec-root", str(self._socket_dir() / "docker-exec"),
            "--pidfile", str(self._socket_dir() / "dockerd.pid"),
        ]  # fmt: skip
        self._start_daemon("dockerd", cmd, lambda: _docker_pings(self.socket))

    def docker(self, *args: str) -> str:
        """Run `docker ARGS` against this daemon; its stdout."""
        return self._run(DOCKER, "-H", f"unix://{self.socket}", *args)

    def pull(self, image: str) -> None:
        """`docker pull`: it sends HEAD for the tag's manifest, then GETs by digest."""
        self.docker("pull", "--quiet", _hub_ref(image))

    def image_digest(self, image: str) -> str:
        """The digest in the image's RepoDigests for its repository."""
        ref = _hub_ref(image)
        entries = json.loads(self.docker("image", "inspect", "--format={{json .RepoDigests}}", ref))
        digests = {e.split("@")[1] for e in entries if _repository(_hub_ref(e)) == _repository(ref)}
        if len(digests) != 1:
            raise PeerError(f"{ref}: RepoDigests {entries} name no single digest")
        return digests.pop()

    def remove_all_images(self) -> None:
        """`docker image prune --all`; there are no containers to keep any image."""
        self.docker("image", "prune", "--all", "--force")

    def login(self, url: str, user: str, password: str) -> None:
        """`docker login` to `url` (HOST:PORT); kept under `workdir`."""
        host = urlsplit(url).netloc or url
        self._run(
            DOCKER, "-H", f"unix://{self.socket}", "login", "--username", user,
            "--password-stdin", host, stdin=password,
        )  # fmt: skip


class Podman(MirrorClient):
    """podman with the snippet as registries.conf, vfs storage, and state under `workdir`.

    Beyond PEERS.md, `--tmpdir` and `--network-config-dir` keep /run/libpod and
    /etc/cni/net.d/cni.lock untouched, and `REGISTRY_AUTH_FILE` keeps `login` out of
    /run/containers. With `insecure = true` podman first tries TLS on the mirror's port (one TLS
    ClientHello per pull), then plain HTTP.
    """

    name = "podman"

    def _start(self) -> None:
        files = {
            "registries.conf": self.snippet,
            "storage.conf": f"""\
[storage]
driver = "vfs"
runroot = {_toml_str(self.workdir / "podman-run")}
graphroot = {_toml_str(self.workdir / "podman-root")}
""",
            "auth.json": '{"auths": {}}\n',  # podman fails on a REGISTRY_AUTH_FILE that is absent
        }
        for name, text in files.items():
            (self.workdir / name).write_text(text)
        self.env |= {
            "CONTAINERS_REGISTRIES_CONF": str(self.workdir / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.workdir / "storage.conf"),
            "REGISTRY_AUTH_FILE": str(self.workdir / "auth.json"),
        }

    def podman(self, *args: str, stdin: str | None = None) -> str:
        """Run `podman ARGS` with this instance's configuration; its stdout."""
        return self._run(
            "podman", "--cgroup-manager=cgroupfs", "--events-backend=file",
            "--tmpdir", str(self.workdir / "podman-tmp"),
            "--network-config-dir", str(self.workdir / "podman-net"),
            *args, stdin=stdin,
        )  # fmt: skip

    def pull(self, image: str) -> None:
        """`podman pull docker.io/...`, resolved through the registries.conf mirror."""
        self.podman("pull", "--quiet", _hub_ref(image))

    def image_digest(self, image: str) -> str:
        """The image's `.Digest`: the index's digest when an index was pulled."""
        return self.podman("image", "inspect", "--format={{.Digest}}", _hub_ref(image)).strip()

    def remove_all_images(self) -> None:
        """`podman rmi --all --force`."""
        self.podman("rmi", "--all", "--force")

    def login(self, url: str, user: str, password: str) -> None:
        """`podman login --tls-verify=false` to `url` (or HOST:PORT); kept in `workdir`."""
        host = urlsplit(url).netloc or url
        self.podman(
            "login", "--tls-verify=false", "--username", user, "--password-stdin", host,
            stdin=password,
        )  # fmt: skip


class Containerd(MirrorClient):
    """A private containerd (no CRI) and `ctr`, with the snippet as docker.io/hosts.toml.

    `ctr` 1.6 fetches in its own process, adding `?ns=docker.io` to every request.
    """

    name = "containerd"

    def _start(self) -> None:
        self.hosts_dir = self.workdir / "hosts"
        (self.hosts_dir / HUB).mkdir(parents=True)
        (self.hosts_dir / HUB / "hosts.toml").write_text(self.snippet)
        self.socket = self._start_containerd()

    def ctr(self, *args: str) -> str:
        """Run `ctr ARGS` against this daemon; its stdout."""
        return self._run("ctr", "--address", str(self.socket), *args)

    def pull(self, image: str, all_platforms: bool = False) -> None:
        """`ctr images pull --hosts-dir`, which also unpacks this platform's layers."""
        flags = ["--all-platforms"] if all_platforms else []
        self.ctr("images", "pull", "--hosts-dir", str(self.hosts_dir), *flags, _hub_ref(image))

    def image_digest(self, image: str) -> str:
        """The DIGEST column of `ctr images ls` for the image."""
        ref = _hub_ref(image)
        rows = self.ctr("images", "ls", f"name=={ref}").splitlines()[1:]
        if len(rows) != 1:
            raise PeerError(f"ctr images ls lists {len(rows)} images named {ref}")
        return rows[0].split()[2]

    def remove_all_images(self) -> None:
        """`ctr images rm --sync` of every image, which garbage-collects their content."""
        if refs := self.ctr("images", "ls", "--quiet").split():
            self.ctr("images", "rm", "--sync", *refs)

"""`regcache copy` between real registries: Debian's docker-registry (no referrers API, so the
referrers tag schema) and regcache (referrers API); digests, resuming, memory, output."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
import requests
from aiohttp import web
from tooling.dockerhub import DockerHub
from tooling.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Image,
    dumps,
    make_artifact,
    make_image,
    make_index,
)
from tooling.peers import AccessEntry, DockerRegistry, client_env, free_port, push_layout
from tooling.server import PeakRss, Regcache

from regcache.transfer.progress import Progress
from regcache.transfer.registry_client import parse_location, resolve

pytestmark = pytest.mark.peers
ACCEPT = {
    "Accept": ", ".join([
        OCI_INDEX, OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ])
}  # fmt: skip
_UPLOAD_DIGEST = re.compile(r"[?&]digest=([^&]+)")


@dataclass(frozen=True)
class Source:
    """The source registry and what was pushed to it."""

    registry: DockerRegistry
    index: Image
    referrers: tuple[Image, ...]
    single: Image


def referrers_tag_index(subject: str, artifacts: list[Image]) -> bytes:
    """The referrers tag schema's index, as a client writes it for a registry without the API."""
    return dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": a.media_type, "digest": a.digest, "size": a.size,
             "artifactType": json.loads(a.manifest)["artifactType"]}
            for a in artifacts
        ],
    })  # fmt: skip


def put_manifest(url: str, repo: str, ref: str, body: bytes, media_type: str) -> None:
    requests.put(
        f"{url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}
    ).raise_for_status()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A two-platform image with an SBOM on the index and a signature on one platform."""
    work = tmp_path_factory.mktemp("source")
    layout = work / "layout"
    index = make_index(layout, "multi", layers=3, layer_size=200_000)
    child = index.children[0]
    child_size = (layout / "blobs" / "sha256" / child.split(":")[1]).stat().st_size
    sbom = make_artifact(layout, "sbom", subject=index.descriptor)
    signature = make_artifact(
        layout, "sig", subject=Descriptor(OCI_MANIFEST, child, child_size),
        artifact_type="application/vnd.example.signature.v1", size=512,
    )  # fmt: skip
    single = make_image(layout, "single", layers=2, layer_size=50_000)
    with DockerRegistry(work / "registry") as registry:
        for image in (index, sbom, signature, single):
            push_layout(layout, image.tag, registry.url, "org/app")
        for subject, artifacts in ((index.digest, [sbom]), (child, [signature])):
            tag_index = referrers_tag_index(subject, artifacts)
            put_manifest(registry.url, "org/app", subject.replace(":", "-"), tag_index, OCI_INDEX)
        yield Source(registry, index, (sbom, signature), single)


def regcache_copy(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `regcache copy` to its end, failing the test on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "regcache", "copy", *args],
        capture_output=True, text=True, env=client_env(), timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def get(url: str) -> requests.Response:
    response = requests.get(url, headers=ACCEPT, timeout=60)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    return response


def referrers_of(url: str, repo: str, digest: str) -> list[str]:
    """Referrer digests by the referrers API, or by the tag schema where the API is 404."""
    api = requests.get(f"{url}/v2/{repo}/referrers/{digest}", timeout=60)
    if api.status_code == 200:
        return [m["digest"] for m in api.json()["manifests"]]
    tag = requests.get(
        f"{url}/v2/{repo}/manifests/{digest.replace(':', '-')}", headers=ACCEPT, timeout=60
    )
    return [m["digest"] for m in tag.json()["manifests"]] if tag.status_code == 200 else []


def walk(url: str, repo: str, ref: str) -> tuple[str, set[str], set[str]]:
    """The tag's digest, every manifest reachable from it (children, referrers) and every
    blob those use, each fetched and hash-checked."""
    top = get(f"{url}/v2/{repo}/manifests/{ref}")
    manifests: set[str] = set()
    blobs: set[str] = set()
    todo = ["sha256:" + hashlib.sha256(top.content).hexdigest()]
    while todo:
        digest = todo.pop()
        if digest in manifests:
            continue
        manifests.add(digest)
        body = get(f"{url}/v2/{repo}/manifests/{digest}").content
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        doc = json.loads(body)
        todo += [m["digest"] for m in doc.get("manifests", [])]
        todo += referrers_of(url, repo, digest)
        blobs |= {b["digest"] for b in [doc.get("config"), *doc.get("layers", [])] if b}
    for blob in blobs:
        data = get(f"{url}/v2/{repo}/blobs/{blob}").content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob
    return "sha256:" + hashlib.sha256(top.content).hexdigest(), manifests, blobs


def completed_uploads(entries: list[AccessEntry]) -> list[str]:
    """Digests of the blob uploads a registry completed (PUT …?digest=… answered 201)."""
    found = []
    for entry in entries:
        match = _UPLOAD_DIGEST.search(entry.path)
        if entry.method == "PUT" and "/blobs/uploads/" in entry.path and entry.status == 201:
            assert match, entry.path
            found.append(unquote(match[1]))
    return found


@pytest.mark.parametrize("destination", ["docker-registry", "regcache"])
def test_copy_keeps_every_digest_with_platforms_and_referrers(
    source: Source, tmp_path: Path, destination: str
) -> None:
    src = source.registry
    with (
        DockerRegistry(tmp_path / "dst") if destination == "docker-registry" else Regcache(tmp_path)
    ) as dst:
        proc = regcache_copy(f"http://{src.host}/org/app:multi", f"{dst.url}/team/app:1.0.0")
        copied = walk(dst.url, "team/app", "1.0.0")
    original = walk(src.url, "org/app", "multi")
    assert copied == original
    assert copied[0] == source.index.digest
    assert {r.digest for r in source.referrers} <= copied[1]
    # Non-TTY output: one line per blob and manifest, and a summary naming the image.
    for blob in original[2]:
        assert re.search(rf"^blob {blob[:19]}: copied", proc.stdout, re.M), proc.stdout
    for digest in original[1] - {source.index.digest}:
        assert f"manifest {digest[:19]}: copied" in proc.stdout
    assert f"copied {src.host}/org/app:multi to " in proc.stdout
    assert proc.stderr == ""


def test_copy_of_one_platform_writes_an_index_of_that_platform(
    source: Source, tmp_path: Path
) -> None:
    with DockerRegistry(tmp_path / "dst") as dst:
        src = f"http://{source.registry.host}/org/app:multi"
        regcache_copy("--platform", "linux/arm64", "--quiet", src, f"{dst.url}/one/app")
        index = get(f"{dst.url}/v2/one/app/manifests/multi").json()
        arm64 = source.index.children[1]
        assert [m["digest"] for m in index["manifests"]] == [arm64]
        uploaded = set(completed_uploads(dst.requests()))
        _, _, arm64_blobs = walk(source.registry.url, "org/app", arm64)
        # The arm64 image, and the SBOM's blobs do not come along: its subject is not there.
        assert uploaded == arm64_blobs


def test_quiet_copy_prints_nothing(source: Source, tmp_path: Path) -> None:
    with DockerRegistry(tmp_path / "dst") as dst:
        proc = regcache_copy(
            "--quiet", f"http://{source.registry.host}/org/app:single", f"{dst.url}/q/app"
        )
        assert walk(dst.url, "q/app", "single")[0] == source.single.digest
    assert proc.stdout == "" and proc.stderr == ""


def test_failures_are_one_line_without_traceback(source: Source) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "regcache", "copy", f"http://{source.registry.host}/org/none:1",
         f"http://{source.registry.host}/x/y"],
        capture_output=True, text=True, env=client_env(), timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not found" in proc.stderr, proc.stderr


class GateProxy:
    """An HTTP proxy in front of a registry that passes the first `allow` blob GETs and
    holds every later one until it is closed: a copy stuck midway, ready to be killed."""

    def __init__(self, backend: str, allow: int) -> None:
        self.backend, self.allow = backend, allow
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.blob_gets = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "/blobs/sha256:" in request.path:
            self.blob_gets += 1
            if self.blob_gets > self.allow:
                await self.release.wait()
                return web.Response(status=503)
        headers = {k: v for k, v in request.headers.items() if k in ("Accept", "Range")}
        async with self.session.request(
            request.method, self.backend + request.path_qs, headers=headers
        ) as upstream:
            passed = ("Content-Type", "Content-Length", "Docker-Content-Digest")
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: upstream.headers[k] for k in passed if k in upstream.headers},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _start(self) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        self.release.set()
        await self.runner.cleanup()
        await self.session.close()

    def __enter__(self) -> GateProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_interrupted_copy_resumes_without_resending_finished_blobs(
    source: Source, tmp_path: Path
) -> None:
    src = source.registry
    _, _, all_blobs = walk(src.url, "org/app", "multi")
    with DockerRegistry(tmp_path / "dst") as dst, GateProxy(src.url, allow=3) as gate:
        first = subprocess.Popen(
            [sys.executable, "-m", "regcache", "copy", "--jobs", "2",
             f"http://{gate.host}/org/app:multi", f"{dst.url}/team/app:1.0.0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=client_env(),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while len(completed_uploads(dst.requests())) < 3:
                assert first.poll() is None, "the copy ended though blobs were held back"
                assert time.monotonic() < deadline, "no blob arrived at the destination"
                time.sleep(0.05)
            first.kill()
            first.wait(10)
        finally:
            first.kill()
        before = completed_uploads(dst.requests())
        dst.reset_log_position()
        assert 0 < len(before) < len(all_blobs)

        regcache_copy(f"http://{src.host}/org/app:multi", f"{dst.url}/team/app:1.0.0")
        after = completed_uploads(dst.requests())
        assert not set(before) & set(after), "finished blobs were uploaded again"
        assert set(before) | set(after) == all_blobs and len(after) == len(set(after))
        assert walk(dst.url, "team/app", "1.0.0") == walk(src.url, "org/app", "multi")


def test_copy_of_a_large_blob_streams_in_bounded_memory(
    source: Source, tmp_path: Path, record_property: Any
) -> None:
    size = 300 << 20
    big = make_image(tmp_path / "layout", "big", layers=1, layer_size=size)
    push_layout(tmp_path / "layout", "big", source.registry.url, "org/big")
    with DockerRegistry(tmp_path / "dst") as dst:
        proc = subprocess.Popen(
            [sys.executable, "-m", "regcache", "copy", "--quiet",
             f"http://{source.registry.host}/org/big:big", f"{dst.url}/big/copy"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env(),
        )  # fmt: skip
        with PeakRss(proc.pid) as rss:
            _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        record_property("copy_peak_rss_mib", rss.peak / 2**20)
        print(f"peak RSS copying a {size >> 20} MiB blob: {rss.peak / 2**20:.1f} MiB")
        assert rss.peak < 120 << 20
        layer = big.blobs[-1]
        assert layer.size > size
        head = requests.head(f"{dst.url}/v2/big/copy/blobs/{layer.digest}", timeout=60)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == layer.size
        assert get(f"{dst.url}/v2/big/copy/manifests/big").content == big.manifest


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_bars_on_a_terminal_and_lines_elsewhere() -> None:
    terminal, piped = FakeTerminal(), io.StringIO()
    for stream in (terminal, piped):
        progress = Progress.choose(quiet=False, stream=stream)
        task = progress.task("blob sha256:0123456789ab", 2048)
        task.advance(1024)
        progress.line("an image line")
        task.advance(1024)
        task.finish("copied")
        progress.close()
    assert "[" in terminal.getvalue() and "\x1b[" in terminal.getvalue()
    assert "total (0 done)" in terminal.getvalue()
    assert piped.getvalue() == "an image line\nblob sha256:0123456789ab: copied (2.0 KiB)\n"
    quiet = io.StringIO()
    progress = Progress.choose(quiet=True, stream=quiet)
    progress.task("blob", 1).finish("copied")
    assert quiet.getvalue() == ""


def test_copy_within_one_registry_mounts_blobs(source: Source) -> None:
    src = source.registry
    src.reset_log_position()
    proc = regcache_copy(f"http://{src.host}/org/app:single", f"http://{src.host}/mounted/app")
    entries = src.requests()
    mounts = [e for e in entries if e.method == "POST" and "mount=" in e.path]
    assert {e.status for e in mounts} == {201}
    assert len(mounts) == len(source.single.blobs) and completed_uploads(entries) == []
    assert proc.stdout.count(": mounted") == len(source.single.blobs)
    assert walk(src.url, "mounted/app", "single")[0] == source.single.digest


def test_copy_answers_bearer_challenges_with_given_or_stored_credentials(
    source: Source, tmp_path: Path
) -> None:
    password = "n0t-Sh0wn-anywhere"
    with (
        DockerHub(tmp_path, source.registry.url, username="robot", password=password) as hub,
        DockerRegistry(tmp_path / "dst") as dst,
    ):
        src = f"http://127.0.0.1:{hub.port}/org/app:single"
        regcache_copy("--src-creds", f"robot:{password}", src, f"{dst.url}/flag/app")
        auth_file = tmp_path / "auth.json"
        secret = base64.b64encode(f"robot:{password}".encode()).decode()
        auth_file.write_text(json.dumps({"auths": {f"127.0.0.1:{hub.port}": {"auth": secret}}}))
        regcache_copy("--authfile", str(auth_file), src, f"{dst.url}/file/app")
        basic = "Basic " + secret
        assert hub.stats()["authorizations"].count(basic) >= 2
        for repo in ("flag/app", "file/app"):
            assert walk(dst.url, repo, "single")[0] == source.single.digest
        refused = subprocess.run(
            [sys.executable, "-m", "regcache", "copy", "--src-creds", f"robot:{password}x",
             src, f"{dst.url}/no/app"],
            capture_output=True, text=True, env=client_env(), timeout=60, check=False,
        )  # fmt: skip
    assert refused.returncode == 1 and "authentication failed" in refused.stderr
    assert password not in refused.stderr + refused.stdout


def test_resolve_names_the_digest_with_a_single_head(source: Source) -> None:
    src = source.registry
    src.reset_log_position()
    assert asyncio.run(resolve(parse_location(f"http://{src.host}/org/app:multi"))) == (
        source.index.digest
    )
    requests_made = [(e.method, e.path, e.status) for e in src.requests()]
    assert requests_made == [("HEAD", "/v2/org/app/manifests/multi", 200)]

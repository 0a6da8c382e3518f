"""`regcache pin PATH…` rewrites a workshop's mutable tags to `tag@sha256:…` in place.

The world: Debian's docker-registry as the upstream holding every image tests/workshops/pin
names, the Docker Hub emulator in front of it for `docker.io`, and a regcache with both as
upstreams (Docker Hub under `docker.io`, the registry itself under `registry.local`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from tooling.dockerhub import DockerHub
from tooling.images import make_image, make_index
from tooling.peers import DockerRegistry, client_env, http_request, push_layout
from tooling.server import Regcache

from regcache.workshop.pin import parse_problem

pytestmark = pytest.mark.peers
WORKSHOP = Path(__file__).parent / "workshops" / "pin"
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip
# Upstream repository and tag of every image the workshop names by a mutable tag.
UPSTREAM = [
    ("library/nginx", "1.25"), ("library/nginx", "latest"), ("library/redis", "7"),
    ("library/busybox", "latest"), ("library/python", "3.12-slim"), ("library/golang", "1.22"),
    ("library/postgres", "16"), ("grafana/grafana", "10.4"), ("org/tool", "2.0"),
]  # fmt: skip
# Every reference pin rewrites: file, line, the text as written, and the upstream image.
PINNED = [
    ("Dockerfile", 2, "python:3.12-slim", "library/python:3.12-slim"),
    ("Dockerfile", 4, "golang:1.22", "library/golang:1.22"),
    ("Dockerfile", 11, "nginx:latest", "library/nginx:latest"),
    ("docker-compose.yml", 4, "postgres:16", "library/postgres:16"),
    ("docker-compose.yml", 8, "redis:7", "library/redis:7"),
    ("docker-compose.yml", 10, "nginx", "library/nginx:latest"),
    ("k8s/app.yaml", 11, "postgres:16", "library/postgres:16"),
    ("k8s/app.yaml", 14, "nginx:1.25", "library/nginx:1.25"),
    ("k8s/app.yaml", 22, "docker.io/library/nginx:latest", "library/nginx:latest"),
    ("resources/workshop.yaml", 18, "redis:7", "library/redis:7"),
    ("resources/workshop.yaml", 20, "docker.io/grafana/grafana:10.4", "grafana/grafana:10.4"),
    ("resources/workshop.yaml", 34, "nginx:1.25", "library/nginx:1.25"),
    ("resources/workshop.yaml", 36, "busybox", "library/busybox:latest"),
    ("resources/workshop.yaml", 38, "registry.local/org/tool:2.0", "org/tool:2.0"),
    ("workshop/content/01-images.md", 8, "redis:7", "library/redis:7"),
    ("workshop/content/01-images.md", 15, "index.docker.io/library/busybox:latest",
     "library/busybox:latest"),
]  # fmt: skip
# References only --to-mirror rewrites: Docker Hub ones that need no digest.
MIRRORED_ONLY = [
    ("resources/workshop.yaml", 40,
     "alpine@sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1",
     "docker.io/library/alpine@sha256:"
     "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1"),
    ("workshop/content/01-images.md", 9, "nginx:1.25.3", "docker.io/library/nginx:1.25.3"),
]  # fmt: skip
DIGEST_SUFFIX = re.compile(r"(?::latest)?@sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class World:
    upstream: DockerRegistry
    hub: DockerHub
    cache: Regcache
    digests: dict[str, str]  # by upstream `repo:tag`, as the upstream registry answers


def head_digest(registry: str, repo: str, tag: str) -> str:
    status, headers, _ = http_request("HEAD", f"{registry}/v2/{repo}/manifests/{tag}",
                                      headers={"Accept": ACCEPT})  # fmt: skip
    assert status == 200, (repo, tag, status)
    return headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Every image of tests/workshops/pin upstream (nginx:latest a two-platform index), and a
    regcache logging JSON, so that the requests pin makes can be read from its log."""
    work = tmp_path_factory.mktemp("pin")
    with DockerRegistry(work / "registry") as upstream:
        digests = {}
        for number, (repo, tag) in enumerate(UPSTREAM):
            layout = work / f"layout-{number}"
            if tag == "latest" and repo == "library/nginx":
                image = make_index(layout, tag, layers=1, layer_size=2_000)
            else:
                image = make_image(layout, tag, layers=1, layer_size=2_000)
            push_layout(layout, tag, upstream.url, repo)
            digests[f"{repo}:{tag}"] = head_digest(upstream.url, repo, tag)
            assert digests[f"{repo}:{tag}"] == image.digest
        with DockerHub(work, upstream.url) as hub:
            config = {
                "log_format": "json",
                "upstreams": [
                    {"name": "dockerhub", "url": hub.url, "prefix": "docker.io", "mirror": True,
                     "docker_hub": True},
                    {"name": "plain", "url": upstream.url, "prefix": "registry.local"},
                ],
            }  # fmt: skip
            (work / "regcache.json").write_text(json.dumps(config))
            with Regcache(work / "cache", config=work / "regcache.json") as cache:
                yield World(upstream, hub, cache, digests)


def regcache_pin(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regcache", "pin", *map(str, args)],
        capture_output=True, text=True, env=client_env(), timeout=300, check=False,
    )  # fmt: skip


def copy_workshop(tmp_path: Path) -> Path:
    """A writable copy of the fixture, its compose file with CRLF line ends and mode 0640."""
    root = tmp_path / "workshop"
    shutil.copytree(WORKSHOP, root)
    compose = root / "docker-compose.yml"
    compose.write_bytes(compose.read_bytes().replace(b"\n", b"\r\n"))
    compose.chmod(0o640)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def expected_files(
    before: dict[str, bytes], edits: list[tuple[str, int, str, str]]
) -> dict[str, bytes]:
    """`before` with each (file, line, text, new text) made: `text` must be written once on
    its line, and nothing else changes — other lines, the rest of the line, line ends."""
    lines = {name: data.decode().splitlines(keepends=True) for name, data in before.items()}
    for name, number, text, new in edits:
        line = lines[name][number - 1]
        assert line.count(text) == 1, (name, number, text)
        lines[name][number - 1] = line.replace(text, new)
    return {name: "".join(content).encode() for name, content in lines.items()}


def pinned_text(world: World, text: str, upstream: str) -> str:
    tagged = ":" in text.rsplit("/", 1)[-1]
    return f"{text}{'' if tagged else ':latest'}@{world.digests[upstream]}"


def access_log(cache: Regcache, offset: int) -> list[dict[str, Any]]:
    """The regcache's access-log entries after `offset` characters of its log."""
    lines = [json.loads(line) for line in cache.log()[offset:].splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry["logger"] == "regcache.access"]


def same_but_pinned(before: Any, after: Any) -> None:
    """Parsed YAML equal but for strings that gained a digest."""
    if isinstance(before, dict):
        assert list(before) == list(after)
        for key in before:
            same_but_pinned(before[key], after[key])
    elif isinstance(before, list):
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            same_but_pinned(old, new)
    elif before != after:
        assert isinstance(after, str) and after.startswith(before), (before, after)
        assert DIGEST_SUFFIX.fullmatch(after[len(before) :]), after


def yaml_documents(data: bytes) -> list[Any]:
    return list(YAML(typ="safe").load_all(data.decode()))


def test_pin_rewrites_each_mutable_reference_in_place_and_a_second_pin_changes_nothing(
    world: World, tmp_path: Path
) -> None:
    root = copy_workshop(tmp_path)
    before = snapshot(root)
    offset = len(world.cache.log())

    proc = regcache_pin("--url", world.cache.url, root)

    assert proc.returncode == 0, proc.stderr
    after = snapshot(root)
    edits = [(name, line, text, pinned_text(world, text, upstream))
             for name, line, text, upstream in PINNED]  # fmt: skip
    assert after == expected_files(before, edits)
    assert proc.stdout.splitlines() == [
        f"{root / 'Dockerfile'}: pinned 3 references",
        f"{root / 'docker-compose.yml'}: pinned 3 references",
        f"{root / 'k8s/app.yaml'}: pinned 3 references",
        f"{root / 'resources/workshop.yaml'}: pinned 5 references",
        f"{root / 'workshop/content/01-images.md'}: pinned 2 references",
        "pinned 16 references in 5 files",
    ]
    # HEAD requests only, one per distinct reference, by the cache's prefixed names.
    requests = [(entry["method"], entry["path"]) for entry in access_log(world.cache, offset)]
    assert sorted(requests) == sorted(
        ("HEAD", f"/v2/{'registry.local' if repo == 'org/tool' else 'docker.io'}/{repo}"
                 f"/manifests/{tag}")
        for repo, tag in UPSTREAM
    )  # fmt: skip
    # Every YAML file still parses, to the same data but for the pinned images; quoting,
    # comments and line ends are as they were.
    for name in ("docker-compose.yml", "k8s/app.yaml", "resources/workshop.yaml"):
        old, new = yaml_documents(before[name]), yaml_documents(after[name])
        assert len(old) == len(new)
        for document, rewritten in zip(old, new, strict=True):
            same_but_pinned(document, rewritten)
    compose = after["docker-compose.yml"].decode()
    assert compose.count("\r\n") == compose.count("\n") == before["docker-compose.yml"].count(b"\n")
    assert (
        f'    image: "postgres:16@{world.digests["library/postgres:16"]}"   # quoted\r\n' in compose
    )
    assert f"    image: 'nginx:latest@{world.digests['library/nginx:latest']}'\r\n" in compose
    assert stat.S_IMODE(os.stat(root / "docker-compose.yml").st_mode) == 0o640
    assert not list(root.rglob("*.pin"))

    offset = len(world.cache.log())
    again = regcache_pin("--url", world.cache.url, root)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "pinned 0 references in 0 files\n"
    assert snapshot(root) == after
    assert access_log(world.cache, offset) == []


def test_dry_run_prints_the_diff_and_writes_nothing(world: World, tmp_path: Path) -> None:
    root = copy_workshop(tmp_path)
    before = snapshot(root)

    dry = regcache_pin("--url", world.cache.url, "--dry-run", root)

    assert dry.returncode == 0, dry.stderr
    assert snapshot(root) == before
    assert dry.stderr == "would pin 16 references in 5 files\n"
    headers = [line for line in dry.stdout.splitlines() if line.startswith(("---", "+++"))]
    assert len(headers) == 10
    removed = [line[1:] for line in dry.stdout.splitlines()
               if line.startswith("-") and not line.startswith("---")]  # fmt: skip
    added = [line[1:] for line in dry.stdout.splitlines()
             if line.startswith("+") and not line.startswith("+++")]  # fmt: skip

    as_json = regcache_pin("--url", world.cache.url, "--dry-run", "--json", root)
    assert as_json.returncode == 0, as_json.stderr
    planned = json.loads(as_json.stdout)
    assert snapshot(root) == before
    assert [(Path(e["file"]).relative_to(root).as_posix(), e["line"], e["before"])
            for e in planned] == [(name, line, text) for name, line, text, _ in PINNED]  # fmt: skip
    for entry in planned:
        line = before[Path(entry["file"]).relative_to(root).as_posix()].decode()
        line = line.splitlines()[entry["line"] - 1]
        assert line[entry["column"] - 1 :].startswith(entry["before"])

    assert regcache_pin("--url", world.cache.url, root).returncode == 0
    after = snapshot(root)
    changed_old, changed_new = [], []
    for name, old in before.items():
        for old_line, new_line in zip(old.decode().splitlines(),
                                      after[name].decode().splitlines(), strict=True):  # fmt: skip
            if old_line != new_line:
                changed_old.append(old_line)
                changed_new.append(new_line)
    assert (removed, added) == (changed_old, changed_new)


def test_to_mirror_moves_docker_hub_references_to_the_cache_prefix(
    world: World, tmp_path: Path
) -> None:
    root = copy_workshop(tmp_path)
    before = snapshot(root)
    mirror = "cache.example:5000"

    proc = regcache_pin("--url", world.cache.url, "--to-mirror", mirror, root)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "rewrote 18 references in 5 files"
    edits = []
    for name, line, text, upstream in PINNED:
        digest = world.digests[upstream]
        if upstream.startswith("org/"):  # not Docker Hub: pinned where it is
            edits.append((name, line, text, f"{text}@{digest}"))
        else:
            edits.append((name, line, text, f"{mirror}/docker.io/{upstream}@{digest}"))
    edits += [(name, line, text, f"{mirror}/{new}") for name, line, text, new in MIRRORED_ONLY]
    assert snapshot(root) == expected_files(before, edits)
    workshop = (root / "resources/workshop.yaml").read_text()
    tool = f"registry.local/org/tool:2.0@{world.digests['org/tool:2.0']}"
    assert f"          image: {tool} # from another registry\n" in workshop
    assert "    image: ghcr.io/acme/workshop-base:2.0.1   # pinned tag: left alone\n" in workshop

    after = snapshot(root)
    again = regcache_pin("--url", world.cache.url, "--to-mirror", mirror, root)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == after


def test_direct_resolution_asks_the_image_registry_with_head_requests_only(
    world: World, tmp_path: Path
) -> None:
    host = world.upstream.host
    (tmp_path / "Dockerfile").write_text(f"FROM {host}/library/redis:7\nFROM {host}/org/tool:2.0\n")
    (tmp_path / "pod.yaml").write_text(
        f"spec:\n  containers:\n  - image: {host}/library/redis:7  # again\n"
    )
    world.upstream.reset_log_position()

    proc = regcache_pin("--direct", "--plain-http", tmp_path)

    assert proc.returncode == 0, proc.stderr
    redis, tool = world.digests["library/redis:7"], world.digests["org/tool:2.0"]
    assert (tmp_path / "Dockerfile").read_text() == (
        f"FROM {host}/library/redis:7@{redis}\nFROM {host}/org/tool:2.0@{tool}\n"
    )
    assert (
        (tmp_path / "pod.yaml").read_text().endswith(f"{host}/library/redis:7@{redis}  # again\n")
    )
    requests = sorted((entry.method, entry.path) for entry in world.upstream.requests())
    assert requests == [
        ("HEAD", "/v2/library/redis/manifests/7"),
        ("HEAD", "/v2/org/tool/manifests/2.0"),
    ]


def test_references_that_cannot_be_pinned_are_reported_and_left_as_they_are(
    world: World, tmp_path: Path
) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "spec:\n"
        "  containers:\n"
        "  - image: nginx:9.9            # no such tag\n"
        "  - image: redis:7\n"
        '  - image: "busybox:lates\\x74"  # not written as it reads\n'
    )

    proc = regcache_pin("--url", world.cache.url, tmp_path)

    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"regcache: {pod}:3:12: nginx:9.9: not resolved: ")
    assert lines[1].startswith(f"regcache: {pod}:5:")
    assert "busybox:latest: not written at this position as parsed" in lines[1]
    assert proc.stdout == f"{pod}: pinned 1 reference\npinned 1 reference in 1 file\n"
    text = pod.read_text().splitlines()
    assert text[2] == "  - image: nginx:9.9            # no such tag"
    assert text[3] == f"  - image: redis:7@{world.digests['library/redis:7']}"
    assert text[4] == '  - image: "busybox:lates\\x74"  # not written as it reads'


def test_an_unreachable_regcache_fails_every_reference_and_changes_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM nginx:1.25\n")
    proc = regcache_pin("--url", "http://127.0.0.1:9", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"regcache: {tmp_path / 'Dockerfile'}:1:6: nginx:1.25: ")
    assert (tmp_path / "Dockerfile").read_text() == "FROM nginx:1.25\n"


@pytest.mark.parametrize("host", ["regcache", "http://cache.example:5000", "a/b"])
def test_a_mirror_must_be_a_registry_host(tmp_path: Path, host: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM nginx:1.25.3\n")
    proc = regcache_pin("--to-mirror", host, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"regcache: --to-mirror takes a registry host such as cache.example:5000, not {host!r}\n"
    )


def test_a_rewrite_that_would_not_parse_is_refused() -> None:
    assert parse_problem(Path("a.yaml"), "a: [b]\n", "a: [b]@x\n") is not None
    assert parse_problem(Path("a.yaml"), "a: [b]\n", "a: [b@x]\n") is None
    template = "image: {{ .Values.image }}\n{{- end }}\n"
    assert parse_problem(Path("t.yaml"), template, template + "x") is None  # never parsed
    assert parse_problem(Path("Dockerfile"), "FROM a\n", "FROM a@\n") is None

"""Property-based fuzzing (hypothesis) of reference and name parsing and of the HTTP API.

Parsing: arbitrary text never raises anything but the documented `RegistryError` (or None
from `parse_image`); names, tags, digests and image references generated from the grammar
are accepted and round-trip; the router splits prefixed names back into their parts.

HTTP: one regcache process with a hosted image (tags, an index, a referrer) and a
pull-through upstream (a real docker-registry) whose image is already cached and pinned.
Hypothesis sends random methods, paths from the /v2/ grammar mixed with mangled segments,
query strings, headers, bodies and framings (short, long and chunked bodies) over raw
sockets. Every mutating request is built so that it must fail; the properties are: never a
5xx, every 4xx under /v2/ (but HEAD) carries the spec's error JSON with a known code, never
a 201, 202 or 204, no unhandled error in the log, the process stays up, and the store (blob
files, temporary files, metadata rows but pull counters) is unchanged. A request that is not
valid HTTP/1.1 (junk method, broken framing, raw unicode, duplicate singleton headers) is
answered by aiohttp's parser, not by regcache: it only must not get a 5xx. aiohttp also
answers an unknown `Expect` (417) and a blob `Range` past the end (416, `bytes */size`).
The HTTP tests start docker-registry, so they carry the `peers` mark.

Reproducibility: the default profile `ci` is derandomized and keeps no example database,
so every run sends the same cases. `HYPOTHESIS_PROFILE=random pytest tests/test_fuzz.py`
explores new cases on each run. Each test prints and asserts its case count.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, unquote, unquote_plus

import bcrypt
import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tooling.oci import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Client, sha256, store_snapshot
from tooling.peers import DockerRegistry, http_request
from tooling.server import Regcache

from regcache.config import Upstream
from regcache.digest import ALGORITHMS, Digest, is_digest
from regcache.errors import ErrorCode, RegistryError
from regcache.image_ref import DOCKER_HUB, DOCKER_HUB_ALIASES, ImageRef, parse_image
from regcache.manifest import parse_manifest
from regcache.proxy.router import Router
from regcache.reference import (
    MAX_NAME_LENGTH,
    NAME_RE,
    TAG_RE,
    parse_reference,
    validate_name,
    validate_tag,
)
from regcache.upstream import UpstreamClient

settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("random", derandomize=False, database=None, deadline=None)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
PARSE_EXAMPLES = 1200
HTTP_EXAMPLES = 1500
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


def report(capsys: pytest.CaptureFixture[str], what: str, count: int, wanted: int) -> None:
    """Print a property's case count and insist that every case ran."""
    with capsys.disabled():
        print(f"\n[fuzz] {what}: {count} cases ({'ci' if PROFILE.derandomize else 'random'})")
    assert count >= wanted


# ---------------------------------------------------------------------------------------------
# The grammar, bounded

# Built from parts rather than `st.from_regex`, which is ten times slower on these.
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"
TAG_CHARS = ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"

runs = st.text(ALNUM, min_size=1, max_size=8)
components = st.builds(
    lambda first, rest: first + "".join(s + r for s, r in rest),
    runs,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--", "---"]), runs), max_size=3),
)  # [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
valid_names = st.lists(components, min_size=1, max_size=6).map("/".join)  # at most 251 chars
valid_tags = st.builds(
    str.__add__, st.sampled_from(TAG_CHARS), st.text(TAG_CHARS + ".-", max_size=127)
)  # [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
valid_digests = st.sampled_from(ALGORITHMS).flatmap(
    lambda algorithm: st.binary(
        min_size=hashlib.new(algorithm).digest_size, max_size=hashlib.new(algorithm).digest_size
    ).map(lambda raw: f"{algorithm}:{raw.hex()}")
)
grammar_digests = st.builds(
    lambda first, rest, encoded: first + "".join(s + r for s, r in rest) + ":" + encoded,
    runs,
    st.lists(st.tuples(st.sampled_from("+._-"), runs), max_size=2),
    st.text(ALNUM + "ABCXYZ=_-", min_size=1, max_size=140),
)  # [a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+
GRAMMAR_ALPHABET = "abcxyz0189ABZ._-/:@+=$ {}()%\t\n\u00e9\u212a\u0131"
UNICODE = ["\u00e9", "\u212a", "\u0131", "\u2024", "\uff0e", "\u0000", "\U0001f433", "\ud800"]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """`base` with a few character-level edits: what a typo or an attacker makes of it."""
    text = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace", "upper", "double"]))
        char = draw(st.sampled_from(list(GRAMMAR_ALPHABET) + UNICODE))
        if edit == "insert":
            text = text[:where] + char + text[where:]
        elif edit == "delete":
            text = text[:where] + text[where + 1 :]
        elif edit == "replace":
            text = text[:where] + char + text[where + 1 :]
        elif edit == "upper":
            text = text.upper()
        else:
            text = text[:where] + text[where:] * 2
    return text


arbitrary_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=())),
    st.text(GRAMMAR_ALPHABET, max_size=80),
    mutated(valid_names),
    mutated(valid_tags),
    mutated(valid_digests),
    mutated(st.tuples(valid_names, valid_tags).map(":".join)),
)


# ---------------------------------------------------------------------------------------------
# Parsing properties


def _fails_with(call: Callable[[], object], code: ErrorCode) -> bool:
    """True if `call` raised RegistryError `code` (whose body is the spec's JSON), False if it
    returned; any other exception propagates and fails the property."""
    try:
        call()
    except RegistryError as error:
        assert error.code is code, error
        assert error.status == code.status
        assert json.loads(error.body())["errors"][0]["message"] == error.message
        return True
    return False


def test_arbitrary_text_meets_only_the_documented_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    count = 0

    @settings(PROFILE, max_examples=PARSE_EXAMPLES)
    @given(arbitrary_text)
    def case(text: str) -> None:
        nonlocal count
        name_ok = not _fails_with(lambda: validate_name(text), ErrorCode.NAME_INVALID)
        assert name_ok == (len(text) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(text) is not None)
        if name_ok:
            assert validate_name(text) == text
        tag_ok = not _fails_with(lambda: validate_tag(text), ErrorCode.MANIFEST_INVALID)
        assert tag_ok == (TAG_RE.fullmatch(text) is not None)
        assert is_digest(text) == (":" in text)
        digest_ok = not _fails_with(lambda: Digest.parse(text), ErrorCode.DIGEST_INVALID)
        if digest_ok:
            digest = Digest.parse(text)
            assert str(digest) == text and digest.algorithm in ALGORITHMS
        if is_digest(text):
            assert digest_ok != _fails_with(lambda: parse_reference(text), ErrorCode.DIGEST_INVALID)
        else:
            assert tag_ok != _fails_with(lambda: parse_reference(text), ErrorCode.MANIFEST_INVALID)
            if tag_ok:
                assert parse_reference(text) == text
        ref = parse_image(text)
        assert ref is None or isinstance(ref, ImageRef)
        if ref is not None and not ref.templated:
            assert NAME_RE.fullmatch(ref.repository), ref
            assert ref.tag is None or TAG_RE.fullmatch(ref.tag), ref
            again = parse_image(str(ref))
            assert again is not None, ref
            assert (again.name, again.tag, again.digest) == (ref.name, ref.tag, ref.digest)
        count += 1

    case()
    report(capsys, "arbitrary text through every parser", count, PARSE_EXAMPLES)


def test_grammar_names_tags_and_digests_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    count = 0

    @settings(PROFILE, max_examples=PARSE_EXAMPLES)
    @given(valid_names, valid_tags, valid_digests, grammar_digests, st.integers(0, 300))
    def case(name: str, tag: str, digest: str, other: str, extra: int) -> None:
        nonlocal count
        assert validate_name(name) == name
        assert validate_tag(tag) == tag and parse_reference(tag) == tag
        parsed = Digest.parse(digest)
        assert str(parsed) == digest and parse_reference(digest) == parsed
        other_ok = not _fails_with(lambda: Digest.parse(other), ErrorCode.DIGEST_INVALID)
        if other_ok:  # only the supported algorithms parse
            assert other.split(":")[0] in ALGORITHMS
        # The length limit, at and over the boundary: 255 is fine, 256 and more are not.
        padded = f"{name}/{'a' * max(1, MAX_NAME_LENGTH - len(name) + extra)}"
        assert _fails_with(lambda: validate_name(padded), ErrorCode.NAME_INVALID) == (
            len(padded) > MAX_NAME_LENGTH
        )
        longest = f"{name}/{'b' * (MAX_NAME_LENGTH - len(name) - 1)}"
        if len(name) < MAX_NAME_LENGTH - 1:
            assert len(longest) == MAX_NAME_LENGTH and validate_name(longest) == longest
        long_tag = tag + "x" * (129 - len(tag) + extra)
        assert _fails_with(lambda: validate_tag(long_tag), ErrorCode.MANIFEST_INVALID)
        count += 1

    case()
    report(capsys, "grammar names, tags and digests", count, PARSE_EXAMPLES)


hosts = st.one_of(
    st.just("localhost"),
    st.lists(runs, min_size=2, max_size=4).map(".".join),
    st.sampled_from(sorted(DOCKER_HUB_ALIASES)),
)
ports = st.none() | st.integers(1, 65535).map(str)


@st.composite
def image_refs(draw: st.DrawFn) -> ImageRef:
    """A fully qualified reference, with tag, digest, both or neither."""
    host, port = draw(hosts), draw(ports)
    registry = f"{host}:{port}" if port else host
    repository = draw(valid_names)
    if registry in DOCKER_HUB_ALIASES and "/" not in repository:
        repository = f"library/{repository}"
    tag = draw(st.none() | valid_tags)
    digest = draw(st.none() | valid_digests | grammar_digests)
    return ImageRef(registry, repository, tag, digest)


def test_image_references_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    count = 0

    @settings(PROFILE, max_examples=PARSE_EXAMPLES)
    @given(image_refs(), valid_names, st.none() | valid_tags)
    def case(ref: ImageRef, short: str, tag: str | None) -> None:
        nonlocal count
        expected = ImageRef(DOCKER_HUB if ref.is_docker_hub else ref.registry, ref.repository,
                            ref.tag, ref.digest)  # fmt: skip
        assert parse_image(str(ref)) == expected
        assert parse_image(f"  {ref}\n") == expected
        first = short.split("/")[0]
        if "." not in first and first != "localhost":  # docker's short forms: Docker Hub
            text = short + (f":{tag}" if tag else "")
            repository = short if "/" in short else f"library/{short}"
            assert parse_image(text) == ImageRef(DOCKER_HUB, repository, tag, None)
        count += 1

    case()
    report(capsys, "image references", count, PARSE_EXAMPLES)


def _upstream(prefix: str, *, docker_hub: bool, mirror: bool) -> UpstreamClient:
    config = Upstream(name=prefix, url="http://127.0.0.1:9", prefix=prefix,
                      docker_hub=docker_hub, mirror=mirror)  # fmt: skip
    return UpstreamClient(config, cast(Any, None), cast(Any, None))  # no request is made


def test_router_splits_names_by_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    count = 0

    @settings(PROFILE, max_examples=PARSE_EXAMPLES)
    @given(
        st.lists(components, min_size=1, max_size=2).map("/".join),
        valid_names,
        st.booleans(),
        st.booleans(),
        arbitrary_text,
    )
    def case(prefix: str, rest: str, docker_hub: bool, mirror: bool, junk: str) -> None:
        nonlocal count
        upstream = _upstream(prefix, docker_hub=docker_hub, mirror=mirror)
        router = Router([upstream])
        remote = router.by_prefix(f"{prefix}/{rest}")
        assert remote is not None and remote.upstream is upstream
        assert remote.name == (f"library/{rest}" if docker_hub and "/" not in rest else rest)
        assert remote.local == f"{prefix}/{remote.name}" and NAME_RE.fullmatch(remote.local)
        for name in (rest, junk, prefix, f"{prefix}x/{rest}"):
            if not name.startswith(prefix + "/"):
                assert router.by_prefix(name) is None
            by_mirror = router.by_mirror(name, {})
            assert (by_mirror is not None) == mirror
            if by_mirror is not None:
                assert by_mirror.local == f"{prefix}/{upstream.remote_name(name)}"
            by_ns = router.by_mirror(name, {"ns": prefix})
            assert by_ns is not None and by_ns.upstream is upstream
            assert router.by_mirror(name, {"ns": prefix + ".other"}) is None
        count += 1

    case()
    report(capsys, "router name split", count, PARSE_EXAMPLES)


# ---------------------------------------------------------------------------------------------
# The seeded world: a hosted image in regcache, an image upstream that regcache has cached


ADMIN_TOKEN = "fuzz-admin-token-0123456789"
CI_TOKEN = "fuzz-ci-token-0123456789"
USER, PASSWORD = "alice", "fuzz-password"
HOSTED = "fuzz/hosted"
PREFIX = "registry.local"
UPSTREAM_REPO = "org/app"
CACHED = f"{PREFIX}/{UPSTREAM_REPO}"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
SIG_TYPE = "application/vnd.example.signature"


def _descriptor(data: bytes, media_type: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def _image(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": _descriptor(config, CONFIG_TYPE if config != b"{}" else OCI_EMPTY),
        "layers": [_descriptor(layer, LAYER_TYPE) for layer in layers], **extra,
    }).encode()  # fmt: skip


HOSTED_CONFIG = b'{"architecture":"amd64","os":"linux","fuzz":"hosted"}'
HOSTED_LAYERS = [b"hosted layer one\n" * 64, b"hosted layer two\n" * 300]
HOSTED_MANIFEST = _image(HOSTED_CONFIG, HOSTED_LAYERS)
SIG_LAYER = b"a signature of the hosted image"
SIG_MANIFEST = _image(b"{}", [SIG_LAYER], artifactType=SIG_TYPE,
                      subject=_descriptor(HOSTED_MANIFEST, OCI_MANIFEST))  # fmt: skip
INDEX_MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_INDEX,
    "manifests": [{**_descriptor(HOSTED_MANIFEST, OCI_MANIFEST),
                   "platform": {"architecture": "amd64", "os": "linux"}}],
}).encode()  # fmt: skip
HOSTED_TAGS = {"v1": HOSTED_MANIFEST, "latest": HOSTED_MANIFEST, "multi": INDEX_MANIFEST}
UPSTREAM_CONFIG = b'{"architecture":"arm64","os":"linux","fuzz":"upstream"}'
UPSTREAM_LAYERS = [b"upstream layer\n" * 500, b"another upstream layer\n" * 40]
UPSTREAM_MANIFEST = _image(UPSTREAM_CONFIG, UPSTREAM_LAYERS)
UPSTREAM_TAG = "1.0"

HOSTED_BLOBS = [HOSTED_CONFIG, *HOSTED_LAYERS, b"{}", SIG_LAYER]
UPSTREAM_BLOBS = [UPSTREAM_CONFIG, *UPSTREAM_LAYERS]
MANIFESTS = [HOSTED_MANIFEST, SIG_MANIFEST, INDEX_MANIFEST, UPSTREAM_MANIFEST]
HOSTED_DIGESTS = [sha256(b) for b in HOSTED_BLOBS + MANIFESTS[:3]]
UPSTREAM_DIGESTS = [sha256(b) for b in [*UPSTREAM_BLOBS, UPSTREAM_MANIFEST]]
STORED = set(HOSTED_DIGESTS) | set(UPSTREAM_DIGESTS)
KNOWN_REFS = {*HOSTED_TAGS, UPSTREAM_TAG, *STORED}
NEVER = [sha256(f"fuzz: never stored {i}".encode()) for i in range(3)] + [
    "sha512:" + hashlib.sha512(b"fuzz: never stored").hexdigest()
]
NEVER_LAYER = {"mediaType": LAYER_TYPE, "digest": NEVER[0], "size": 12}
KNOWN_CODES = {code.name for code in ErrorCode} | {"UNKNOWN"}


def _push_upstream(url: str) -> None:
    """docker-registry takes no monolithic POST: a session, then a PUT of each blob."""
    for blob in UPSTREAM_BLOBS:
        status, headers, body = http_request("POST", f"{url}/v2/{UPSTREAM_REPO}/blobs/uploads/")
        assert status == 202, body
        location = headers["Location"]
        location = location if location.startswith("http") else url + location
        separator = "&" if "?" in location else "?"
        status, _, body = http_request("PUT", f"{location}{separator}digest={sha256(blob)}", blob,
                                       {"Content-Type": "application/octet-stream"})  # fmt: skip
        assert status == 201, body
    status, _, body = http_request(
        "PUT", f"{url}/v2/{UPSTREAM_REPO}/manifests/{UPSTREAM_TAG}", UPSTREAM_MANIFEST,
        {"Content-Type": OCI_MANIFEST},
    )  # fmt: skip
    assert status == 201, body


def _seed(cache: Regcache) -> None:
    """The hosted image with tags, an index and a referrer; the upstream image cached, pinned."""
    client = Client(cache.url)
    for blob in HOSTED_BLOBS:
        client.push_blob(HOSTED, blob)
    for tag, body in HOSTED_TAGS.items():
        put = client.put_manifest(HOSTED, tag, body, json.loads(body)["mediaType"])
        assert put.status_code == 201, put.text
    assert client.put_manifest(HOSTED, sha256(SIG_MANIFEST), SIG_MANIFEST).status_code == 201
    for name in (CACHED, UPSTREAM_REPO):  # by its prefix and through the mirror
        for ref in (UPSTREAM_TAG, sha256(UPSTREAM_MANIFEST)):
            got = client.get(f"{name}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
            assert got.content == UPSTREAM_MANIFEST, got.text
        for blob in UPSTREAM_BLOBS:
            assert client.get(f"{name}/blobs/{sha256(blob)}").content == blob
    pinned = requests.post(f"{cache.url}/admin/pin", json={"repository": CACHED, "ref": "1.0"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    assert pinned.status_code == 200, pinned.text


@dataclass
class World:
    upstream: DockerRegistry
    cache: Regcache


@contextmanager
def _start_world(work: Path) -> Iterator[World]:
    with DockerRegistry(work / "upstream") as upstream:
        _push_upstream(upstream.url)
        config = work / "regcache.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (work / "htpasswd").write_text(f"{USER}:{hashed}\n")
        config.write_text(json.dumps({
            "admin_token": ADMIN_TOKEN,
            "upstreams": [{"name": "up", "url": upstream.url, "prefix": PREFIX, "mirror": True,
                           "docker_hub": False, "tag_ttl": 1e9, "retries": 0, "timeout": 10}],
            # Credentials to check, but anonymous clients may push: the handlers stay reachable.
            "tenants": [{"name": "fuzz", "default": True, "anonymous": "push",
                         "htpasswd": str(work / "htpasswd"),
                         "tokens": [{"name": "ci", "token": CI_TOKEN, "push": True}]}],
        }))  # fmt: skip
        with Regcache(work / "regcache", config=config) as cache:
            _seed(cache)
            yield World(upstream, cache)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with _start_world(tmp_path_factory.mktemp("fuzz")) as started:
        yield started


Snapshot = tuple[list[tuple[str, int]], dict[str, list[tuple[Any, ...]]]]
# Pull counters and times: a GET is a pull, counted for the image and the tenant's share.
VOLATILE = {"manifests": ("last_pull", "pulls"), "tenant_images": ("last_pull",)}


def snapshot(data_dir: Path) -> Snapshot:
    """Every file of the data directory (but the database) with its size, and every metadata
    row without the pull counters."""
    files = sorted(
        (str(p.relative_to(data_dir)), p.stat().st_size)
        for p in data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("metadata.db")
    )
    _, rows = store_snapshot(data_dir)
    db = sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True)
    try:
        for table, volatile in VOLATILE.items():
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            keep = [i for i, column in enumerate(columns) if column not in volatile]
            rows[table] = [tuple(row[i] for i in keep) for row in rows.get(table, [])]
    finally:
        db.close()
    return files, rows


def changes(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What differs between two snapshots, table by table: for the failure message."""
    diff: dict[str, Any] = {}
    if before[0] != after[0]:
        diff["files"] = {"gone": sorted(set(before[0]) - set(after[0])),
                         "new": sorted(set(after[0]) - set(before[0]))}  # fmt: skip
    for table in sorted(set(before[1]) | set(after[1])):
        old, new = set(before[1].get(table, [])), set(after[1].get(table, []))
        if old != new:
            diff[table] = {"gone": sorted(old - new), "new": sorted(new - old)}
    return diff


# ---------------------------------------------------------------------------------------------
# Requests: the /v2/ grammar, mangled


STANDARD_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]
JUNK_METHODS = ["TRACE", "PROPFIND", "PURGE", "FOO", "get", "M-SEARCH", "X" * 40]
MUTATING = {"PUT", "POST", "PATCH", "DELETE"}
MEDIA_TYPES = [
    OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json",
    "application/octet-stream", f"{OCI_MANIFEST}; charset=utf-8", "*/*", "",
]  # fmt: skip
FRAMING_HEADERS = {b"content-length", b"transfer-encoding", b"host", b"connection"}
SINGLETON_HEADERS = {b"content-length", b"content-location", b"content-range", b"content-type",
                     b"etag", b"host", b"max-forwards", b"server", b"transfer-encoding",
                     b"user-agent"}  # aiohttp's parser refuses two of one  # fmt: skip
LIMIT_LINE = 8000  # aiohttp refuses longer request lines and header fields

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=60)  # fmt: skip
junk_names = st.text(ALNUM + "ABCXYZ!#$%&'*+.^_`|~-", min_size=1, max_size=30)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws. (`st.integers(0, n) == 0` is far more often true:
    hypothesis favours the bounds.)"""
    half = [False] * (one_in // 2)
    return draw(st.sampled_from([*half, True, *half[1:]]))


def _q(text: str, safe: str = "/:") -> str:
    return quote(text, safe=safe, errors="surrogatepass")


def _pct(text: str) -> str:
    return _q(text, safe="")


@st.composite
def mangled(draw: st.DrawFn, segment: str) -> str:
    """A path segment as sent: mostly unchanged, sometimes percent-encoded, dotted, emptied,
    upper-cased, unicode, or very long."""
    odd = ["pct", "pct-some", "dots", "dot", "empty", "upper", "unicode", "long", "slashes", "edit"]
    how = draw(st.sampled_from(["keep"] * 24 + odd))
    if how == "keep":
        return _q(segment, "/:@+=$,;~!*'()&")
    if how == "pct":
        return _pct(segment)
    if how == "pct-some":
        cut = draw(st.integers(0, len(segment)))
        return _q(segment[:cut]) + _pct(segment[cut:])
    segment = _q(segment)
    if how == "dots":
        dotted = ["..", f"{segment}/..", f"../{segment}", "%2e%2e", f"{segment}/../..",
                  f"x/%2E%2E/{segment}"]  # fmt: skip
        return draw(st.sampled_from(dotted))
    if how == "dot":
        return f"./{segment}"
    if how == "empty":
        emptied = ["", "/", f"{segment}/", f"/{segment}", f"{segment}//x"]
        return draw(st.sampled_from(emptied))
    if how == "upper":
        return segment.upper()
    if how == "unicode":
        return segment + _q(draw(st.sampled_from(UNICODE[:-1])))
    if how == "long":
        return segment + "a" * draw(st.integers(200, 9000))
    if how == "slashes":
        return segment.replace("/", draw(st.sampled_from(["//", "/./", "%2F", "%2f", "\\"])))
    return _q(draw(mutated(st.just(segment or "x"))))


LITERAL_NAMES = [HOSTED, CACHED, UPSTREAM_REPO, f"{PREFIX}/org/missing", "org/missing",
                 "fuzz/other", PREFIX, "library/nginx"]  # fmt: skip
names = st.one_of(
    st.sampled_from(LITERAL_NAMES),
    st.sampled_from(LITERAL_NAMES),
    valid_names,
    valid_names,
    mutated(st.sampled_from(LITERAL_NAMES)),
    st.text(GRAMMAR_ALPHABET, max_size=20),
)
unknown_refs = st.one_of(
    valid_tags.filter(lambda t: t not in KNOWN_REFS), st.sampled_from(NEVER),
    st.sampled_from(["sha256:zzz", "md5:d41d8cd98f00b204e9800998ecf8427e", ".hidden", "-dash",
                     "a" * 129, "sha256:" + "A" * 64, "sha512:" + "b" * 64, "x:y", ":", "@"]),
    valid_digests.filter(lambda d: d not in STORED), grammar_digests, mutated(valid_tags),
)  # fmt: skip
any_refs = st.sampled_from(sorted(KNOWN_REFS)) | unknown_refs
unknown_digests = st.sampled_from(NEVER) | valid_digests.filter(lambda d: d not in STORED) | (
    st.sampled_from(["sha256:zzz", "sha256:" + "A" * 64, "md5:abc", "nonsense", "sha256:",
                     ":" + "a" * 64, "sha256:" + "a" * 63])
) | grammar_digests  # fmt: skip


@st.composite
def json_values(draw: st.DrawFn) -> Any:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
        st.sampled_from(sorted(KNOWN_REFS) + NEVER + LITERAL_NAMES + MEDIA_TYPES),
    )  # fmt: skip
    return draw(
        st.recursive(
            leaves,
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=6,
        )
    )


@st.composite
def manifest_bodies(draw: st.DrawFn) -> bytes:
    """A seeded manifest with random mutations, then a layer or child that is never stored
    appended: it must be refused either way."""
    doc: Any = json.loads(draw(st.sampled_from(MANIFESTS)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 4]))):
        target = doc
        while isinstance(target, dict | list) and target and draw(st.booleans()):
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            child = target[draw(st.sampled_from(keys))]
            if not isinstance(child, dict | list) or not child:
                break
            target = child
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from([*target, "urls", "mediaType", "schemaVersion"]))
            if draw(st.booleans()):
                target[key] = draw(json_values())
            else:
                target.pop(key, None)
        elif isinstance(target, list):
            target.append(draw(json_values()))
    if isinstance(doc, dict):
        if isinstance(doc.get("layers"), list):
            doc["layers"].append(dict(NEVER_LAYER))
        elif isinstance(doc.get("manifests"), list):
            doc["manifests"].append({**NEVER_LAYER, "mediaType": OCI_MANIFEST})
    if rarely(draw, 10):
        doc = [doc]
    body = json.dumps(doc, indent=draw(st.none() | st.integers(0, 3))).encode()
    how = draw(st.sampled_from(["plain"] * 12 + ["truncate", "trailing", "utf16", "bom"]))
    if how == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif how == "trailing":
        body += draw(st.binary(min_size=1, max_size=20))
    elif how == "utf16":
        body = body.decode().encode("utf-16")
    elif how == "bom":
        body = b"\xef\xbb\xbf" + body
    return body


bodies = st.one_of(
    st.just(b""), st.binary(max_size=512), st.binary(min_size=4000, max_size=40_000),
    st.text(max_size=200).map(str.encode), manifest_bodies(),
    json_values().map(lambda v: json.dumps(v).encode()),
)  # fmt: skip


@st.composite
def query_pairs(draw: st.DrawFn, keys: list[str]) -> str:
    """`k=v&…` from likely keys and values, each maybe encoded oddly; or raw junk."""
    if rarely(draw, 8):
        return draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                          exclude_characters="#"), max_size=40))  # fmt: skip
    pairs = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(keys) | junk_names)
        likely = ["", "0", "1", "-1", "10", "99999999999999999999", "abc", "1e3", " 5",
                  "\u0665", *LITERAL_NAMES, *MEDIA_TYPES, PREFIX, "other.io"]  # fmt: skip
        value = draw(st.sampled_from(likely) | st.text(max_size=20) | any_refs)
        pairs.append(f"{_pct(key)}={_pct(value) if draw(st.booleans()) else _q(value, '/:')}")
    return "&".join(pairs)


GENERIC_KEYS = ["n", "last", "ns", "artifactType", "tag", "pattern", "repository", "ref"]


@dataclass(frozen=True)
class Fuzzed:
    """One generated request, as bytes, with what the checks need to know about it."""

    kind: str
    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    framing: str  # none, exact, long (less declared than sent), short, chunked, bad-chunked
    body: bytes  # the payload as framed
    received: tuple[bytes, ...]  # what the server could take for the body

    @property
    def well_formed(self) -> bool:
        """Valid HTTP/1.1 that reaches regcache's handlers (else aiohttp's parser answers)."""
        line = len(self.method) + len(self.target) + 10
        return (
            self.method in STANDARD_METHODS
            and self.framing in ("none", "exact", "chunked")  # "long" leaves bytes after it
            and line < LIMIT_LINE
            and all(0x21 <= b < 0x7F for b in self.target)
            and all(len(n) + len(v) < LIMIT_LINE for n, v in self.headers)
            and max(
                Counter(
                    n.lower() for n, _ in self.headers if n.lower() in SINGLETON_HEADERS
                ).values(),
                default=1,
            )
            == 1
        )

    @property
    def expects_reply(self) -> bool:
        return self.well_formed

    @property
    def path(self) -> bytes:
        return self.target.split(b"?")[0]

    def raw(self, port: int) -> bytes:
        head = [self.method.encode() + b" " + self.target + b" HTTP/1.1",
                f"Host: 127.0.0.1:{port}".encode(), b"Connection: close"]  # fmt: skip
        head += [name + b": " + value for name, value in self.headers]
        return b"\r\n".join(head) + b"\r\n\r\n" + self.body

    def describe(self) -> str:
        return f"{self.method} {self.target[:300]!r} {self.framing} headers={self.headers[:8]!r}"


@st.composite
def framed(draw: st.DrawFn, body: bytes) -> tuple[str, list[tuple[bytes, bytes]], bytes, tuple]:
    """Frame `body`: its headers, the bytes sent, and every body the server could see."""
    framing = draw(st.sampled_from(["exact"] * 12 + ["none", "long", "short", "chunked",
                                                     "bad-chunked"]))  # fmt: skip
    if framing == "none" or (framing == "long" and not body):
        return "none", [], b"", (b"",)
    if framing == "exact":
        return framing, [(b"Content-Length", str(len(body)).encode())], body, (body,)
    if framing == "long":
        declared = draw(st.integers(0, len(body) - 1))
        return framing, [(b"Content-Length", str(declared).encode())], body, (body[:declared],)
    if framing == "short":
        declared = len(body) + draw(st.integers(1, 10_000_000))
        return framing, [(b"Content-Length", str(declared).encode())], body, (body,)
    chunks, rest = [], body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        chunks.append(f"{size:x}\r\n".encode() + rest[:size] + b"\r\n")
        rest = rest[size:]
    payload = b"".join(chunks)
    if framing == "chunked":
        payload += b"0\r\n\r\n"
    else:
        payload += draw(st.sampled_from([b"zz\r\nxx\r\n", b"5\r\nab", b"", b"-1\r\n\r\n",
                                         b"ffffffffffffffffffff\r\n"]))  # fmt: skip
    return framing, [(b"Transfer-Encoding", b"chunked")], payload, (body,)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH_VALUES = st.one_of(
    st.sampled_from([
        f"Bearer {ADMIN_TOKEN}x", "Bearer", "Basic Zm9vOmJhcg==", "Basic !!!",
        f"bearer {ADMIN_TOKEN}", "Bearer " + "x" * 4000, "", f"Bearer {CI_TOKEN}",
        f"Bearer  {CI_TOKEN} ", f"Bearer {CI_TOKEN}\u00e9", "Bearer \u00e9\u00e9",
        _basic(USER, PASSWORD), _basic(USER, "wrong"), _basic("ci", CI_TOKEN),
        _basic("x", "\u00e9"), _basic("\u00e9", CI_TOKEN),
        "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    ]),
    header_text,
    st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
)  # fmt: skip
HEADER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Content-Type": st.sampled_from(MEDIA_TYPES) | header_text,
    "Accept": st.lists(st.sampled_from(MEDIA_TYPES), max_size=4).map(", ".join) | header_text,
    "Range": st.sampled_from(["bytes=0-10", "bytes=-5", "bytes=5-", "bytes=10-5", "bytes=abc",
                              "bytes=0-0,5-9", "items=0-5", "bytes=99999999999999999999-",
                              "bytes=-0", "bytes=0-", "bytes=", "bytes=--1"]) | header_text,
    "Content-Range": st.sampled_from(["0-9", "bytes 0-9/10", "5-2", "0-99999999999999999999",
                                      "-1-5", "bytes */10", "0-0"]) | header_text,
    "Docker-Content-Digest": st.sampled_from(NEVER + sorted(STORED)) | header_text,
    "If-None-Match": st.sampled_from([*sorted(STORED), "*", '"x"']) | header_text,
    "Expect": st.sampled_from(["100-continue"] * 4 + ["junk"]),
    "User-Agent": header_text,
    "X-Forwarded-For": header_text,
}  # fmt: skip


@st.composite
def headers_for(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    result = []
    for _ in range(draw(st.integers(0, 5))):
        if rarely(draw, 5):
            name = draw(junk_names)
            value = draw(header_text)
        else:
            name = draw(st.sampled_from(sorted(HEADER_VALUES)))
            value = draw(HEADER_VALUES[name])
        key = name.lower().encode()
        if key in FRAMING_HEADERS or (
            key in SINGLETON_HEADERS
            and not rarely(draw, 4)
            and any(n.lower() == key for n, _ in result)
        ):
            continue  # aiohttp refuses two of these: only now and then
        result.append((name.encode(), value.strip().encode("latin-1")))
    if rarely(draw, 6):  # most clients are anonymous (and may push): the handlers answer them
        result.append((b"Authorization", draw(AUTH_VALUES).strip().encode("latin-1")))
    return result


def _replace(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    headers[:] = [(n, v) for n, v in headers if n.lower() != name.lower()] + [(name, value)]


def _could_store_manifest(request: Fuzzed) -> bool:
    """Whether a PUT could store a manifest: a parsable one that needs nothing missing."""
    types = [v.decode("utf-8", "surrogateescape") for n, v in request.headers
             if n.lower() == b"content-type"] or [None]  # fmt: skip
    for body in request.received:
        for content_type in [*types, None]:
            try:
                manifest = parse_manifest(body, content_type)
            except RegistryError:
                continue
            wanted = [d.digest for d in manifest.blobs if not d.external]
            wanted += [d.digest for d in manifest.children]
            if not any(str(d) in NEVER for d in wanted):
                return True
    return False


def _mentions_known(texts: list[str]) -> bool:
    values = set()
    for text in texts:
        values |= {text, unquote(text), unquote_plus(text), text.strip()}
        for part in text.replace("&", "=").split("="):
            values |= {part, unquote(part), unquote_plus(part)}
    return bool(values & KNOWN_REFS)


def _body_mentions_known(body: bytes) -> bool:
    decoded = []
    for codec in ("utf-8", "utf-16", "utf-32", "latin-1"):
        with suppress(UnicodeDecodeError):
            decoded.append(body.decode(codec))
    for text in decoded:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and any(
            isinstance(v, str) and _mentions_known([v]) for v in value.values()
        ):
            return True
    return any(ref.encode() in body for ref in KNOWN_REFS)


ADMIN_PATHS = ["storage", "overview", "images", "repositories", "pin", "unpin", "prune", "gc",
               "", "images/x", "../admin/storage", "%70in"]  # fmt: skip
OTHER_PATHS = ["/metrics", "/healthz", "/readyz", "/_regcache/upstreams", "/_regcache/",
               "/_regcache/x", "/dashboard", "/dashboard/", "/dashboard/index.html",
               "/dashboard/../../etc/passwd", "/dashboard/%2e%2e/x", "/", "/v1/", "/v2",
               "//v2/", "/v2/_catalog/", "/V2/", "/v2/%5Fcatalog", "*"]  # fmt: skip
NATURAL_METHODS = {
    "manifests": ["GET", "HEAD", "PUT", "PUT", "DELETE"], "blobs": ["GET", "HEAD", "DELETE"],
    "uploads": ["POST"], "upload": ["PATCH", "PUT", "GET", "DELETE"], "tags": ["GET"],
    "referrers": ["GET"], "admin": ["GET", "POST", "DELETE"], "version": ["GET", "HEAD"],
}  # fmt: skip
KINDS = ["version", "catalog", "manifests", "manifests", "blobs", "blobs", "uploads", "upload",
         "tags", "referrers", "other", "admin", "misc"]  # fmt: skip


@st.composite
def fuzzed_requests(draw: st.DrawFn) -> Fuzzed:
    kind = draw(st.sampled_from(KINDS))
    if draw(st.integers(0, 2)):  # mostly the methods the resource has
        method = draw(st.sampled_from(NATURAL_METHODS.get(kind, ["GET"])))
    else:
        method = draw(st.sampled_from(STANDARD_METHODS * 2 + JUNK_METHODS))
    name = draw(mangled(draw(names)))
    query = draw(query_pairs(GENERIC_KEYS))
    headers = draw(headers_for())
    body = draw(bodies) if method not in ("GET", "HEAD") or rarely(draw, 6) else b""
    if kind == "version":
        path = draw(st.sampled_from(["/v2/", "/v2/?x=1", "/v2//", "/v2/./"]))
    elif kind == "catalog":
        path = "/v2/_catalog"
        query = draw(query_pairs(["n", "last"]))
    elif kind == "manifests":
        refs = any_refs if method in ("GET", "HEAD") else unknown_refs
        ref = draw(mangled(draw(refs)))
        # A push of a manifest must get past the name, the tag and the media type often
        # enough to meet the checks of its content: a plain, hosted name and a new tag.
        focused = method == "PUT" and not rarely(draw, 3)
        if focused:
            name = _q(draw(st.sampled_from([HOSTED, "fuzz/other"]) | valid_names))
            ref = draw(valid_tags.filter(lambda t: t not in KNOWN_REFS))
        path = f"/v2/{name}/manifests/{ref}"
        if method == "PUT":
            body = draw(manifest_bodies() if focused else manifest_bodies() | bodies)
            try:
                declared = [str(json.loads(body).get("mediaType"))] * 12
            except (ValueError, AttributeError):
                declared = []
            content_type = draw(st.sampled_from(declared + MEDIA_TYPES))
            _replace(headers, b"Content-Type", content_type.encode("utf-8", "surrogatepass"))
            query = "" if focused else draw(query_pairs(["tag", "tag", "ns"]))
    elif kind == "blobs":
        if method in ("GET", "HEAD"):  # any stored blob under any name: a read changes nothing
            digests = st.sampled_from(sorted(STORED)) | unknown_digests
        else:
            digests = unknown_digests
        digest = draw(mangled(draw(digests)))
        path = f"/v2/{name}/blobs/{digest}"
    elif kind == "uploads":
        arg = draw(mangled("")) if draw(st.booleans()) else ""
        path = f"/v2/{name}/blobs/uploads/{arg}"
        # Never a session (no digest) nor a mount of stored content: a digest that no body
        # has, first, so that it is the one the server reads.
        never = draw(unknown_digests | st.just(sha256(body + b"\x00")))
        extra = draw(query_pairs(["n", "ns", "last"]))
        mount = draw(st.none() | unknown_digests)
        query = f"digest={_pct(never)}" + (f"&mount={_pct(mount)}" if mount else "")
        query += f"&from={_pct(draw(names))}" if mount and draw(st.booleans()) else ""
        query += f"&{extra}" if extra else ""
    elif kind == "upload":
        odd_ids = ["..", ".", "x" * 32, "0" * 32, "%2e%2e", "a" * 300]
        upload_id = draw(st.uuids().map(lambda u: u.hex) | st.sampled_from(odd_ids)
                         | st.text(HEX, max_size=40))  # fmt: skip
        path = f"/v2/{name}/blobs/uploads/{upload_id}"
        digest = draw(unknown_digests | st.just(sha256(body)))
        query = f"digest={_pct(digest)}&{query}"
        if draw(st.booleans()):
            _replace(headers, b"Content-Range", draw(HEADER_VALUES["Content-Range"]).encode())
    elif kind == "tags":
        path = f"/v2/{name}/tags/list"
        query = draw(query_pairs(["n", "last", "n", "ns"]))
    elif kind == "referrers":
        digest = draw(mangled(draw(st.sampled_from(sorted(STORED)) | unknown_digests)))
        path = f"/v2/{name}/referrers/{digest}"
        query = draw(query_pairs(["artifactType", "artifactType", "ns"]))
    elif kind == "other":
        junk = draw(mangled(draw(st.text(GRAMMAR_ALPHABET.replace("%", ""), max_size=12))))
        suffix = draw(st.sampled_from(["blobs", "manifests", "tags", "referrers", "uploads",
                                       "x", "blobs/uploads", "tags/list/x", ""]))  # fmt: skip
        path = f"/v2/{name}/{suffix}/{junk}"
    elif kind == "admin":
        endpoint = draw(mangled(draw(st.sampled_from(ADMIN_PATHS))))
        path = f"/admin/{endpoint}"
        query = draw(query_pairs(["repository", "ref", "pattern"]))
        if draw(st.booleans()):
            body = draw(st.fixed_dictionaries({}, optional={
                "repository": json_values() | st.sampled_from(LITERAL_NAMES),
                "ref": json_values() | any_refs, "pattern": json_values(),
                "older_than": json_values(), "down_to": json_values(), "dry_run": json_values(),
            }).map(lambda d: json.dumps(d).encode()))  # fmt: skip
        token = draw(st.sampled_from(["valid", "valid", "junk", "none"]))
        mutates = method not in ("GET", "HEAD")
        if mutates and (_mentions_known([query]) or _body_mentions_known(body)):
            token = "junk"  # the token only for what cannot delete, pin or unpin a stored image
        headers = [(n, v) for n, v in headers if n.lower() != b"authorization"]
        if token != "none":
            value = f"Bearer {ADMIN_TOKEN}" if token == "valid" else draw(AUTH_VALUES)
            headers.append((b"Authorization", value.encode("latin-1")))
    else:
        path = draw(st.sampled_from(OTHER_PATHS))
    if rarely(draw, 21):  # raw unicode in the path: not HTTP, but sent anyway
        path += draw(st.sampled_from(UNICODE[:-1]))
    target = (path + (f"?{query}" if query else "")).encode("utf-8", "surrogatepass")
    framing, framing_headers, payload, received = draw(framed(body))
    request = Fuzzed(kind, method, target, tuple(headers + framing_headers), framing, payload,
                     received)  # fmt: skip
    if kind == "manifests" and method == "PUT":
        assume(not _could_store_manifest(request))
    return request


def regcache_errors(log: str) -> list[str]:
    """Lines of regcache's own loggers at error level, or with a traceback. aiohttp's parser
    logs what it refuses (bad request lines, chunks, duplicate headers) as errors of its own
    logger `aiohttp.server`: those requests never reach regcache."""
    found = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or "unhandled error" in line:
                found.append(line)
            continue
        ours = str(entry.get("logger", "")).startswith("regcache")
        if ours and (entry.get("level") in ("error", "critical") or "Traceback" in line):
            found.append(line)
    return found


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def send(port: int, request: Fuzzed) -> Reply | None:
    """Send the bytes as generated; the reply, or None when the connection closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(request.raw(port))
            if not request.well_formed:
                sock.shutdown(socket.SHUT_WR)  # the server must not wait for more
        except OSError:
            pass  # answered (and closed) before the whole body went out
        response = http.client.HTTPResponse(sock, method=request.method)
        try:
            response.begin()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, headers, response.read())
        except (http.client.HTTPException, OSError):
            return None


@dataclass
class Stats:
    """What the run hit: to show that the requests reached the handlers."""

    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_kind: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    no_reply: int = 0
    cases: int = 0

    def record(self, request: Fuzzed, reply: Reply | None) -> None:
        self.cases += 1
        if reply is None:
            self.no_reply += 1
            return
        self.statuses[reply.status] += 1
        self.kinds[request.kind, reply.status] += 1
        if reply.headers.get("content-type", "").startswith("application/json"):
            try:
                for entry in json.loads(reply.body).get("errors", []):
                    self.codes[entry.get("code")] += 1
                    self.by_kind[request.kind, request.method, entry.get("code")] += 1
            except (ValueError, AttributeError):
                pass


def check(request: Fuzzed, reply: Reply | None) -> None:
    """The per-request properties."""
    if reply is None:
        assert not request.expects_reply, f"no reply to {request.describe()}"
        return
    what = f"{reply.status} {reply.body[:300]!r} for {request.describe()}"
    assert reply.status < 500, what
    assert reply.status not in (201, 202, 204), what  # nothing may be created or changed
    on_v2 = request.path.startswith(b"/v2/")
    if not (on_v2 and 400 <= reply.status < 500 and request.method != "HEAD"):
        return
    if not request.well_formed:
        return  # aiohttp's parser refused it before regcache saw it
    if reply.status == 416 and reply.headers.get("content-range", "").startswith("bytes */"):
        return  # a blob Range past the end: aiohttp's FileResponse, RFC 9110's form
    if reply.status == 417:
        return  # an unknown Expect: aiohttp answers before any handler or middleware
    assert reply.headers.get("content-type", "").startswith("application/json"), what
    errors = json.loads(reply.body)["errors"]
    assert errors and all(
        e["code"] in KNOWN_CODES and isinstance(e["message"], str) for e in errors
    ), what


def _assert_seeded_content_intact(url: str) -> None:
    client = Client(url)
    for tag, body in HOSTED_TAGS.items():
        assert client.get(f"{HOSTED}/manifests/{tag}").content == body
        assert client.get(f"{HOSTED}/manifests/{sha256(body)}").content == body
    assert client.get(f"{HOSTED}/manifests/{sha256(SIG_MANIFEST)}").content == SIG_MANIFEST
    for blob in HOSTED_BLOBS:
        assert client.get(f"{HOSTED}/blobs/{sha256(blob)}").content == blob
    referrers = client.get(f"{HOSTED}/referrers/{sha256(HOSTED_MANIFEST)}").json()
    assert [m["digest"] for m in referrers["manifests"]] == [sha256(SIG_MANIFEST)]
    for name in (CACHED, UPSTREAM_REPO):
        assert client.get(f"{name}/manifests/{UPSTREAM_TAG}").content == UPSTREAM_MANIFEST
        for blob in UPSTREAM_BLOBS:
            assert client.get(f"{name}/blobs/{sha256(blob)}").content == blob
    tags = client.get(f"{HOSTED}/tags/list").json()["tags"]
    assert sorted(tags) == sorted(HOSTED_TAGS)
    assert HOSTED in client.get("_catalog").json()["repositories"]


@pytest.mark.peers
def test_http_api_fuzz(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    cache = world.cache
    before = snapshot(cache.data_dir)
    stats = Stats()

    @settings(PROFILE, max_examples=HTTP_EXAMPLES, suppress_health_check=SLOW)
    @given(fuzzed_requests())
    def case(request: Fuzzed) -> None:
        reply = send(cache.port, request)
        stats.record(request, reply)
        check(request, reply)

    case()
    assert cache.process is not None and cache.process.poll() is None
    assert requests.get(f"{cache.url}/v2/").status_code == 200
    _assert_seeded_content_intact(cache.url)
    after = snapshot(cache.data_dir)
    assert after == before, changes(before, after)
    assert not regcache_errors(cache.log())
    # The requests reached the handlers: many statuses, the spec's codes, every kind answered.
    assert {200, 400, 401, 404, 405} <= set(stats.statuses), stats.statuses
    assert len(stats.statuses) >= 6, stats.statuses
    wanted_codes = {"NAME_INVALID", "PAGINATION_NUMBER_INVALID", "DIGEST_INVALID",
                    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN",
                    "BLOB_UPLOAD_UNKNOWN", "UNSUPPORTED", "DENIED", "UNAUTHORIZED"}  # fmt: skip
    assert wanted_codes <= set(stats.codes), (stats.codes, stats.statuses, stats.by_kind)
    answered = {kind for kind, _ in stats.kinds}
    assert answered == set(KINDS), answered
    with capsys.disabled():
        print(f"\n[fuzz] statuses {dict(sorted(stats.statuses.items()))}; "
              f"codes {dict(sorted(stats.codes.items()))}; no reply {stats.no_reply}")  # fmt: skip
    report(capsys, "HTTP requests", stats.cases, HTTP_EXAMPLES)


@pytest.mark.peers
def test_a_cached_name_does_not_serve_a_hosted_blob(world: World) -> None:
    """A hosted blob does not show through a cached repository name that the upstream lacks,
    and the GET creates no repository (the fuzzer found both; now they hold)."""
    cache = world.cache
    before = snapshot(cache.data_dir)
    for name in (f"{PREFIX}/no/such/repository", UPSTREAM_REPO, CACHED):
        for method in ("GET", "HEAD"):
            url = f"{cache.url}/v2/{name}/blobs/{sha256(HOSTED_LAYERS[0])}"
            assert requests.request(method, url).status_code == 404
    after = snapshot(cache.data_dir)
    assert after == before, changes(before, after)

"""Unit tests of digests, names, manifests and settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from regcache.config import ConfigError, Upstream, load_settings
from regcache.digest import Digest, Hasher, hash_file
from regcache.errors import ErrorCode, RegistryError
from regcache.manifest import OCI_INDEX, OCI_MANIFEST, parse_manifest
from regcache.policy import is_pinned_tag
from regcache.reference import parse_reference, validate_name, validate_tag
from regcache.upstream import RateLimit

SHA256_EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


def test_digest_parse_and_print() -> None:
    digest = Digest.parse(SHA256_EMPTY)
    assert (digest.algorithm, str(digest)) == ("sha256", SHA256_EMPTY)
    sha512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert str(Digest.parse(sha512)) == sha512


@pytest.mark.parametrize(
    "text",
    ["", "sha256", "sha256:", "sha256:abc", "SHA256:" + "a" * 64, "sha256:" + "g" * 64,
     "sha384:" + "a" * 96, "sha512:" + "a" * 64, "sha256:" + "a" * 64 + "\n"],
)  # fmt: skip
def test_digest_rejects(text: str) -> None:
    with pytest.raises(RegistryError) as caught:
        Digest.parse(text)
    assert caught.value.code is ErrorCode.DIGEST_INVALID


def test_hashers_agree(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    hasher = Hasher("sha512")
    hasher.update(data[:1000])
    hasher.update(memoryview(data)[1000:])
    (tmp_path / "f").write_bytes(data)
    assert hasher.digest() == hash_file(tmp_path / "f", "sha512") == Digest.of(data, "sha512")
    assert hasher.size == len(data)


@pytest.mark.parametrize(
    "name", ["a", "library/nginx", "a.b_c__d-e--f/g", "0/1/2", "docker.io/library/x"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "a/", "/a", "a//b", "..", "a/../b", "a..b", "a___b", "-a", "a-", "a" * 256,
             "a/b\x00", "a b"],
)  # fmt: skip
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as caught:
        validate_name(name)
    assert caught.value.code is ErrorCode.NAME_INVALID


def test_tags_and_references() -> None:
    assert validate_tag("1.25.3-alpine") == "1.25.3-alpine"
    assert validate_tag("_x" + "a" * 126)
    for bad in ("", ".a", "-a", "a" * 129, "a/b", "a:b"):
        with pytest.raises(RegistryError):
            validate_tag(bad)
    assert parse_reference(SHA256_EMPTY) == Digest.parse(SHA256_EMPTY)
    assert parse_reference("latest") == "latest"


def _descriptor(media_type: str = "application/x") -> dict[str, object]:
    return {"mediaType": media_type, "digest": SHA256_EMPTY, "size": 0}


def test_parse_image_manifest_with_subject_and_artifact_type() -> None:
    doc = {
        "schemaVersion": 2,
        "config": _descriptor("application/vnd.oci.empty.v1+json"),
        "layers": [_descriptor(), {**_descriptor(), "urls": ["https://example.invalid/l"]}],
        "subject": _descriptor(OCI_MANIFEST),
    }
    manifest = parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    assert [d.external for d in manifest.blobs] == [False, False, True]
    assert manifest.artifact_type == "application/vnd.oci.empty.v1+json"  # from config
    assert manifest.subject is not None and str(manifest.subject.digest) == SHA256_EMPTY
    doc["artifactType"] = "application/vnd.example"
    assert parse_manifest(json.dumps(doc).encode(), None) is not None
    assert (
        parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST).artifact_type
        == "application/vnd.example"
    )


def test_media_type_from_body_when_header_is_generic() -> None:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [_descriptor(OCI_MANIFEST)]}
    manifest = parse_manifest(json.dumps(doc).encode(), "application/octet-stream")
    assert manifest.media_type == OCI_INDEX and len(manifest.children) == 1


def test_settings_defaults_file_environment_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().listen == "0.0.0.0:5000"
    assert load_settings().data_dir == Path("regcache-data")
    config = tmp_path / "regcache.yaml"
    config.write_text("listen: 127.0.0.1:6000\nlog_level: debug\n")
    assert load_settings(config).listen == "127.0.0.1:6000"
    monkeypatch.setenv("REGCACHE_LISTEN", "127.0.0.1:7000")
    settings = load_settings(config)
    assert (settings.listen, settings.log_level) == ("127.0.0.1:7000", "debug")
    assert load_settings(config, listen="127.0.0.1:8000").listen == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("text", "named"),
    [("listn: 1.2.3.4:5\n", "listn"), ("listen: nope\n", "listen"),
     ("manifest_max_bytes: -1\n", "manifest_max_bytes"), ("- a list\n", "mapping"),
     ("log_level: loud\n", "log_level"), ("listen: [unclosed\n", "YAML")],
)  # fmt: skip
def test_bad_settings_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "regcache.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_settings(config)


def test_unknown_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGCACHE_LISTN", "x")
    with pytest.raises(ConfigError, match="REGCACHE_LISTN"):
        load_settings()


@pytest.mark.parametrize(
    ("tag", "pinned"),
    [("1.25.3", True), ("1.25.3-alpine", True), ("v2.1.0", True), ("8.0.1+build.5", True),
     ("latest", False), ("main", False), ("master", False), ("develop", False), ("", False),
     (None, False), ("7", False), ("1.25", False), ("1.25-alpine", False), ("alpine", False),
     ("stable", False)],
)  # fmt: skip
def test_tag_policy(tag: str | None, pinned: bool) -> None:
    assert is_pinned_tag(tag) is pinned


def test_configured_tag_patterns_win() -> None:
    upstream = Upstream(name="u", url="http://127.0.0.1:1", prefix="u.io",
                        immutable_tags=["stable-*"], mutable_tags=["*-nightly*"])  # fmt: skip
    assert is_pinned_tag("stable-2024", upstream)
    assert not is_pinned_tag("1.2.3-nightly", upstream)


def test_rate_limit_headers() -> None:
    limit = RateLimit()
    limit.observe({"content-type": "x"})
    assert limit.limit is None
    limit.observe({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600",
                   "docker-ratelimit-source": "192.0.2.1"})  # fmt: skip
    assert (limit.limit, limit.remaining, limit.window_seconds) == (100, 76, 21600)
    assert limit.source == "192.0.2.1"


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"url": "ftp://x"}, "url"), ({"url": "https://u:p@x"}, "url"), ({"prefix": "Bad"}, "prefix"),
     ({"password": "a", "password_env": "B"}, "only one")],
)  # fmt: skip
def test_bad_upstreams(fields: dict[str, object], named: str) -> None:
    upstream = {"name": "u", "url": "https://r.example", "prefix": "r.example", **fields}
    with pytest.raises(ConfigError, match=named):
        load_settings(upstreams=[upstream])


def test_upstream_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    base = {"name": "u", "url": "https://registry-1.docker.io", "prefix": "docker.io"}
    assert Upstream(**base, password_file=tmp_path / "pw").secret() == "from-file"
    monkeypatch.setenv("HUB_PW", "from-env")
    assert Upstream(**base, password_env="HUB_PW").secret() == "from-env"
    assert Upstream(**base).is_docker_hub
    with pytest.raises(ConfigError, match="NOPE"):
        Upstream(**base, password_env="NOPE").secret()
    assert "from-file" not in repr(Upstream(**base, password="from-file"))

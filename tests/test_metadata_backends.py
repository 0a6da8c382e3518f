"""The metadata API on SQLite and on PostgreSQL (a real server on loopback): round trips,
eviction, schema migrations, concurrent start-up, masked passwords, and a regcache process
that keeps its metadata in PostgreSQL across a restart."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr
from tooling.oci import Client, sha256
from tooling.postgres import Postgres
from tooling.server import Regcache

from regcache.config import Settings
from regcache.digest import Digest
from regcache.manifest import Descriptor, Manifest
from regcache.store.database import DatabaseError, PostgresDatabase, database_for, translate
from regcache.store.metadata import CACHED, HOSTED, SCHEMA, SCHEMA_VERSION, Metadata

LAYER = "application/vnd.oci.image.layer.v1.tar"
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
_names = count()

# Where a test's metadata lives: its data directory and database URL (None: SQLite).
Store = tuple[Path, SecretStr | None]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with Postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty metadata store of either kind."""
    if request.param == "sqlite":
        return tmp_path, None
    server: Postgres = request.getfixturevalue("postgres")
    return tmp_path, SecretStr(server.create_database(f"meta{next(_names)}"))


@pytest.fixture
def meta(store: Store) -> Iterator[Metadata]:
    metadata = Metadata(database_for(*store))
    metadata.open()
    yield metadata
    metadata.close()


def digest_of(text: str) -> Digest:
    return Digest.parse(sha256(text.encode()))


def descriptor(text: str, size: int, media_type: str = LAYER) -> Descriptor:
    return Descriptor(media_type, digest_of(text), size)


def image(*layers: str, **extra: object) -> Manifest:
    blobs = [descriptor("config", 2), *(descriptor(layer, 1000 + len(layer)) for layer in layers)]
    return Manifest(IMAGE, blobs=blobs, **extra)  # type: ignore[arg-type]


def schema_version(store: Store) -> int:
    data_dir, url = store
    if url is None:
        with sqlite3.connect(data_dir / "metadata.db") as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
    database = PostgresDatabase(url.get_secret_value())
    database.open()
    try:
        return int(database.execute("SELECT version FROM schema_version").fetchone()[0])
    finally:
        database.close()


def test_repositories_list_in_byte_order_with_prefix_and_paging(meta: Metadata) -> None:
    names = ["ab", "a_b", "aB", "a-b", "b/c", "b", "team/x", "team/y", "teamz"]
    for name in names:
        meta.link_blob(name, digest_of("x"), CACHED if name == "b" else HOSTED)
    assert meta.repositories(None, 100) == sorted(names)  # as SQLite compares: bytes
    assert meta.repositories("aB", 2) == ["a_b", "ab"]
    assert meta.repositories(None, 10, "team/") == ["team/x", "team/y"]
    assert meta.repositories("team/x", 10, "team") == ["team/y", "teamz"]
    assert meta.repo_exists("b") and meta.repo_exists("b", CACHED)
    assert not meta.repo_exists("b", HOSTED) and not meta.repo_exists("c")


def test_blob_links_and_records(meta: Metadata) -> None:
    layer, big = digest_of("layer"), digest_of("big")
    meta.link_blob("team/app", layer)
    meta.link_blob("mirror/app", big, CACHED)
    assert meta.blob_linked("team/app", layer) and not meta.blob_linked("team/app", big)
    assert meta.blob_hosted(layer) == "team/app"
    assert meta.blob_hosted(layer, "team/") == "team/app"
    assert meta.blob_hosted(layer, "other/") is None and meta.blob_hosted(big) is None
    assert meta.blob_cached(big) and not meta.blob_cached(layer)
    assert meta.add_blob(layer, 5) and not meta.add_blob(layer, 5)
    assert meta.add_blob(big, 5 * 1024**3)  # sizes beyond 32 bits
    assert meta.blob_size(big) == 5 * 1024**3 and meta.blob_size(digest_of("none")) is None
    assert meta.stored_bytes() == (5 * 1024**3 + 5, 2)
    assert list(meta.all_blobs()) == sorted([(layer, 5), (big, 5 * 1024**3)], key=str)
    assert meta.content_referenced(layer)
    assert meta.unlink_blob("team/app", layer) and not meta.unlink_blob("team/app", layer)
    assert not meta.content_referenced(layer)
    assert meta.unreferenced_blobs() == [layer]
    assert meta.remove_blob(layer) == 5 and meta.remove_blob(layer) == 0
    assert meta.stored_bytes() == (5 * 1024**3, 1)


def test_manifests_tags_and_referrers(meta: Metadata) -> None:
    subject = digest_of("image")
    meta.put_manifest("team/app", subject, 300, image("one"), ["v1", "latest"])
    stored = meta.manifest("team/app", subject)
    assert stored is not None and (stored.media_type, stored.size) == (IMAGE, 300)
    assert meta.manifest("other", subject) is None
    assert meta.resolve_tag("team/app", "latest") == subject
    state = meta.tag_state("team/app", "v1")
    assert state is not None and state[0] == subject and isinstance(state[1], float)
    assert meta.tags("team/app", None, 10) == ["latest", "v1"]
    assert meta.tags("team/app", "latest", 10) == ["v1"]
    assert meta.known_size(digest_of("one")) == 1003
    signature = image("sig", subject=descriptor("image", 300, IMAGE),
                      artifact_type="application/example", annotations={"k": "v"})  # fmt: skip
    meta.put_manifest("team/app", digest_of("signature"), 200, signature, [])
    [referrer] = meta.referrers("team/app", subject)
    assert referrer.descriptor() == {
        "mediaType": IMAGE, "digest": str(digest_of("signature")), "size": 200,
        "artifactType": "application/example", "annotations": {"k": "v"},
    }  # fmt: skip
    other = digest_of("image 2")
    meta.put_manifest("team/app", other, 100, image("two"), ["latest"])  # moves the tag
    meta.set_tag("team/app", "v2", other)
    assert meta.resolve_tag("team/app", "latest") == other
    assert meta.tags_of("team/app", other) == ["latest", "v2"]
    assert meta.delete_tag("team/app", "v2") and not meta.delete_tag("team/app", "v2")
    assert meta.delete_manifest("team/app", subject)
    assert not meta.delete_manifest("team/app", subject)
    assert meta.resolve_tag("team/app", "v1") is None


def test_pulls_pins_images_and_eviction(meta: Metadata) -> None:
    child, index = digest_of("child"), digest_of("index")
    meta.put_manifest("mirror/app", child, 400, image("shared", "own"), [], CACHED)
    listing = Manifest(INDEX, children=[descriptor("child", 400, IMAGE)])
    meta.put_manifest("mirror/app", index, 150, listing, ["latest"], CACHED)
    meta.put_manifest("mirror/lib", digest_of("lib"), 300, image("shared"), ["1"], CACHED)
    for name, size in [("child", 400), ("index", 150), ("lib", 300), ("config", 2),
                       ("shared", 1006), ("own", 1003)]:  # fmt: skip
        meta.add_blob(digest_of(name), size)
        meta.link_blob("mirror/lib" if name == "lib" else "mirror/app", digest_of(name), CACHED)
    meta.link_blob("mirror/lib", digest_of("shared"), CACHED)
    meta.link_blob("mirror/lib", digest_of("config"), CACHED)
    meta.record_pulls({("mirror/app", str(index)): (3, 2000.0)})
    meta.record_pulls({("mirror/app", str(index)): (1, 1000.0)})  # an older time stays
    meta.record_pulls({("mirror/lib", str(digest_of("lib"))): (1, 1500.0)})
    rows = {row["repo"]: row for row in meta.images(CACHED)}
    assert set(rows) == {"mirror/app", "mirror/lib"}  # the child is no image of its own
    assert (rows["mirror/app"]["pulls"], rows["mirror/app"][5]) == (4, 2000.0)
    assert meta.eviction_candidates(10) == [("mirror/lib", digest_of("lib")),
                                            ("mirror/app", index)]  # fmt: skip
    assert meta.set_pinned("mirror/lib", digest_of("lib"), True)
    assert meta.eviction_candidates(10) == [("mirror/app", index)]
    assert meta.image_content("mirror/app", index) == {
        str(index): 150, str(child): 400, str(digest_of("config")): 2,
        str(digest_of("shared")): 1006, str(digest_of("own")): 1003,
    }  # fmt: skip
    meta.charge("alice", "mirror/app", index, 10.0)
    meta.charge("bob", "mirror/app", index, 11.0)
    freed = meta.evict_image("mirror/app", index, in_use={digest_of("own")})
    assert sorted(freed, key=lambda f: str(f[0])) == sorted(
        [(index, 150), (child, 400)], key=lambda f: str(f[0])
    )  # shared content stays, and so does content being written
    assert meta.manifest("mirror/app", index) is None and meta.manifest("mirror/app", child) is None
    assert meta.resolve_tag("mirror/app", "latest") is None
    assert not meta.blob_linked("mirror/app", digest_of("own"))
    assert meta.blob_size(digest_of("own")) == 1003 and meta.blob_size(digest_of("shared")) == 1006
    assert meta.charged_images("alice") == [] and meta.stored_bytes() == (300 + 2 + 1006 + 1003, 4)


def test_tenant_charges_and_hosted_content(meta: Metadata) -> None:
    first, second = digest_of("first"), digest_of("second")
    for digest in (first, second):
        meta.put_manifest("mirror/app", digest, 100, image(), [], CACHED)
    meta.charge("alice", "mirror/app", second, 20.0)
    meta.charge("alice", "mirror/app", first, 10.0)
    meta.charge("alice", "mirror/app", second, 5.0)  # a later charge moves last_pull
    meta.set_pinned("mirror/app", first, True)
    assert meta.charged_images("alice") == [("mirror/app", second, False),
                                            ("mirror/app", first, True)]  # fmt: skip
    assert not meta.charged_to_others("alice", "mirror/app", first)
    meta.charge("bob", "mirror/app", first, 1.0)
    assert meta.charged_to_others("alice", "mirror/app", first)
    meta.uncharge("bob", "mirror/app", first)
    assert not meta.charged_to_others("alice", "mirror/app", first)
    meta.put_manifest("alice/app", digest_of("hosted"), 70, image("mine"), ["1"])
    meta.link_blob("alice/app", digest_of("mine"))
    meta.link_blob("bobby/app", digest_of("theirs"))
    for name, size in [("hosted", 70), ("mine", 1004), ("theirs", 1006)]:
        meta.add_blob(digest_of(name), size)
    assert meta.hosted_content("alice/") == {
        str(digest_of("hosted")): 70, str(digest_of("mine")): 1004,
    }  # fmt: skip


def test_forget_content(meta: Metadata) -> None:
    digest = digest_of("broken")
    meta.put_manifest("team/app", digest, 10, image("layer"), ["v1"])
    meta.link_blob("team/app", digest)
    meta.add_blob(digest, 10)
    meta.forget_content(digest)
    assert meta.manifest("team/app", digest) is None and meta.resolve_tag("team/app", "v1") is None
    assert meta.blob_size(digest) is None and not meta.content_referenced(digest)
    assert meta.known_size(digest_of("layer")) is None


def _create_v1(store: Store) -> None:
    """A database as the first released regcache left it: the v1 schema and some rows."""
    data_dir, url = store
    rows = [
        "INSERT INTO repositories VALUES ('old/app', 'hosted', 1.5)",
        f"INSERT INTO repo_blobs VALUES ('old/app', '{digest_of('layer')}')",
        f"INSERT INTO blobs VALUES ('{digest_of('layer')}', 6000000000, 1.5)",
        f"INSERT INTO manifests (repo, digest, media_type, size, created) VALUES"
        f" ('old/app', '{digest_of('image')}', '{IMAGE}', 9, 1.5)",
        f"INSERT INTO tags VALUES ('old/app', 'v1', '{digest_of('image')}', 1.5)",
    ]
    if url is None:
        with sqlite3.connect(data_dir / "metadata.db") as db:
            db.executescript(SCHEMA + "PRAGMA user_version=1;" + ";".join(rows))
        db.close()
        return
    database = PostgresDatabase(url.get_secret_value())
    database.open()
    try:
        database.migrate(SCHEMA, {})  # the schema, and no migration: version 1
        with database.transaction():
            for row in rows:
                database.execute(row)
    finally:
        database.close()


def test_a_v1_database_is_upgraded_in_place(store: Store) -> None:
    _create_v1(store)
    assert schema_version(store) == 1
    meta = Metadata(database_for(*store))
    meta.open()
    try:
        assert meta.resolve_tag("old/app", "v1") == digest_of("image")
        assert meta.blob_linked("old/app", digest_of("layer"))
        assert meta.stored_bytes() == (6000000000, 1)
        meta.charge("alice", "old/app", digest_of("image"), 2.0)  # the table migration 2 adds
        assert meta.charged_images("alice") == [("old/app", digest_of("image"), False)]
    finally:
        meta.close()
    assert schema_version(store) == SCHEMA_VERSION == 3
    reopened = Metadata(database_for(*store))
    reopened.open()  # an up-to-date database opens as it is
    reopened.close()


def test_a_newer_database_is_refused(store: Store) -> None:
    meta = Metadata(database_for(*store))
    meta.open()
    with meta.db.transaction() as db:
        if store[1] is None:
            db.execute("PRAGMA user_version=99")
        else:
            db.execute("UPDATE schema_version SET version = 99")
    meta.close()
    with pytest.raises(DatabaseError, match="schema version 99 is newer"):
        Metadata(database_for(*store)).open()


_OPENER = """
import sys, time
from pathlib import Path
from pydantic import SecretStr
from regcache.digest import Digest
from regcache.store.database import database_for
from regcache.store.metadata import Metadata
data_dir, url, ready, go = sys.argv[1:]
meta = Metadata(database_for(Path(data_dir), SecretStr(url) if url else None))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
meta.open()
meta.link_blob("from/" + Path(ready).name, Digest.parse("sha256:" + "0" * 64))
meta.close()
"""


def test_processes_starting_at_once_create_the_schema_once(store: Store, tmp_path: Path) -> None:
    data_dir, url = store
    go = tmp_path / "go"
    processes = []
    for i in range(4):
        ready = tmp_path / f"ready{i}"
        args = [str(data_dir), url.get_secret_value() if url else "", str(ready), str(go)]
        command = [sys.executable, "-c", _OPENER, *args]
        processes.append((ready, subprocess.Popen(command, stderr=subprocess.PIPE, text=True)))
    while not all(ready.exists() for ready, _ in processes):
        for _, process in processes:
            assert process.poll() is None, process.stderr and process.stderr.read()
        time.sleep(0.01)
    go.touch()
    for _, process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    assert schema_version(store) == SCHEMA_VERSION
    meta = Metadata(database_for(*store))
    meta.open()
    try:
        assert meta.repositories(None, 10) == [f"from/ready{i}" for i in range(4)]
    finally:
        meta.close()


def _failure(open_metadata: Callable[[], None]) -> str:
    with pytest.raises(DatabaseError) as failure:
        open_metadata()
    return "".join(traceback.format_exception(failure.value))


def test_connection_errors_mask_the_password(postgres: Postgres) -> None:
    url = postgres.create_database(f"meta{next(_names)}")
    password = url.split(":")[2].split("@")[0]
    wrong = url.replace(password, "wrong-" + password)
    report = _failure(Metadata.for_settings(Settings(database_url=SecretStr(wrong))).open)
    assert "password authentication failed" in report
    assert "wrong-" not in report and password not in report and ":***@" in report
    closed = url.replace(f":{postgres.port}/", ":9/")
    report = _failure(Metadata.for_settings(Settings(database_url=SecretStr(closed))).open)
    assert password not in report and ":***@" in report
    in_query = f"postgresql://127.0.0.1:9/db?user=u&password={password}"
    report = _failure(Metadata.for_settings(Settings(database_url=SecretStr(in_query))).open)
    assert password not in report and "password=***" in report


def test_a_dropped_postgresql_connection_is_replaced(postgres: Postgres) -> None:
    name = f"meta{next(_names)}"
    meta = Metadata(PostgresDatabase(postgres.create_database(name)))
    meta.open()
    try:
        meta.link_blob("team/app", digest_of("layer"))
        with postgres.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        with pytest.raises(psycopg.OperationalError):
            meta.blob_linked("team/app", digest_of("layer"))
        assert meta.blob_linked("team/app", digest_of("layer"))  # on a new connection
    finally:
        meta.close()


def test_sql_is_translated_for_postgresql() -> None:
    assert translate("SELECT ?, ? FROM t WHERE a LIKE 'x%?'") == (
        "SELECT %s, %s FROM t WHERE a LIKE 'x%%?'",
        None,
    )
    assert translate("SELECT ?2, ?1, ?, ?1") == ("SELECT %s, %s, %s, %s", (1, 0, 2, 0))
    assert translate("INSERT OR IGNORE INTO t VALUES (?)") == (
        "INSERT INTO t VALUES (%s) ON CONFLICT DO NOTHING",
        None,
    )


def test_regcache_keeps_its_metadata_in_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.create_database(f"meta{next(_names)}")
    config = tmp_path / "regcache.yaml"
    config.write_text(json.dumps({"database_url": url}))  # JSON is YAML
    server = Regcache(tmp_path, config=config)
    layer = os.urandom(5000)
    with server:
        client = Client(server.url)
        doc = client.manifest_doc("pg/app", [layer])
        body = json.dumps(doc).encode()
        assert client.put_manifest("pg/app", "v1", body).status_code == 201
    assert not (server.data_dir / "metadata.db").exists()
    with server:  # a new process: everything it knows comes from PostgreSQL
        client = Client(server.url)
        got = client.get("pg/app/manifests/v1", headers={"Accept": IMAGE})
        assert got.status_code == 200 and got.content == body
        blob = client.get(f"pg/app/blobs/{sha256(layer)}")
        assert blob.status_code == 200 and blob.content == layer
        assert client.get("_catalog").json() == {"repositories": ["pg/app"]}
    password = url.split(":")[2].split("@")[0]
    assert password not in server.log()
    check = subprocess.run(
        [sys.executable, "-m", "regcache", "verify", "--data-dir", str(server.data_dir),
         "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    result = json.loads(check.stdout)
    assert result["ok"] is True and result["checked"] == 3  # config, layer, manifest

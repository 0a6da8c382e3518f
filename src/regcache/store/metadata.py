"""Metadata in SQLite (WAL) or PostgreSQL: repositories, blob links, manifests, tags and
references.

Blob and manifest *content* lives in the blob store; this database says which repository
holds what. Calls are short and synchronous; each write is one transaction. SQL is written in
SQLite's dialect; `regcache.store.database` translates it for PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from regcache.config import Settings
from regcache.digest import Digest
from regcache.manifest import Manifest
from regcache.store.database import Database, Row, database_for

SCHEMA = """
CREATE TABLE repositories (
    name TEXT PRIMARY KEY, origin TEXT NOT NULL, created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE repo_blobs (
    repo TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX repo_blobs_digest ON repo_blobs (digest);
CREATE TABLE manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    created REAL NOT NULL,
    last_pull REAL,
    pulls INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX manifests_lru ON manifests (pinned, last_pull);
CREATE INDEX manifests_subject ON manifests (repo, subject);
CREATE INDEX manifests_digest ON manifests (digest);
CREATE TABLE manifest_refs (
    repo TEXT NOT NULL, manifest TEXT NOT NULL, child TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (repo, manifest, child)
) WITHOUT ROWID;
CREATE INDEX manifest_refs_child ON manifest_refs (child, repo);
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
CREATE INDEX tags_digest ON tags (repo, digest);
"""
# Each schema version's change, applied in order to a database of the version before.
MIGRATIONS = {
    2: """
CREATE TABLE tenant_images (
    tenant TEXT NOT NULL, repo TEXT NOT NULL, digest TEXT NOT NULL, last_pull REAL NOT NULL,
    PRIMARY KEY (tenant, repo, digest)
) WITHOUT ROWID;
CREATE INDEX tenant_images_image ON tenant_images (repo, digest);
""",
    3: """
CREATE TABLE download_leases (
    digest TEXT PRIMARY KEY, owner TEXT NOT NULL, address TEXT NOT NULL, heartbeat REAL NOT NULL
);
CREATE TABLE replica_reservations (
    replica TEXT PRIMARY KEY, bytes INTEGER NOT NULL, heartbeat REAL NOT NULL
);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)
HOSTED, CACHED = "hosted", "cache"  # a repository's origin: pushed here, or pulled through
_SET_TAG = (
    "INSERT INTO tags VALUES (?, ?, ?, ?) ON CONFLICT (repo, tag)"
    " DO UPDATE SET digest = excluded.digest, updated = excluded.updated"
)


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as the database knows it."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None

    def descriptor(self) -> dict[str, object]:
        """The OCI descriptor of this manifest, as listed by the referrers API."""
        entry: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            entry["artifactType"] = self.artifact_type
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry


def _manifest(row: Row) -> StoredManifest:
    annotations = json.loads(row["annotations"]) if row["annotations"] else None
    return StoredManifest(
        Digest.parse(row["digest"]),
        row["media_type"],
        row["size"],
        row["artifact_type"],
        annotations,
    )


class Metadata:
    """The metadata database of one regcache (or of a fleet sharing PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self.db = database

    @classmethod
    def for_settings(cls, settings: Settings) -> Metadata:
        """PostgreSQL at `database_url` if set, else `metadata.db` in the data directory."""
        return cls(database_for(settings.data_dir, settings.database_url))

    def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        self.db.open()
        try:
            self.db.migrate(SCHEMA, MIGRATIONS)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def _transaction(self) -> AbstractContextManager[Database]:
        return self.db.transaction()

    # repositories

    def _ensure_repo(self, db: Database, repo: str, origin: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO repositories (name, origin, created) VALUES (?, ?, ?)",
            (repo, origin, time.time()),
        )

    def repo_exists(self, repo: str, origin: str | None = None) -> bool:
        row = self.db.execute("SELECT origin FROM repositories WHERE name = ?", (repo,)).fetchone()
        return row is not None and origin in (None, row[0])

    def repositories(self, last: str | None, limit: int, prefix: str = "") -> list[str]:
        """Repository names after `last` that start with `prefix`, in order."""
        rows = self.db.execute(
            "SELECT name FROM repositories WHERE name > ? AND substr(name, 1, ?) = ?"
            " ORDER BY name LIMIT ?",
            (last or "", len(prefix), prefix, limit),
        )
        return [row[0] for row in rows]

    # blobs

    def link_blob(self, repo: str, digest: Digest, origin: str = HOSTED) -> None:
        with self._transaction() as db:
            self._ensure_repo(db, repo, origin)
            db.execute("INSERT OR IGNORE INTO repo_blobs VALUES (?, ?)", (repo, str(digest)))

    def blob_hosted(self, digest: Digest, within: str = "") -> str | None:
        """A hosted repository whose name starts with `within` that holds `digest`, if any
        (for a mount without `from`)."""
        row = self.db.execute(
            "SELECT b.repo FROM repo_blobs b JOIN repositories r ON r.name = b.repo"
            " WHERE b.digest = ? AND r.origin = ? AND substr(b.repo, 1, ?) = ? LIMIT 1",
            (str(digest), HOSTED, len(within), within),
        ).fetchone()
        return row[0] if row else None

    def blob_cached(self, digest: Digest) -> bool:
        """Whether a cached repository holds the blob (it came from an upstream)."""
        row = self.db.execute(
            "SELECT 1 FROM repo_blobs b JOIN repositories r ON r.name = b.repo"
            " WHERE b.digest = ? AND r.origin = ? LIMIT 1",
            (str(digest), CACHED),
        ).fetchone()
        return row is not None

    def blob_linked(self, repo: str, digest: Digest) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, str(digest))
        ).fetchone()
        return row is not None

    def unlink_blob(self, repo: str, digest: Digest) -> bool:
        cursor = self.db.write(
            "DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, str(digest))
        )
        return cursor.rowcount > 0

    def content_referenced(self, digest: Digest) -> bool:
        """Whether any repository still links `digest` as a blob, a manifest or a child."""
        return self._referenced(self.db, str(digest))

    # manifests and tags

    def put_manifest(
        self,
        repo: str,
        digest: Digest,
        size: int,
        manifest: Manifest,
        tags: list[str],
        origin: str = HOSTED,
    ) -> None:
        now = time.time()
        key = str(digest)
        annotations = json.dumps(manifest.annotations) if manifest.annotations else None
        subject = str(manifest.subject.digest) if manifest.subject else None
        with self._transaction() as db:
            self._ensure_repo(db, repo, origin)
            db.execute(
                "INSERT INTO manifests (repo, digest, media_type, size, artifact_type, subject,"
                " annotations, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repo, digest) DO NOTHING",
                (repo, key, manifest.media_type, size, manifest.artifact_type, subject,
                 annotations, now),
            )  # fmt: skip
            db.executemany(
                "INSERT OR IGNORE INTO manifest_refs VALUES (?, ?, ?, ?)",
                [(repo, key, str(d.digest), d.size) for d in manifest.blobs + manifest.children],
            )
            db.executemany(_SET_TAG, [(repo, tag, key, now) for tag in tags])

    def manifest(self, repo: str, digest: Digest) -> StoredManifest | None:
        row = self.db.execute(
            "SELECT * FROM manifests WHERE repo = ? AND digest = ?", (repo, str(digest))
        ).fetchone()
        return _manifest(row) if row else None

    def resolve_tag(self, repo: str, tag: str) -> Digest | None:
        row = self.db.execute(
            "SELECT digest FROM tags WHERE repo = ? AND tag = ?", (repo, tag)
        ).fetchone()
        return Digest.parse(row[0]) if row else None

    def tag_state(self, repo: str, tag: str) -> tuple[Digest, float] | None:
        """The digest a tag points at and when that was last set or confirmed."""
        row = self.db.execute(
            "SELECT digest, updated FROM tags WHERE repo = ? AND tag = ?", (repo, tag)
        ).fetchone()
        return (Digest.parse(row[0]), row[1]) if row else None

    def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        """Point a tag at a digest, or confirm that it still points there."""
        self.db.write(_SET_TAG, (repo, tag, str(digest), time.time()))

    def delete_manifest(self, repo: str, digest: Digest) -> bool:
        key = str(digest)
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, key)
            ).rowcount
            db.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, key))
            db.execute("DELETE FROM manifest_refs WHERE repo = ? AND manifest = ?", (repo, key))
        return deleted > 0

    def delete_tag(self, repo: str, tag: str) -> bool:
        cursor = self.db.write("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
        return cursor.rowcount > 0

    def tags(self, repo: str, last: str | None, limit: int) -> list[str]:
        rows = self.db.execute(
            "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
            (repo, last or "", limit),
        )
        return [row[0] for row in rows]

    def referrers(self, repo: str, subject: Digest) -> list[StoredManifest]:
        rows = self.db.execute(
            "SELECT * FROM manifests WHERE repo = ? AND subject = ? ORDER BY digest",
            (repo, str(subject)),
        )
        return [_manifest(row) for row in rows]

    # content sizes, pulls, pins and eviction

    def add_blob(self, digest: Digest, size: int) -> bool:
        """Record stored content; True when it was not recorded before (newly counted)."""
        cursor = self.db.write(
            "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (str(digest), size, time.time())
        )
        return cursor.rowcount > 0

    def blob_size(self, digest: Digest) -> int | None:
        row = self.db.execute("SELECT size FROM blobs WHERE digest = ?", (str(digest),)).fetchone()
        return row[0] if row else None

    def remove_blob(self, digest: Digest) -> int:
        """Forget stored content; the bytes it had (0 if it was not recorded)."""
        rows = self.db.write(
            "DELETE FROM blobs WHERE digest = ? RETURNING size", (str(digest),)
        ).fetchall()
        return rows[0][0] if rows else 0

    def stored_bytes(self) -> tuple[int, int]:
        """Bytes and number of recorded blobs (manifests included)."""
        row = self.db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs").fetchone()
        return int(row[0]), row[1]  # PostgreSQL sums BIGINTs as NUMERIC

    def all_blobs(self) -> Iterator[tuple[Digest, int]]:
        for row in self.db.execute("SELECT digest, size FROM blobs ORDER BY digest"):
            yield Digest.parse(row[0]), row[1]

    def known_size(self, digest: Digest) -> int | None:
        """A blob's size as some stored manifest declares it, before it is fetched."""
        row = self.db.execute(
            "SELECT MAX(size) FROM manifest_refs WHERE child = ?", (str(digest),)
        ).fetchone()
        return row[0]

    def unreferenced_blobs(self) -> list[Digest]:
        rows = self.db.execute(
            "SELECT digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM repo_blobs WHERE"
            " digest = b.digest) AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest ="
            " b.digest) AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE child = b.digest)"
        )
        return [Digest.parse(row[0]) for row in rows]

    def record_pulls(self, pulls: dict[tuple[str, str], tuple[int, float]]) -> None:
        """Add buffered pull counts and times to their manifests."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE manifests SET pulls = pulls + ?1,"
                " last_pull = CASE WHEN last_pull >= ?2 THEN last_pull ELSE ?2 END"
                " WHERE repo = ?3 AND digest = ?4",
                [(count, last, repo, digest) for (repo, digest), (count, last) in pulls.items()],
            )

    def set_pinned(self, repo: str, digest: Digest, pinned: bool) -> bool:
        cursor = self.db.write(
            "UPDATE manifests SET pinned = ? WHERE repo = ? AND digest = ?",
            (int(pinned), repo, str(digest)),
        )
        return cursor.rowcount > 0

    _IMAGES = (
        "SELECT m.repo, m.digest, m.media_type, m.size, m.created, m.last_pull, m.pulls,"
        " m.pinned, r.origin FROM manifests m JOIN repositories r ON r.name = m.repo"
        " WHERE NOT EXISTS (SELECT 1 FROM manifest_refs x JOIN manifests p ON p.repo = x.repo"
        " AND p.digest = x.manifest WHERE x.repo = m.repo AND x.child = m.digest)"
    )

    def images(self, origin: str | None = None) -> Iterator[Row]:
        """Top-level manifests (not the child of another manifest in their repository)."""
        query = self._IMAGES + (" AND r.origin = ?" if origin else "") + " ORDER BY m.repo"
        yield from self.db.execute(query, (origin,) if origin else ())

    def eviction_candidates(self, limit: int) -> list[tuple[str, Digest]]:
        """Unpinned cached images, least recently pulled first."""
        rows = self.db.execute(
            self._IMAGES + " AND r.origin = ? AND m.pinned = 0"
            " ORDER BY COALESCE(m.last_pull, m.created) LIMIT ?",
            (CACHED, limit),
        )
        return [(row["repo"], Digest.parse(row["digest"])) for row in rows]

    def image_content(self, repo: str, digest: Digest) -> dict[str, int]:
        """Every digest an image consists of (itself, child manifests, blobs) with sizes."""
        content = {str(digest): self.blob_size(digest) or 0}
        frontier = [str(digest)]
        while frontier:
            rows = self.db.execute(
                "SELECT child, size FROM manifest_refs WHERE repo = ? AND manifest = ?",
                (repo, frontier.pop()),
            ).fetchall()
            for child, size in rows:
                if child not in content:
                    content[child] = size
                    frontier.append(child)
        return content

    def tags_of(self, repo: str, digest: Digest) -> list[str]:
        rows = self.db.execute(
            "SELECT tag FROM tags WHERE repo = ? AND digest = ? ORDER BY tag", (repo, str(digest))
        )
        return [row[0] for row in rows]

    def evict_image(
        self, repo: str, digest: Digest, in_use: set[Digest]
    ) -> list[tuple[Digest, int]]:
        """Delete an image (its manifest, child manifests no other manifest of the repository
        uses, tags and links) in one transaction. Returns the content no one refers to any
        more, whose records are gone: the caller deletes those files."""
        content = self.image_content(repo, digest)
        with self._transaction() as db:
            doomed = {str(digest)} | {
                child for child in content
                if db.execute("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?",
                              (repo, child)).fetchone()
            }  # fmt: skip
            for manifest in doomed:
                db.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, manifest))
                db.execute(
                    "DELETE FROM tenant_images WHERE repo = ? AND digest = ?", (repo, manifest)
                )
                db.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, manifest))
                db.execute(
                    "DELETE FROM manifest_refs WHERE repo = ? AND manifest = ?", (repo, manifest)
                )
            freed = []
            for child in content:
                still_used = db.execute(
                    "SELECT 1 FROM manifest_refs WHERE child = ? AND repo = ? LIMIT 1",
                    (child, repo),
                ).fetchone()
                if not still_used:
                    db.execute(
                        "DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, child)
                    )
                parsed = Digest.parse(child)
                if parsed not in in_use and not self._referenced(db, child):
                    row = db.execute("SELECT size FROM blobs WHERE digest = ?", (child,)).fetchone()
                    db.execute("DELETE FROM blobs WHERE digest = ?", (child,))
                    freed.append((parsed, row[0] if row else 0))
        return freed

    def forget_content(self, digest: Digest) -> None:
        """Remove every record of content that is gone or corrupt (for `verify --repair`)."""
        key = str(digest)
        with self._transaction() as db:
            for repo, manifest in db.execute(
                "SELECT repo, digest FROM manifests WHERE digest = ?", (key,)
            ).fetchall():
                db.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, manifest))
                db.execute(
                    "DELETE FROM manifest_refs WHERE repo = ? AND manifest = ?", (repo, manifest)
                )
            db.execute("DELETE FROM manifests WHERE digest = ?", (key,))
            db.execute("DELETE FROM tenant_images WHERE digest = ?", (key,))
            db.execute("DELETE FROM repo_blobs WHERE digest = ?", (key,))
            db.execute("DELETE FROM blobs WHERE digest = ?", (key,))

    # tenants' shares of cached images

    def charge(self, tenant: str, repo: str, digest: Digest, when: float) -> None:
        self.db.write(
            "INSERT INTO tenant_images VALUES (?, ?, ?, ?) ON CONFLICT (tenant, repo, digest)"
            " DO UPDATE SET last_pull = excluded.last_pull",
            (tenant, repo, str(digest), when),
        )

    def uncharge(self, tenant: str, repo: str, digest: Digest) -> None:
        self.db.write(
            "DELETE FROM tenant_images WHERE tenant = ? AND repo = ? AND digest = ?",
            (tenant, repo, str(digest)),
        )

    def charged_images(self, tenant: str) -> list[tuple[str, Digest, bool]]:
        """The cached images a tenant is charged for, least recently pulled first, with
        whether each is pinned."""
        rows = self.db.execute(
            "SELECT t.repo, t.digest, m.pinned FROM tenant_images t JOIN manifests m"
            " ON m.repo = t.repo AND m.digest = t.digest WHERE t.tenant = ?"
            " ORDER BY t.last_pull",
            (tenant,),
        )
        return [(row[0], Digest.parse(row[1]), bool(row[2])) for row in rows]

    def charged_to_others(self, tenant: str, repo: str, digest: Digest) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM tenant_images WHERE repo = ? AND digest = ? AND tenant != ? LIMIT 1",
            (repo, str(digest), tenant),
        ).fetchone()
        return row is not None

    def hosted_content(self, prefix: str) -> dict[str, int]:
        """Every digest in hosted repositories whose names start with `prefix`, with sizes."""
        rows = self.db.execute(
            "SELECT b.digest, b.size FROM blobs b WHERE b.digest IN ("
            " SELECT digest FROM repo_blobs WHERE substr(repo, 1, ?1) = ?2"
            " UNION SELECT digest FROM manifests WHERE substr(repo, 1, ?1) = ?2)",
            (len(prefix), prefix),
        )
        return {row[0]: row[1] for row in rows}

    @staticmethod
    def _referenced(db: Database, key: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM repo_blobs WHERE digest = ?1 UNION ALL SELECT 1 FROM manifests"
            " WHERE digest = ?1 UNION ALL SELECT 1 FROM manifest_refs WHERE child = ?1 LIMIT 1",
            (key,),
        ).fetchone()
        return row is not None

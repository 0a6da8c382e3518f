"""Leases on blob downloads, in the database the replicas share: one downloader per digest."""

from __future__ import annotations

from regcache.store.metadata import Metadata

SCHEMA = """
CREATE TABLE IF NOT EXISTS download_leases (
    digest TEXT PRIMARY KEY, owner TEXT NOT NULL, address TEXT NOT NULL, heartbeat REAL NOT NULL
)
"""


class Leases:
    """Who downloads which blob, until when."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    def open(self) -> None:
        self.meta.db.execute(SCHEMA)

    def claim(
        self, digest: str, owner: str, address: str, now: float, ttl: float
    ) -> tuple[str, str]:
        """Take the lease on `digest` unless a live one is held; the holder afterwards."""
        with self.meta._transaction() as db:
            row = db.execute(
                "SELECT owner, address, heartbeat FROM download_leases WHERE digest = ?",
                (digest,),
            ).fetchone()
            if row is not None and row[0] != owner and row[2] >= now - ttl:
                return row[0], row[1]
            db.execute("DELETE FROM download_leases WHERE digest = ?", (digest,))
            db.execute(
                "INSERT INTO download_leases VALUES (?, ?, ?, ?)", (digest, owner, address, now)
            )
        return owner, address

    def renew(self, owner: str, now: float) -> None:
        self.meta.db.execute(
            "UPDATE download_leases SET heartbeat = ? WHERE owner = ?", (now, owner)
        )

    def release(self, digest: str, owner: str) -> None:
        self.meta.db.execute(
            "DELETE FROM download_leases WHERE digest = ? AND owner = ?", (digest, owner)
        )

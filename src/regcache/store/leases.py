"""What replicas sharing one database agree on through it: leases on blob downloads (one
downloader per digest) and the bytes each is writing (one quota for the fleet)."""

from __future__ import annotations

import time

from regcache.store.database import Database
from regcache.store.metadata import Metadata


class Leases:
    """Who downloads which blob, until when."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    def claim(
        self, digest: str, owner: str, address: str, now: float, ttl: float
    ) -> tuple[str, str]:
        """Take the lease on `digest` unless a live one is held; the holder afterwards."""
        with self.meta.db.transaction() as db:
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
        self.meta.db.write("UPDATE download_leases SET heartbeat = ? WHERE owner = ?", (now, owner))

    def release(self, digest: str, owner: str) -> None:
        self.meta.db.write(
            "DELETE FROM download_leases WHERE digest = ? AND owner = ?", (digest, owner)
        )


class Ledger:
    """Every replica's bytes being written, so that the quota holds across the fleet: a
    replica reserves room in one transaction that sees the others' reservations."""

    def __init__(self, meta: Metadata, replica: str, ttl: float) -> None:
        self.meta = meta
        self.replica = replica
        self.ttl = ttl

    def reserve(self, current: int, size: int, quota: int) -> tuple[bool, int]:
        """Raise this replica's reservation from `current` by `size` if everything stored
        and reserved still fits the quota; whether it did, and the bytes stored."""
        now = time.time()
        with self.meta.db.transaction() as db:
            used = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])
            others = int(
                db.execute(
                    "SELECT COALESCE(SUM(bytes), 0) FROM replica_reservations"
                    " WHERE replica != ? AND heartbeat >= ?",
                    (self.replica, now - self.ttl),
                ).fetchone()[0]
            )
            if used + others + current + size > quota:
                return False, used
            self._hold(db, current + size, now)
        return True, used

    def hold(self, reserved: int) -> None:
        """Record this replica's reservation (after a release)."""
        with self.meta.db.transaction() as db:
            self._hold(db, reserved, time.time())

    def _hold(self, db: Database, reserved: int, now: float) -> None:
        db.execute("DELETE FROM replica_reservations WHERE replica = ?", (self.replica,))
        db.execute(
            "INSERT INTO replica_reservations VALUES (?, ?, ?)", (self.replica, reserved, now)
        )

    def renew(self) -> None:
        self.meta.db.write(
            "UPDATE replica_reservations SET heartbeat = ? WHERE replica = ?",
            (time.time(), self.replica),
        )

"""A throwaway PostgreSQL server on loopback, from Debian's `postgresql` package.

The tests run as root, and PostgreSQL refuses to: the cluster is created and run as the
`postgres` OS user, in a directory of its own that is deleted on exit. The superuser connects
through a Unix socket without a password; `create_database` makes a role with a password, so
that the URLs handed out carry one, as a real deployment's do.
"""

from __future__ import annotations

import glob
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from tooling.peers import free_port

OS_USER = "postgres"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binary directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian package: postgresql)")
    return Path(found[-1]).parent


class Postgres:
    """A PostgreSQL server on 127.0.0.1 with its own data directory; a context manager."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.base: Path | None = None

    def _run(self, *command: str) -> None:
        run = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> Postgres:
        # Not under pytest's tmp_path: its directories are private to root.
        self.base = Path(tempfile.mkdtemp(prefix="regcache-postgres-"))
        self.socket_dir.mkdir()
        shutil.chown(self.base, OS_USER)
        shutil.chown(self.socket_dir, OS_USER)
        self._run(
            str(self.bin / "initdb"), "--pgdata", str(self.data_dir), "--username", OS_USER,
            "--auth-local", "trust", "--auth-host", "scram-sha-256", "--encoding", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip
        options = f"-k {self.socket_dir} -p {self.port} -h 127.0.0.1 -c fsync=off"
        try:
            self._run(
                str(self.bin / "pg_ctl"), "start", "--pgdata", str(self.data_dir), "--wait",
                "--log", str(self.base / "postgres.log"), "--options", options,
            )  # fmt: skip
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base / "socket"

    def log(self) -> str:
        path = self.data_dir.parent / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection (autocommit) through the Unix socket."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=OS_USER, dbname=dbname, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """A new database owned by a new role `name` with a random password; its URL."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        password = secrets.token_hex(12)
        with self.admin() as db:
            db.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            db.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                )
            )
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.base is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run(
                str(self.bin / "pg_ctl"), "stop", "--pgdata", str(self.data_dir),
                "--mode", "immediate", "--wait",
            )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def __enter__(self) -> Postgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

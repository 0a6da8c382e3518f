"""The metadata database connection: SQLite (embedded default) or PostgreSQL, one small API.

SQL is written once, in SQLite's dialect: `?` and `?N` placeholders, `INSERT OR IGNORE`, and
schema scripts with SQLite's column types. PostgreSQL receives it translated here, the one
place that knows the differences. Writes are serialized as SQLite serializes them: one writer
at a time, across every process sharing the database (on PostgreSQL, every write transaction
first takes one advisory lock).
"""

from __future__ import annotations

import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from pydantic import SecretStr

# The advisory lock every PostgreSQL write transaction and migration holds: one writer at a time.
WRITE_LOCK = 0x72656763  # "regc"
LOCK_WAIT_MS = 5000  # how long a writer waits for another one before failing, as on SQLite
MASK = "***"


class DatabaseError(RuntimeError):
    """The database cannot be opened or has a schema this code does not know."""


class Row(Protocol):
    """A result row, addressable by column name and by index."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """The result of a statement: its rows and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(ABC):
    """One connection to a metadata database, used from one thread at a time."""

    name: str  # for messages: a path, or a URL with its password masked

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run a read, or any statement inside `transaction()`."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters (inside `transaction()`)."""

    @abstractmethod
    def write(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement that changes data as a transaction of its own."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Database]:
        """A write transaction: no other writer, in any process, until it ends."""

    def migrate(self, schema: str, migrations: dict[int, str]) -> None:
        """Create the schema (version 1) or apply `migrations[v]` for each newer version `v`,
        in one transaction. Scripts are split into statements at every `;`."""
        latest = max(migrations, default=1)
        with self._migration():
            version = self._schema_version()
            if version > latest:
                raise DatabaseError(
                    f"{self.name}: schema version {version} is newer than this regcache ({latest})"
                )
            if version == latest:
                return
            scripts = [] if version else [schema]
            scripts += [migrations[v] for v in range(max(version, 1) + 1, latest + 1)]
            for script in scripts:
                for statement in filter(None, (s.strip() for s in script.split(";"))):
                    self.execute(self._ddl(statement))
            self._set_schema_version(latest)

    def _migration(self) -> AbstractContextManager[Database]:
        return self.transaction()

    def _ddl(self, statement: str) -> str:
        return statement

    @abstractmethod
    def _schema_version(self) -> int: ...

    @abstractmethod
    def _set_schema_version(self, version: int) -> None: ...


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """Put the database in WAL mode. Several processes opening a new file at once may find it
    locked: SQLite does not wait for the lock when it changes the journal mode, so this does."""
    deadline = time.monotonic() + LOCK_WAIT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteDatabase(Database):
    """A SQLite file in WAL mode; `BEGIN IMMEDIATE` makes a transaction the only writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        _switch_to_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise DatabaseError("the metadata database is not open")
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def write(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        # Autocommit: the statement is a transaction that holds the write lock, as wanted.
        # A statement with RETURNING commits once its rows are fetched.
        return self.db.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _set_schema_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")


class PostgresDatabase(Database):
    """A PostgreSQL database; every write transaction holds the advisory lock `WRITE_LOCK`.

    Transactions run at READ COMMITTED, so each statement sees everything committed before it.
    Since a writer's statements run after it has taken the lock, and every other writer waits
    for that lock, a write transaction sees and changes the data as if it were alone, which is
    what `BEGIN IMMEDIATE` guarantees on SQLite. Reads take no lock.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.name = mask_url(url)
        self._db: psycopg.Connection[Any] | None = None
        self._depth = 0  # nesting of transaction(); no reconnecting inside one

    def open(self) -> None:
        self._db = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=10, row_factory=_rows)
        except (psycopg.Error, ValueError) as exc:
            message = scrub(str(exc), self._url)
            raise DatabaseError(f"cannot connect to {self.name}: {message}") from None
        db.execute(f"SET lock_timeout = {LOCK_WAIT_MS}")
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The connection; a new one if the server dropped the last one between transactions."""
        if self._db is None:
            raise DatabaseError("the metadata database is not open")
        if self._db.closed and not self._depth:
            self._db = self._connect()
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        query, order = translate(sql)
        return self.db.execute(query, _reorder(params, order))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, order = translate(sql)
        with self.db.cursor() as cursor:
            cursor.executemany(query, [_reorder(row, order) for row in rows])

    def write(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        with self.transaction() as db:
            return db.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        with self._transaction(lock_wait=True):
            yield self

    @contextmanager
    def _transaction(self, lock_wait: bool) -> Iterator[None]:
        with self.db.transaction():
            self._depth += 1
            try:
                if not lock_wait:
                    self.db.execute("SET LOCAL lock_timeout = 0")
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                yield
            finally:
                self._depth -= 1

    @contextmanager
    def _migration(self) -> Iterator[Database]:
        with self._transaction(lock_wait=False):  # wait as long as another process migrates
            yield self

    def _ddl(self, statement: str) -> str:
        for pattern, replacement in _PG_DDL:
            statement = pattern.sub(replacement, statement)
        return statement

    def _schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _set_schema_version(self, version: int) -> None:
        self.execute("DELETE FROM schema_version")
        self.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def database_for(data_dir: Path, url: SecretStr | None) -> Database:
    """PostgreSQL at `url` if set, else SQLite in the data directory."""
    if url is None:
        return SQLiteDatabase(data_dir / "metadata.db")
    secret = url.get_secret_value()
    if urlsplit(secret).scheme not in ("postgresql", "postgres"):
        raise DatabaseError("database_url must be a postgresql:// URL")
    return PostgresDatabase(secret)


# SQLite's column types and table options in a schema script, and PostgreSQL's equivalents.
# Text compares byte by byte, as in SQLite, so that listings keep their order.
_PG_DDL = [
    (re.compile(r"\s+WITHOUT ROWID"), ""),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
]
_TOKENS = re.compile(r"'(?:[^']|'')*'|\?(\d*)|%")
_IGNORE = "INSERT OR IGNORE "


@lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """A statement for psycopg (`%s` placeholders, PostgreSQL syntax), and which parameter
    each placeholder takes when that is not simply the next one (`?N` numbers)."""
    if sql.startswith(_IGNORE):
        sql = f"INSERT {sql.removeprefix(_IGNORE)} ON CONFLICT DO NOTHING"
    order: list[int] = []

    def placeholder(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%":
            return "%%"
        if token.startswith("'"):  # a literal: no placeholders in it, but psycopg sees `%`
            return token.replace("%", "%%")
        order.append(int(match.group(1)) - 1 if match.group(1) else max(order, default=-1) + 1)
        return "%s"

    query = _TOKENS.sub(placeholder, sql)
    return query, None if order == list(range(len(order))) else tuple(order)


def _reorder(params: Sequence[Any], order: tuple[int, ...] | None) -> Sequence[Any]:
    return params if order is None else [params[i] for i in order]


class _Row(tuple[Any, ...]):
    """A PostgreSQL result row; subclasses know their columns' names."""

    __slots__ = ()
    columns: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = self.columns[key]
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.columns)


@lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[_Row]:
    columns = {name: index for index, name in enumerate(names)}
    return type("Row", (_Row,), {"__slots__": (), "columns": columns})


def _rows(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], _Row]:
    """psycopg's row factory: rows addressable by name and index, like `sqlite3.Row`."""
    return _row_class(tuple(column.name for column in cursor.description or ()))


def mask_url(url: str) -> str:
    """`url` with its password, in the authority or the query, replaced by `***`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
        query = [(k, MASK if k == "password" else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
    except ValueError:
        return "(an unparsable database URL)"


def scrub(text: str, url: str) -> str:
    """`text` without the password of `url` (in case a driver message repeats it)."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""]
        secrets += [v for k, v in parse_qsl(parts.query, True) if k == "password"]
    except ValueError:
        return "(details withheld)"
    text = text.replace(url, mask_url(url))
    for secret in filter(None, secrets):
        text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    return text

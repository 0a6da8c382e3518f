"""Shared fixtures: a running regcache process and a client for it, on the embedded back ends
(files and SQLite) or, where a module asks for it, on SeaweedFS and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tooling.oci import Client
from tooling.server import Regcache

BACKENDS = ["files", "s3+postgres"]


class Engines:
    """SeaweedFS and PostgreSQL, started once per session for the modules that use them."""

    def __init__(self, root: Path) -> None:
        from tooling.postgres import Postgres
        from tooling.seaweed import SeaweedFS

        self.s3 = SeaweedFS(root).start()
        self.postgres = Postgres().start()

    def settings(self) -> dict[str, Any]:
        """Settings for a new, empty bucket and database."""
        name = f"rc{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(name)
        return {
            "object_storage": {"endpoint_url": self.s3.endpoint, "bucket": name,
                               "access_key": self.s3.access_key,
                               "secret_key": self.s3.secret_key},
            "database_url": self.postgres.create_database(name),
        }  # fmt: skip

    def close(self) -> None:
        self.s3.stop()
        self.postgres.stop()


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    started = Engines(tmp_path_factory.mktemp("engines"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the back ends a module runs on (parametrize it with `BACKENDS`)."""
    kind = getattr(request, "param", "files")
    return request.getfixturevalue("engines").settings() if kind == "s3+postgres" else {}


@pytest.fixture(scope="module")
def regcache(
    tmp_path_factory: pytest.TempPathFactory, backend: dict[str, Any]
) -> Iterator[Regcache]:
    """One regcache process shared by a test module."""
    workdir = tmp_path_factory.mktemp("regcache")
    config = None
    if backend:
        config = workdir / "config.json"
        config.write_text(json.dumps(backend))
    with Regcache(workdir, config=config) as server:
        yield server


@pytest.fixture
def fresh_regcache(tmp_path: Path) -> Iterator[Regcache]:
    """A regcache process of the test's own, with an empty store."""
    server = Regcache(tmp_path)
    with server:
        yield server


@pytest.fixture
def client(regcache: Regcache) -> Client:
    return Client(regcache.url)

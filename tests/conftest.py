"""Shared fixtures: a running regcache process and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tooling.oci import Client
from tooling.server import Regcache


@pytest.fixture(scope="module")
def regcache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regcache]:
    """One regcache process shared by a test module."""
    with Regcache(tmp_path_factory.mktemp("regcache")) as server:
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

"""Crashes: a SIGKILL in the middle of an upload never leaves a partial blob behind."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from tooling.oci import Client
from tooling.server import Regcache

pytestmark = pytest.mark.peers
MiB = 1024 * 1024
SIZE = 500 * MiB


def _content(seed: int) -> Iterator[bytes]:
    """The same 500 MiB of incompressible bytes for a seed, 1 MiB at a time."""
    rng = random.Random(seed)
    for _ in range(SIZE // MiB):
        yield rng.randbytes(MiB)


def _digest(seed: int) -> str:
    hasher = hashlib.sha256()
    for chunk in _content(seed):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _upload_files(server: Regcache) -> list[int]:
    return [p.stat().st_size for p in (server.data_dir / "tmp").rglob("data") if p.is_file()]


@pytest.mark.parametrize("mode", ["chunked", "monolithic"])
def test_sigkill_during_a_500_mib_upload(fresh_regcache: Regcache, mode: str) -> None:
    server, client = fresh_regcache, Client(fresh_regcache.url)
    digest = _digest(7)
    if mode == "chunked":
        url, params, method = client.start_upload("crash/blob"), {}, requests.patch
    else:
        url, params = f"{server.url}/v2/crash/blob/blobs/uploads/", {"digest": digest}
        method = requests.post
    failure: list[BaseException] = []

    def send() -> None:
        try:
            method(url, params=params, data=_content(7), timeout=60)
        except requests.RequestException as exc:
            failure.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 60
    while max(_upload_files(server), default=0) < 150 * MiB and time.monotonic() < deadline:
        time.sleep(0.01)
    assert max(_upload_files(server)) >= 150 * MiB
    server.kill()
    sender.join(60)
    assert failure, "the upload must have been cut off by the kill"

    server.start()
    assert _upload_files(server) == []
    assert not any((server.data_dir / "tmp").rglob("*.*"))
    assert not list((server.data_dir / "blobs").rglob(digest.split(":")[1]))
    assert client.get(f"crash/blob/blobs/{digest}").status_code == 404

    redo = requests.post(
        f"{server.url}/v2/crash/blob/blobs/uploads/", params={"digest": digest}, data=_content(7)
    )
    assert redo.status_code == 201, redo.text
    hasher = hashlib.sha256()
    with client.get(f"crash/blob/blobs/{digest}", stream=True) as got:
        for chunk in got.iter_content(MiB):
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest

"""A small distribution-API client for tests, built on requests."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data: bytes, media_type: str, algorithm: str = "sha256") -> dict[str, Any]:
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def errors_of(response: requests.Response) -> list[str]:
    """The error codes of an OCI error body."""
    return [entry["code"] for entry in response.json()["errors"]]


@dataclass
class Client:
    """Talks to one registry at `url` (with `http`'s credentials, if any)."""

    url: str
    http: requests.Session = field(default_factory=requests.Session)

    def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        response = self.http.post(
            f"{self.url}/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data
        )
        assert response.status_code == 201, response.text
        return digest

    def start_upload(self, repo: str) -> str:
        response = self.http.post(f"{self.url}/v2/{repo}/blobs/uploads/")
        assert response.status_code == 202, response.text
        return self.absolute(response.headers["Location"])

    def absolute(self, location: str) -> str:
        return location if location.startswith("http") else self.url + location

    def manifest_doc(self, repo: str, layers: list[bytes], **extra: Any) -> dict[str, Any]:
        """Push an empty config and `layers`, return an OCI image manifest document."""
        self.push_blob(repo, b"{}")
        for layer in layers:
            self.push_blob(repo, layer)
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(b"{}", OCI_EMPTY),
            "layers": [descriptor(layer, LAYER) for layer in layers],
            **extra,
        }

    def put_manifest(
        self, repo: str, reference: str, doc: dict[str, Any] | bytes, media_type: str = OCI_MANIFEST
    ) -> requests.Response:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return self.http.put(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            data=body,
            headers={"Content-Type": media_type},
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(f"{self.url}/v2/{path}", **kwargs)


def store_snapshot(data_dir: Path) -> tuple[list[tuple[str, int]], dict[str, list[tuple]]]:
    """Every blob file with its size, and every metadata row: to show a store is unchanged."""
    files = sorted(
        (str(p.relative_to(data_dir)), p.stat().st_size)
        for p in (data_dir / "blobs").rglob("*")
        if p.is_file()
    )
    db = sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        db.close()
    return files, rows

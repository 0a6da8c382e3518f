"""The command line's side of the admin API: requests, errors in words, tables."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from regcache.units import format_age, format_size


class AdminError(Exception):
    """A failure to report to the operator in one sentence."""


class AdminClient:
    """Calls one regcache's admin API with its token."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=600) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{self.url} answered {exc.code}: {_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach regcache at {self.url}: {reason}") from None


def _message(body: bytes) -> str:
    try:
        return "; ".join(e["message"] for e in json.loads(body)["errors"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200] or "no details"


def split_reference(text: str) -> tuple[str, str]:
    """`repo:tag` or `repo@digest` into repository and reference."""
    if "@" in text:
        repo, _, ref = text.partition("@")
    else:
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon <= slash:
            raise AdminError(f"{text!r} needs a tag or digest: REPOSITORY:TAG or REPOSITORY@DIGEST")
        repo, ref = text[:colon], text[colon + 1 :]
    return repo, ref


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def images_table(images: list[dict[str, Any]]) -> str:
    now = time.time()
    rows = [
        [image["repository"], ",".join(image["tags"]) or "-", image["digest"][:19],
         format_size(image["size"]),
         format_age(now - image["last_pull"] if image["last_pull"] else None),
         str(image["pulls"]), "yes" if image["pinned"] else "", image["origin"]]
        for image in images
    ]  # fmt: skip
    headers = ["REPOSITORY", "TAGS", "DIGEST", "SIZE", "LAST PULL", "PULLS", "PINNED", "ORIGIN"]
    return table(headers, rows)


def storage_table(summary: dict[str, Any]) -> str:
    rows = [
        ["used", format_size(summary["used"])],
        ["quota", format_size(summary["quota"])],
        ["in use", f"{100 * summary['used'] / summary['quota']:.1f}%"],
        ["being written", format_size(summary["reserved"])],
        ["free disk", format_size(summary["free_disk"])],
        ["blobs", str(summary["blobs"])],
        ["evictions", str(summary["evictions"])],
    ]
    return table(["STORAGE", ""], rows)

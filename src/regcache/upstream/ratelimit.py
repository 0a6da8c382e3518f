"""Docker Hub style rate-limit headers: `ratelimit-limit: 100;w=21600` and friends."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

_VALUE = re.compile(r"^\s*(\d+)(?:\s*;\s*w=(\d+))?")


def _parse(value: str | None) -> tuple[int | None, int | None]:
    match = _VALUE.match(value or "")
    if not match:
        return None, None
    return int(match[1]), int(match[2]) if match[2] else None


@dataclass
class RateLimit:
    """The latest budget an upstream reported for one credential."""

    limit: int | None = None
    remaining: int | None = None
    window_seconds: int | None = None
    source: str | None = None
    updated: float | None = None

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take the figures from a response's headers, if it has any."""
        if "ratelimit-limit" not in headers and "ratelimit-remaining" not in headers:
            return
        self.limit, window = _parse(headers.get("ratelimit-limit"))
        self.remaining, remaining_window = _parse(headers.get("ratelimit-remaining"))
        self.window_seconds = window or remaining_window
        self.source = headers.get("docker-ratelimit-source")
        self.updated = time.time()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

"""Logging: one JSON object per line for machines, or plain text for a terminal.

Records carry their fields in `extra`; only fields named in `FIELDS` are written, so no
header, token or password can reach a log line by accident.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = (
    "client", "tenant", "method", "path", "repository", "reference", "cache", "status", "bytes",
    "duration", "upstream", "upstream_request_id", "route",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure(level: str, fmt: str) -> None:
    """Log to stderr at `level` in `fmt` (`json`, `text`, or `auto`: text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

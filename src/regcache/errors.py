"""The OCI distribution error codes, in one place.

Every failure a client can see is a `RegistryError`; the server turns it into the spec's
JSON body (`{"errors": [{"code", "message", "detail"}]}`) with the code's HTTP status.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


class TransferFailed(Exception):
    """The bytes of a blob on their way to a client could not be completed correctly; a
    response already under way is cut off, never completed wrongly."""


class ErrorCode(Enum):
    """A distribution-spec error code with its default HTTP status and message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (404, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    RANGE_INVALID = (416, "requested range not satisfiable")
    PAYLOAD_TOO_LARGE = (413, "payload too large")
    PAGINATION_NUMBER_INVALID = (400, "invalid number of results requested")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


# Codes that are ours (not in the spec's table) are sent under the nearest spec code.
_WIRE_CODE = {
    ErrorCode.RANGE_INVALID: "BLOB_UPLOAD_INVALID",
    ErrorCode.PAYLOAD_TOO_LARGE: "MANIFEST_INVALID",
}


class RegistryError(Exception):
    """A failure reported to the client as OCI error JSON."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.status = status or code.status
        self.headers = headers or {}
        super().__init__(f"{code.name}: {self.message}")

    def body(self) -> bytes:
        """The JSON error body."""
        entry: dict[str, Any] = {
            "code": _WIRE_CODE.get(self.code, self.code.name),
            "message": self.message,
        }
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()

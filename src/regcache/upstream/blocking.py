"""Blob bodies read with blocking calls from a worker thread, so that their bytes never pass
through the event loop: one HTTP/1.1 connection per exchange, closed when it is released."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from email.message import Message
from urllib.parse import urlsplit


class BlockingResponse:
    """The status and headers of an upstream response, and its body to read into a buffer.

    Every method but `release` blocks: call them from a worker thread."""

    def __init__(self, connection: http.client.HTTPConnection) -> None:
        self._connection = connection
        self._response = connection.getresponse()

    @classmethod
    def open(
        cls, method: str, url: str, headers: dict[str, str], context: ssl.SSLContext, timeout: float
    ) -> BlockingResponse:
        """Send a request and read the response's head; `timeout` bounds every socket wait."""
        parts = urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=timeout
            )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request(method, target, headers=headers)
            return cls(connection)
        except http.client.HTTPException as exc:
            connection.close()
            raise ConnectionError(f"malformed response: {type(exc).__name__}") from None
        except BaseException:
            connection.close()
            raise

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Message:
        """The response headers (names match in any case)."""
        return self._response.msg

    @property
    def content_length(self) -> int | None:
        value = self._response.getheader("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def readinto(self, buffer: memoryview) -> int:
        """Read the next body bytes into `buffer`; 0 at the end of the body (or where the
        upstream closed the connection early: the caller checks the length)."""
        try:
            return self._response.readinto(buffer)
        except http.client.HTTPException as exc:
            raise ConnectionError(f"malformed body: {type(exc).__name__}") from None

    def release(self) -> None:
        """Close the connection; a read blocked in another thread returns at once."""
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # not connected any more
                sock.shutdown(socket.SHUT_RDWR)
        self._connection.close()

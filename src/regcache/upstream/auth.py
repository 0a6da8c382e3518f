"""Registry authentication: `WWW-Authenticate` challenges, Basic auth, scoped bearer tokens."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import aiohttp

_PARAM = re.compile(r'(\w+)="([^"]*)"')
TOKEN_MARGIN = 10.0  # renew a token this many seconds before it expires
DEFAULT_TOKEN_LIFETIME = 60.0


class AuthError(Exception):
    """The token service refused or failed; the message never holds a secret."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        return cls(scheme.lower(), dict(_PARAM.findall(rest)))


class Authenticator:
    """Holds one upstream's credentials and the tokens issued for them, by scope."""

    def __init__(self, username: str | None, password: str | None) -> None:
        self._basic = aiohttp.BasicAuth(username, password or "") if username is not None else None
        self._use_basic = False
        self._tokens: dict[str, tuple[str, float]] = {}

    @property
    def credential(self) -> str:
        """The name the upstream knows us by, for rate-limit accounting."""
        return self._basic.login if self._basic else "anonymous"

    def header(self, scope: str) -> dict[str, str]:
        """The Authorization header for a request in `scope`, if we have one."""
        token = self._tokens.get(scope)
        if token and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._use_basic and self._basic is not None:
            return {"Authorization": self._basic.encode()}
        return {}

    async def answer(
        self, session: aiohttp.ClientSession, challenge: Challenge, scope: str, ssl: object
    ) -> bool:
        """Act on a 401 challenge; True when a retry can succeed."""
        if challenge.scheme == "basic":
            if self._basic is None or self._use_basic:
                return False
            self._use_basic = True
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        realm = challenge.params["realm"]
        if not realm.startswith(("https://", "http://")):
            raise AuthError("the upstream's token realm is not an http(s) URL")
        query = {"scope": challenge.params.get("scope", scope)}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        async with session.get(realm, params=query, auth=self._basic, ssl=ssl) as response:
            if response.status != 200:
                raise AuthError(f"token service answered {response.status}", response.status)
            body = await response.json(content_type=None)
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise AuthError("token service sent no token")
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        self._tokens[scope] = (token, time.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0))
        return True

"""Tenants: whom a request is for, who is asking, what they may do, and their namespace.

Without tenants in the config there is one implicit tenant that anyone may pull from and
push to, with names unchanged. Configured tenants each get their own hosted namespace:
tenant `a`'s repository `app` is stored as `+a/app`, a name no client can write, so no
tenant can read, list, delete or learn of another's hosted images. Cached repositories are
shared: one copy of each image, charged to every tenant that pulls it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import bcrypt

from regcache.config import ConfigError, Settings, TenantSettings
from regcache.errors import ErrorCode, RegistryError
from regcache.policy import is_pinned_tag
from regcache.proxy.router import Remote
from regcache.throttle import Throttle

NAMESPACE_MARK = "+"
IMPLICIT = TenantSettings(name="default", anonymous="push", default=True)
VERIFIED_CACHE = 1024  # credentials checked recently (bcrypt is slow on purpose)


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user, a token, or anonymous."""

    name: str
    pull: bool
    push: bool
    authenticated: bool


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """Users and bcrypt hashes of an htpasswd file (`htpasswd -B`)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read htpasswd file {path}: {exc.strerror}") from exc
    users = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.strip().partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ConfigError(f"{path}:{number}: only bcrypt entries (htpasswd -B) are supported")
        users[user] = hashed.replace("$2y$", "$2b$", 1).encode()
    return users


def _same(given: str, secret: str) -> bool:
    """A constant-time comparison that takes any text (a header may hold undecodable bytes,
    and `hmac.compare_digest` refuses non-ASCII strings)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape")
    )


def _basic(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Tenant:
    """One tenant's rules, credentials and rate limits."""

    def __init__(self, settings: TenantSettings, namespaced: bool) -> None:
        self.settings = settings
        self.name = settings.name
        self.namespaced = namespaced
        self.users = read_htpasswd(settings.htpasswd) if settings.htpasswd else {}
        self.tokens = [(token, token.secret()) for token in settings.tokens]
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        client, tenant = settings.client_limits, settings.tenant_limits
        self.client_throttles = {
            "requests": Throttle("request", client.requests),
            "pulls": Throttle("pull", client.pulls),
            "bytes": Throttle("download byte", client.download_bytes),
        }
        self.tenant_throttles = {
            "requests": Throttle("request", tenant.requests),
            "pulls": Throttle("pull", tenant.pulls),
            "bytes": Throttle("download byte", tenant.download_bytes),
        }

    # namespace

    @property
    def prefix(self) -> str:
        """What this tenant's hosted repositories start with in the store."""
        return f"{NAMESPACE_MARK}{self.name}/" if self.namespaced else ""

    def internal(self, name: str) -> str:
        """The store's name of this tenant's hosted repository `name`."""
        return self.prefix + name

    def external(self, stored: str) -> str | None:
        """The name this tenant knows a stored repository by, or None if not its own."""
        if stored.startswith(self.prefix):
            name = stored[len(self.prefix) :]
            return None if name.startswith(NAMESPACE_MARK) else name
        return None

    # credentials

    def recognises(self, header: str | None) -> bool:
        """Whether credentials name one of this tenant's users or tokens."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return any(_same(value, secret) for _, secret in self.tokens)
        credentials = _basic(value) if scheme.lower() == "basic" else None
        if credentials is None:
            return False
        user, password = credentials
        return user in self.users or any(_same(password, secret) for _, secret in self.tokens)

    def challenge(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Basic realm="regcache {self.name}"'}

    def _refuse(self, message: str) -> RegistryError:
        return RegistryError(ErrorCode.UNAUTHORIZED, message, headers=self.challenge())

    async def authenticate(self, header: str | None) -> Principal:
        """The principal that `Authorization: header` proves; UNAUTHORIZED when it is wrong."""
        anonymous = self.settings.anonymous
        if not header:
            return Principal("anonymous", anonymous != "none", anonymous == "push", False)
        key = hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()
        known = self._verified.get(key)
        if known is not None:
            self._verified.move_to_end(key)
            return known
        principal = await self._verify(header)
        self._verified[key] = principal
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, header: str) -> Principal:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            for token, secret in self.tokens:
                if _same(value.strip(), secret):
                    return Principal(token.name, True, token.push, True)
            raise self._refuse("invalid token")
        credentials = _basic(value.strip()) if scheme.lower() == "basic" else None
        if credentials is None:
            raise self._refuse("unsupported authorization; use Basic or Bearer")
        user, password = credentials
        hashed = self.users.get(user)
        if hashed is not None and await asyncio.to_thread(
            bcrypt.checkpw, password.encode(), hashed
        ):
            push = any(fnmatchcase(user, glob) for glob in self.settings.push_users)
            return Principal(user, True, push, True)
        for token, secret in self.tokens:
            if _same(password, secret):
                return Principal(token.name, True, token.push, True)
        raise self._refuse("invalid username or password")

    def authorize(self, principal: Principal, push: bool) -> None:
        """UNAUTHORIZED for an anonymous client that needs to log in; DENIED for a user
        who lacks the right."""
        if principal.push or (principal.pull and not push):
            return
        action = "push" if push else "pull"
        if not principal.authenticated:
            raise self._refuse(f"log in to {action} ({self.name} needs credentials)")
        raise RegistryError(ErrorCode.DENIED, f"{principal.name} may not {action}")

    # policy

    def check_upstream(self, remote: Remote) -> None:
        """DENIED, before any upstream contact, for a repository outside the allow-list."""
        prefix = remote.upstream.config.prefix
        allow = self.settings.allow
        if allow is not None:
            patterns = allow.get(prefix, [])
            if not any(fnmatchcase(remote.name, p) for p in patterns):
                allowed = ", ".join(f"{prefix}/{p}" for p in patterns) or "nothing"
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"{remote.local} is not allowed for {self.name}; allowed: {allowed}",
                )
        for pattern in self.settings.deny.get(prefix, []):
            if fnmatchcase(remote.name, pattern):
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"{remote.local} is denied for {self.name} (by {prefix}/{pattern})",
                )

    def check_tag(self, remote: Remote, tag: str) -> str | None:
        """Apply the tag policy to a pull by tag: a warning to send, or DENIED."""
        policy = self.settings.tag_policy
        if policy == "allow" or is_pinned_tag(tag, remote.upstream.config):
            return None
        message = f"{remote.local}:{tag} is a mutable tag; pull by digest or a full version"
        if policy == "deny":
            raise RegistryError(ErrorCode.DENIED, message)
        return f'299 regcache "{message}"'

    def check_size(self, repo: str, size: int) -> None:
        limit = self.settings.max_image_bytes
        if limit is not None and size > limit:
            raise RegistryError(
                ErrorCode.DENIED,
                f"{repo} has {size} bytes, more than {self.name}'s image size limit of {limit}",
            )

    # rates

    def throttle(self, kind: str, client: str, amount: float = 1) -> None:
        """TOOMANYREQUESTS if the client or the whole tenant is over its `kind` rate;
        else count `amount` against both."""
        client_throttle, tenant_throttle = self.client_throttles[kind], self.tenant_throttles[kind]
        client_throttle.check(client, f"client {client}", min(amount, 1))
        tenant_throttle.check(self.name, f"tenant {self.name}", min(amount, 1))
        client_throttle.take(client, amount)
        tenant_throttle.take(self.name, amount)


class Tenants:
    """Every tenant, and how a request selects one: listen port, Host, then credentials."""

    def __init__(self, settings: Settings) -> None:
        configured = settings.tenants
        self.all = [Tenant(t, namespaced=True) for t in configured] or [Tenant(IMPLICIT, False)]
        self.by_name = {tenant.name: tenant for tenant in self.all}
        self.by_port = {port: t for t in self.all for port in t.settings.ports}
        self.by_host = {host: t for t in self.all for host in t.settings.hosts}
        self.default = next((t for t in self.all if t.settings.default), None)

    @property
    def implicit(self) -> bool:
        return not self.all[0].namespaced

    def select(self, port: int | None, host: str | None, authorization: str | None) -> Tenant:
        """The tenant a request is for; UNAUTHORIZED (with a challenge) when only
        credentials could tell and there are none that any tenant knows."""
        tenant = self.by_port.get(port) if port is not None else None
        if tenant is None and host:
            tenant = self.by_host.get(host.rsplit(":", 1)[0].lower().strip("[]"))
        if tenant is None:
            tenant = next((t for t in self.all if t.recognises(authorization)), self.default)
        if tenant is None:
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                "log in: this registry serves several tenants",
                headers={"WWW-Authenticate": 'Basic realm="regcache"'},
            )
        return tenant

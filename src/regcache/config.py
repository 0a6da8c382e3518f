"""One typed settings model, read from defaults, a YAML file and `REGCACHE_*` variables.

Precedence, highest first: command-line options, environment variables, the YAML file,
the embedded defaults. An unknown or ill-typed key is a `ConfigError` naming the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from regcache.reference import NAME_RE

ENV_PREFIX = "REGCACHE_"


def _listed(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def split_listen(listen: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


DOCKER_HUB_REDIRECTS = ["*.docker.com", "*.docker.io"]  # its blob storage (a CDN)


class Upstream(BaseModel):
    """A registry that regcache caches, selected by a path prefix (and, if `mirror`, by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    prefix: str
    mirror: bool = False
    docker_hub: bool | None = None  # None: decided from the URL's host
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    timeout: float = 30.0
    retries: int = 2
    max_downloads: int = 16  # blob downloads from this upstream at once
    redirect_hosts: list[str] | None = None  # globs of hosts it may redirect to
    tag_ttl: float = 300.0
    immutable_tags: list[str] = []
    mutable_tags: list[str] = []

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials; use username and password_file")
        return value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError("must be a repository path such as docker.io or ghcr.io")
        return value

    @model_validator(mode="after")
    def _check_password_sources(self) -> Upstream:
        given = [self.password, self.password_file, self.password_env]
        if sum(source is not None for source in given) > 1:
            raise ValueError("give only one of password, password_file and password_env")
        return self

    @property
    def is_docker_hub(self) -> bool:
        if self.docker_hub is not None:
            return self.docker_hub
        return urlsplit(self.url).hostname in DOCKER_HUB_HOSTS

    @property
    def trusted_redirects(self) -> list[str]:
        """Hosts besides its own that the upstream may redirect to (blob storage)."""
        if self.redirect_hosts is not None:
            return self.redirect_hosts
        return DOCKER_HUB_REDIRECTS if self.is_docker_hub else []

    def secret(self) -> str | None:
        """The upstream password, read from wherever the config says it is."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"upstream {self.name}: cannot read password_file {self.password_file}: "
                    f"{exc.strerror}"
                ) from exc
        if self.password_env is not None:
            if self.password_env not in os.environ:
                raise ConfigError(
                    f"upstream {self.name}: environment variable {self.password_env} is not set"
                )
            return os.environ[self.password_env]
        return None


class Rate(BaseModel):
    """A token bucket: `rate` units per second on average, up to `burst` at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float
    burst: float

    @model_validator(mode="after")
    def _check(self) -> Rate:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        return self


class Limits(BaseModel):
    """Rates of requests, of image pulls (manifest GETs) and of blob bytes downloaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: Rate | None = None
    pulls: Rate | None = None
    download_bytes: Rate | None = None


class Token(BaseModel):
    """A static bearer token (also accepted as the password of `docker login`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    token: SecretStr | None = None
    token_file: Path | None = None
    push: bool = False

    @model_validator(mode="after")
    def _check_source(self) -> Token:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token and token_file")
        return self

    def secret(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"token {self.name}: cannot read token_file {self.token_file}: {exc.strerror}"
            ) from exc


TENANT_NAME_RE = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"


class TenantSettings(BaseModel):
    """One user of a shared regcache (a workshop environment, a class, a team)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    hosts: list[str] = []  # Host names (without port) that select this tenant
    ports: list[int] = []  # extra listen ports that select it
    default: bool = False  # serves requests that no other tenant's host, port or user selects
    htpasswd: Path | None = None  # bcrypt users
    push_users: list[str] = ["*"]  # globs over htpasswd users who may push; others pull
    tokens: list[Token] = []
    anonymous: Literal["none", "pull", "push"] = "pull"
    quota_bytes: int | None = None
    max_image_bytes: int | None = None
    allow: dict[str, list[str]] | None = None  # upstream prefix -> globs of its repositories
    deny: dict[str, list[str]] = {}
    tag_policy: Literal["allow", "warn", "deny"] = "allow"
    client_limits: Limits = Limits()
    tenant_limits: Limits = Limits()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(TENANT_NAME_RE, value):
            raise ValueError("must be lower-case letters, digits and single dashes")
        return value

    @field_validator("hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower() for host in value]


class ObjectStorage(BaseModel):
    """An S3-compatible bucket for blobs (the data directory then holds only temp files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    prefix: str = ""  # key prefix inside the bucket
    access_key: str | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    tls_verify: bool = True
    redirect: bool = False  # answer blob GETs with a presigned URL instead of streaming
    redirect_ttl: int = 300  # seconds a presigned URL is valid

    def secret(self) -> str | None:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.secret_key_file is not None:
            try:
                return self.secret_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"object_storage: cannot read secret_key_file {self.secret_key_file}: "
                    f"{exc.strerror}"
                ) from exc
        return None


class Fleet(BaseModel):
    """This replica's place among several that share one database and object storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str  # how the other replicas reach this one, e.g. http://10.0.0.5:5000
    token: SecretStr  # shared by the replicas, for the blobs they relay to each other
    lease_seconds: float = 5.0  # a download whose replica stops renewing is taken over

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class Settings(BaseSettings):
    """Everything regcache can be told. Every field is also `REGCACHE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    listen: str = "0.0.0.0:5000"
    data_dir: Path = Path("./regcache-data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    manifest_max_bytes: int = 4 * 1024 * 1024
    hot_manifest_bytes: int = 32 * 1024 * 1024
    quota_bytes: int = 5 * 1024**3
    min_free_bytes: int = 256 * 1024**2
    gc_interval: float = 600.0
    upload_max_age: float = 24 * 3600.0
    admin_token: SecretStr | None = None
    admin_open: bool = False
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstreams: list[Upstream] = []
    tenants: list[TenantSettings] = []
    database_url: SecretStr | None = None  # postgresql://…; SQLite in data_dir when absent
    object_storage: ObjectStorage | None = None  # blobs in S3; files in data_dir when absent
    fleet: Fleet | None = None  # replicas sharing the database: one download per digest

    @model_validator(mode="after")
    def _check_upstreams(self) -> Settings:
        for field in ("name", "prefix"):
            values = [getattr(upstream, field) for upstream in self.upstreams]
            if len(values) != len(set(values)):
                raise ValueError(f"upstreams: each {field} must be unique")
        if sum(upstream.mirror for upstream in self.upstreams) > 1:
            raise ValueError("upstreams: only one upstream can be the mirror")
        for field in ("name", "hosts", "ports"):
            values = [v for t in self.tenants for v in _listed(getattr(t, field))]
            if len(values) != len(set(values)):
                raise ValueError(f"tenants: each {field.rstrip('s')} must belong to one tenant")
        if sum(tenant.default for tenant in self.tenants) > 1:
            raise ValueError("tenants: only one tenant can be the default")
        prefixes = {upstream.prefix for upstream in self.upstreams}
        for tenant in self.tenants:
            for prefix in [*(tenant.allow or {}), *tenant.deny]:
                if prefix not in prefixes:
                    raise ValueError(f"tenants: {tenant.name} names no upstream prefix {prefix!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("manifest_max_bytes", "quota_bytes", "gc_interval", "upload_max_age")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


CLIENT_VARIABLES = frozenset({"REGCACHE_URL"})  # read by the admin commands, not the server


def _check_environment() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | CLIENT_VARIABLES
    for var in os.environ:
        if var.startswith(ENV_PREFIX) and var not in known:
            raise ConfigError(f"unknown setting in environment variable {var}")


def _describe(exc: ValidationError, origin: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting {key!r}{origin}")
        else:
            lines.append(f"setting {key!r}{origin}: {error['msg']}")
    return "; ".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, an optional YAML file, the environment and overrides."""
    _check_environment()
    values = _read_file(config_file) if config_file else {}
    origin = f" (in {config_file})" if config_file else ""
    env_names = {name for name in Settings.model_fields if ENV_PREFIX + name.upper() in os.environ}
    values = {key: value for key, value in values.items() if key not in env_names}
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from exc


__all__ = [
    "ConfigError", "Fleet", "Limits", "ObjectStorage", "Rate", "Settings", "TenantSettings",
    "Token", "Upstream", "load_settings", "split_listen",
]  # fmt: skip

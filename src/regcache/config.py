"""One typed settings model, read from defaults, a YAML file and `REGCACHE_*` variables.

Precedence, highest first: command-line options, environment variables, the YAML file,
the embedded defaults. An unknown or ill-typed key is a `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "REGCACHE_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def split_listen(listen: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Settings(BaseSettings):
    """Everything regcache can be told. Every field is also `REGCACHE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    listen: str = "0.0.0.0:5000"
    data_dir: Path = Path("./regcache-data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    manifest_max_bytes: int = 4 * 1024 * 1024
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("manifest_max_bytes")
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


def _check_environment() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
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


__all__ = ["ConfigError", "Settings", "load_settings", "split_listen"]

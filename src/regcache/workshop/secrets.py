"""Registry credentials written into workshop files, found line by line and masked at once."""

from __future__ import annotations

import re
from collections.abc import Iterable

from regcache.image_ref import has_template
from regcache.workshop.source import Source
from regcache.workshop.survey import Secret, Survey

_CREDENTIAL_NAME = (
    r"(?:DOCKER|DOCKERHUB|DOCKER_HUB|HUB|REGISTRY)_?(?:PASSWORD|PASSWD|PASS|TOKEN|PAT|SECRET)"
)
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Docker access token", re.compile(r"\b(dckr_(?:pat|oat)_[A-Za-z0-9_-]{8,})")),
    ("password in a URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:([^\s/@'\"]+)@")),
    (
        ".dockerconfigjson",
        re.compile(r"\.dockerconfigjson['\"]?\s*:\s*['\"]?([A-Za-z0-9+/=]{16,})"),
    ),
    ("docker config auth", re.compile(r"\"(?:auth|identitytoken)\"\s*:\s*\"([^\"]+)\"")),
    (
        "password in env",
        re.compile(rf"\b{_CREDENTIAL_NAME}['\"]?\s*[=:]\s*['\"]?([^\s'\"]+)", re.IGNORECASE),
    ),
)
_ENV_NAME = re.compile(rf"\bname:\s*['\"]?{_CREDENTIAL_NAME}['\"]?\s*$", re.IGNORECASE)
_ENV_VALUE = re.compile(r"\bvalue:\s*['\"]?([^\s'\"]+)")


def mask(secret: str) -> str:
    """Enough of a secret to recognise it, never the secret."""
    if secret.startswith("dckr_"):
        return secret[:9] + "****"
    return secret[:3] + "****" if len(secret) >= 12 else "****"


def is_literal(value: str) -> bool:
    """Whether a credential value is written out (not a variable, not read from stdin)."""
    return bool(value) and value not in {"-", "''", '""'} and not has_template(value)


def add_secret(
    survey: Survey, source: Source, position: tuple[int, int], value: str, kind: str
) -> None:
    """Record a literal credential found at `position`."""
    if is_literal(value):
        survey.secrets.append(Secret(source.path, *position, mask(value), kind))


def scan_secrets(source: Source, numbers: Iterable[int], survey: Survey) -> None:
    """Credentials on the given 1-based lines of `source`."""
    numbers = list(numbers)
    for number in numbers:
        for kind, pattern in _PATTERNS:
            for match in pattern.finditer(source.lines[number - 1]):
                add_secret(survey, source, (number, match.start(1) + 1), match.group(1), kind)
    for number in numbers:  # `- name: DOCKER_PASSWORD` then `value: …` on a following line
        if _ENV_NAME.search(source.lines[number - 1]):
            for after in range(number + 1, min(number + 3, len(source.lines) + 1)):
                value = _ENV_VALUE.search(source.lines[after - 1])
                if value:
                    position = (after, value.start(1) + 1)
                    add_secret(survey, source, position, value.group(1), "password in env")
                    break

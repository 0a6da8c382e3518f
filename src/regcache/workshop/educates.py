"""The Educates Workshop resource (`training.educates.dev/v1beta1`): where it names images, the
session features it turns on, and the session-registry variables a workshop uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import CommentedMap

from regcache.image_ref import parse_image
from regcache.workshop.manifests import (
    is_compose,
    mapping,
    record,
    scan_compose,
    scan_pods,
    sequence,
    string_at,
)
from regcache.workshop.source import Source
from regcache.workshop.survey import Context, Spot, Survey, Workshop

API_GROUP = "training.educates.dev/"
# Workshop base images Educates names itself (`jdk17-environment:*`), never pulled as written.
_ALIASES = re.compile(r"^(?:base|jdk8|jdk11|jdk17|jdk21|conda)-environment(?::.*)?$")
_REGISTRY_NAMES = "host|username|password|auth_token|auth_file|secret"
REGISTRY_VARIABLE = re.compile(
    rf"\$\(\s*registry_(?:{_REGISTRY_NAMES})\s*\)"
    rf"|\{{\{{[<%]?\s*(?:param\s+)?registry_(?:{_REGISTRY_NAMES})\s*[>%]?\}}\}}"
    rf"|\$\{{?REGISTRY_(?:{_REGISTRY_NAMES.upper()})\b\}}?"
)


def is_workshop(document: Any) -> bool:
    return (
        isinstance(document, CommentedMap)
        and str(document.get("apiVersion", "")).startswith(API_GROUP)
        and document.get("kind") == "Workshop"
    )


def _enabled(spec: Any, application: str) -> bool:
    settings = mapping(spec, "session", "applications", application)
    return settings is not None and settings.get("enabled") is True


def workshop_root(path: Path) -> Path:
    """The workshop directory of a definition: `resources/workshop.yaml` is in `resources/`."""
    folder = path.resolve().parent
    return folder.parent if folder.name == "resources" else folder


def _vendir(source: Source, entries: Any, survey: Survey, where: str) -> None:
    """Record the OCI images of vendir `directories.contents` entries."""
    for entry in sequence(entries):
        for kind, key in (("image", "url"), ("imgpkgBundle", "image")):
            holder = mapping(entry, kind)
            record(source, survey, holder, key, f"{where}.{kind}.{key}", Context.WORKSHOP_FILES)


def _registries(source: Source, environment: Any, survey: Survey) -> None:
    """Record what the workshop's OCI image cache mirrors (`environment.images.registries`)."""
    for registry in sequence(environment, "images", "registries"):
        urls = [url for url in sequence(registry, "urls") if isinstance(url, str)]
        host = urls[0].partition("://")[2].rstrip("/") if urls else ""
        for content in sequence(registry, "content"):
            prefix = string_at(content, "prefix")
            if host and prefix and "*" not in prefix:
                image = parse_image(f"{host}/{prefix.strip('/')}")
                where = "spec.environment.images.registries"
                record(source, survey, content, "prefix", where, Context.CACHE, image=image)


def scan_workshop(source: Source, document: CommentedMap, survey: Survey) -> None:
    """Record a Workshop resource: its settings and every image it names."""
    spec = mapping(document, "spec") or CommentedMap()
    line = document.lc.line + 1
    root = workshop_root(source.path)
    survey.workshops.append(
        Workshop(source.path, line, root, _enabled(spec, "docker"), _enabled(spec, "registry"))
    )
    workshop = mapping(spec, "workshop")
    if not _ALIASES.match(string_at(workshop, "image") or ""):
        record(source, survey, workshop, "image", "spec.workshop.image", Context.WORKSHOP_IMAGE)
    _vendir(source, sequence(spec, "workshop", "files"), survey, "spec.workshop.files")
    for package in sequence(spec, "workshop", "packages"):
        _vendir(source, sequence(package, "files"), survey, "spec.workshop.packages.files")
    assets = sequence(spec, "environment", "assets", "files")
    _vendir(source, assets, survey, "spec.environment.assets.files")
    publish, where = mapping(spec, "publish"), "spec.publish.image"
    record(source, survey, publish, "image", where, Context.WORKSHOP_FILES, produced=True)
    for section in ("session", "environment", "request"):
        for item in sequence(spec, section, "objects"):
            scan_pods(source, item, survey, f"spec.{section}.objects")
    session = mapping(spec, "session")
    scan_pods(
        source,
        CommentedMap(initContainers=sequence(session, "initContainers")),
        survey,
        "spec.session",
    )
    scan_pods(source, mapping(session, "patches"), survey, "spec.session.patches")
    compose = mapping(session, "applications", "docker", "compose")
    if compose is not None and is_compose(compose):
        services = mapping(compose, "services") or CommentedMap()
        scan_compose(source, services, survey, "spec.session.applications.docker.compose.")
    _registries(source, mapping(spec, "environment"), survey)


def scan_variables(source: Source, survey: Survey) -> None:
    """Record every use of a session-registry variable in a file."""
    for number, line in enumerate(source.lines, start=1):
        for match in REGISTRY_VARIABLE.finditer(line):
            survey.variables.append(Spot(source.path, number, match.start() + 1, match.group()))

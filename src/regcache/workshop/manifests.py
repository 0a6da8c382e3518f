"""Image references in YAML: Kubernetes pod specs and compose services, with exact positions
from ruamel.yaml's round-trip loader."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ruamel.yaml import YAML, CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from regcache.workshop.source import Source
from regcache.workshop.survey import Context, Survey

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers", "steps", "sidecars")
_IMAGE_LINE = re.compile(r"^\s*(?:-\s+)?image:\s*(['\"]?)(.+?)\1\s*(?:\s#.*)?$")


def load_documents(text: str) -> list[Any] | None:
    """The documents of a YAML stream, round-trip (with positions); None when it is not YAML."""
    try:
        return list(YAML(typ="rt").load_all(text))
    except (YAMLError, ValueError, TypeError):
        return None


def position(
    source: Source, node: CommentedMap, key: Any, value: str, first: int
) -> tuple[int, int]:
    """1-based position of the string `value` at `node[key]`, in a YAML text that starts on
    line `first` of `source` (past any opening quote)."""
    line, column = node.lc.value(key)
    line += first
    return source.find(value, line, column + 1) or (line, column + 1)


def record(
    source: Source,
    survey: Survey,
    node: Any,
    key: str,
    where: str,
    context: Context,
    first: int = 1,
    **details: Any,
) -> None:
    """Record the image named by the string at `node[key]`, if there is one there."""
    value = string_at(node, key)
    if value is not None:
        at = position(source, node, key, value, first)
        survey.use(source, at, value, where, context, **details)


def string_at(node: Any, key: str) -> str | None:
    """`node[key]` when `node` is a mapping and that is a string."""
    value = node.get(key) if isinstance(node, CommentedMap) else None
    return value if isinstance(value, str) else None


def mapping(node: Any, *keys: str) -> CommentedMap | None:
    """The mapping at a path of keys, or None."""
    for key in keys:
        node = node.get(key) if isinstance(node, CommentedMap) else None
    return node if isinstance(node, CommentedMap) else None


def sequence(node: Any, *keys: str) -> CommentedSeq:
    """The sequence at a path of keys (empty when there is none)."""
    for key in keys:
        node = node.get(key) if isinstance(node, CommentedMap) else None
    return node if isinstance(node, CommentedSeq) else CommentedSeq()


def _containers(node: Any) -> Iterator[tuple[str, CommentedMap]]:
    """(list name, container) for every container of every pod spec under `node`."""
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            if key in CONTAINER_LISTS and isinstance(value, CommentedSeq):
                for item in value:
                    if isinstance(item, CommentedMap):
                        yield key, item
            else:
                yield from _containers(value)
    elif isinstance(node, CommentedSeq):
        for item in node:
            yield from _containers(item)


def scan_pods(source: Source, node: Any, survey: Survey, where: str, first: int = 1) -> None:
    """Record the images of the containers of all pod specs under `node` (cluster pulls)."""
    kind = node.get("kind") if isinstance(node, CommentedMap) else None
    for key, container in _containers(node):
        label = f"{where} {kind}.{key}" if isinstance(kind, str) else f"{where}.{key}"
        policy = string_at(container, "imagePullPolicy")
        record(source, survey, container, "image", label.strip(" ."), Context.CLUSTER, first,
               pull_policy=policy)  # fmt: skip


def scan_compose(
    source: Source, services: CommentedMap, survey: Survey, where: str, first: int = 1
) -> None:
    """Record the images of compose services (pulled by the docker daemon)."""
    for name, service in services.items():
        policy = string_at(service, "pull_policy")
        record(source, survey, service, "image", f"{where}services.{name}.image",
               Context.DOCKER, first, pull_policy=policy)  # fmt: skip


def is_compose(document: Any) -> bool:
    """Whether a YAML document is a compose file: services, and no Kubernetes `kind`."""
    return mapping(document, "services") is not None and "kind" not in document


def scan_image_lines(source: Source, survey: Survey) -> None:
    """For YAML that does not parse (a Helm template, say): every `image:` line."""
    for number, line in enumerate(source.lines, start=1):
        match = _IMAGE_LINE.match(line)
        if match:
            at = (number, match.start(2) + 1)
            survey.use(source, at, match.group(2), "image:", Context.CLUSTER)

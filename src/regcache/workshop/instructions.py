"""Workshop instructions: the code blocks of markdown and AsciiDoc pages, including Educates
clickable actions (```` ```terminal:execute ```` with a YAML body, `[source,role=execute]`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ruamel.yaml import CommentedMap

from regcache.workshop.commands_text import scan_shell
from regcache.workshop.dockerfile import scan_dockerfile
from regcache.workshop.manifests import (
    is_compose,
    load_documents,
    position,
    scan_compose,
    scan_pods,
    string_at,
)
from regcache.workshop.secrets import scan_secrets
from regcache.workshop.source import Source
from regcache.workshop.survey import Survey

# Clickable actions whose YAML body holds a command line (`command:`) or text to type (`text:`).
_ACTIONS = frozenset({"terminal:execute", "terminal:execute-all", "terminal:input",
                      "workshop:copy", "workshop:copy-and-edit"})  # fmt: skip
_SHELL = frozenset({"", "bash", "sh", "shell", "console", "zsh", "execute", "execute-all",
                    "execute-1", "execute-2", "execute-3", "copy", "copy-and-edit"})  # fmt: skip
_YAML = frozenset({"yaml", "yml"})
_DOCKERFILE = frozenset({"dockerfile", "containerfile", "docker"})
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`{]*)")
_ADOC_ATTRIBUTES = re.compile(r"^\[([^\]]*)\]\s*$")
_ADOC_DELIMITER = re.compile(r"^(-{4,}|\.{4,})\s*$")


@dataclass(frozen=True)
class Block:
    """A code block: its kind (language or clickable action) and its body's lines."""

    kind: str
    first: int  # 1-based line of the body's first line
    count: int


def markdown_blocks(source: Source) -> Iterator[Block]:
    """Fenced code blocks (``` or ~~~, closed by the same fence at least as long)."""
    lines, index = source.lines, 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence, start = opening.group(1), index
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while index < len(lines) and not closing.match(lines[index]):
            index += 1
        yield Block(opening.group(2).lower(), start + 1, index - start)
        index += 1


def asciidoc_blocks(source: Source) -> Iterator[Block]:
    """Listing blocks (`----` or `....`), with the role or language of `[source,lang,role=x]`."""
    lines, index = source.lines, 0
    while index < len(lines):
        delimiter = _ADOC_DELIMITER.match(lines[index])
        index += 1
        if delimiter is None:
            continue
        attributes = _ADOC_ATTRIBUTES.match(lines[index - 2]) if index >= 2 else None
        start = index
        while index < len(lines) and lines[index].rstrip() != delimiter.group(1):
            index += 1
        yield Block(_adoc_kind(attributes.group(1) if attributes else ""), start + 1, index - start)
        index += 1


def _adoc_kind(attributes: str) -> str:
    """The role if there is one, else the language of `[source,bash,role=terminal:execute]`."""
    named = dict(part.strip().partition("=")[::2] for part in attributes.split(",") if "=" in part)
    positional = [part.strip() for part in attributes.split(",") if "=" not in part]
    role = named.get("role", "").strip("\"'")
    return (role or (positional[1] if len(positional) > 1 else "")).lower()


def _sniff(source: Source, block: Block) -> str:
    """The kind of an unlabelled block: a manifest, a Dockerfile or (most often) commands."""
    body = source.lines[block.first - 1 : block.first - 1 + block.count]
    if any(re.match(r"^\s*apiVersion:", line) for line in body):
        return "yaml"
    first = next((line.strip() for line in body if line.strip()), "")
    return "dockerfile" if re.match(r"(?i)^FROM\s", first) else ""


def scan_block(source: Source, block: Block, survey: Survey) -> None:
    """Record the images, commands and credentials of one code block."""
    kind = block.kind or _sniff(source, block)
    body = "\n".join(source.lines[block.first - 1 : block.first - 1 + block.count])
    if kind in _ACTIONS:
        for document in load_documents(body) or []:
            for key in ("command", "text"):
                value = string_at(document, key)
                if isinstance(document, CommentedMap) and value is not None:
                    start = position(source, document, key, value.split("\n")[0], block.first)
                    scan_shell(source, value, start, survey, raw=False, instructions=True)
    elif kind in _SHELL:
        scan_shell(source, body, (block.first, 1), survey, raw=True, instructions=True)
    elif kind in _YAML:
        for document in load_documents(body) or []:
            if is_compose(document):
                scan_compose(source, document["services"], survey, "", block.first)
            else:
                scan_pods(source, document, survey, "", block.first)
    elif kind in _DOCKERFILE:
        scan_dockerfile(source, survey, block.first, block.count)
    scan_secrets(source, range(block.first, block.first + block.count), survey)


def scan_instructions(source: Source, survey: Survey) -> None:
    """Record what the code blocks of a markdown or AsciiDoc page use."""
    adoc = source.path.suffix.lower() in {".adoc", ".asciidoc", ".asc"}
    for block in asciidoc_blocks(source) if adoc else markdown_blocks(source):
        scan_block(source, block, survey)

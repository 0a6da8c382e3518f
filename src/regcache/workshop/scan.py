"""Find the images a workshop uses: walk files and directories, and hand each file to the
scanner of its kind (Workshop resource, Kubernetes manifest, compose file, Dockerfile,
instructions, shell script).

`find_images` is the public entry point for `pin` and `warm --from`; `survey` gives lint the
rest (commands, credentials, session variables, workshop settings)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from regcache.workshop.commands_text import scan_shell
from regcache.workshop.dockerfile import scan_dockerfile
from regcache.workshop.educates import is_workshop, scan_variables, scan_workshop
from regcache.workshop.instructions import scan_instructions
from regcache.workshop.manifests import (
    is_compose,
    load_documents,
    scan_compose,
    scan_image_lines,
    scan_pods,
)
from regcache.workshop.secrets import scan_secrets
from regcache.workshop.source import Source
from regcache.workshop.survey import Context, Mention, Survey

__all__ = ["Mention", "find_images", "survey"]

_SKIPPED_DIRECTORIES = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"})
_DOCKERFILE = re.compile(r"^(?:docker|container)file(?:\..+)?$|.+\.dockerfile$")
_SHEBANG = re.compile(r"^#!.*\b(?:ba|z|da)?sh\b")


def _kind(path: Path) -> str | None:
    """What a file is, by name (and, for a script without an extension, its `#!` line)."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if _DOCKERFILE.match(name):
        return "dockerfile"
    if suffix in {".yaml", ".yml"}:
        return "yaml"
    if suffix in {".md", ".markdown", ".adoc", ".asciidoc", ".asc"}:
        return "instructions"
    if suffix in {".sh", ".bash", ".zsh"}:
        return "shell"
    if suffix in {".json", ".env"} or name == ".env":
        return "text"
    if not suffix and _is_script(path):
        return "shell"
    return None


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return _SHEBANG.match(file.readline(200).decode("utf-8", "replace")) is not None
    except OSError:
        return False


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files under `paths`, in a stable order, without version-control and tool caches."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                skipped = _SKIPPED_DIRECTORIES.intersection(child.relative_to(path).parts)
                if child.is_file() and not skipped:
                    yield child
        elif path.is_file():
            yield path


def _scan_yaml(source: Source, survey: Survey) -> None:
    documents = load_documents(source.text)
    if documents is None:
        scan_image_lines(source, survey)
        return
    for document in documents:
        if is_workshop(document):
            scan_workshop(source, document, survey)
        elif is_compose(document):
            scan_compose(source, document["services"], survey, "")
        else:
            scan_pods(source, document, survey, "")


def _scan_file(path: Path, kind: str, survey: Survey) -> None:
    source = Source.read(path)
    if source is None:
        return
    if kind == "yaml":
        _scan_yaml(source, survey)
    elif kind == "dockerfile":
        scan_dockerfile(source, survey)
    elif kind == "shell":
        scan_shell(source, source.text, (1, 1), survey, raw=True)
    if kind == "instructions":
        scan_instructions(source, survey)  # credentials only inside code blocks
    else:
        scan_secrets(source, range(1, len(source.lines) + 1), survey)
    scan_variables(source, survey)


def survey(paths: Iterable[Path]) -> Survey:
    """Scan files and directories (recursively) for everything lint judges."""
    found = Survey()
    for path in _files(paths):
        kind = _kind(path)
        if kind is not None:
            _scan_file(path, kind, found)
    return found


def find_images(paths: Iterable[Path]) -> list[Mention]:
    """Every image reference the workshop pulls, in file order, each position once.

    Names the workshop only builds or pushes (`docker build -t`, the target of `docker tag`,
    `skopeo copy`, `crane copy`, `imgpkg push`, `spec.publish.image`) are left out, and so are
    docker commands that use such a locally built name, and the upstream prefixes of the
    workshop's OCI image cache (`environment.images.registries`).
    """
    found = survey(paths)
    mentions: dict[tuple[Path, int, int], Mention] = {}
    for use in found.uses:
        mention = use.mention
        pulled = not use.produced and use.context is not Context.CACHE
        if pulled and not found.built_locally(use):
            mentions.setdefault((mention.path, mention.line, mention.column), mention)
    return sorted(mentions.values(), key=lambda m: (str(m.path), m.line, m.column))

"""What a scan of workshop files finds: image uses, commands, credentials, session variables
and the Workshop resources that say which session features are on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from regcache.image_ref import ImageRef, parse_image
from regcache.workshop.source import Source


class Context(StrEnum):
    """Who pulls an image, which decides the rules that apply to it."""

    WORKSHOP_IMAGE = "workshop-image"  # the custom workshop image (spec.workshop.image)
    WORKSHOP_FILES = (
        "workshop-files"  # OCI artefacts vendir/imgpkg unpack (files, packages, assets)
    )
    CLUSTER = "cluster"  # the cluster's nodes, for a pod
    DOCKER = "docker"  # the session's docker daemon (behind the platform's Docker Hub mirror)
    TOOL = "tool"  # a tool that pulls by itself (skopeo, crane, imgpkg, dive, helm)
    CACHE = "cache"  # an upstream of the workshop's OCI image cache
    LOCAL = "local"  # a name already in the local docker daemon (`docker tag` source)


@dataclass(frozen=True)
class Mention:
    """An image reference as written in a file."""

    path: Path  # file it was found in
    line: int  # 1-based line of the reference text
    column: int  # 1-based column where `text` starts on that line
    text: str  # the reference exactly as written in the file (without quotes)
    image: ImageRef | None  # parsed (None if unparseable)
    where: str  # what put it there, e.g. "spec.workshop.image", "docker pull", "FROM"


@dataclass(frozen=True)
class Use:
    """A mention, with who pulls it and how."""

    mention: Mention
    context: Context
    produced: bool = False  # a name the workshop builds or pushes, not one it pulls
    pull_policy: str | None = None


@dataclass(frozen=True)
class Spot:
    """A located piece of text that is not an image reference."""

    path: Path
    line: int
    column: int
    text: str


@dataclass(frozen=True)
class Command(Spot):
    """A docker command line (`text` is the tool and subcommand, e.g. `docker run`)."""

    instructions: bool = False  # in the workshop instructions (markdown or AsciiDoc)


@dataclass(frozen=True)
class Secret(Spot):
    """An embedded credential; `text` is already masked."""

    kind: str = ""


@dataclass(frozen=True)
class Workshop:
    """An Educates Workshop resource and the session features it turns on."""

    path: Path
    line: int
    root: Path  # the workshop directory: the parent of `resources/`
    docker: bool
    registry: bool

    def owns(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)


@dataclass
class Survey:
    """Everything found in the scanned files."""

    uses: list[Use] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    variables: list[Spot] = field(default_factory=list)
    workshops: list[Workshop] = field(default_factory=list)

    def use(
        self,
        source: Source,
        position: tuple[int, int],
        text: str,
        where: str,
        context: Context,
        *,
        image: ImageRef | None = None,
        produced: bool = False,
        pull_policy: str | None = None,
    ) -> None:
        """Record an image reference `text` written at `position` (parsed unless `image`)."""
        line, column = position
        parsed = image if image is not None else parse_image(text)
        mention = Mention(source.path, line, column, text, parsed, where)
        self.uses.append(Use(mention, context, produced, pull_policy))

    def built_locally(self, use: Use) -> bool:
        """Whether a docker command names an image the session builds or tags itself
        (`docker build -t greeting .` then `docker run greeting`): no registry is asked."""
        image = use.mention.image
        if use.produced or use.context not in {Context.DOCKER, Context.LOCAL} or image is None:
            return False
        return any(
            other.produced and other.context is Context.DOCKER and _same(other.mention.image, image)
            for other in self.uses
        )

    def workshop_for(self, path: Path) -> Workshop | None:
        """The Workshop resource whose directory holds `path` (the innermost one)."""
        owners = [workshop for workshop in self.workshops if workshop.owns(path)]
        return max(owners, key=lambda workshop: len(workshop.root.parts), default=None)


def _same(built: ImageRef | None, image: ImageRef) -> bool:
    return built is not None and (built.name, built.tag or "latest") == (
        image.name,
        image.tag or "latest",
    )

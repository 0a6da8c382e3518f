"""The lint rules: what each one means and how to fix it, and the checks that apply them to
a survey of workshop files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from regcache.image_ref import DOCKER_HUB_ALIASES, ImageRef, has_template
from regcache.workshop.survey import Context, Survey, Use


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: Severity
    reason: str
    fix: str


@dataclass(frozen=True)
class Finding:
    rule: Rule
    path: Path
    line: int
    column: int
    text: str  # what the finding is about, as written (a credential is masked)
    message: str


RULES: tuple[Rule, ...] = (
    Rule("RC101", "hub-workshop-files", Severity.ERROR,
         "workshop files or an OCI bundle hosted on Docker Hub are pulled by every session, "
         "without a mirror",
         "publish them to ghcr.io (or another registry), or pull them through $(oci_image_cache)"),
    Rule("RC102", "hub-workshop-image", Severity.ERROR,
         "a custom workshop image on Docker Hub is pulled by the cluster for every node, "
         "without a mirror",
         "re-host the image on another registry, or pull it through $(oci_image_cache)"),
    Rule("RC103", "pull-always-tag", Severity.WARNING,
         "a latest, main, master or develop tag (or none) makes the platform pull the image "
         "again every time",
         "use a fixed version tag, or pin a digest (`regcache pin`)"),
    Rule("RC104", "hub-mutable-tag", Severity.WARNING,
         "a Docker Hub tag without a patch version (major-only, major.minor or a name) "
         "can move to new content",
         "use a full version tag such as 1.25.3, or pin a digest (`regcache pin`)"),
    Rule("RC105", "hub-cluster-pull", Severity.WARNING,
         "cluster workloads pull Docker Hub directly: the docker daemon's mirror is not in "
         "that path",
         "use $(oci_image_cache), push the image to the session registry "
         "($(registry_host)) first, or re-host it"),
    Rule("RC106", "hub-pull-policy-always", Severity.WARNING,
         "imagePullPolicy Always (or --pull always) asks Docker Hub again on every start",
         "drop the pull policy and use a fixed version tag or digest"),
    Rule("RC107", "hub-direct-tool", Severity.ERROR,
         "skopeo, crane, imgpkg, dive and helm pull by themselves, bypassing the docker "
         "daemon's mirror",
         "pull through $(oci_image_cache) or a regcache prefix, or use `docker pull`"),
    Rule("RC201", "docker-disabled", Severity.ERROR,
         "the instructions run docker, but docker support is off in the workshop definition",
         "set spec.session.applications.docker.enabled: true, or drop the docker commands"),
    Rule("RC202", "registry-disabled", Severity.ERROR,
         "a session-registry variable is used, but the session registry is off",
         "set spec.session.applications.registry.enabled: true"),
    Rule("RC301", "embedded-credentials", Severity.ERROR,
         "registry credentials (a Docker Hub password or access token) are written where "
         "every workshop user can read them",
         "remove them and revoke them; give the credentials to the cache (regcache) instead"),
    Rule("RC901", "unparsed-image", Severity.INFO,
         "an image reference could not be parsed, so it was not checked",
         "check the reference for typos"),
)  # fmt: skip
_BY_KEY = {key.lower(): rule for rule in RULES for key in (rule.id, rule.name)}
ALWAYS_PULLED_TAGS = frozenset({"latest", "main", "master", "develop"})
_PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+(?:[-+._].*)?$|^(?:sha-)?[0-9a-f]{7,64}$|\d{8}")
_PULLED = frozenset({Context.WORKSHOP_IMAGE, Context.WORKSHOP_FILES, Context.CLUSTER,
                     Context.DOCKER, Context.TOOL})  # fmt: skip


def find_rule(key: str) -> Rule:
    """A rule by id (`RC101`) or name (`hub-workshop-files`)."""
    try:
        return _BY_KEY[key.lower()]
    except KeyError:
        raise ValueError(f"no lint rule {key!r}") from None


def on_docker_hub(image: ImageRef, text: str) -> bool:
    """Whether the image is on Docker Hub: a template host never is, nor a name that is all
    variable (`$IMAGE`) unless it names a Docker Hub host."""
    host = text.partition("/")[0]
    return image.is_docker_hub and (
        host in DOCKER_HUB_ALIASES or not has_template(image.repository)
    )


def _tag_kind(tag: str) -> str:
    """How a mutable tag is mutable: `7-alpine` is major-only, `1.25` major.minor."""
    if re.match(r"^v?\d+(?:[^\d.].*)?$", tag):
        return "major-only"
    return "major.minor" if re.match(r"^v?\d+\.\d+(?:[^\d.].*)?$", tag) else "named"


def _judge_use(use: Use) -> Iterator[tuple[Rule, str]]:
    mention, image = use.mention, use.mention.image
    text, where = mention.text, mention.where
    if image is None:
        if use.context is not Context.CACHE:
            yield find_rule("RC901"), f"could not parse image reference {text!r} ({where})"
        return
    hub = on_docker_hub(image, text)
    if hub and use.context is Context.WORKSHOP_FILES:
        yield find_rule("RC101"), f"{text} is hosted on Docker Hub ({where})"
    if hub and use.context is Context.WORKSHOP_IMAGE:
        yield find_rule("RC102"), f"custom workshop image {text} is on Docker Hub"
    if use.produced or use.context not in _PULLED:
        return
    if not image.templated and not image.digest:
        if image.tag is None or image.tag in ALWAYS_PULLED_TAGS:
            tag = f"tag {image.tag!r}" if image.tag else "no tag (latest)"
            yield find_rule("RC103"), f"{text}: {tag} is pulled again every time ({where})"
        elif hub and not _PINNED_TAG.search(image.tag):
            kind = _tag_kind(image.tag)
            yield find_rule("RC104"), f"{text}: {kind} tag {image.tag!r} can move ({where})"
    if hub and use.context is Context.CLUSTER:
        yield find_rule("RC105"), f"{text} is pulled from Docker Hub by the cluster ({where})"
    if hub and (use.pull_policy or "").lower() == "always":
        yield find_rule("RC106"), f"{text} is pulled from Docker Hub on every start ({where})"
    if hub and use.context is Context.TOOL:
        yield find_rule("RC107"), f"{text} is pulled from Docker Hub without the mirror ({where})"


def _check_uses(survey: Survey) -> Iterator[Finding]:
    for use in survey.uses:
        mention = use.mention
        for rule, message in () if survey.built_locally(use) else _judge_use(use):
            yield Finding(rule, mention.path, mention.line, mention.column, mention.text, message)


def _check_workshop_settings(survey: Survey) -> Iterator[Finding]:
    for command in survey.commands:
        workshop = survey.workshop_for(command.path) if command.instructions else None
        if workshop is not None and not workshop.docker:
            message = f"{command.text} in the instructions, but docker is off in {workshop.path}"
            yield Finding(find_rule("RC201"), command.path, command.line, command.column,
                          command.text, message)  # fmt: skip
    for variable in survey.variables:
        workshop = survey.workshop_for(variable.path)
        if workshop is not None and not workshop.registry:
            message = f"{variable.text} used, but the session registry is off in {workshop.path}"
            yield Finding(find_rule("RC202"), variable.path, variable.line, variable.column,
                          variable.text, message)  # fmt: skip


def _check_secrets(survey: Survey) -> Iterator[Finding]:
    for secret in survey.secrets:
        message = f"{secret.kind} embedded: {secret.text}"
        yield Finding(find_rule("RC301"), secret.path, secret.line, secret.column, secret.text,
                      message)  # fmt: skip


def check(survey: Survey) -> list[Finding]:
    """Every finding, once each (by rule, file, line and subject), in file order."""
    findings: dict[tuple[str, Path, int, str], Finding] = {}
    for checks in (_check_uses, _check_workshop_settings, _check_secrets):
        for finding in checks(survey):
            key = (finding.rule.id, finding.path, finding.line, finding.text)
            findings.setdefault(key, finding)
    return sorted(findings.values(), key=lambda f: (str(f.path), f.line, f.column, f.rule.id))

"""`regcache lint`: judge workshop files, keep the findings asked for, choose the exit status."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path

from regcache.workshop.rules import Finding, Rule, Severity, check
from regcache.workshop.scan import survey
from regcache.workshop.source import Source

# `# regcache-lint: ignore[RC105, hub-mutable-tag]` (or without brackets: every rule) at the end
# of the finding's line, or alone on the line before; in any comment syntax (`#`, `<!-- -->`, `//`).
_IGNORE = re.compile(r"regcache-lint:\s*ignore(?:\[([^\]]*)\])?")
_COMMENT_LINE = re.compile(r"^\s*(?:#|<!--|//)\s*regcache-lint:")


def _ignored_rules(line: str) -> set[str] | None:
    """The rule ids and names an ignore comment on `line` names; an empty set means all;
    None when there is no ignore comment."""
    match = _IGNORE.search(line)
    if match is None:
        return None
    return {key.strip().lower() for key in (match.group(1) or "").split(",") if key.strip()}


def _inline_ignored(finding: Finding, sources: dict[Path, Source | None]) -> bool:
    if finding.path not in sources:
        sources[finding.path] = Source.read(finding.path)
    source = sources[finding.path]
    if source is None:
        return False
    lines = [source.lines[finding.line - 1]]
    if finding.line >= 2 and _COMMENT_LINE.match(source.lines[finding.line - 2]):
        lines.append(source.lines[finding.line - 2])
    rule = finding.rule
    for line in lines:
        keys = _ignored_rules(line)
        if keys is not None and (not keys or {rule.id.lower(), rule.name} & keys):
            return True
    return False


def lint(
    paths: Iterable[Path], only: Collection[Rule] = (), ignore: Collection[Rule] = ()
) -> list[Finding]:
    """The findings for files and directories: of the `only` rules (all when empty), without
    the `ignore` rules and those silenced by an inline comment."""
    sources: dict[Path, Source | None] = {}
    return [
        finding
        for finding in check(survey(paths))
        if (not only or finding.rule in only)
        and finding.rule not in ignore
        and not _inline_ignored(finding, sources)
    ]


def exit_status(findings: Iterable[Finding], strict: bool = False) -> int:
    """2 with errors; 1 with warnings under `strict`; else 0."""
    severities = {finding.rule.severity for finding in findings}
    if Severity.ERROR in severities:
        return 2
    return 1 if strict and Severity.WARNING in severities else 0

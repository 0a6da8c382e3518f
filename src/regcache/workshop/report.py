"""Lint reports: readable text grouped by file, JSON, and SARIF 2.1.0 for code-scanning tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from regcache import __version__
from regcache.workshop.rules import RULES, Finding, Severity

FORMATS = ("text", "json", "sarif")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _counts(findings: Sequence[Finding]) -> dict[str, int]:
    return {str(s): sum(f.rule.severity is s for f in findings) for s in Severity}


def text_report(findings: Sequence[Finding]) -> str:
    """Findings grouped by file, one `file:line:column` line each, then each rule's fix."""
    if not findings:
        return "no findings"
    lines: list[str] = []
    for path, group in groupby(findings, key=lambda finding: finding.path):
        lines.append(str(path))
        for f in group:
            where = f"{path}:{f.line}:{f.column}"
            lines.append(f"  {where}: {f.rule.severity} {f.rule.id} {f.rule.name}: {f.message}")
        lines.append("")
    for rule in RULES:
        if any(finding.rule is rule for finding in findings):
            lines.append(f"{rule.id} {rule.name}: {rule.reason}\n  fix: {rule.fix}")
    counts = _counts(findings)
    files = len({finding.path for finding in findings})
    plural = {"error": "errors", "warning": "warnings", "info": "info"}
    summary = ", ".join(
        f"{n} {severity if n == 1 else plural[severity]}" for severity, n in counts.items()
    )
    lines.append(f"\n{summary} in {files} file{'s' if files != 1 else ''}")
    return "\n".join(lines)


def _finding_data(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule.id,
        "name": finding.rule.name,
        "severity": str(finding.rule.severity),
        "path": finding.path.as_posix(),
        "line": finding.line,
        "column": finding.column,
        "text": finding.text,
        "message": finding.message,
    }


def json_report(findings: Sequence[Finding]) -> str:
    data = {"findings": [_finding_data(f) for f in findings], "summary": _counts(findings)}
    return json.dumps(data, indent=2)


def _uri(path: Path) -> str:
    """A path relative to the working directory when it is under it (SARIF `uri`)."""
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return path.as_posix()


def sarif_report(findings: Sequence[Finding]) -> str:
    rules = [
        {
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.reason},
            "help": {"text": rule.fix},
            "defaultConfiguration": {"level": _SARIF_LEVELS[rule.severity]},
        }
        for rule in RULES
    ]
    results = [
        {
            "ruleId": f.rule.id,
            "ruleIndex": RULES.index(f.rule),
            "level": _SARIF_LEVELS[f.rule.severity],
            "message": {"text": f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f.path)},
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
        }
        for f in findings
    ]
    driver = {"name": "regcache lint", "version": __version__, "rules": rules}
    run = {"tool": {"driver": driver}, "results": results}
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


def render(findings: Sequence[Finding], fmt: str) -> str:
    """The report in one of `FORMATS`."""
    return {"text": text_report, "json": json_report, "sarif": sarif_report}[fmt](findings)

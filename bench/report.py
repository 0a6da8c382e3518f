"""Results: the metrics, their samples per target, the machine, a Markdown table and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

TARGETS = {"regcache": "regcache", "registry": "docker-registry proxy", "nginx": "nginx sendfile"}
P = TypeVar("P")  # a dataclass of sizes and counts
RATIOS = (("registry", "regcache / docker-registry"), ("nginx", "regcache / nginx"))


@dataclass(frozen=True)
class Metric:
    """One table row: how its samples are summarised and shown."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    summary: Callable[[list[float]], float] = statistics.median
    digits: int = 2

    def show(self, value: float) -> str:
        """The value formatted for the table."""
        return f"{value:,.{self.digits}f}"


class Results:
    """Samples (or an error) per metric and target, plus details kept for the JSON."""

    columns_key, failure_key = "targets", "target"  # the JSON's names for a column

    def columns(self) -> Iterable[str]:
        """The columns, in table order: the targets."""
        return TARGETS

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = {metric.key: metric for metric in metrics}
        self.samples: dict[str, dict[str, list[float]]] = {key: {} for key in self.metrics}
        self.errors: dict[str, dict[str, str]] = {key: {} for key in self.metrics}
        self.details: dict[str, dict[str, list[Any]]] = {}
        self.failures: list[tuple[str, str, str]] = []  # target, scenario, message

    def add(self, key: str, target: str, samples: list[float]) -> None:
        """Record every sample of a metric at once."""
        self.samples[key][target] = samples

    def detail(self, name: str, target: str, value: Any) -> None:
        """Keep something for the JSON only."""
        self.details.setdefault(name, {}).setdefault(target, []).append(value)

    def fail(self, scenario: str, keys: Iterable[str], target: str, message: str) -> None:
        """Mark the metrics that have no samples yet as failed."""
        self.failures.append((target, scenario, message))
        for key in keys:
            if target not in self.samples[key]:
                self.errors[key].setdefault(target, f"{scenario}: {message}")

    def value(self, key: str, target: str) -> float | None:
        """The summary of a metric's samples, if there are any."""
        samples = self.samples[key].get(target)
        return self.metrics[key].summary(samples) if samples else None

    def cell(self, key: str, target: str) -> str:
        """A table cell: the value, `failed`, or a dash when not measured."""
        value = self.value(key, target)
        if value is not None:
            return self.metrics[key].show(value)
        return "failed" if target in self.errors[key] else "—"

    def ratio(self, key: str, other: str) -> str:
        """regcache's value divided by `other`'s."""
        mine, theirs = self.value(key, "regcache"), self.value(key, other)
        if mine is None or not theirs:
            return "—"
        return f"{mine / theirs:.2f}x"

    def to_json(self) -> dict[str, Any]:
        """Every metric with its samples, summaries and errors per column."""
        out: dict[str, Any] = {}
        for key, metric in self.metrics.items():
            out[key] = {
                "label": metric.label,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                self.columns_key: {
                    column: (
                        {"samples": samples, "value": metric.summary(samples)}
                        if (samples := self.samples[key].get(column))
                        else {"error": self.errors[key][column]}
                    )
                    for column in self.columns()
                    if column in self.samples[key] or column in self.errors[key]
                },
            }
        failures = [
            {self.failure_key: column, "scenario": scenario, "error": message}
            for column, scenario, message in self.failures
        ]
        return {"metrics": out, "details": self.details, "failures": failures}

    def markdown(self, header: list[str]) -> str:
        """The header lines, the table, and every failure's message below it."""
        names = [TARGETS[t] for t in TARGETS] + [label for _, label in RATIOS]
        lines = [*header, "", f"| scenario | unit | {' | '.join(names)} |"]
        lines.append("|---|---|" + "---:|" * len(names))
        for key, metric in self.metrics.items():
            cells = [self.cell(key, target) for target in TARGETS]
            cells += [self.ratio(key, other) for other, _ in RATIOS]
            arrow = "↑" if metric.higher_is_better else "↓"
            lines.append(f"| {metric.label} | {metric.unit} {arrow} | {' | '.join(cells)} |")
        if self.failures:
            lines += ["", "Failures:", ""]
            lines += [f"- {TARGETS[t]}, {scenario}: {msg}" for t, scenario, msg in self.failures]
        return "\n".join(lines)


def _version(cmd: list[str]) -> str:
    """The first line a `--version`-style command prints, on stdout or stderr."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine() -> dict[str, Any]:
    """The machine and the versions of the peers."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
        "docker_registry": "docker-registry "
        + _version(["docker-registry", "--version"]).split()[-1],
        "nginx": _version(["nginx", "-v"]).split(": ")[-1],
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
        "curl": _version(["curl", "--version"]).split(" (")[0],
    }


def header(info: dict[str, Any], params: dict[str, Any], regcache: str) -> list[str]:
    """Markdown lines describing the machine and the run."""
    end_load = os.getloadavg()[0]
    gib = info["memory_bytes"] / (1 << 30)
    return [
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {gib:.1f} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}; 1-minute load average "
        f"{info['load_average_1min']:.1f} at the start, {end_load:.1f} at the end.  ",
        f"Peers: {info['docker_registry']}; {info['nginx']}; {info['wrk']}; {info['curl']}.  ",
        f"regcache: {regcache}.  ",
        "Run: " + ", ".join(f"{key}={value}" for key, value in params.items()) + ".  ",
        "Each value is the median of the repetitions (peak RSS: the maximum); "
        "↑ higher is better, ↓ lower is better.",
    ]


def add_param_options(parser: argparse.ArgumentParser, params: type[Any]) -> None:
    """An option for every field of a parameters dataclass (`--blob-mib`), unset by default."""
    for field in dataclasses.fields(params):
        kind = float if field.type in ("float", float) else int
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, dest=field.name)


def chosen_params(args: argparse.Namespace, quick: P, full: P) -> P:
    """The preset `--quick` chose, with every size given on the command line over it."""
    overrides = {
        field.name: value
        for field in dataclasses.fields(full)
        if (value := getattr(args, field.name)) is not None
    }
    return dataclasses.replace(quick if args.quick else full, **overrides)

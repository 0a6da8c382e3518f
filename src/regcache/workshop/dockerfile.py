"""Image references in Dockerfiles: `FROM` (with `ARG` defaults) and `COPY --from`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from regcache.image_ref import parse_image
from regcache.workshop.source import Source
from regcache.workshop.survey import Context, Survey

_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-+][^}]*)?\}|\$(\w+)")
_WHOLE_VARIABLE = re.compile(r"^(?:\$\{(\w+)\}|\$(\w+))$")


@dataclass(frozen=True)
class _Instruction:
    line: int  # 1-based, in the file
    keyword: str
    words: list[str]


@dataclass(frozen=True)
class _Default:
    value: str
    position: tuple[int, int]


def _instructions(source: Source, first: int, count: int) -> Iterator[_Instruction]:
    """Instructions of `count` lines from line `first`, `\\` continuations and comments gone."""
    text, start = "", 0
    for number in range(first, first + count):
        line = source.lines[number - 1]
        if line.lstrip().startswith("#") or (not line.strip() and text):
            continue
        if not text:
            start = number
        text += line
        if text.endswith("\\"):
            text = text[:-1] + " "
            continue
        words = text.split()
        if words:
            yield _Instruction(start, words[0].upper(), words[1:])
        text = ""


def scan_dockerfile(source: Source, survey: Survey, first: int = 1, count: int = 0) -> None:
    """Record the images a Dockerfile (or `count` lines of one from `first`) builds from."""
    count = count or len(source.lines) - first + 1
    defaults: dict[str, _Default] = {}  # of the ARGs before the first FROM, which FROM sees
    stages: set[str] = set()
    building = False
    for instruction in _instructions(source, first, count):
        words = instruction.words
        if instruction.keyword == "ARG" and not building:
            for word in words:
                name, _, value = word.partition("=")
                _argument(source, instruction.line, name, value.strip("\"'"), defaults)
        elif instruction.keyword == "FROM":
            names = [word for word in words if not word.startswith("--")]
            if not names:
                continue
            building = True
            _from(source, survey, instruction.line, names[0], defaults, stages)
            if len(names) >= 3 and names[1].lower() == "as":
                stages.add(names[2].lower())
        elif instruction.keyword in {"COPY", "ADD"}:
            for word in words:
                stage = word.removeprefix("--from=")
                if stage != word and stage.lower() not in stages and not stage.isdigit():
                    position = source.find(word, instruction.line)
                    if position is not None:
                        column = position[1] + len("--from=")
                        survey.use(
                            source, (position[0], column), stage, "COPY --from", Context.DOCKER
                        )


def _argument(
    source: Source, line: int, name: str, value: str, defaults: dict[str, _Default]
) -> None:
    """Remember where the default value of a global `ARG` is written."""
    position = source.find(f"{name}=", line)
    if value and position is not None:
        found = source.find(value, position[0], position[1] + len(name) + 1)
        if found is not None:
            defaults[name] = _Default(value, found)


def _from(
    source: Source,
    survey: Survey,
    line: int,
    name: str,
    defaults: dict[str, _Default],
    stages: set[str],
) -> None:
    """Record the base image of a `FROM`: where it is written, or the `ARG` default it names."""
    if name.lower() in stages or name == "scratch":
        return
    whole = _WHOLE_VARIABLE.match(name)
    variable = (whole.group(1) or whole.group(2)) if whole else ""
    default = defaults.get(variable)
    if default is not None:  # `ARG BASE=nginx:1.25` then `FROM ${BASE}`: the ARG is the place
        if default.value.lower() not in stages:
            survey.use(source, default.position, default.value, f"ARG {variable}", Context.DOCKER)
        return
    position = source.find(name, line)
    if position is not None:
        image = parse_image(_expand(name, defaults))
        survey.use(source, position, name, "FROM", Context.DOCKER, image=image)


def _expand(text: str, defaults: dict[str, _Default]) -> str:
    """`text` with the global ARGs that have defaults filled in (the others left as written)."""

    def value(match: re.Match[str]) -> str:
        default = defaults.get(match.group(1) or match.group(2))
        return default.value if default else match.group()

    return _VARIABLE.sub(value, text)

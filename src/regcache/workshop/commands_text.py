"""Image references in shell command lines: `docker pull|run|create|build|tag`, `kubectl run|create
|set image`, skopeo, crane, imgpkg, dive and helm; and the passwords given to their logins."""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from regcache.image_ref import ImageRef, parse_image
from regcache.workshop.secrets import add_secret
from regcache.workshop.source import Source
from regcache.workshop.survey import Command, Context, Survey

_SEPARATORS = frozenset({";", ";;", "&", "&&", "|", "||", "|&"})
_PREFIXES = frozenset({"sudo", "time", "exec", "nohup", "command", "env", "$"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_BRACES = re.compile(r"\{\{.*?\}\}")  # `{{< param x >}}` holds spaces, but is one word
_HIDDEN_SPACE = "\x00"


@dataclass(frozen=True)
class Word:
    """A shell word and where it is written (line 0 when not found as written)."""

    text: str
    line: int
    column: int

    @property
    def position(self) -> tuple[int, int]:
        return self.line, self.column

    def part(self, offset: int) -> Word:
        """The word from `offset` on: an option's value after `=`, a name after `docker://`."""
        return Word(self.text[offset:], self.line, self.column + offset if self.line else 0)


TakesValue = Callable[[str], bool]


def _values(*names: str) -> TakesValue:
    """Options that take a value: exactly these."""
    return frozenset(names).__contains__


def _all_but(*flags: str) -> TakesValue:
    """Options that take a value: all but these flags."""
    return lambda name: name not in flags


@dataclass
class _Args:
    positional: list[Word] = field(default_factory=list)
    options: dict[str, list[Word]] = field(default_factory=lambda: defaultdict(list))

    def values(self, *names: str) -> list[Word]:
        return [word for name in names for word in self.options.get(name, [])]

    def value(self, *names: str) -> Word | None:
        found = self.values(*names)
        return found[-1] if found else None


def _parse(words: list[Word], takes_value: TakesValue) -> _Args:
    """Split a command's words into positional arguments and option values."""
    args = _Args()
    index = 0
    while index < len(words):
        word, text = words[index], words[index].text
        index += 1
        if text == "--":
            args.positional.extend(words[index:])
            break
        if text.startswith("--"):
            name, equals, _ = text.partition("=")
            if equals:
                args.options[name].append(word.part(len(name) + 1))
            elif takes_value(name) and index < len(words):
                args.options[name].append(words[index])
                index += 1
        elif text.startswith("-") and len(text) > 1:
            for offset in range(1, len(text)):  # `-it`, `-dp 80:80`, `-p80:80`
                name = "-" + text[offset]
                if takes_value(name):
                    rest = offset + 1 + text[offset + 1 : offset + 2].count("=")
                    if rest < len(text):
                        args.options[name].append(word.part(rest))
                    elif index < len(words):
                        args.options[name].append(words[index])
                        index += 1
                    break
        else:
            args.positional.append(word)
    return args


def _leading_options(words: list[Word], takes_value: TakesValue) -> list[Word]:
    """The words after a tool's global options."""
    index = 0
    while index < len(words) and words[index].text.startswith("-"):
        text = words[index].text
        index += 2 if "=" not in text and takes_value(text) else 1
    return words[index:]


@dataclass
class _Emit:
    """Records what a command line says into the survey."""

    source: Source
    survey: Survey
    instructions: bool

    def image(
        self,
        word: Word | None,
        where: str,
        context: Context,
        *,
        produced: bool = False,
        pull_policy: str | None = None,
        image: ImageRef | None = None,
    ) -> None:
        if word is not None and word.line and word.text:
            self.survey.use(
                self.source,
                word.position,
                word.text,
                where,
                context,
                image=image,
                produced=produced,
                pull_policy=pull_policy,
            )

    def secret(self, word: Word | None, kind: str) -> None:
        if word is not None and word.line:
            add_secret(self.survey, self.source, word.position, word.text, kind)

    def command(self, first: Word, text: str) -> None:
        command = Command(self.source.path, first.line, first.column, text, self.instructions)
        self.survey.commands.append(command)


_DOCKER_GLOBAL = _values(
    "-c", "--context", "-H", "--host", "--config", "-l", "--log-level",
    "--tlscacert", "--tlscert", "--tlskey",
)  # fmt: skip
_DOCKER_RUN = _all_but(
    "-d", "--detach", "-i", "--interactive", "-t", "--tty", "--rm", "--privileged", "--init",
    "-P", "--publish-all", "--read-only", "--sig-proxy", "--no-healthcheck", "--help",
    "--oom-kill-disable", "--disable-content-trust", "-q", "--quiet", "--use-api-socket",
)  # fmt: skip
_DOCKER_BUILD = _all_but(
    "--no-cache", "--pull", "-q", "--quiet", "--rm", "--force-rm", "--load", "--push",
    "--compress", "--squash", "--disable-content-trust", "--help", "--check",
)  # fmt: skip
_DOCKER_GROUPS = frozenset({"image", "container", "buildx", "builder"})


def _docker(emit: _Emit, first: Word, words: list[Word]) -> None:
    words = _leading_options(words, _DOCKER_GLOBAL)
    if not words:
        return
    sub, words = words[0].text, words[1:]
    if sub in _DOCKER_GROUPS and words:
        sub, words = words[0].text, words[1:]
    emit.command(first, f"docker {sub}")
    if sub == "pull":
        emit.image(
            _first(_parse(words, _values("--platform")).positional), "docker pull", Context.DOCKER
        )
    elif sub in {"run", "create"}:
        args = _parse(words, _DOCKER_RUN)
        pull = args.value("--pull")
        policy = "Always" if pull is not None and pull.text == "always" else None
        emit.image(_first(args.positional), f"docker {sub}", Context.DOCKER, pull_policy=policy)
    elif sub == "build":
        for word in _parse(words, _DOCKER_BUILD).values("-t", "--tag"):
            emit.image(word, "docker build -t", Context.DOCKER, produced=True)
    elif sub == "tag":
        names = _parse(words, _values()).positional
        emit.image(_first(names), "docker tag", Context.LOCAL)
        emit.image(_first(names[1:]), "docker tag", Context.DOCKER, produced=True)
    elif sub == "login":
        args = _parse(words, _values("-u", "--username", "-p", "--password"))
        emit.secret(args.value("-p", "--password"), "docker login password")


def _docker_compose(emit: _Emit, first: Word, words: list[Word]) -> None:
    emit.command(first, "docker-compose")


_KUBECTL = _values(
    "-n", "--namespace", "--context", "--kubeconfig", "--cluster", "--user", "-s", "--server",
    "--token", "--as", "-o", "--output", "-l", "--selector", "-f", "--filename", "--image",
    "--image-pull-policy", "--port", "--env", "--labels", "--overrides", "--restart",
    "--replicas", "-c", "--container", "--serviceaccount", "--field-manager", "--timeout",
    "--requests", "--limits", "--schedule", "--from", "--type", "--template", "--annotations",
)  # fmt: skip


def _kubectl(emit: _Emit, first: Word, words: list[Word]) -> None:
    args = _parse(words, _KUBECTL)
    names = [word.text for word in args.positional]
    if names[:1] in (["run"], ["create"]):
        where = " ".join(["kubectl", *names[:2]]) if names[0] == "create" else "kubectl run"
        policy = args.value("--image-pull-policy")
        for word in args.values("--image"):
            emit.image(word, where, Context.CLUSTER, pull_policy=policy.text if policy else None)
    elif names[:2] == ["set", "image"]:
        for word in args.positional[2:]:
            if "=" in word.text:  # container=image
                emit.image(
                    word.part(word.text.index("=") + 1), "kubectl set image", Context.CLUSTER
                )


_SKOPEO = _values(
    "--creds", "--src-creds", "--dest-creds", "-u", "--username", "-p", "--password",
    "--src-username", "--src-password", "--dest-username", "--dest-password", "--authfile",
    "--src-authfile", "--dest-authfile", "--cert-dir", "--src-cert-dir", "--dest-cert-dir",
    "--override-arch", "--override-os", "--override-variant", "--format", "-f", "--multi-arch",
    "--retry-times", "--retry-delay", "--sign-by", "--registry-token", "--src-registry-token",
    "--dest-registry-token", "--command-timeout", "--tmpdir", "--policy", "--additional-tag",
)  # fmt: skip
_TRANSPORT = "docker://"


def _skopeo(emit: _Emit, first: Word, words: list[Word]) -> None:
    args = _parse(words, _SKOPEO)
    for word in args.values("--creds", "--src-creds", "--dest-creds"):  # user:password
        emit.secret(word.part(word.text.find(":") + 1), "skopeo credentials")
    emit.secret(
        args.value("-p", "--password", "--src-password", "--dest-password"), "skopeo password"
    )
    sub = _first(args.positional)
    for index, word in enumerate(args.positional[1:]):
        if sub is not None and word.text.startswith(_TRANSPORT):
            produced = sub.text == "copy" and index == 1
            emit.image(
                word.part(len(_TRANSPORT)), f"skopeo {sub.text}", Context.TOOL, produced=produced
            )


_CRANE = _values(
    "--platform", "--format", "-b", "--base", "-t", "--tag", "-f", "--filename", "--new_layer",
    "--new_tag", "--old_base", "--new_base", "-u", "--username", "-p", "--password", "-o",
    "--output", "-a", "--annotation", "-l", "--label", "--append", "-e", "--env", "--entrypoint",
    "--cmd", "--user", "--workdir", "--exposed-ports", "--set-platform", "-j", "--jobs",
)  # fmt: skip
_CRANE_READS = frozenset({"pull", "digest", "manifest", "export", "config", "ls", "validate",
                          "tag", "blob"})  # fmt: skip


def _crane(emit: _Emit, first: Word, words: list[Word]) -> None:
    args = _parse(words, _CRANE)
    emit.secret(args.value("-p", "--password"), "crane password")
    names = args.positional
    sub = names[0].text if names else ""
    if sub in _CRANE_READS:
        emit.image(_first(names[1:]), f"crane {sub}", Context.TOOL)
    elif sub in {"copy", "cp"}:
        emit.image(_first(names[1:]), f"crane {sub}", Context.TOOL)
        emit.image(_first(names[2:]), f"crane {sub}", Context.TOOL, produced=True)
    for word in args.values("-b", "--base"):
        emit.image(word, f"crane {sub} --base", Context.TOOL)


_IMGPKG = _values(
    "-b", "--bundle", "-i", "--image", "-o", "--output", "--to-repo", "--to-tar", "--tar", "-f",
    "--file", "--lock", "--lock-output", "--registry-username", "--registry-password",
    "--registry-token", "--registry-ca-cert-path", "--concurrency",
)  # fmt: skip


def _imgpkg(emit: _Emit, first: Word, words: list[Word]) -> None:
    args = _parse(words, _IMGPKG)
    emit.secret(args.value("--registry-password"), "imgpkg registry password")
    sub = args.positional[0].text if args.positional else ""
    for word in args.values("-b", "--bundle", "-i", "--image"):
        emit.image(word, f"imgpkg {sub}", Context.TOOL, produced=sub == "push")
    for word in args.values("--to-repo"):
        emit.image(word, f"imgpkg {sub} --to-repo", Context.TOOL, produced=True)


_DIVE = _values("--source", "--ci-config", "--config", "-j", "--json", "--lowestEfficiency",
                "--highestUserWastedPercent", "--highestWastedBytes")  # fmt: skip


def _dive(emit: _Emit, first: Word, words: list[Word]) -> None:
    image = _first(_parse(words, _DIVE).positional)
    if image is not None and image.text != "build":
        emit.image(image, "dive", Context.TOOL)


_HELM = _values(
    "--version", "-f", "--values", "--set", "--set-string", "--set-file", "--set-json", "-n",
    "--namespace", "--kube-context", "--kubeconfig", "--kube-token", "--kube-apiserver",
    "--repo", "-u", "--username", "-p", "--password", "--timeout", "-o", "--output",
    "--post-renderer", "--description", "-d", "--destination", "--untardir", "--ca-file",
    "--cert-file", "--key-file", "--registry-config", "--repository-config",
    "--repository-cache", "--name-template", "-a", "--api-versions", "-s", "--show-only",
)  # fmt: skip
_OCI = "oci://"


def _helm(emit: _Emit, first: Word, words: list[Word]) -> None:
    args = _parse(words, _HELM)
    emit.secret(args.value("-p", "--password"), "helm password")
    sub = args.positional[0].text if args.positional else ""
    version = args.value("--version")
    for word in args.positional[1:]:
        if word.text.startswith(_OCI):
            chart = word.part(len(_OCI))
            image = parse_image(chart.text)
            if image is not None and version is not None and not (image.tag or image.digest):
                image = replace(image, tag=version.text)  # the chart's version is its tag
            emit.image(chart, f"helm {sub}", Context.TOOL, produced=sub == "push", image=image)


_TOOLS: dict[str, Callable[[_Emit, Word, list[Word]], None]] = {
    "docker": _docker,
    "docker-compose": _docker_compose,
    "kubectl": _kubectl,
    "skopeo": _skopeo,
    "crane": _crane,
    "imgpkg": _imgpkg,
    "dive": _dive,
    "helm": _helm,
}


def _first(words: list[Word]) -> Word | None:
    return words[0] if words else None


def _split(line: str) -> list[str] | None:
    """Shell words of one logical line; None while a quote is still open."""
    hidden = _BRACES.sub(lambda match: match.group().replace(" ", _HIDDEN_SPACE), line)
    lexer = shlex.shlex(hidden, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        return [word.replace(_HIDDEN_SPACE, " ") for word in lexer]
    except ValueError:
        return None


def _logical_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(index of the first physical line, words) for each line, `\\` continuations joined."""
    pending, start = "", 0
    for index, physical in enumerate(text.split("\n")):
        if not pending:
            start = index
        if physical.endswith("\\") and not physical.endswith("\\\\"):
            pending += physical[:-1] + " "
            continue
        pending += physical
        words = _split(pending)
        if words is None:  # a quoted string that goes on to the next line
            pending += "\n"
            continue
        yield start, words
        pending = ""


def _commands(words: list[Word]) -> Iterator[list[Word]]:
    """The simple commands of a line, split at `;`, `&&`, `||`, `|` and `&`."""
    command: list[Word] = []
    for word in words:
        if word.text in _SEPARATORS:
            yield command
            command = []
        else:
            command.append(word)
    yield command


def _without_prefixes(words: list[Word]) -> list[Word]:
    """The command after `sudo`, `env`, `VAR=value` and such."""
    index, options = 0, False
    while index < len(words):
        text = words[index].text
        option = options and text.startswith("-")
        if not (text in _PREFIXES or _ASSIGNMENT.match(text) or option):
            break
        options = option or text in {"sudo", "env"}
        index += 1
    return words[index:]


def scan_shell(
    source: Source,
    text: str,
    start: tuple[int, int],
    survey: Survey,
    *,
    raw: bool,
    instructions: bool = False,
) -> None:
    """Record the images and credentials of the commands in `text`, which is written in
    `source` from `start`: as is when `raw`, else as the value of a YAML string."""
    emit = _Emit(source, survey, instructions)
    cursor = start
    for index, texts in _logical_lines(text):
        if raw:  # each logical line starts on a known line: comments cannot mislead
            cursor = (start[0] + index, start[1] if index == 0 else 1)
        words = []
        for word in texts:
            found = source.find(word, *cursor)
            if found is not None:
                cursor = (found[0], found[1] + len(word))
            words.append(Word(word, *(found or (0, 0))))
        for command in _commands(words):
            command = _without_prefixes(command)
            handler = _TOOLS.get(PurePosixPath(command[0].text).name) if command else None
            if handler is not None:
                handler(emit, command[0], command[1:])

"""`regcache lint`: the scanner's positions, the rules on realistic workshops, the reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from regcache.image_ref import ImageRef
from regcache.workshop.lint import exit_status, lint
from regcache.workshop.report import render
from regcache.workshop.rules import RULES, find_rule
from regcache.workshop.scan import find_images

WORKSHOPS = Path(__file__).parent / "workshops"

# Written by hand from the fixtures: (rule, file relative to the workshop, line).
EXPECTED: dict[str, set[tuple[str, str, int]]] = {
    "lab-hub-heavy": {
        ("RC102", "resources/workshop.yaml", 9),  # workshop image on Docker Hub…
        ("RC103", "resources/workshop.yaml", 9),  # …tagged latest
        ("RC101", "resources/workshop.yaml", 12),  # imgpkgBundle on Docker Hub
        ("RC301", "resources/workshop.yaml", 24),  # dckr_pat_ token in session.env
        ("RC103", "resources/workshop.yaml", 38),  # compose service `image: redis`
        ("RC104", "resources/workshop.yaml", 62),  # nginx:1.25 in a session Deployment…
        ("RC105", "resources/workshop.yaml", 62),
        ("RC106", "resources/workshop.yaml", 62),  # …with imagePullPolicy: Always
        ("RC103", "resources/workshop.yaml", 72),  # quay.io …:latest
        ("RC301", "resources/workshop.yaml", 89),  # .dockerconfigjson
        ("RC104", "workshop/content/00-workshop-overview.md", 16),  # docker pull python:3.12
        ("RC107", "workshop/content/00-workshop-overview.md", 23),  # skopeo copy from Hub…
        ("RC202", "workshop/content/00-workshop-overview.md", 23),  # …to $(registry_host)
        ("RC301", "workshop/content/00-workshop-overview.md", 29),  # docker login -p
        ("RC103", "workshop/content/00-workshop-overview.md", 43),  # --image=nginx:latest
        ("RC105", "workshop/content/00-workshop-overview.md", 43),
        ("RC104", "workshop/content/01-image-tools.md", 8),  # crane digest …redis:7
        ("RC107", "workshop/content/01-image-tools.md", 8),
        ("RC107", "workshop/content/01-image-tools.md", 12),  # dive
        ("RC107", "workshop/content/01-image-tools.md", 16),  # imgpkg pull -b
        ("RC107", "workshop/content/01-image-tools.md", 20),  # helm install oci://
    },
    "lab-asciidoc": {
        ("RC101", "resources/workshop.yaml", 13),  # files image on index.docker.io
        ("RC201", "workshop/content/01-build.adoc", 7),  # docker build, docker off
        ("RC104", "workshop/content/01-build.adoc", 14),  # kubectl run --image=busybox:1.36
        ("RC105", "workshop/content/01-build.adoc", 14),
        ("RC104", "workshop/content/01-build.adoc", 28),  # mysql:8 in a [source,yaml] Pod
        ("RC105", "workshop/content/01-build.adoc", 28),
        ("RC201", "workshop/content/01-build.adoc", 37),  # docker ps in a bare listing
        ("RC301", "workshop/content/01-build.adoc", 44),  # REGISTRY_PASSWORD=literal
    },
    "app-stack": {
        ("RC104", "Dockerfile", 2),  # ARG BASE=python:3.12-slim, used by FROM ${BASE}
        ("RC103", "Dockerfile", 13),  # COPY --from=nginx:latest
        ("RC104", "docker-compose.yml", 4),  # node:20…
        ("RC106", "docker-compose.yml", 4),  # …pull_policy: always
        ("RC104", "docker-compose.yml", 11),  # postgres:16.2 is major.minor
        ("RC301", "docker-compose.yml", 14),  # DOCKERHUB_PASSWORD
        ("RC103", "docker-compose.yml", 16),  # "redis"
        ("RC103", "k8s/deployment.yaml", 15),  # initContainer busybox, no tag…
        ("RC105", "k8s/deployment.yaml", 15),
        ("RC106", "k8s/deployment.yaml", 15),  # …imagePullPolicy: Always
        ("RC105", "k8s/deployment.yaml", 20),  # nginx:1.25.3 straight from Docker Hub
        ("RC104", "k8s/deployment.yaml", 46),  # CronJob 'bitnami/kubectl:1.29'
        ("RC105", "k8s/deployment.yaml", 46),
        ("RC301", "k8s/deployment.yaml", 56),  # "auth" in a dockerconfigjson
        ("RC104", "scripts/build.sh", 11),  # docker run … postgres:16 (continued line)
        ("RC107", "scripts/build.sh", 14),  # crane copy from Docker Hub
        ("RC301", "scripts/build.sh", 15),  # https://user:password@
        ("RC104", "scripts/rollout", 3),  # kubectl set image web=nginx:1.26
        ("RC105", "scripts/rollout", 3),
    },
    "lab-clean": set(),
}
MINE = [WORKSHOPS / name for name in sorted(EXPECTED)]  # tests/workshops holds others' too
SECRETS = (
    "dckr_pat_2XbQ9kLmN4pR7sT1uVwY3zA5cD",
    "S3cretPassw0rd!",
    "hunter2hunter2",
    "changeme123",
    "Sup3rS3cret",
    "YWNtZTpzM2NyZXRwYXNz",
    "eyJhdXRocyI6eyJodHRwczovL2luZGV4LmRvY2tlci5pby92MS8iOnt9fX0=",
)


def _keys(findings, root: Path) -> set[tuple[str, str, int]]:
    return {(f.rule.id, f.path.relative_to(root).as_posix(), f.line) for f in findings}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workshop_findings(name: str) -> None:
    root = WORKSHOPS / name
    assert _keys(lint([root]), root) == EXPECTED[name]


def test_each_violation_reported_once() -> None:
    findings = lint(MINE)
    keys = [(f.rule.id, f.path, f.line) for f in findings]
    assert len(keys) == len(set(keys)) == sum(len(expected) for expected in EXPECTED.values())


def test_mention_text_is_written_at_its_position() -> None:
    mentions = find_images(MINE)
    assert len(mentions) > 40
    for mention in mentions:
        line = mention.path.read_text().split("\n")[mention.line - 1]
        start = mention.column - 1
        assert line[start : start + len(mention.text)] == mention.text, mention


def test_find_images_leaves_out_built_names_and_cache_upstreams() -> None:
    texts = {m.text for m in find_images([WORKSHOPS / "lab-clean"])}
    assert "nginx:1.25.3" in texts  # docker pull and the `docker tag` source
    assert "$(registry_host)/nginx:1.25.3" not in texts  # the `docker tag` target
    assert "/library/nginx" not in texts  # environment.images.registries
    assert "$(image_repository)/lab-clean-files:$(workshop_version)" in texts  # files, not publish
    assert all(m.where != "spec.publish.image" for m in find_images(MINE))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _mentions(tmp_path: Path, name: str, text: str) -> list[tuple[int, int, str, str]]:
    path = _write(tmp_path, name, text)
    return [(m.line, m.column, m.text, m.where) for m in find_images([path])]


def test_shell_continuations_and_docker_run_options(tmp_path: Path) -> None:
    script = (
        "#!/bin/bash\n"
        "docker run \\\n"
        "  --rm -v /srv/data:/data \\\n"
        "  --name web -e MODE=dev -p 8080:80 \\\n"
        "  nginx:1.25.3 nginx -g 'daemon off;'\n"
        "docker run -it --network=host -dp 80:80 --entrypoint sh alpine:3.19.1 -c 'echo hi'\n"
        'FOO=1 sudo -E docker create --name redis:7.2.4 "quay.io/acme/redis:7.2.4"\n'
        "docker --context remote image pull --platform linux/arm64 busybox:1.36.1  # busybox\n"
    )
    assert _mentions(tmp_path, "start.sh", script) == [
        (5, 3, "nginx:1.25.3", "docker run"),
        (6, 57, "alpine:3.19.1", "docker run"),
        (7, 49, "quay.io/acme/redis:7.2.4", "docker create"),
        (8, 59, "busybox:1.36.1", "docker pull"),
    ]


def test_kubectl_image_options(tmp_path: Path) -> None:
    script = (
        "kubectl run x --image=nginx:1.25.3 --restart=Never -- sleep 1\n"
        "kubectl -n demo run y --image redis:7.2.4\n"
        "kubectl create deployment web --image=a.io/web:1.0.0 --image=a.io/api:2.0.0\n"
        "kubectl set image deploy/web web=a.io/web:1.0.1 api=a.io/api:2.0.1\n"
        "kubectl apply -f deploy.yaml\n"
    )
    assert _mentions(tmp_path, "deploy.sh", script) == [
        (1, 23, "nginx:1.25.3", "kubectl run"),
        (2, 31, "redis:7.2.4", "kubectl run"),
        (3, 39, "a.io/web:1.0.0", "kubectl create deployment"),
        (3, 62, "a.io/api:2.0.0", "kubectl create deployment"),
        (4, 34, "a.io/web:1.0.1", "kubectl set image"),
        (4, 53, "a.io/api:2.0.1", "kubectl set image"),
    ]


def test_built_and_tagged_names_are_not_pulls(tmp_path: Path) -> None:
    script = (
        "docker build -t acme/app:dev --build-arg BASE=x -f Dockerfile .\n"
        "docker tag acme/app:dev $REGISTRY_HOST/app:dev\n"
        "skopeo copy docker://quay.io/a/b:1.0.0 docker://$REGISTRY_HOST/b:1.0.0\n"
    )
    # `docker tag acme/app:dev …` names what `docker build` made: nothing is pulled
    assert _mentions(tmp_path, "build.sh", script) == [(3, 22, "quay.io/a/b:1.0.0", "skopeo copy")]


def test_helm_chart_version_is_its_tag(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "helm.sh", "helm upgrade --install web oci://ghcr.io/a/web --version 1.2.3\n"
    )
    (mention,) = find_images([path])
    assert (mention.column, mention.text) == (34, "ghcr.io/a/web")
    assert mention.image == ImageRef("ghcr.io", "a/web", "1.2.3")


def test_dockerfile_from_arg_and_copy_from(tmp_path: Path) -> None:
    dockerfile = (
        "ARG BASE=python:3.12.1\n"
        "ARG REGISTRY=docker.io\n"
        "FROM --platform=$BUILDPLATFORM golang:1.22.1 AS build\n"
        "FROM ${REGISTRY}/library/nginx:1.25.3 AS web\n"
        "FROM scratch AS empty\n"
        "FROM ${BASE}\n"
        "COPY --from=build /out /app\n"
        "COPY --from=0 /out /app\n"
        "COPY --link --from=ghcr.io/astral-sh/uv:0.4.18 /uv /bin/uv\n"
        "RUN echo FROM alpine:3.19.1\n"
    )
    path = _write(tmp_path, "Dockerfile", dockerfile)
    mentions = find_images([path])
    assert [(m.line, m.column, m.text, m.where) for m in mentions] == [
        (1, 10, "python:3.12.1", "ARG BASE"),
        (3, 32, "golang:1.22.1", "FROM"),
        (4, 6, "${REGISTRY}/library/nginx:1.25.3", "FROM"),
        (9, 20, "ghcr.io/astral-sh/uv:0.4.18", "COPY --from"),
    ]
    assert mentions[2].image == ImageRef("docker.io", "library/nginx", "1.25.3")


def test_yaml_positions_multi_document_and_quoted(tmp_path: Path) -> None:
    manifests = (
        "kind: Service\n"
        "---\n"
        "kind: Pod\n"
        "spec:\n"
        "  containers:\n"
        "  - {name: a, image: 'quay.io/a/a:1.0.0'}\n"
        '  - name: b\n    image: "nginx:1.25.3"\n'
    )
    assert _mentions(tmp_path, "pod.yaml", manifests) == [
        (6, 23, "quay.io/a/a:1.0.0", "Pod.containers"),
        (8, 13, "nginx:1.25.3", "Pod.containers"),
    ]


def test_markdown_blocks(tmp_path: Path) -> None:
    page = (
        "~~~text\n"
        "```execute\n"
        "docker pull example:1.0.0\n"
        "```\n"
        "~~~\n"
        "```terminal:execute\n"
        "command: >-\n"
        "  docker run\n"
        "  --name x busybox:1.36.1\n"
        "session: 1\n"
        "```\n"
        "```console\n"
        "$ docker pull redis:7.2.4\n"
        "```\n"
        "```dashboard:open-url\n"
        "url: https://hub.docker.com/_/nginx\n"
        "```\n"
        "Run `docker pull nginx` yourself.\n"
    )
    assert _mentions(tmp_path, "page.md", page) == [
        (9, 12, "busybox:1.36.1", "docker run"),
        (13, 15, "redis:7.2.4", "docker pull"),
    ]


def test_educates_base_image_aliases_are_not_references(tmp_path: Path) -> None:
    workshop = (
        "apiVersion: training.educates.dev/v1beta1\nkind: Workshop\n"
        "spec:\n  workshop:\n    image: jdk17-environment:*\n"
    )
    assert _mentions(tmp_path, "resources/workshop.yaml", workshop) == []


def test_variables_are_never_docker_hub(tmp_path: Path) -> None:
    script = (
        "kubectl run a --image=$IMAGE\n"
        "kubectl run b --image=${REGISTRY_HOST}/b\n"
        "kubectl run c --image=nginx:$(version)\n"
        "skopeo inspect docker://{{< param registry_host >}}/d\n"
    )
    path = _write(tmp_path, "vars.sh", script)
    # only `nginx:$(version)` is on Docker Hub: its tag is a variable, so it is not judged
    assert [(f.rule.id, f.line) for f in lint([path])] == [("RC105", 3)]


def test_secrets_are_masked_in_every_format() -> None:
    findings = lint(MINE)
    for fmt in ("text", "json", "sarif"):
        report = render(findings, fmt)
        for secret in SECRETS:
            assert secret not in report, (fmt, secret)
    assert "dckr_pat_****" in render(findings, "text")


def test_json_and_sarif_carry_the_same_findings() -> None:
    findings = lint(MINE)
    expected = {(f.rule.id, f.path.resolve(), f.line, f.column) for f in findings}
    data = json.loads(render(findings, "json"))
    got = {(f["rule"], Path(f["path"]).resolve(), f["line"], f["column"]) for f in data["findings"]}
    assert got == expected
    assert data["summary"]["error"] == sum(f.rule.severity == "error" for f in findings)
    sarif = json.loads(render(findings, "sarif"))
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == [rule.id for rule in RULES]
    got = set()  # SARIF paths are relative to the working directory
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        region = location["region"]
        uri = Path(location["artifactLocation"]["uri"]).resolve()
        got.add((result["ruleId"], uri, region["startLine"], region["startColumn"]))
    assert got == expected


def test_text_report_groups_by_file() -> None:
    root = WORKSHOPS / "lab-asciidoc"
    report = render(lint([root]), "text")
    adoc = root / "workshop/content/01-build.adoc"
    assert f"\n{adoc}\n  {adoc}:7:10: error RC201 docker-disabled: " in report
    assert report.endswith("4 errors, 4 warnings, 0 info in 2 files")
    assert render([], "text") == "no findings"


def test_exit_status() -> None:
    assert exit_status(lint([WORKSHOPS / "lab-clean"]), strict=True) == 0
    assert exit_status(lint([WORKSHOPS / "lab-hub-heavy"])) == 2
    warnings = lint([WORKSHOPS / "app-stack"], only=[find_rule("RC104"), find_rule("RC105")])
    assert warnings and exit_status(warnings) == 0
    assert exit_status(warnings, strict=True) == 1
    infos = lint(MINE, only=[find_rule("unparsed-image")])
    assert exit_status(infos, strict=True) == 0


def test_rule_and_ignore_filters() -> None:
    root = WORKSHOPS / "app-stack"
    only = lint([root], only=[find_rule("RC301"), find_rule("hub-direct-tool")])
    assert {f.rule.id for f in only} == {"RC301", "RC107"}
    kept = lint([root], ignore=[find_rule("hub-cluster-pull")])
    assert _keys(kept, root) == {key for key in EXPECTED["app-stack"] if key[0] != "RC105"}
    with pytest.raises(ValueError, match="no lint rule"):
        find_rule("RC999")


def test_inline_ignore(tmp_path: Path) -> None:
    lines = [
        "docker pull nginx  # regcache-lint: ignore[RC103]",
        "# regcache-lint: ignore[pull-always-tag, RC105]",
        "kubectl run x --image=redis",
        "kubectl run y --image=redis  # regcache-lint: ignore[RC105]",
        "docker pull busybox  # regcache-lint: ignore",
        "docker pull alpine",
    ]
    path = _write(tmp_path, "ignore.sh", "\n".join(lines) + "\n")
    assert [(f.rule.id, f.line) for f in lint([path])] == [("RC103", 4), ("RC103", 6)]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "regcache", "lint", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_command_line() -> None:
    root = WORKSHOPS / "lab-asciidoc"
    result = _run("--format", "json", str(root))
    assert result.returncode == 2, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert {(f["rule"], f["line"]) for f in findings} == {
        (rule, line) for rule, _, line in EXPECTED["lab-asciidoc"]
    }
    warnings = ("--rule", "RC104", "--rule", "hub-cluster-pull", str(root))
    assert _run(*warnings).returncode == 0
    assert _run("--strict", *warnings).returncode == 1
    clean = _run("--strict", str(WORKSHOPS / "lab-clean"))
    assert (clean.returncode, clean.stdout) == (0, "no findings\n")
    ignored = _run("--format", "sarif", "--ignore", "RC201", "--ignore", "RC101", str(root))
    results = json.loads(ignored.stdout)["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"RC104", "RC105", "RC301"}
    unknown = _run("--rule", "RC999", str(root))
    assert unknown.returncode == 2 and "no lint rule 'RC999'" in unknown.stderr


def test_locally_built_names_are_not_pulled(tmp_path: Path) -> None:
    script = "docker build -t greeting .\ndocker run --rm greeting\ndocker run busybox\n"
    path = _write(tmp_path, "run.sh", script)
    assert [m.text for m in find_images([path])] == ["busybox"]
    assert [(f.rule.id, f.line) for f in lint([path])] == [("RC103", 3)]


def test_session_settings_apply_inside_the_workshop_directory(tmp_path: Path) -> None:
    workshop = "apiVersion: training.educates.dev/v1beta1\nkind: Workshop\nspec: {}\n"
    _write(tmp_path, "lab/resources/workshop.yaml", workshop)
    page = (
        "```terminal:execute\n"
        "command: docker images && echo $(registry_host) ${REGISTRY_AUTH_FILE}\n"
        "```\n"
        "Log in as {{ registry_username }} with {{< param registry_password >}}"
        " at {{% param registry_host %}} or $REGISTRY_HOST.\n"
    )
    _write(tmp_path, "lab/workshop/content/page.md", page)
    _write(tmp_path, "lab/workshop/setup.d/start.sh", "docker ps\n")  # not the instructions
    _write(tmp_path, "other/page.md", "```\ndocker ps $(registry_host)\n```\n")  # no workshop
    findings = lint([tmp_path])
    assert [(f.rule.id, f.line, f.column, f.text) for f in findings] == [
        ("RC201", 2, 10, "docker images"),
        ("RC202", 2, 32, "$(registry_host)"),
        ("RC202", 2, 49, "${REGISTRY_AUTH_FILE}"),
        ("RC202", 4, 11, "{{ registry_username }}"),
        ("RC202", 4, 40, "{{< param registry_password >}}"),
        ("RC202", 4, 75, "{{% param registry_host %}}"),
        ("RC202", 4, 106, "$REGISTRY_HOST"),
    ]


def test_unparseable_reference_is_information(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "pod.yaml", "kind: Pod\nspec:\n  containers:\n  - image: Nginx:Latest\n"
    )
    (finding,) = lint([path])
    assert (finding.rule.id, finding.rule.severity, finding.line) == ("RC901", "info", 4)
    assert exit_status([finding], strict=True) == 0

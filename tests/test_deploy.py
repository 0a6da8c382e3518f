"""The deployment kit in deploy/: Kubernetes manifests, their regcache.yaml, the image recipe
and the client configuration that deploy/README.md shows."""

from __future__ import annotations

import copy
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooling.clients import client_snippets

from regcache.config import ConfigError, Settings, load_settings, split_listen

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.29"  # kubernetes-validate 1.37 ships schemas for 1.25 to 1.37
MIRROR_URL = "http://regcache.example:5000"  # the placeholder the README's snippets use
OPTIONAL = {"ingress.yaml"}  # applied on its own after editing, not by the kustomization
KINDS = {
    "ConfigMap",
    "Deployment",
    "Ingress",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Secret",
    "Service",
}
UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}

Obj = dict[str, Any]


def manifest_files() -> list[Path]:
    """Every YAML file of deploy/kubernetes but the kustomization."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def documents() -> tuple[tuple[str, Obj], ...]:
    """(file name, object) for every YAML document in the manifests."""
    found = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return tuple(found)


def obj(kind: str) -> Obj:
    """The one object of `kind` (a deep copy, so tests cannot disturb each other)."""
    matches = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return copy.deepcopy(matches[0])


def quantity(text: str) -> int:
    """A Kubernetes binary quantity such as `5Gi` or `768Mi`, in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", text)
    assert match, f"not a binary quantity: {text!r}"
    return int(match[1]) * UNITS[match[2] or ""]


def container() -> Obj:
    """The Deployment's only container."""
    containers = obj("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def volume(name: str) -> Obj:
    """The Deployment's pod volume called `name`."""
    volumes = {v["name"]: v for v in obj("Deployment")["spec"]["template"]["spec"]["volumes"]}
    return volumes[name]


def mount_path(volume_name: str) -> str:
    """Where the container mounts `volume_name`."""
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    return mounts[volume_name]


def option(args: list[str], name: str) -> str:
    """The value after `name` in an argument list."""
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No REGCACHE_* variable from the test run's environment reaches load_settings."""
    for name in [n for n in os.environ if n.startswith("REGCACHE_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def settings(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Settings:
    """The ConfigMap's regcache.yaml, loaded by regcache from a file as the pod would."""
    path = tmp_path / "regcache.yaml"
    path.write_text(obj("ConfigMap")["data"]["regcache.yaml"])
    return load_settings(path)


def listen_port() -> int:
    """The port in the ConfigMap's `listen`, read without regcache's loader."""
    config = yaml.safe_load(obj("ConfigMap")["data"]["regcache.yaml"])
    return split_listen(config["listen"])[1]


def test_every_document_parses_as_a_namespaceless_object() -> None:
    """Each manifest file holds objects with a kind and a name, and none names a namespace."""
    assert manifest_files(), "no manifests in deploy/kubernetes"
    by_file: dict[str, int] = {}
    for name, doc in documents():
        by_file[name] = by_file.get(name, 0) + 1
        assert isinstance(doc, dict), name
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
        assert doc["metadata"].get("name"), name
        assert "namespace" not in doc["metadata"], f"{name}: users choose the namespace with -n"
    assert set(by_file) == {p.name for p in manifest_files()}, "a file holds no object"
    assert sorted(doc["kind"] for _, doc in documents()) == sorted(KINDS)


@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=[f"{n}:{d['kind']}" for n, d in documents()]
)
def test_object_matches_its_kubernetes_schema(name: str, doc: Obj) -> None:
    """Strict validation (unknown fields are errors) against the bundled, offline schemas."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_schema_validation_catches_mistakes() -> None:
    """The validator is not vacuous: a misspelt field and a wrong type are both rejected."""
    import kubernetes_validate

    typo = obj("Deployment")
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    wrong_type = obj("Service")
    wrong_type["spec"]["ports"][0]["port"] = "five thousand"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_config_loads_with_regcache(settings: Settings) -> None:
    """regcache.yaml is valid for regcache: listen, quota, and the three upstreams."""
    assert settings.listen == "0.0.0.0:5000"
    assert settings.quota_bytes == int(4.5 * 1024**3)
    assert settings.admin_token is None, "the admin token belongs in the Secret"
    upstreams = {u.name: u for u in settings.upstreams}
    assert {u.prefix for u in upstreams.values()} == {"docker.io", "ghcr.io", "quay.io"}
    hub = upstreams["dockerhub"]
    assert hub.url == "https://registry-1.docker.io"
    assert hub.mirror and hub.is_docker_hub
    assert hub.username
    assert hub.password_file == Path("/run/secrets/dockerhub/token")
    assert [u.name for u in settings.upstreams if u.mirror] == ["dockerhub"]


def test_docker_hub_token_is_read_lazily(settings: Settings, tmp_path: Path) -> None:
    """Loading succeeds without the Secret's file; the token is read only when asked for."""
    hub = next(u for u in settings.upstreams if u.name == "dockerhub")
    assert hub.password_file is not None and not hub.password_file.exists()
    with pytest.raises(ConfigError, match="password_file"):
        hub.secret()
    token = tmp_path / "token"
    token.write_text("dckr_pat_example\n")
    assert hub.model_copy(update={"password_file": token}).secret() == "dckr_pat_example"


def test_deployment_environment_is_what_regcache_reads(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Every REGCACHE_* variable the Deployment sets is a setting; the admin token arrives."""
    path = tmp_path / "regcache.yaml"
    path.write_text(obj("ConfigMap")["data"]["regcache.yaml"])
    names = [e["name"] for e in container()["env"]]
    assert "REGCACHE_ADMIN_TOKEN" in names
    for name in names:
        clean_env.setenv(name, "from-the-secret")
    settings = load_settings(path)  # an unknown REGCACHE_* variable would be a ConfigError
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-the-secret"


def test_quota_leaves_room_in_the_volume(settings: Settings) -> None:
    """Content plus the free space regcache keeps fits in the PersistentVolumeClaim."""
    claim = obj("PersistentVolumeClaim")
    size = quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert size == 5 * 1024**3
    assert settings.min_free_bytes > 0
    assert settings.quota_bytes + settings.min_free_bytes <= size


def test_deployment_runs_regcache_as_documented() -> None:
    """One replica replaced by Recreate, the serve arguments, probes, resources, no root."""
    deployment = obj("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate", "two pods must never share the store"
    c = container()
    assert "command" not in c, "the image's ENTRYPOINT (regcache) must stay"
    assert c["args"] == [
        "serve",
        "--config",
        "/etc/regcache/regcache.yaml",
        "--data-dir",
        "/var/lib/regcache",
    ]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    resources = c["resources"]
    assert quantity(resources["limits"]["memory"]) == 768 * 1024**2
    assert quantity(resources["requests"]["memory"]) == 256 * 1024**2
    assert resources["requests"]["cpu"] == "100m"
    pod_security = spec["template"]["spec"]["securityContext"]
    security = c["securityContext"]
    assert pod_security["runAsNonRoot"] and security["runAsNonRoot"]
    assert pod_security["runAsUser"] == security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_ports_match_the_listen_port() -> None:
    """The container port, both probes and the Service all reach regcache's listen port."""
    port = listen_port()
    c = container()
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert list(named.values()) == [port]

    def resolve(value: int | str) -> int:
        return named[value] if isinstance(value, str) else value

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in c:
            assert resolve(c[probe]["httpGet"]["port"]) == port, probe
    service = obj("Service")
    assert service["spec"]["type"] == "ClusterIP"
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    assert resolve(service_port["targetPort"]) == port


def test_volumes_and_secrets_are_wired_together(settings: Settings) -> None:
    """The PVC, ConfigMap and Secret are mounted where the arguments and config expect them."""
    args = container()["args"]
    assert (
        volume("data")["persistentVolumeClaim"]["claimName"]
        == obj("PersistentVolumeClaim")["metadata"]["name"]
    )
    assert mount_path("data") == option(args, "--data-dir") == "/var/lib/regcache"
    if "data_dir" in yaml.safe_load(obj("ConfigMap")["data"]["regcache.yaml"]):
        assert settings.data_dir == Path(option(args, "--data-dir"))

    config_map = obj("ConfigMap")
    assert volume("config")["configMap"]["name"] == config_map["metadata"]["name"]
    config_file = Path(option(args, "--config"))
    assert config_file.parent == Path(mount_path("config")) == Path("/etc/regcache")
    assert config_file.name in config_map["data"]

    secret = obj("Secret")
    keys = set(secret["stringData"])
    assert {"dockerhub-token", "admin-token"} <= keys
    source = volume("dockerhub")["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert mount_path("dockerhub") == "/run/secrets/dockerhub"
    files = {Path(mount_path("dockerhub")) / item["path"]: item["key"] for item in source["items"]}
    hub = next(u for u in settings.upstreams if u.name == "dockerhub")
    assert files.get(hub.password_file) == "dockerhub-token"
    [admin] = [e for e in container()["env"] if e["name"] == "REGCACHE_ADMIN_TOKEN"]
    ref = admin["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "admin-token")


def test_selectors_match_the_pods() -> None:
    """The Service and the NetworkPolicy select the Deployment's pods, and only by its labels."""
    deployment = obj("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert obj("Service")["spec"]["selector"].items() <= labels.items()
    selector = obj("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    backend = obj("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == obj("Service")["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in obj("Service")["spec"]["ports"]}


def test_network_policy_admits_the_listen_port_and_only_dns_and_https_out() -> None:
    """In: the listen port only. Out: DNS (UDP and TCP 53) and TCP 443, nothing else."""
    spec = obj("NetworkPolicy")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {
        (p.get("protocol", "TCP"), p["port"]) for rule in spec["ingress"] for p in rule["ports"]
    }
    assert ingress_ports == {("TCP", listen_port())}
    assert all(rule.get("ports") for rule in spec["egress"]), "an egress rule without ports"
    egress_ports = {
        (p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule["ports"]
    }
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_kustomization_lists_every_manifest() -> None:
    """Every manifest but the optional Ingress is a resource, and every resource exists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert all((K8S / name).is_file() for name in resources)
    assert not OPTIONAL & set(resources)
    assert set(resources) | OPTIONAL == {p.name for p in manifest_files()}


def test_readme_shows_the_tested_client_snippets() -> None:
    """Each client's snippet, as the client tests write it, is a fenced block of the README."""
    readme = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```$", readme, flags=re.DOTALL | re.MULTILINE)
    snippets = client_snippets(MIRROR_URL)
    assert set(snippets) == {"dockerd", "podman", "containerd"}
    for client, snippet in snippets.items():
        assert snippet in blocks, f"the {client} snippet is not a block of deploy/README.md"


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_containerfile_runs_regcache_as_the_deployment_expects() -> None:
    """Base image, `pip install .`, ENTRYPOINT regcache, the port, user and data volume."""
    instructions = containerfile()

    def last(name: str) -> str:
        found = [args for instruction, args in instructions if instruction == name]
        assert found, f"no {name} in deploy/Containerfile"
        return found[-1]

    assert last("FROM") == "python:3.11-slim"
    assert any(re.search(r"\bpip install \.(\s|$)", a) for i, a in instructions if i == "RUN")
    assert json.loads(last("ENTRYPOINT")) == ["regcache"]
    cmd = json.loads(last("CMD"))
    assert cmd[0] == "serve"
    port = listen_port()
    exposed = {int(p.split("/")[0]) for i, a in instructions if i == "EXPOSE" for p in a.split()}
    assert port in exposed
    assert split_listen(option(cmd, "--listen"))[1] == port
    assert last("USER").split(":")[0] == str(container()["securityContext"]["runAsUser"])
    data_dir = option(container()["args"], "--data-dir")
    assert option(cmd, "--data-dir") == data_dir
    assert data_dir in json.loads(last("VOLUME"))


# deploy/kubernetes/fleet: three replicas on external S3 and PostgreSQL.

FLEET = K8S / "fleet"
FLEET_KINDS = {
    "ConfigMap",
    "Deployment",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "Service",
}
POD_IP = "10.244.1.7"  # what the downward API gives the pod in the tests below


def fleet_files() -> list[Path]:
    """Every YAML file of deploy/kubernetes/fleet but its kustomization."""
    return sorted(p for p in FLEET.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def fleet_documents() -> tuple[tuple[str, Obj], ...]:
    """(file name, object) for every YAML document of the fleet's manifests."""
    found = []
    for path in fleet_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return tuple(found)


def fleet_obj(kind: str) -> Obj:
    """The fleet's one object of `kind` (a deep copy)."""
    matches = [doc for _, doc in fleet_documents() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return copy.deepcopy(matches[0])


def fleet_pod() -> Obj:
    return fleet_obj("Deployment")["spec"]["template"]["spec"]


def fleet_container() -> Obj:
    [only] = fleet_pod()["containers"]
    return only


def fleet_volume(name: str) -> Obj:
    return {v["name"]: v for v in fleet_pod()["volumes"]}[name]


def fleet_mount(name: str) -> str:
    return {m["name"]: m["mountPath"] for m in fleet_container()["volumeMounts"]}[name]


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' `$(NAME)` expansion of an env value: names defined earlier are replaced,
    `$$` is a literal `$`, anything else stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return defined.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def fleet_environment() -> dict[str, str]:
    """The container's environment as the kubelet would build it, from the fleet's ConfigMap
    and Secret and a pod IP; every reference must resolve."""
    config_map, secret = fleet_obj("ConfigMap"), fleet_obj("Secret")
    env: dict[str, str] = {}
    for var in fleet_container()["env"]:
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "status.podIP"
            env[var["name"]] = POD_IP
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
        else:
            ref = source["configMapKeyRef"]
            assert ref["name"] == config_map["metadata"]["name"]
            env[var["name"]] = config_map["data"][ref["key"]]
    return env


@pytest.fixture
def fleet_settings(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Settings:
    """The fleet's regcache.yaml and environment, loaded by regcache as a pod would."""
    path = tmp_path / "regcache.yaml"
    path.write_text(fleet_obj("ConfigMap")["data"]["regcache.yaml"])
    for name, value in fleet_environment().items():
        clean_env.setenv(name, value)
    return load_settings(path)  # an unknown REGCACHE_* variable would be a ConfigError


def test_fleet_documents_parse_as_namespaceless_objects() -> None:
    """Each fleet manifest holds named objects without a namespace, one of each kind."""
    assert fleet_files(), "no manifests in deploy/kubernetes/fleet"
    for name, doc in fleet_documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
        assert doc["metadata"].get("name"), name
        assert "namespace" not in doc["metadata"], f"{name}: users choose the namespace with -n"
    assert {name for name, _ in fleet_documents()} == {p.name for p in fleet_files()}
    assert sorted(doc["kind"] for _, doc in fleet_documents()) == sorted(FLEET_KINDS)


@pytest.mark.parametrize(
    ("name", "doc"),
    fleet_documents(),
    ids=[f"fleet/{n}:{d['kind']}" for n, d in fleet_documents()],
)
def test_fleet_object_matches_its_kubernetes_schema(name: str, doc: Obj) -> None:
    """The same strict, offline validation as the single-replica manifests."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"fleet/{name}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_fleet_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == {p.name for p in fleet_files()}


def test_fleet_is_three_replicas_without_a_volume_claim() -> None:
    """Three replicas rolled one at a time; nothing of theirs on a PersistentVolumeClaim:
    blobs are in the bucket, the data directory is an emptyDir for temporary files."""
    deployment = fleet_obj("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert "volumeClaimTemplates" not in spec
    assert all(doc["kind"] != "PersistentVolumeClaim" for _, doc in fleet_documents())
    assert all("persistentVolumeClaim" not in v for v in fleet_pod()["volumes"])
    args = fleet_container()["args"]
    assert fleet_mount("spool") == option(args, "--data-dir") == "/var/lib/regcache"
    assert "sizeLimit" in fleet_volume("spool")["emptyDir"]


def test_fleet_runs_regcache_like_the_single_replica() -> None:
    """Same arguments, probes, resources and non-root security as deployment.yaml."""
    single, c = container(), fleet_container()
    assert "command" not in c
    assert c["args"] == single["args"]
    assert c["ports"] == single["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe] == single[probe], probe
    assert c["securityContext"] == single["securityContext"]
    assert (
        fleet_pod()["securityContext"]
        == obj("Deployment")["spec"]["template"]["spec"]["securityContext"]
    )
    for kind in ("requests", "limits"):
        assert c["resources"][kind]["memory"] == single["resources"][kind]["memory"]


def test_fleet_replicas_spread_over_nodes() -> None:
    """Anti-affinity on the node name, selecting the fleet's own pods."""
    labels = fleet_obj("Deployment")["spec"]["template"]["metadata"]["labels"]
    terms = fleet_pod()["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    hostname = [t["podAffinityTerm"] for t in terms if t["podAffinityTerm"]["topologyKey"]]
    assert [t["topologyKey"] for t in hostname] == ["kubernetes.io/hostname"]
    assert hostname[0]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_fleet_environment_sets_the_shared_back_ends() -> None:
    """REGCACHE_FLEET is composed from the pod's IP (downward API) and the Secret's token,
    and every variable it and REGCACHE_OBJECT_STORAGE refer to is defined before them."""
    env = fleet_container()["env"]
    names = [var["name"] for var in env]
    assert {"REGCACHE_FLEET", "REGCACHE_DATABASE_URL", "REGCACHE_OBJECT_STORAGE"} <= set(names)
    [pod_ip] = [v for v in env if v.get("valueFrom", {}).get("fieldRef")]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for var in env:
        for ref in re.findall(r"\$\(([^)]+)\)", var.get("value", "")):
            assert ref in names[: names.index(var["name"])], f"{var['name']} uses $({ref})"
    [fleet] = [v for v in env if v["name"] == "REGCACHE_FLEET"]
    assert f"$({pod_ip['name']})" in fleet["value"]
    resolved = fleet_environment()
    assert "$(" not in "".join(resolved.values()), "an unresolved reference"
    assert json.loads(resolved["REGCACHE_FLEET"])["address"] == f"http://{POD_IP}:{listen_port()}"


def test_fleet_settings_load_with_regcache(fleet_settings: Settings) -> None:
    """regcache reads the fleet, the database and the object storage from the environment."""
    secret = fleet_obj("Secret")["stringData"]
    config_map = fleet_obj("ConfigMap")["data"]
    s = fleet_settings
    assert s.fleet is not None
    port = split_listen(s.listen)[1]
    assert port == fleet_container()["ports"][0]["containerPort"]
    assert s.fleet.address == f"http://{POD_IP}:{port}"
    assert s.fleet.token.get_secret_value() == secret["fleet-token"]
    assert s.database_url is not None
    assert s.database_url.get_secret_value() == secret["database-url"]
    assert s.database_url.get_secret_value().startswith("postgresql://")
    storage = s.object_storage
    assert storage is not None
    assert storage.endpoint_url == config_map["s3-endpoint-url"]
    assert storage.bucket == config_map["s3-bucket"]
    assert storage.region == config_map["s3-region"]
    assert storage.access_key == secret["s3-access-key"]
    assert storage.secret_key is None, "the secret key comes from a file"
    assert s.admin_token is not None
    assert s.admin_token.get_secret_value() == secret["admin-token"]
    assert s.data_dir == Path(option(fleet_container()["args"], "--data-dir"))
    assert {u.prefix for u in s.upstreams} == {"docker.io", "ghcr.io", "quay.io"}


def test_fleet_secret_files_are_mounted_where_the_settings_read_them(
    fleet_settings: Settings,
) -> None:
    """The S3 secret key and the Docker Hub token are files from the Secret."""
    secret = fleet_obj("Secret")
    storage = fleet_settings.object_storage
    assert storage is not None and storage.secret_key_file is not None
    hub = next(u for u in fleet_settings.upstreams if u.name == "dockerhub")
    for volume_name, path, key in (
        ("s3", storage.secret_key_file, "s3-secret-key"),
        ("dockerhub", hub.password_file, "dockerhub-token"),
    ):
        source = fleet_volume(volume_name)["secret"]
        assert source["secretName"] == secret["metadata"]["name"]
        files = {Path(fleet_mount(volume_name)) / i["path"]: i["key"] for i in source["items"]}
        assert files.get(path) == key, volume_name
        assert key in secret["stringData"]
    config = fleet_volume("config")["configMap"]
    assert config["name"] == fleet_obj("ConfigMap")["metadata"]["name"]
    assert Path(fleet_mount("config")) / "regcache.yaml" == Path(
        option(fleet_container()["args"], "--config")
    )


def test_fleet_service_budget_and_policy_select_the_pods() -> None:
    """Service, PodDisruptionBudget and NetworkPolicy select the fleet's pods; the budget
    keeps two of three; the policy lets replicas reach each other, PostgreSQL and S3."""
    deployment = fleet_obj("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = fleet_obj("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service["spec"]
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == listen_port()
    budget = fleet_obj("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert 1 < budget["minAvailable"] < deployment["spec"]["replicas"]
    policy = fleet_obj("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    egress = {
        (p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]
    }
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 5432), ("TCP", 5000)}
    [peers] = [r for r in policy["egress"] if any(p["port"] == 5000 for p in r["ports"])]
    assert peers["to"][0]["podSelector"]["matchLabels"].items() <= labels.items()


def test_readme_documents_the_fleet() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "## Three replicas on S3 and PostgreSQL" in readme
    assert "kubernetes/fleet" in readme

"""The container image and the Kubernetes manifests under deploy/.

Docker and a cluster are not available to the tests, so the Dockerfile and the
manifests are checked statically. The manifests must match the Kubernetes JSON
schema, and both must match what pkifed's command line, HTTP server and
configuration accept. The federation file in the ConfigMap is then run for
real: two ``pkifed daemon`` processes with its schedule and daemon settings
share a PostgreSQL state store, and killing the leader hands the lease over.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import shlex
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from signal import SIGKILL
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet
from sqlalchemy.engine import make_url

from pkifed.config.daemon import parse_listen
from pkifed.config.loader import load_config
from pkifed.federation.store import Store
from pkifed.sync.cli import cli
from pkifed.sync.http import HealthServer, Readiness
from tests.conftest import postgres_server_url, postgres_unreachable
from tests.harness.daemon import DaemonProcess, get, wait_for

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SECRET_TEMPLATE = DEPLOY / "postgres-secret.example.yaml"
DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"

# The Kubernetes release whose API schema the manifests are checked against,
# the oldest that deploy/README.md supports. The strict schema rejects fields
# that this release does not know and misspelled ones.
KUBERNETES_VERSION = "1.31"
NAMESPACE = "pkifed"

MANIFEST_FILES = sorted(
    path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml"
)


# --- reading the files ----------------------------------------------------------------


def read_documents(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return [document for document in yaml.safe_load_all(text) if document]


def find_object(kind: str, name: str) -> dict[str, Any]:
    """Return the manifest of ``kind`` named ``name`` from deploy/kubernetes."""
    for path in MANIFEST_FILES:
        for document in read_documents(path):
            if document["kind"] == kind and document["metadata"]["name"] == name:
                return document
    raise LookupError(f"no {kind} named {name!r} in {KUBERNETES}")


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find_object(kind, name)["spec"]["template"]["spec"]
    return spec


def pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = find_object(kind, name)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def container(kind: str, name: str) -> dict[str, Any]:
    containers = pod_spec(kind, name)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def pkifed_container() -> dict[str, Any]:
    return container("Deployment", "pkifed")


def env_var(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for variable in spec.get("env", []):
        if variable["name"] == name:
            found: dict[str, Any] = variable
            return found
    raise LookupError(f"container {spec['name']} has no variable {name}")


def container_port(spec: dict[str, Any], name: str) -> int:
    for port in spec["ports"]:
        if port["name"] == name:
            return int(port["containerPort"])
    raise LookupError(f"container {spec['name']} has no port named {name!r}")


def federation_text() -> str:
    text: str = find_object("ConfigMap", "pkifed-config")["data"]["federation.yaml"]
    return text


def federation_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(federation_text())
    return document


def listen_port() -> int:
    return parse_listen(federation_document()["daemon"]["listen"])[1]


def parse_pkifed_command(arguments: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``pkifed ARGUMENTS`` as the command line would, without running it.

    Returns the subcommand's name and its parameters after click converted and
    checked them. The arguments must start with the subcommand's name.
    """
    name, *rest = arguments
    with click.Context(cli, info_name="pkifed") as context:
        command = cli.get_command(context, name)
        assert command is not None, f"pkifed has no command {name!r}"
        with command.make_context(name, rest, parent=context) as subcontext:
            return name, dict(subcontext.params)


# --- .dockerignore --------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """Read .dockerignore as (is_exception, regex) rules, in file order.

    Docker's syntax is Go's filepath.Match plus ``**`` for any number of
    directories. Only ``*``, ``?`` and ``**`` are translated here, so the test
    rejects a file that uses character classes or escapes.
    """
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        assert not set(pattern) & set("[]\\"), f"unsupported pattern {line!r}"
        rules.append((exception, re.compile(_pattern_regex(pattern))))
    return rules


def _pattern_regex(pattern: str) -> str:
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return "".join(parts) + r"\Z"


def ignored_by_docker(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Return whether Docker leaves ``relative`` out of the build context.

    A rule applies to a path when it matches the path or one of its parent
    directories, and the last rule that applies decides.
    """
    parts = relative.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for exception, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not exception
    return ignored


def test_dockerignore_matcher_semantics() -> None:
    rules = [
        (False, re.compile(_pattern_regex("*"))),
        (True, re.compile(_pattern_regex("pkifed"))),
        (False, re.compile(_pattern_regex("**/__pycache__"))),
    ]

    assert ignored_by_docker(".venv/bin/python", rules)
    assert ignored_by_docker("pkifed.egg-info/PKG-INFO", rules)
    assert not ignored_by_docker("pkifed/sync/cli.py", rules)
    assert ignored_by_docker("pkifed/sync/__pycache__/cli.cpython-312.pyc", rules)


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def instructions(parser: DockerfileParser, name: str) -> list[dict[str, Any]]:
    return [item for item in parser.structure if item["instruction"] == name]


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    """Return the instructions after the last FROM."""
    structure = parser.structure
    last_from = max(
        index for index, item in enumerate(structure) if item["instruction"] == "FROM"
    )
    return [item for item in structure[last_from + 1 :] if item["instruction"]]


def copy_sources(item: dict[str, Any]) -> list[str]:
    """Return the build-context sources of a COPY, or [] when it copies a stage."""
    words = shlex.split(item["value"])
    if any(word.startswith("--from=") for word in words):
        return []
    arguments = [word for word in words if not word.startswith("--")]
    return arguments[:-1]


def exec_form(item: dict[str, Any]) -> list[str]:
    value = json.loads(item["value"])
    assert isinstance(value, list), f"{item['instruction']} is not in exec form"
    return [str(word) for word in value]


def test_dockerfile_base_images_pinned() -> None:
    parser = dockerfile()
    requires_python = SpecifierSet(
        tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"][
            "requires-python"
        ]
    )

    images = parser.parent_images

    assert len(images) >= 2, "expected a build stage and a runtime stage"
    assert len(set(images)) == 1, f"the stages use different bases: {images}"
    repository, _, tag = images[0].partition(":")
    assert repository == "python"
    assert tag
    assert tag != "latest"
    match = re.fullmatch(r"(\d+\.\d+)-slim-\w+", tag)
    assert match is not None, "expected a slim Python tag such as 3.12-slim-bookworm"
    assert match[1] + ".0" in requires_python


def test_dockerfile_runs_as_fixed_user() -> None:
    users = [
        item for item in final_stage(dockerfile()) if item["instruction"] == "USER"
    ]
    security = pod_spec("Deployment", "pkifed")["securityContext"]

    assert users, "the final stage has no USER"
    user, _, group = users[-1]["value"].partition(":")
    assert user.isdigit(), "runAsNonRoot needs a numeric USER to check"
    assert int(user) != 0
    assert int(user) == security["runAsUser"]
    assert group.isdigit()
    assert int(group) == security["runAsGroup"]


def test_dockerfile_copy_sources_in_context() -> None:
    rules = dockerignore_rules()
    sources = [
        source
        for item in instructions(dockerfile(), "COPY")
        for source in copy_sources(item)
    ]

    assert sources
    for source in sources:
        path = REPOSITORY / source
        assert path.exists(), f"COPY source {source} is not in the repository"
        assert not ignored_by_docker(source, rules), f".dockerignore excludes {source}"
        for module in path.rglob("*.py") if path.is_dir() else []:
            relative = module.relative_to(REPOSITORY).as_posix()
            assert not ignored_by_docker(relative, rules), relative


def test_dockerfile_copies_build_inputs() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    sources = {
        source
        for item in instructions(dockerfile(), "COPY")
        for source in copy_sources(item)
    }

    assert "pyproject.toml" in sources
    assert project["readme"] in sources
    assert "pkifed" in sources


def test_dockerfile_installs_all_extra() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runs = " ".join(item["value"] for item in instructions(dockerfile(), "RUN"))

    assert '".[all]"' in runs
    included = re.fullmatch(r"pkifed\[(.+)\]", extras["all"][0])
    assert included is not None
    assert "postgres" in included[1].split(",")
    assert any(
        requirement.startswith("psycopg2-binary") for requirement in extras["postgres"]
    )


def test_dockerfile_entrypoint_and_cmd() -> None:
    stage = final_stage(dockerfile())
    entrypoint = [item for item in stage if item["instruction"] == "ENTRYPOINT"]
    commands = [item for item in stage if item["instruction"] == "CMD"]

    assert [exec_form(item) for item in entrypoint] == [["pkifed"]]
    assert len(commands) == 1
    name, parameters = parse_pkifed_command(exec_form(commands[0]))
    assert name == "daemon"
    assert parameters["config_path"] == Path("/etc/pkifed/federation.yaml")


def test_dockerfile_exposes_daemon_port() -> None:
    stage = final_stage(dockerfile())
    exposed = [
        word
        for item in stage
        if item["instruction"] == "EXPOSE"
        for word in item["value"].split()
    ]
    healthchecks = [item for item in stage if item["instruction"] == "HEALTHCHECK"]

    assert exposed == [str(listen_port())]
    assert len(healthchecks) == 1
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", healthchecks[0]["value"])
    assert url is not None, "HEALTHCHECK calls no local URL"
    assert int(url[1]) == listen_port()
    assert url[2] == "/healthz"


def test_dockerfile_bakes_in_no_secret() -> None:
    secret_words = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN|PIN\b|KEY", re.I)
    names = []
    for item in instructions(dockerfile(), "ENV") + instructions(dockerfile(), "ARG"):
        names.extend(re.findall(r"(\w+)=", item["value"]) or [item["value"].split()[0]])

    assert names
    assert not [name for name in names if secret_words.search(name)]


# --- manifests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [*MANIFEST_FILES, SECRET_TEMPLATE],
    ids=lambda path: path.relative_to(REPOSITORY).as_posix(),
)
def test_manifest_matches_schema(path: Path) -> None:
    documents = read_documents(path)

    assert documents
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            pytest.fail(f"{path.name}: {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{path.name}: {error.message}")
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    resources = kustomization["resources"]

    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    assert len(resources) == len(set(resources))
    assert set(resources) == {path.name for path in MANIFEST_FILES}
    assert SECRET_TEMPLATE.parent != KUBERNETES


def test_kustomization_image_matches_deployment() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    image = pkifed_container()["image"]

    names = [entry["name"] for entry in kustomization["images"]]

    assert names == [image.partition(":")[0]]


def test_deployment_runs_two_replicas() -> None:
    deployment = find_object("Deployment", "pkifed")

    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_args_parse() -> None:
    spec = pkifed_container()
    mounts = {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}
    volumes = {
        volume["name"]: volume for volume in pod_spec("Deployment", "pkifed")["volumes"]
    }

    name, parameters = parse_pkifed_command(spec["args"])
    help_result = CliRunner().invoke(cli, [*spec["args"], "--help"], prog_name="pkifed")

    assert name == "daemon"
    assert help_result.exit_code == 0, help_result.output
    assert help_result.output.startswith("Usage: pkifed daemon")
    assert parameters["replica_id"] == "$(POD_NAME)"
    config_path = parameters["config_path"]
    assert volumes["config"]["configMap"]["name"] == "pkifed-config"
    assert config_path == Path(mounts["config"]) / "federation.yaml"


def test_deployment_args_variables_defined() -> None:
    spec = pkifed_container()
    defined = {variable["name"] for variable in spec["env"]}
    referenced = set(re.findall(r"\$\((\w+)\)", " ".join(spec["args"])))

    assert referenced
    # Kubernetes leaves an undefined $(NAME) in the argument as it is.
    assert referenced <= defined
    field = env_var(spec, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.name"


def test_probes_match_daemon_endpoints() -> None:
    spec = pkifed_container()
    port = container_port(spec, "metrics")
    probes = {
        kind: spec[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }

    assert port == listen_port()
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] == "metrics"


def test_probe_paths_served_by_daemon() -> None:
    paths = [
        pkifed_container()[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    ]
    server = HealthServer(
        "127.0.0.1", 0, lambda: Readiness(True, "ready", {}), lambda: b""
    )
    server.start()
    try:
        statuses = {path: get(server.url + path)[0] for path in paths}
        missing_status = get(server.url + "/missing")[0]
    finally:
        server.stop()

    assert statuses == dict.fromkeys(paths, 200)
    assert missing_status == 404


def test_daemon_listens_on_pod_address() -> None:
    host, port = parse_listen(federation_document()["daemon"]["listen"])
    service = find_object("Service", "pkifed-metrics")["spec"]

    assert ipaddress.ip_address(host).is_unspecified
    assert service["ports"][0]["targetPort"] == "metrics"
    assert service["ports"][0]["port"] == port
    assert service["type"] == "ClusterIP"


def test_pgpassword_comes_from_secret() -> None:
    secret = read_documents(SECRET_TEMPLATE)[0]
    reference = env_var(pkifed_container(), "PGPASSWORD")["valueFrom"]["secretKeyRef"]
    postgres = container("StatefulSet", "postgres")
    server_reference = env_var(postgres, "POSTGRES_PASSWORD")["valueFrom"][
        "secretKeyRef"
    ]

    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    assert server_reference == reference
    assert "REPLACE" in secret["stringData"][reference["key"]]


def test_state_url_names_postgres_service() -> None:
    url = make_url(federation_document()["state"])
    postgres = container("StatefulSet", "postgres")
    service = find_object("Service", "postgres")

    assert url.password is None
    assert url.get_backend_name() == "postgresql"
    assert url.host == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    assert url.username == env_var(postgres, "POSTGRES_USER")["value"]
    assert url.database == env_var(postgres, "POSTGRES_DB")["value"]


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "pkifed"), ("StatefulSet", "postgres")]
)
def test_pod_security_restricted(kind: str, name: str) -> None:
    """Both pods meet the restricted Pod Security Standard the namespace enforces."""
    namespace = find_object("Namespace", NAMESPACE)
    pod = pod_spec(kind, name)
    spec = container(kind, name)
    security = spec["securityContext"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    tmp_mounts = [
        mount["name"] for mount in spec["volumeMounts"] if mount["mountPath"] == "/tmp"
    ]

    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert len(tmp_mounts) == 1
    assert tmp_mounts[0] in empty_dirs
    assert spec["resources"]["requests"]["memory"]
    assert spec["resources"]["limits"]["memory"]


def test_selectors_match_pod_labels() -> None:
    pkifed_labels = pod_labels("Deployment", "pkifed").items()
    postgres_labels = pod_labels("StatefulSet", "postgres").items()
    deployment = find_object("Deployment", "pkifed")["spec"]
    budget = find_object("PodDisruptionBudget", "pkifed")["spec"]
    metrics = find_object("Service", "pkifed-metrics")["spec"]
    database = find_object("Service", "postgres")["spec"]
    policy = find_object("NetworkPolicy", "postgres")["spec"]
    spreads = pod_spec("Deployment", "pkifed")["topologySpreadConstraints"]

    assert deployment["selector"]["matchLabels"].items() <= pkifed_labels
    assert budget["selector"]["matchLabels"].items() <= pkifed_labels
    assert budget["maxUnavailable"] == 1
    assert metrics["selector"].items() <= pkifed_labels
    assert metrics["publishNotReadyAddresses"] is True
    assert database["selector"].items() <= postgres_labels
    assert policy["podSelector"]["matchLabels"].items() <= postgres_labels
    clients = policy["ingress"][0]["from"]
    assert clients[0]["podSelector"]["matchLabels"].items() <= pkifed_labels
    by_node = [s for s in spreads if s["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_node) == 1
    assert by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node[0]["maxSkew"] == 1
    assert by_node[0]["labelSelector"]["matchLabels"].items() <= pkifed_labels


def test_postgres_statefulset_persists_data() -> None:
    statefulset = find_object("StatefulSet", "postgres")["spec"]
    postgres = container("StatefulSet", "postgres")
    data_mount = {
        mount["name"]: mount["mountPath"] for mount in postgres["volumeMounts"]
    }
    claims = [
        claim["metadata"]["name"] for claim in statefulset["volumeClaimTemplates"]
    ]

    assert statefulset["serviceName"] == "postgres"
    assert find_object("Service", "postgres")["spec"]["clusterIP"] == "None"
    assert claims == ["data"]
    pgdata = env_var(postgres, "PGDATA")["value"]
    assert pgdata.startswith(data_mount["data"] + "/")
    assert postgres["readinessProbe"]["exec"]["command"][0] == "pg_isready"


def test_federation_file_valid(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(federation_text(), encoding="utf-8")

    config = load_config(path)

    assert config.model.daemon.replica_id is None
    assert config.model.schedule.every is not None
    provider_types = {raw["type"] for raw in config.model.providers.values()}
    target_types = {raw["type"] for raw in config.model.targets.values()}
    # A pod's filesystem is gone after a restart, so keys and bundles go to
    # cloud services.
    assert "local" not in provider_types
    assert "file" not in target_types


# --- against PostgreSQL ---------------------------------------------------------------


def local_state_url(schema_url: str | None = None) -> str:
    """Return the ConfigMap's state URL on the test server, still without password."""
    server = make_url(schema_url) if schema_url else postgres_server_url()
    url = make_url(federation_document()["state"]).set(
        host=server.host,
        port=server.port,
        database=server.database,
        username=server.username,
        query=server.query,
    )
    return url.render_as_string(hide_password=False)


def server_password() -> str:
    """Return the test server's password, or any value for a server on trust auth.

    The tests pass it in PGPASSWORD, as the Deployment does, and never in the URL.
    """
    password = postgres_server_url().password
    return str(password) if password else "deploy-test-password"


@pytest.mark.postgres
def test_pgpassword_reaches_libpq(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg2's libpq takes the password from PGPASSWORD for a URL without one."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(f"{request.node.name}: {reason}")
    monkeypatch.setenv("PGPASSWORD", server_password())
    url = local_state_url()
    store = Store(url)
    try:
        with store.engine.connect() as connection:
            driver_connection = connection.connection.dbapi_connection
            assert driver_connection is not None
            password = driver_connection.info.password
    finally:
        store.close()

    assert make_url(url).password is None
    assert password == server_password()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def local_federation(state_url: str) -> dict[str, Any]:
    """Return the ConfigMap's federation on local providers and file targets."""
    document = federation_document()
    document["state"] = state_url
    document["providers"] = {
        name: {
            "type": "local",
            "path": f"keys/{name}",
            "passphrase": "${env:PKIFED_DAEMON_PASSPHRASE}",
        }
        for name in document["providers"]
    }
    document["targets"] = {
        name: {"type": "file", "path": f"out/{name}"} for name in document["targets"]
    }
    return document


def leaders(daemons: list[DaemonProcess]) -> list[DaemonProcess]:
    return [d for d in daemons if d.process.poll() is None and d.is_leader()]


def readyz(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    status, body = get(f"{daemon.url}/readyz")
    return status, json.loads(body)


@pytest.mark.postgres
@pytest.mark.slow
def test_leader_election_of_deployed_config(
    postgres_url: str,
    tmp_path: Path,
    daemons: list[DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemons inherit this process's environment.
    monkeypatch.setenv("PGPASSWORD", server_password())
    document = local_federation(local_state_url(postgres_url))
    (tmp_path / "federation.yaml").write_text(yaml.safe_dump(document))
    config = load_config(tmp_path / "federation.yaml", check_secrets=False)
    ttl = config.model.daemon.lease_ttl
    # A takeover needs the lease to expire (at most one TTL after the last
    # renewal) and the successor's next attempt, a third of the TTL later.
    # The test polls /metrics, which adds up to one poll interval.
    takeover_limit = ttl.total_seconds() * 4 / 3 + 1.0

    for name in ("pkifed-0", "pkifed-1"):
        daemons.append(DaemonProcess(tmp_path, name, "--listen", "127.0.0.1:0"))
    assert wait_for(lambda: len(leaders(daemons)) == 1, 10), [d.log for d in daemons]
    first = leaders(daemons)[0]
    second = next(d for d in daemons if d is not first)
    assert wait_for(lambda: (tmp_path / "out" / "s3" / "trust.pem").exists(), 15)
    assert wait_for(lambda: readyz(first)[0] == 200, 10), readyz(first)
    assert wait_for(lambda: readyz(second)[0] == 200, 10), readyz(second)
    assert readyz(first)[1]["role"] == "leader"
    assert readyz(second)[1]["role"] == "follower"
    first_token = first.metrics()["pkifed_lease_token"]

    first.process.send_signal(SIGKILL)
    killed_at = time.monotonic()
    took_over = wait_for(second.is_leader, takeover_limit + 5, interval=0.1)
    elapsed = time.monotonic() - killed_at

    assert took_over, second.log
    assert elapsed <= takeover_limit
    assert second.metrics()["pkifed_lease_token"] == first_token + 1
    status, body = readyz(second)
    assert status == 200
    assert body["role"] == "leader"

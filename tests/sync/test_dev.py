"""pkifed dev up, status and down, with examples/multicloud.yaml on top.

A copy of the example runs in a temporary directory with a SoftHSM2 token of
its own. pkifed and the dev process run as real child processes, and their
sockets are read from /proc. Published objects are read back through each
storage's SDK, and every signature is checked offline with openssl and pyca.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from cryptography import x509

from pkifed.providers.localservices.aws import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    client_environment,
)
from pkifed.providers.localservices.azurite import azurite_command
from pkifed.sync.dev import SERVICES, DevPaths, is_running, leftover_processes
from tests.harness.gcs_storage import storage_client
from tests.harness.softhsm import SoftHsm, require_softhsm

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multicloud.yaml"
HSM_PIN = "dev-services-hsm-pin-1123"
ISSUING = ("issuing-aws", "issuing-gcp", "issuing-azure")
TARGETS = ("files", "s3", "gcs", "blob")
PREFIX = "pki/multicloud"
BUCKET = "pkifed-multicloud"
# The dev process's log line for each service that started.
STARTED_LINE = r"local services: (\S+) listening on https?://127\.0\.0\.1:(\d+)"


@dataclass
class Federation:
    """The example's copy, its environment and every output pkifed printed."""

    directory: Path
    environment: dict[str, str]
    outputs: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.directory / "multicloud.yaml"

    @property
    def paths(self) -> DevPaths:
        return DevPaths.beside(self.config)

    def run(
        self, *arguments: str, environment: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pkifed <arguments> -c multicloud.yaml`` and record its output."""
        result = subprocess.run(
            [sys.executable, "-m", "pkifed", *arguments, "-c", "multicloud.yaml"],
            cwd=self.directory,
            env=environment or self.environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=240,
        )
        self.outputs.append(result.stdout + result.stderr)
        self._record_files()
        return result

    def _record_files(self) -> None:
        """Keep the dev process's logs and secrets, which dev down removes."""
        paths = self.paths
        for log in (paths.log_file, paths.azurite_data / "azurite.log"):
            if log.exists():
                self.outputs.append(log.read_text(errors="replace"))
        for label, secret in (
            ("Key Vault token", paths.keyvault_token),
            ("Azurite account key", paths.azurite_key),
        ):
            if secret.exists():
                value = secret.read_text(encoding="utf-8").strip()
                self.secrets[f"{label} {len(self.secrets)}"] = value

    def endpoint(self, service: str) -> str:
        return self.paths.endpoint(service).read_text(encoding="utf-8").strip()

    def pid(self) -> int:
        return int(self.paths.pid_file.read_text(encoding="utf-8"))


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    require_softhsm()
    if azurite_command() is None:
        pytest.skip(
            "pkifed dev needs Azurite, which needs Node.js and npm; install them "
            "and run PKIFED_EXTRAS=dev bash scripts/setup.sh"
        )
    # The space checks that paths reach every command and message intact.
    directory = tmp_path_factory.mktemp("multi cloud")
    shutil.copy(EXAMPLE, directory / "multicloud.yaml")
    softhsm = SoftHsm(directory / ".pkifed" / "softhsm")
    softhsm.add_token("pkifed-multicloud", pin=HSM_PIN)
    pin_file = directory / ".pkifed" / "multicloud-hsm-pin"
    pin_file.write_text(f"{HSM_PIN}\n", encoding="utf-8")
    pin_file.chmod(0o600)

    environment = dict(os.environ)
    for name, value in client_environment().items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    environment["SOFTHSM2_CONF"] = str(softhsm.config)
    environment["PYTHONUNBUFFERED"] = "1"
    environment.pop("PKIFED_AZURITE", None)
    running = Federation(directory, environment)

    started = running.run("dev", "up")
    assert started.returncode == 0, output_of(started)
    try:
        yield running
    finally:
        running.run("dev", "down")


@pytest.fixture(scope="module")
def applied(federation: Federation) -> subprocess.CompletedProcess[str]:
    result = federation.run("apply")
    assert result.returncode == 0, output_of(result)
    return result


# --- /proc ----------------------------------------------------------------------------


def process_tree(pid: int) -> set[int]:
    """Return ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = set(), [pid]
    while pending:
        current = pending.pop()
        tree.add(current)
        pending.extend(children.get(current, []))
    return tree


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* prints each 32-bit word of the address in host byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """Return the address and port of every listening TCP socket of ``pid``."""
    inodes = set()
    for descriptor in (Path("/proc") / str(pid) / "fd").iterdir():
        with_target = os.readlink(descriptor)
        if with_target.startswith("socket:["):
            inodes.add(with_target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = (Path("/proc") / str(pid) / "net" / table).read_text().splitlines()
        for line in lines[1:]:
            columns = line.split()
            local, state, inode = columns[1], columns[3], columns[9]
            # State 0A is TCP_LISTEN in the kernel's tcp_states.h.
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                found.append((_address(address), int(port, 16)))
    return found


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


# --- reading back ---------------------------------------------------------------------


def read_trust_bundle(federation: Federation, target: str) -> bytes:
    """Read trust.pem from one target through its storage's own SDK."""
    key = f"{PREFIX}/trust.pem"
    if target == "files":
        return (federation.directory / "out" / "multicloud" / "trust.pem").read_bytes()
    if target == "s3":
        s3 = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=federation.endpoint("s3"),
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )
        try:
            data: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        finally:
            s3.close()
        return data
    if target == "gcs":
        client = storage_client(federation.endpoint("gcs"))
        try:
            downloaded: bytes = client.bucket(BUCKET).blob(key).download_as_bytes()
        finally:
            client.close()
        return downloaded
    from azure.storage.blob import BlobServiceClient

    account_key = federation.paths.azurite_key.read_text(encoding="utf-8").strip()
    account_url = federation.endpoint("azure-blob")
    credential = {
        "account_name": account_url.rstrip("/").rpartition("/")[2],
        "account_key": account_key,
    }
    with BlobServiceClient(account_url, credential=credential) as service:
        blob = service.get_blob_client(BUCKET, key)
        content: bytes = blob.download_blob().readall()
    return content


# --- dev up ---------------------------------------------------------------------------


def test_up_writes_endpoint_files(federation: Federation) -> None:
    paths = federation.paths
    started = federation.outputs[0]

    for service in SERVICES:
        url = federation.endpoint(service)
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1", url
        assert parts.scheme == ("https" if service == "azure-keyvault" else "http")
        assert f"{service:<15} {url}" in started
    x509.load_pem_x509_certificate(paths.keyvault_ca.read_bytes())
    for secret in (paths.keyvault_token, paths.azurite_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_text(encoding="utf-8").strip()) >= 32
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700


def test_up_listens_on_loopback_only(federation: Federation) -> None:
    pid = federation.pid()
    sockets = [
        listening
        for member in process_tree(pid)
        for listening in listening_sockets(member)
    ]
    ports = {port for _, port in sockets}

    # Two moto servers, the KMS and S3 proxies, the Cloud KMS and Cloud Storage
    # fakes, the Key Vault fake, Azurite and its proxy.
    assert len(sockets) >= 9, sockets
    for address, port in sockets:
        assert ipaddress.ip_address(address).is_loopback, (address, port)
    for service in SERVICES:
        assert port_of(federation.endpoint(service)) in ports, service


def test_up_twice_keeps_services(federation: Federation) -> None:
    pid = federation.pid()
    before = {service: federation.endpoint(service) for service in SERVICES}

    again = federation.run("dev", "up")

    assert again.returncode == 0, output_of(again)
    assert f"already running (pid {pid})" in again.stdout
    assert federation.pid() == pid
    assert {service: federation.endpoint(service) for service in SERVICES} == before


def test_status_while_running(federation: Federation) -> None:
    result = federation.run("dev", "status")

    assert result.returncode == 0, output_of(result)
    assert f"running as process {federation.pid()}" in result.stdout
    assert result.stdout.count(" responds") == len(SERVICES)


def test_status_skips_edited_endpoint(federation: Federation) -> None:
    endpoint = federation.paths.endpoint("s3")
    original = endpoint.read_text(encoding="utf-8")
    # 0.0.0.0 is not a loopback address, yet a connection to it stays on this
    # machine, so no request leaves it whatever dev status does.
    edited = f"http://0.0.0.0:{port_of(original.strip())}"
    endpoint.write_text(f"{edited}\n", encoding="utf-8")
    try:
        result = federation.run("dev", "status")
    finally:
        endpoint.write_text(original, encoding="utf-8")

    assert result.returncode == 1, output_of(result)
    assert f"{edited}  not a loopback address, so not contacted" in result.stdout


def test_other_file_same_directory_rejected(federation: Federation) -> None:
    pid = federation.pid()
    shutil.copy(federation.config, federation.directory / "other.yaml")
    results = {
        command: subprocess.run(
            [sys.executable, "-m", "pkifed", "dev", command, "-c", "other.yaml"],
            cwd=federation.directory,
            env=federation.environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        for command in ("up", "down", "status")
    }

    for command, result in results.items():
        assert result.returncode == 1, (command, output_of(result))
        assert "belongs to the local services of multicloud.yaml" in result.stderr
        assert "pkifed dev down -c multicloud.yaml" in result.stderr
    assert is_running(pid, federation.paths)
    assert federation.pid() == pid
    for service in SERVICES:
        assert federation.paths.endpoint(service).exists(), service


def test_pid_of_other_directory_stale(federation: Federation, tmp_path: Path) -> None:
    # The pid file of another directory names this module's dev process, as
    # when a stale pid is reused. Those services use another .pkifed/dev.
    shutil.copy(federation.config, tmp_path / "multicloud.yaml")
    paths = DevPaths.beside(tmp_path / "multicloud.yaml")
    paths.root.mkdir(parents=True)
    paths.pid_file.write_text(f"{federation.pid()}\n", encoding="utf-8")
    results = {
        command: subprocess.run(
            [sys.executable, "-m", "pkifed", "dev", command, "-c", "multicloud.yaml"],
            cwd=tmp_path,
            env=federation.environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        for command in ("status", "down")
    }

    assert results["status"].returncode == 3, output_of(results["status"])
    assert results["down"].returncode == 0, output_of(results["down"])
    assert not paths.root.exists()
    assert is_running(federation.pid(), federation.paths)


def test_hints_quote_paths(federation: Federation) -> None:
    shutil.copy(federation.config, federation.directory / "other.yaml")
    name = federation.directory.name

    result = subprocess.run(
        [sys.executable, "-m", "pkifed", "dev", "up", "-c", f"{name}/other.yaml"],
        cwd=federation.directory.parent,
        env=federation.environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert " " in name
    assert result.returncode == 1, output_of(result)
    assert f"pkifed dev down -c '{name}/multicloud.yaml'" in result.stderr


# --- the example on top ---------------------------------------------------------------


def test_apply_converges(
    federation: Federation, applied: subprocess.CompletedProcess[str]
) -> None:
    planned = federation.run("plan", "--detailed-exitcode")

    assert "[ok] create-key authority issuing-aws" in applied.stdout
    assert "0 failed or skipped, 0 blocked, 0 waiting" in applied.stdout
    assert planned.returncode == 0, output_of(planned)
    assert "No changes" in planned.stdout


def test_trust_bundle_same_on_targets(
    federation: Federation, applied: subprocess.CompletedProcess[str]
) -> None:
    copies = {target: read_trust_bundle(federation, target) for target in TARGETS}
    root = x509.load_pem_x509_certificate(copies["files"])

    for target in TARGETS:
        assert copies[target] == copies["files"], target
    assert root.subject == root.issuer
    assert "pkifed Multicloud Root CA" in root.subject.rfc4514_string()


def test_issued_certificates_verify_offline(
    federation: Federation, applied: subprocess.CompletedProcess[str]
) -> None:
    out = federation.directory / "out" / "multicloud"
    root = x509.load_pem_x509_certificate((out / "trust.pem").read_bytes())
    root_crl = x509.load_der_x509_crl((out / "root.crl").read_bytes())

    assert root_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    for name in ISSUING:
        verified = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-CAfile",
                "trust.pem",
                f"{name}.pem",
            ],
            cwd=out,
            capture_output=True,
            text=True,
            check=False,
        )
        issuing = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        crl = x509.load_der_x509_crl((out / f"{name}.crl").read_bytes())

        assert verified.returncode == 0, verified.stdout + verified.stderr
        issuing.verify_directly_issued_by(root)
        assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
        assert crl.issuer == issuing.subject


def test_report_lists_four_providers(
    federation: Federation, applied: subprocess.CompletedProcess[str]
) -> None:
    result = federation.run("report", "--format", "json")
    html = federation.directory / "report.html"
    written = federation.run("report", "--format", "html", "-o", str(html))
    document: dict[str, Any] = json.loads(result.stdout)
    providers = {entry["name"] for entry in document["providers"]}
    schemes = {
        entry["name"]: entry["key_uri"].partition(":")[0]
        for entry in document["authorities"]
    }

    assert result.returncode == 0, output_of(result)
    assert written.returncode == 0, output_of(written)
    assert providers == {"hsm", "aws", "gcp", "azure"}
    assert schemes == {
        "root": "pkcs11",
        "issuing-aws": "awskms",
        "issuing-gcp": "cloudkms",
        "issuing-azure": "azurekms",
    }
    assert "<html" in html.read_text(encoding="utf-8")


# --- dev down and failures ------------------------------------------------------------


def test_down_up_apply_cycle(
    federation: Federation, applied: subprocess.CompletedProcess[str]
) -> None:
    pid = federation.pid()
    tree = process_tree(pid)
    ports = [port_of(federation.endpoint(service)) for service in SERVICES]

    stopped = federation.run("dev", "down")
    after_down = federation.run("dev", "status")
    again = federation.run("dev", "down")
    started = federation.run("dev", "up")
    reapplied = federation.run("apply")
    planned = federation.run("plan", "--detailed-exitcode")

    assert stopped.returncode == 0, output_of(stopped)
    assert f"Stopped process {pid}." in stopped.stdout
    assert "multicloud.db" in stopped.stdout
    assert not is_running(pid, federation.paths)
    for member in tree:
        assert not Path(f"/proc/{member}/fd").exists(), member
    for port in ports:
        assert refuses_connections(port), port
    assert after_down.returncode == 3, output_of(after_down)
    assert again.returncode == 0, output_of(again)
    assert "No local services are running" in again.stdout
    assert "Nothing to remove." in again.stdout
    assert started.returncode == 0, output_of(started)
    assert federation.pid() != pid
    assert reapplied.returncode == 0, output_of(reapplied)
    assert planned.returncode == 0, output_of(planned)


def test_stale_pid_file_replaced(federation: Federation) -> None:
    stopped = federation.run("dev", "down")
    dead_pid = _dead_pid()
    federation.paths.root.mkdir(parents=True)
    federation.paths.pid_file.write_text(f"{dead_pid}\n", encoding="utf-8")
    (federation.paths.root / "multicloud.db").write_bytes(b"left by a crash")

    status = federation.run("dev", "status")
    started = federation.run("dev", "up")

    assert stopped.returncode == 0, output_of(stopped)
    assert status.returncode == 3, output_of(status)
    assert f"process {dead_pid}, now gone" in status.stdout
    assert started.returncode == 0, output_of(started)
    assert f"names process {dead_pid}, which is no longer running" in started.stdout
    assert "multicloud.db" in started.stdout
    assert federation.pid() != dead_pid
    assert is_running(federation.pid(), federation.paths)


def test_concurrent_up_starts_once(federation: Federation) -> None:
    stopped = federation.run("dev", "down")
    command = [sys.executable, "-m", "pkifed", "dev", "up", "-c", "multicloud.yaml"]
    starting = [
        subprocess.Popen(
            command,
            cwd=federation.directory,
            env=federation.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=240)[0] for process in starting]
    federation.outputs.extend(outputs)
    status = federation.run("dev", "status")

    assert stopped.returncode == 0, output_of(stopped)
    for process, output in zip(starting, outputs, strict=True):
        assert process.returncode == 0, output
    assert sum("Local services running as process" in text for text in outputs) == 1
    assert _serve_processes(federation) == [federation.pid()]
    assert status.returncode == 0, output_of(status)
    for output in outputs:
        for service in SERVICES:
            assert f"{service:<15} {federation.endpoint(service)}" in output, output


def test_killed_services_leave_nothing(federation: Federation) -> None:
    # SIGKILL gives dev serve no chance to stop Azurite, its child process.
    first = _kill_services(federation)
    status = federation.run("dev", "status")
    started = federation.run("dev", "up")
    second = _kill_services(federation)
    stopped = federation.run("dev", "down")

    assert first, "the dev process had no child process"
    assert status.returncode == 3, output_of(status)
    for member in first:
        assert f"process {member} " in status.stdout, output_of(status)
    assert started.returncode == 0, output_of(started)
    assert stopped.returncode == 0, output_of(stopped)
    for member in first | second:
        assert not _alive(member), member
    assert not federation.paths.root.exists()


def test_dead_azurite_reported(federation: Federation) -> None:
    started = federation.run("dev", "up")
    assert started.returncode == 0, output_of(started)
    # While dev serve runs, the only process with its --location is its Azurite.
    [azurite] = leftover_processes(federation.paths)
    os.kill(azurite, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(azurite) and time.monotonic() < deadline:
        time.sleep(0.05)

    status = federation.run("dev", "status")
    again = federation.run("dev", "up")
    stopped = federation.run("dev", "down")
    restarted = federation.run("dev", "up")

    assert status.returncode == 1, output_of(status)
    [blob] = [line for line in status.stdout.splitlines() if "azure-blob" in line]
    assert "not responding (" in blob
    assert again.returncode != 0, output_of(again)
    assert "these do not respond: azure-blob" in again.stderr, output_of(again)
    assert "pkifed dev down -c" in again.stderr
    assert "Traceback" not in again.stderr
    assert stopped.returncode == 0, output_of(stopped)
    assert restarted.returncode == 0, output_of(restarted)


def test_up_waits_for_starting_services(federation: Federation) -> None:
    stopped = federation.run("dev", "down")
    # A dev up killed once the pid file exists leaves its services starting.
    first = subprocess.Popen(
        [sys.executable, "-m", "pkifed", "dev", "up", "-c", "multicloud.yaml"],
        cwd=federation.directory,
        env=federation.environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not federation.paths.pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()
    first.wait()

    again = federation.run("dev", "up")

    assert stopped.returncode == 0, output_of(stopped)
    assert again.returncode == 0, output_of(again)
    for service in SERVICES:
        assert federation.paths.endpoint(service).exists(), output_of(again)
        assert f"{service:<15} {federation.endpoint(service)}" in again.stdout


def _kill_services(federation: Federation) -> set[int]:
    """SIGKILL the dev process; return the processes it leaves running."""
    pid = federation.pid()
    tree = process_tree(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while is_running(pid, federation.paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(pid, federation.paths)
    return {member for member in tree - {pid} if _alive(member)}


def _alive(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_failed_service_stops_others(federation: Federation, tmp_path: Path) -> None:
    stopped = federation.run("dev", "down")
    broken = tmp_path / "azurite-blob"
    broken.write_text(
        "#!/bin/sh\necho 'simulated Azurite failure' >&2\nexit 1\n", encoding="utf-8"
    )
    broken.chmod(0o755)
    environment = {**federation.environment, "PKIFED_AZURITE": str(broken)}

    result = federation.run("dev", "up", environment=environment)
    # The log names every service that started before Azurite failed, and
    # dev up may have printed fewer of them before it saw the failure.
    log = federation.paths.log_file.read_text(encoding="utf-8")
    started = re.findall(STARTED_LINE, log)

    assert stopped.returncode == 0, output_of(stopped)
    assert result.returncode == 1, output_of(result)
    assert "azure-blob: azurite exited during startup" in result.stderr
    assert "simulated Azurite failure" in result.stderr
    assert "were stopped" in result.stderr
    assert [service for service, _ in started] == list(SERVICES[:-1]), log
    for service, port in started:
        assert refuses_connections(int(port)), service
    assert not federation.paths.pid_file.exists()
    assert not federation.paths.endpoints.exists()
    assert _serve_processes(federation) == []


def test_missing_moto_clear_error(federation: Federation, tmp_path: Path) -> None:
    stopped = federation.run("dev", "down")
    shadow = tmp_path / "shadow" / "moto"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError('moto is hidden by a test')\n", encoding="utf-8"
    )
    environment = {**federation.environment, "PYTHONPATH": str(shadow.parent)}

    result = federation.run("dev", "up", environment=environment)

    assert stopped.returncode == 0, output_of(stopped)
    assert result.returncode == 1, output_of(result)
    assert "aws-kms" in result.stderr
    assert "moto is hidden by a test" in result.stderr
    assert "pkifed[dev]" in result.stderr
    assert _serve_processes(federation) == []


def test_missing_node_clear_error(federation: Federation, tmp_path: Path) -> None:
    stopped = federation.run("dev", "down")
    environment = {**federation.environment, "PATH": str(tmp_path)}

    result = federation.run("dev", "up", environment=environment)

    assert stopped.returncode == 0, output_of(stopped)
    assert result.returncode == 1, output_of(result)
    assert "Node.js" in result.stderr
    assert "PKIFED_EXTRAS=dev bash scripts/setup.sh" in result.stderr
    assert not federation.paths.pid_file.exists()


def test_down_when_nothing_runs(federation: Federation) -> None:
    federation.run("dev", "down")

    result = federation.run("dev", "down")

    assert result.returncode == 0, output_of(result)
    assert "No local services are running" in result.stdout
    assert "Nothing to remove." in result.stdout


def test_up_invalid_yaml_names_line(tmp_path: Path) -> None:
    if azurite_command() is None:
        pytest.skip("pkifed dev needs Azurite, which needs Node.js and npm")
    (tmp_path / "broken.yaml").write_text("targets: [\n", encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "pkifed", "dev", "up", "-c", "broken.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 1, output_of(result)
    assert "broken.yaml: invalid YAML: line 2, column 1" in result.stderr
    assert not (tmp_path / ".pkifed").exists()


def _serve_processes(federation: Federation) -> list[int]:
    """Return the ids of live dev processes of this federation file."""
    marker = str(federation.config).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"serve" in arguments and marker in arguments and state != "Z":
            found.append(int(entry.name))
    return found


def test_no_secret_in_outputs(federation: Federation) -> None:
    # Runs last, so it checks every output, log and secret of the module.
    federation.run("report", "--format", "html", "-o", "report.html")
    texts = [*federation.outputs, (federation.directory / "report.html").read_text()]
    secrets = {"HSM PIN": HSM_PIN, **federation.secrets}

    assert len(secrets) >= 3
    for label, secret in secrets.items():
        for text in texts:
            assert secret not in text, label

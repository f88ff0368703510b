"""One federation across all five providers and all four target types, end to end.

The root's key is in SoftHSM2, the intermediate's in the local keystore, and
one issuing CA in each cloud's local service (moto's KMS, the Cloud KMS fake,
the Key Vault fake). Bundles and chains go to a directory, S3 (moto), Cloud
Storage (the generation-honouring fake) and Azure Blob (Azurite, left out when
Node.js is missing). pkifed runs as a separate process, and every result is
read back through each service's own client or checked with openssl.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.harness.federation import (
    AZURITE_MISSING,
    SECRETS,
    URI_SCHEMES,
    VAULT_TOKEN,
    FederationDirectory,
    LocalServices,
    local_services,
    output_of,
)
from tests.harness.gcs_storage import PROJECT
from tests.harness.moto_service import key_id_of
from tests.harness.softhsm import require_softhsm

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]

PROVIDERS = {
    "hsm": "pkcs11",
    "disk": "local",
    "aws": "aws-kms",
    "gcp": "gcp-kms",
    "azure": "azure-keyvault",
}
# Authority, parent, provider, key algorithm and the protection level the
# provider reports for the keys pkifed creates with the harness's settings.
AUTHORITIES = (
    ("root", None, "hsm", "ec-p384", "hsm"),
    ("intermediate", "root", "disk", "ec-p384", "software"),
    ("issuing-aws", "intermediate", "aws", "ec-p256", "hsm"),
    ("issuing-gcp", "intermediate", "gcp", "rsa-3072", "software"),
    ("issuing-azure", "intermediate", "azure", "ec-p256", "hsm"),
)
# Validity and path length by authority. Issuing CAs get ISSUING_LEVEL.
LEVELS = {"root": ("20y", 2), "intermediate": ("10y", 1)}
ISSUING_LEVEL = ("5y", 0)
CLOUDS = ("aws", "gcp", "azure")
ISSUING = tuple(f"issuing-{cloud}" for cloud in CLOUDS)
OBJECT_STORES = {"s3": "s3", "gcs": "gcs", "blob": "azure-blob"}
OBJECTS = (
    "trust.pem",
    "trust-p7.p7b",
    *(f"{name}.pem" for name in ISSUING),
    *(f"{name}-chain.pem" for name in ISSUING),
)


@pytest.fixture(scope="module")
def services() -> Iterator[LocalServices]:
    require_softhsm()
    with local_services() as running:
        yield running


def build_federation(directory: Path, services: LocalServices) -> FederationDirectory:
    federation = FederationDirectory(directory, services)
    for name, provider_type in PROVIDERS.items():
        federation.add_provider(name, provider_type)

    targets = ["out"]
    federation.add_target("out", "file")
    for name, target_type in OBJECT_STORES.items():
        if target_type == "azure-blob" and services.azurite is None:
            continue
        federation.add_target(name, target_type)
        targets.append(name)

    for name, parent, provider, algorithm, _ in AUTHORITIES:
        validity, path_length = LEVELS.get(name, ISSUING_LEVEL)
        entry: dict[str, Any] = {
            "provider": provider,
            "key": algorithm,
            "subject": f"CN=Federation {name},O=pkifed Example",
            "validity": validity,
            "path_length": path_length,
        }
        if parent is not None:
            entry["parent"] = parent
        if name in ISSUING:
            entry["publish"] = targets
        federation.document["authorities"][name] = entry
    federation.document["bundles"] = {
        "trust": {"authorities": ["root"], "targets": targets},
        "trust-p7": {
            "authorities": ["root", "intermediate"],
            "targets": targets,
            "format": "pkcs7",
        },
    }
    return federation


class Converged:
    """The module's federation after its first apply, and what pkifed printed."""

    def __init__(self, directory: Path, services: LocalServices) -> None:
        self.federation = build_federation(directory, services)
        self.applied = self.federation.run("apply")
        self.planned = self.federation.run("plan", "--detailed-exitcode")
        report = self.federation.report()
        self.authorities = {entry["name"]: entry for entry in report["authorities"]}


@pytest.fixture(scope="module")
def converged(
    services: LocalServices, tmp_path_factory: pytest.TempPathFactory
) -> Converged:
    return Converged(tmp_path_factory.mktemp("e2e"), services)


def test_apply_converges_once(converged: Converged) -> None:
    applied = converged.applied
    targets = len(converged.federation.document["targets"])
    done = [line for line in applied.stdout.splitlines() if "[ok]" in line]

    assert applied.returncode == 0, output_of(applied)
    assert "FAILED" not in applied.stdout
    # Five keys, five certificates and every object on every target.
    assert len(done) == 5 + 5 + len(OBJECTS) * targets, output_of(applied)
    assert converged.planned.returncode == 0, output_of(converged.planned)
    assert "No changes" in converged.planned.stdout


def test_apply_output_hides_secrets(converged: Converged) -> None:
    for result in (converged.applied, converged.planned):
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("target", sorted(OBJECT_STORES))
def test_objects_identical_on_target(converged: Converged, target: str) -> None:
    federation = converged.federation
    if target not in federation.document["targets"]:
        pytest.skip(AZURITE_MISSING)

    for object_name in OBJECTS:
        expected = federation.read_object("out", object_name)
        assert federation.read_object(target, object_name) == expected, object_name


@pytest.mark.parametrize("authority", ISSUING)
def test_chain_verifies_with_openssl(converged: Converged, authority: str) -> None:
    out = Path(converged.federation.document["targets"]["out"]["path"])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(out / "trust.pem"),
            "-untrusted",
            str(out / f"{authority}-chain.pem"),
            str(out / f"{authority}.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    chain = x509.load_pem_x509_certificates(
        (out / f"{authority}-chain.pem").read_bytes()
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
    assert len(chain) == 3


def test_report_lists_every_authority(converged: Converged) -> None:
    entries = converged.authorities

    assert sorted(entries) == sorted(name for name, *_ in AUTHORITIES)
    for name, _, provider, _, protection in AUTHORITIES:
        scheme = URI_SCHEMES[PROVIDERS[provider]]
        assert entries[name]["provider_type"] == PROVIDERS[provider], name
        assert entries[name]["key_uri"].startswith(scheme), name
        assert entries[name]["protection_level"] == protection, name


def test_tampered_object_repaired(converged: Converged) -> None:
    federation = converged.federation
    original = federation.read_object("s3", "trust.pem")
    federation.services.s3.client().put_object(
        Bucket=federation.buckets["s3"],
        Key=f"{federation.prefix}/trust.pem",
        Body=original + b"tampered\n",
    )

    planned = federation.run("plan", "--detailed-exitcode")
    applied = federation.run("apply")
    again = federation.run("plan", "--detailed-exitcode")

    assert planned.returncode == 2, output_of(planned)
    assert re.search(r"publish\s+target s3: trust\.pem: drifted", planned.stdout)
    assert len(re.findall(r"^\s+publish", planned.stdout, re.MULTILINE)) == 1
    assert applied.returncode == 0, output_of(applied)
    assert federation.read_object("s3", "trust.pem") == original
    assert again.returncode == 0, output_of(again)


def disable(services: LocalServices, provider: str, uri: str) -> None:
    if provider == "aws":
        services.kms.disable_key(uri)
    elif provider == "gcp":
        services.cloud_kms.disable_key(uri)
    else:
        services.key_vault.disable_key(uri)


def enable(services: LocalServices, provider: str, uri: str) -> None:
    """Enable a key again through each service's own API."""
    if provider == "aws":
        services.kms.client(direct=True).enable_key(KeyId=key_id_of(uri))
    elif provider == "gcp":
        client = gcp_client(services)
        version = client.get_crypto_key_version(name=uri.removeprefix("cloudkms:"))
        version.state = version.CryptoKeyVersionState.ENABLED
        client.update_crypto_key_version(
            crypto_key_version=version, update_mask={"paths": ["state"]}
        )
    else:
        from pkifed.providers.azure import parse_key_uri

        parsed = parse_key_uri(uri)
        services.key_vault.set_enabled(parsed.name, parsed.version, enabled=True)


class StaticToken:
    """An azure-core credential that returns the Key Vault fake's token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(VAULT_TOKEN, int(time.time()) + 3600)


def key_vault_client(services: LocalServices) -> Any:
    from azure.keyvault.keys import KeyClient

    return KeyClient(
        services.key_vault.url,
        StaticToken(),
        connection_verify=str(services.key_vault.ca_bundle),
        verify_challenge_resource=False,
        retry_total=0,
    )


def gcp_client(services: LocalServices) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import kms

    return kms.KeyManagementServiceClient(
        transport="rest",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": services.cloud_kms.endpoint},
    )


def test_disabled_keys_blocked(converged: Converged) -> None:
    federation = converged.federation
    uris = {
        provider: converged.authorities[f"issuing-{provider}"]["key_uri"]
        for provider in CLOUDS
    }
    for provider, uri in uris.items():
        disable(federation.services, provider, uri)
    try:
        planned = federation.run("plan", "--json")
    finally:
        for provider, uri in uris.items():
            enable(federation.services, provider, uri)
    restored = federation.run("plan", "--detailed-exitcode")
    plan = json.loads(planned.stdout)
    problems = {p["object"]: p["message"] for p in plan["problems"]}

    assert planned.returncode == 1, output_of(planned)
    assert sorted(problems) == sorted(f"authority issuing-{c}" for c in CLOUDS)
    for provider, uri in uris.items():
        message = problems[f"authority issuing-{provider}"]
        assert f"key {uri} is disabled in provider {provider}" in message
        assert "does not replace it silently" in message
    # Nothing is created, issued or published in place of a disabled key.
    assert plan["actions"] == []
    assert restored.returncode == 0, output_of(restored)


# --- a killed apply -----------------------------------------------------------------


def apply_killed_after(federation: FederationDirectory, steps: int) -> int:
    """Run apply, SIGKILL it after ``steps`` progress lines; return lines seen."""
    federation.save()
    process = subprocess.Popen(
        federation.command("apply"),
        cwd=federation.directory,
        env=federation.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    seen = 0
    for line in process.stdout:
        if line.lstrip().startswith("[ok]"):
            seen += 1
            if seen == steps:
                process.send_signal(signal.SIGKILL)
                break
    process.stdout.close()
    process.wait(timeout=60)
    return seen


def service_key_versions(federation: FederationDirectory) -> dict[str, int]:
    """Count the federation's key versions in each cloud, through its own API.

    Providers list one version per key name, so their listings would hide a
    second version made by a repeated create. The services' APIs show it.
    """
    services = federation.services
    counts: dict[str, int] = {}

    client = services.kms.client(direct=True)
    listed = client.get_paginator("list_keys").paginate()
    for key in (key for page in listed for key in page["Keys"]):
        tags = client.list_resource_tags(KeyId=key["KeyId"])["Tags"]
        values = {t["TagKey"]: t["TagValue"] for t in tags}
        if values.get("pkifed:federation") == federation.name:
            name = f"aws/{values['pkifed:key-name']}"
            counts[name] = counts.get(name, 0) + 1

    kms = gcp_client(services)
    ring = f"projects/{PROJECT}/locations/global/keyRings/{federation.name}"
    for crypto_key in kms.list_crypto_keys(parent=ring):
        versions = list(kms.list_crypto_key_versions(parent=crypto_key.name))
        counts[f"gcp/{crypto_key.name.rpartition('/')[2]}"] = len(versions)

    vault = key_vault_client(services)
    for properties in vault.list_properties_of_keys():
        tags = properties.tags or {}
        if tags.get("pkifed-federation") == federation.name:
            versions = list(vault.list_properties_of_key_versions(properties.name))
            counts[f"azure/{tags['pkifed-key-name']}"] = len(versions)
    return counts


# Keys are created concurrently, so after three of them are reported others
# may still be in flight when the process dies.
KILL_AFTER_STEPS = 3


def test_killed_apply_resumes(services: LocalServices, tmp_path: Path) -> None:
    federation = build_federation(tmp_path, services)

    seen = apply_killed_after(federation, KILL_AFTER_STEPS)
    resumed = federation.run("apply")
    planned = federation.run("plan", "--detailed-exitcode")
    report = federation.report("--live")
    keys_by_provider = {
        p["name"]: [(k["authority"], k["status"]) for k in p["keys"]]
        for p in report["providers"]
    }

    assert seen == KILL_AFTER_STEPS
    assert resumed.returncode == 0, output_of(resumed)
    assert "Traceback" not in resumed.stderr
    assert planned.returncode == 0, output_of(planned)
    for name, _, provider, _, _ in AUTHORITIES:
        assert keys_by_provider[provider] == [(name, "current")], provider
    assert service_key_versions(federation) == {
        "aws/issuing-aws": 1,
        "gcp/issuing-gcp": 1,
        "azure/issuing-azure": 1,
    }

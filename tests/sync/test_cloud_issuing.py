"""The quickstart with its issuing CA moved into each cloud's local service.

Each case adds a provider for one local service (moto's KMS, the Cloud KMS fake
or the Key Vault fake) and changes one line of the example, the issuing CA's
``provider:``. The root stays in SoftHSM2. pkifed runs as a separate process,
and the result is checked with openssl and pyca, never with the service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from pkifed.providers.localservices.azure_keyvault import AzureKeyVaultFake
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from tests.harness.moto_service import MotoKms
from tests.harness.softhsm import SoftHsm, require_softhsm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
HSM_PIN = "cloud-issuing-pin-2718"
PASSPHRASE = "cloud-issuing-passphrase-3141"
VAULT_TOKEN = "cloud-issuing-vault-token-1618"


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, Any]]:
    with (
        MotoKms() as aws,
        FakeCloudKms() as gcp,
        AzureKeyVaultFake(expected_token=VAULT_TOKEN) as azure,
    ):
        yield {"aws": aws, "gcp": gcp, "azure": azure}


def cloud_provider(
    cloud: str, services: dict[str, Any], token_file: Path
) -> dict[str, Any]:
    if cloud == "aws":
        return {
            "type": "aws-kms",
            "region": "us-east-1",
            "endpoint_url": services["aws"].endpoint_url,
        }
    if cloud == "gcp":
        return {
            "type": "gcp-kms",
            "project": "pkifed-test",
            "location": "global",
            "endpoint": services["gcp"].endpoint,
        }
    vault: AzureKeyVaultFake = services["azure"]
    return {
        "type": "azure-keyvault",
        "vault_url": vault.url,
        "ca_bundle": str(vault.ca_bundle),
        "credential": "local-static",
        "local_token": f"${{file:{token_file}}}",
        "unsafe_skip_challenge_resource_check": True,
    }


def run_pkifed(
    *arguments: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkifed", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=180,
    )


@pytest.mark.softhsm
@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_issuing_ca_in_cloud(
    cloud: str, services: dict[str, Any], tmp_path: Path
) -> None:
    require_softhsm()
    softhsm = SoftHsm(tmp_path / "softhsm")
    softhsm.add_token("pkifed-quickstart", pin=HSM_PIN)
    secrets = tmp_path / ".pkifed"
    secrets.mkdir(mode=0o700)
    (secrets / "hsm-pin").write_text(HSM_PIN, encoding="utf-8")
    (secrets / "keystore-passphrase").write_text(PASSPHRASE, encoding="utf-8")
    token_file = secrets / "vault-token"
    token_file.write_text(VAULT_TOKEN, encoding="utf-8")

    # The provider block is added below the example, and exactly one line of
    # the example changes: the issuing CA's provider.
    original = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = [
        line.replace("provider: keystore", f"provider: {cloud}") for line in original
    ]
    assert sum(a != b for a, b in zip(original, changed, strict=True)) == 1
    document = yaml.safe_load("".join(changed))
    document["providers"][cloud] = cloud_provider(cloud, services, token_file)
    (tmp_path / "federation.yaml").write_text(
        yaml.safe_dump(document), encoding="utf-8"
    )

    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(softhsm.config),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    applied = run_pkifed("apply", "-c", "federation.yaml", env=env, cwd=tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    planned = run_pkifed(
        "plan", "-c", "federation.yaml", "--detailed-exitcode", env=env, cwd=tmp_path
    )
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            "out/trust.pem",
            "out/issuing.pem",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    issuing = x509.load_pem_x509_certificate(
        (tmp_path / "out" / "issuing.pem").read_bytes()
    )
    root = x509.load_pem_x509_certificate((tmp_path / "out" / "trust.pem").read_bytes())
    report = run_pkifed(
        "report", "-c", "federation.yaml", "--format", "json", env=env, cwd=tmp_path
    )

    checked = run_pkifed(
        "providers", "check", "-c", "federation.yaml", env=env, cwd=tmp_path
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert any(line.startswith(f"{cloud}: ok;") for line in checked.stdout.splitlines())
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    issuing.verify_directly_issued_by(root)
    prefix = {"aws": "awskms:", "gcp": "cloudkms:", "azure": "azurekms:"}[cloud]
    assert f'"key_uri": "{prefix}' in report.stdout
    for output in (applied, planned, report, checked):
        for secret in (HSM_PIN, PASSPHRASE, VAULT_TOKEN):
            assert secret not in output.stdout + output.stderr

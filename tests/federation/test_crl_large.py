"""A CRL of 10,000 entries, signed through every provider and published to targets.

pyca hashes the CRL's to-be-signed part itself, so each provider receives a
digest, whatever the CRL's size (services that sign raw messages cap them at
4,096 bytes). Each provider signs one CRL, which openssl then verifies against
the issuer certificate signed by the same key. The entries go straight into the
builder's constructor, so building stays linear in their number.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pkifed.federation.certificates import CaProfile, build_ca_certificate
from pkifed.federation.crl import RevokedSerial, build_crl, revoked_entry
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme
from pkifed.providers.aws import AwsKmsProvider, AwsKmsSettings
from pkifed.providers.azure import AzureKeyVaultProvider, AzureKeyVaultSettings
from pkifed.providers.base import KeyProvider, ProviderContext
from pkifed.providers.gcp import GcpKmsProvider, GcpKmsSettings
from pkifed.providers.local import LocalProvider, LocalSettings
from pkifed.providers.localservices.azure_keyvault import AzureKeyVaultFake
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from pkifed.providers.pkcs11 import Pkcs11Provider, Pkcs11Settings
from pkifed.providers.retry import RetrySettings
from pkifed.providers.targets.azure_blob import (
    AzureBlobTarget,
    AzureBlobTargetSettings,
)
from pkifed.providers.targets.base import PublishTarget
from pkifed.providers.targets.file import FileTarget, FileTargetSettings
from pkifed.providers.targets.gcs import GcsTarget, GcsTargetSettings
from pkifed.providers.targets.s3 import S3Target, S3TargetSettings
from tests.harness.azurite import ACCOUNT_KEY, Azurite, azurite_command
from tests.harness.gcs_storage import PROJECT, GenerationStore
from tests.harness.moto_service import MotoKms
from tests.harness.s3 import REGION, MotoS3
from tests.harness.softhsm import SoftHsm, SoftHsmToken, require_softhsm

ENTRIES = 10_000
FEDERATION = "crl-large"
RETRY = RetrySettings(attempts=3, base_delay=0.01, max_delay=0.02)
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
PIN_VARIABLE = "PKIFED_CRL_LARGE_PIN"
PASSPHRASE_VARIABLE = "PKIFED_CRL_LARGE_PASSPHRASE"
VAULT_TOKEN = "crl-large-vault-token"
AZURITE_KEY_VARIABLE = "PKIFED_CRL_LARGE_AZURITE_KEY"
PROVIDERS = [
    "local",
    pytest.param("pkcs11", marks=pytest.mark.softhsm),
    "aws-kms",
    "gcp-kms",
    "azure-keyvault",
]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    require_softhsm()
    with pytest.MonkeyPatch.context() as monkeypatch:
        hsm = SoftHsm(tmp_path_factory.mktemp("softhsm"), monkeypatch)
        created = hsm.add_token("pkifed-crl-large")
        hsm.activate()
        yield created


@pytest.fixture(scope="module")
def kms() -> Iterator[MotoKms]:
    with MotoKms() as service:
        yield service


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[FakeCloudKms]:
    with FakeCloudKms() as service:
        yield service


@pytest.fixture(scope="module")
def vault() -> Iterator[AzureKeyVaultFake]:
    with AzureKeyVaultFake(expected_token=VAULT_TOKEN) as service:
        yield service


@pytest.fixture
def secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kms: MotoKms
) -> dict[str, Path]:
    """Credentials for each provider, through environment variables and files."""
    monkeypatch.setenv(PASSPHRASE_VARIABLE, "crl-large-passphrase")
    for name, value in kms.client_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    token_file = tmp_path / "vault-token"
    token_file.write_text(VAULT_TOKEN, encoding="utf-8")
    return {"token_file": token_file}


def make_provider(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Build one provider of ``kind`` against its local service."""
    context = ProviderContext(kind, FEDERATION)
    retry = RETRY.model_dump()
    if kind == "local":
        local = LocalSettings.model_validate(
            {
                "type": "local",
                "path": str(tmp_path / "keys"),
                "passphrase": f"${{env:{PASSPHRASE_VARIABLE}}}",
            }
        )
        return LocalProvider(local, context)
    if kind == "pkcs11":
        token: SoftHsmToken = request.getfixturevalue("token")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv(PIN_VARIABLE, token.pin)
        hsm = Pkcs11Settings.model_validate(
            {
                "type": "pkcs11",
                "module": str(token.module),
                "token": token.label,
                "pin": f"${{env:{PIN_VARIABLE}}}",
                "retry": retry,
            }
        )
        return Pkcs11Provider(hsm, context)
    if kind == "aws-kms":
        kms: MotoKms = request.getfixturevalue("kms")
        aws = AwsKmsSettings(
            type="aws-kms",
            region=kms.region,
            endpoint_url=kms.endpoint_url,
            retry=RETRY,
        )
        return AwsKmsProvider(aws, context)
    if kind == "gcp-kms":
        cloud_kms: FakeCloudKms = request.getfixturevalue("cloud_kms")
        gcp = GcpKmsSettings.model_validate(
            {
                "type": "gcp-kms",
                "project": "pkifed-test",
                "location": "global",
                "endpoint": cloud_kms.endpoint,
                "retry": retry,
            }
        )
        return GcpKmsProvider(gcp, context)
    vault: AzureKeyVaultFake = request.getfixturevalue("vault")
    secrets: dict[str, Path] = request.getfixturevalue("secrets")
    azure = AzureKeyVaultSettings.model_validate(
        {
            "type": "azure-keyvault",
            "vault_url": vault.url,
            "ca_bundle": str(vault.ca_bundle),
            "credential": "local-static",
            "local_token": f"${{file:{secrets['token_file']}}}",
            "unsafe_skip_challenge_resource_check": True,
            "retry": retry,
        }
    )
    return AzureKeyVaultProvider(azure, context)


def issuer_certificate(signer: Any, scheme: SignatureScheme) -> x509.Certificate:
    name = x509.Name.from_rfc4514_string("CN=Large CRL Issuer,O=Example")
    profile = CaProfile(name, datetime.timedelta(days=30), None, None, scheme)
    return build_ca_certificate(
        profile,
        signer.public_key(),
        issuer=None,
        self_signing_key=signer,
        now=NOW,
        backdate=datetime.timedelta(minutes=5),
    )


def large_crl(
    issuer: x509.Certificate, signer: Any, scheme: SignatureScheme
) -> x509.CertificateRevocationList:
    reasons = [
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.superseded,
        x509.ReasonFlags.cessation_of_operation,
        x509.ReasonFlags.unspecified,
    ]
    entries = [
        revoked_entry(
            RevokedSerial(
                (index + 1) * 7919 + (1 << 120),
                NOW - datetime.timedelta(seconds=index),
                reasons[index % len(reasons)],
            )
        )
        for index in range(ENTRIES)
    ]
    return build_crl(
        issuer,
        signer,
        scheme,
        number=42,
        this_update=NOW,
        next_update=NOW + datetime.timedelta(days=7),
        revoked=entries,
    )


def openssl_verify(issuer: x509.Certificate, crl_der: bytes, directory: Path) -> str:
    """Run ``openssl crl -verify`` on a DER CRL and return its combined output."""
    (directory / "issuer.pem").write_bytes(
        issuer.public_bytes(serialization.Encoding.PEM)
    )
    (directory / "large.crl").write_bytes(crl_der)
    result = subprocess.run(
        [
            "openssl",
            "crl",
            "-verify",
            "-noout",
            "-inform",
            "DER",
            "-in",
            "large.crl",
            "-CAfile",
            "issuer.pem",
        ],
        capture_output=True,
        text=True,
        cwd=directory,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("kind", PROVIDERS)
def test_large_crl_signs(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    secrets: dict[str, Path],
) -> None:
    provider: KeyProvider = make_provider(kind, request, tmp_path)
    try:
        info = provider.find_or_create_key(f"issuer-{kind}", KeyAlgorithm.EC_P256)
        signer = provider.private_key(info.uri)
        scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
        issuer = issuer_certificate(signer, scheme)
        crl = large_crl(issuer, signer, scheme)
    finally:
        provider.close()
    der = crl.public_bytes(serialization.Encoding.DER)

    assert len(crl) == ENTRIES
    assert len(crl.tbs_certlist_bytes) > 4096
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    assert "verify OK" in openssl_verify(issuer, der, tmp_path)


# --- publishing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[x509.Certificate, bytes]:
    """One large CRL signed by a local key, with its issuer."""
    directory = tmp_path_factory.mktemp("signed")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(PASSPHRASE_VARIABLE, "crl-large-passphrase")
        settings = LocalSettings.model_validate(
            {
                "type": "local",
                "path": str(directory / "keys"),
                "passphrase": f"${{env:{PASSPHRASE_VARIABLE}}}",
            }
        )
        provider = LocalProvider(settings, ProviderContext("local", FEDERATION))
        info = provider.find_or_create_key("issuer", KeyAlgorithm.EC_P384)
        signer = provider.private_key(info.uri)
        scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P384)
        issuer = issuer_certificate(signer, scheme)
        crl = large_crl(issuer, signer, scheme)
        provider.close()
    return issuer, crl.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as service:
        yield service


@pytest.fixture(scope="module")
def gcs() -> Iterator[GenerationStore]:
    service = GenerationStore()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    if azurite_command() is None:
        pytest.skip("Azurite needs Node.js and npm; scripts/setup.sh installs Azurite")
    service = Azurite()
    service.start()
    yield service
    service.stop()


def make_target(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> PublishTarget:
    """Build one publish target of ``kind`` against its local service."""
    if kind == "file":
        settings = FileTargetSettings(type="file", path=str(tmp_path / "out"))
        return FileTarget("out", settings, tmp_path)
    if kind == "s3":
        s3: MotoS3 = request.getfixturevalue("s3")
        for name, value in s3.client_environment().items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        bucket = s3.create_bucket()
        s3_settings = S3TargetSettings(
            type="s3",
            bucket=bucket,
            prefix="crl",
            region=REGION,
            endpoint_url=s3.endpoint_url,
            retry=RETRY,
        )
        return S3Target("bucket", s3_settings, None)
    if kind == "gcs":
        gcs: GenerationStore = request.getfixturevalue("gcs")
        gcs_settings = GcsTargetSettings(
            type="gcs",
            bucket=gcs.create_bucket(),
            prefix="crl",
            project=PROJECT,
            endpoint=gcs.endpoint,
            retry=RETRY,
            timeout=5,
        )
        return GcsTarget("objects", gcs_settings, None)
    azurite: Azurite = request.getfixturevalue("azurite")
    monkeypatch.setenv(AZURITE_KEY_VARIABLE, ACCOUNT_KEY)
    azure_settings = AzureBlobTargetSettings.model_validate(
        {
            "type": "azure-blob",
            "account_url": azurite.account_url,
            "container": azurite.create_container(),
            "prefix": "crl",
            "account_key": f"${{env:{AZURITE_KEY_VARIABLE}}}",
            "retry": RETRY,
            "connect_timeout": 2,
            "read_timeout": 10,
        }
    )
    return AzureBlobTarget("blobs", azure_settings, None)


@pytest.mark.parametrize("kind", ["file", "s3", "gcs", "azure-blob"])
def test_large_crl_published(
    kind: str,
    signed: tuple[x509.Certificate, bytes],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer, der = signed
    target = make_target(kind, request, tmp_path, monkeypatch)
    try:
        target.publish("issuer.crl", der)
        stored = target.read("issuer.crl")
    finally:
        target.close()

    assert len(der) > 300_000
    assert stored is not None
    assert stored.data == der
    assert "verify OK" in openssl_verify(issuer, stored.data, tmp_path)

"""Tests of the aws-kms provider against moto's KMS server behind the harness proxy."""

from __future__ import annotations

import datetime
import hashlib
import logging
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    RsaPadding,
    SignatureScheme,
)
from pkifed.providers.aws import (
    LOOPBACK_ACCESS_KEY_ID,
    TAG_FEDERATION,
    TAG_KEY_NAME,
    AwsKmsProvider,
    AwsKmsSettings,
    format_key_uri,
    map_error,
    parse_key_uri,
    placeholder_credentials,
)
from pkifed.providers.base import KeyState, ProtectionLevel, ProviderContext
from pkifed.providers.retry import RetrySettings
from tests.harness.aws_credentials import TRAP_ACCESS_KEY_ID, install_credential_trap
from tests.harness.moto_service import MotoKms
from tests.providers.conformance import (
    ProviderConformance,
    ProviderHarness,
    unique_name,
)

RETRY = RetrySettings(attempts=3, base_delay=0.001, max_delay=0.005)
ALGORITHMS = [
    KeyAlgorithm.EC_P256,
    KeyAlgorithm.EC_P384,
    KeyAlgorithm.EC_P521,
    KeyAlgorithm.RSA_2048,
]
KEY_SPECS = {
    KeyAlgorithm.EC_P256: "ECC_NIST_P256",
    KeyAlgorithm.EC_P384: "ECC_NIST_P384",
    KeyAlgorithm.EC_P521: "ECC_NIST_P521",
    KeyAlgorithm.RSA_2048: "RSA_2048",
}
# Distinctive fake credentials, so a leak into a message or a log is detectable.
LEAK_ACCESS_KEY = "AKIAPKIFEDLEAKCHECK1"
LEAK_SECRET = "pkifed-secret-access-key-must-not-leak"


@pytest.fixture(scope="module")
def kms() -> Iterator[MotoKms]:
    service = MotoKms()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def aws_env(kms: MotoKms, monkeypatch: pytest.MonkeyPatch) -> MotoKms:
    """Point boto3's credential chain at the fake credentials only."""
    for name, value in kms.client_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    kms.clear()
    return kms


@pytest.fixture
def federation() -> str:
    return unique_name("fed")


def make_provider(kms: MotoKms, federation: str, **overrides: Any) -> AwsKmsProvider:
    fields: dict[str, Any] = {
        "type": "aws-kms",
        "region": kms.region,
        "endpoint_url": kms.endpoint_url,
        "retry": RETRY,
    }
    fields.update(overrides)
    settings = AwsKmsSettings(**fields)
    return AwsKmsProvider(settings, ProviderContext("aws-test", federation))


@pytest.fixture
def provider(aws_env: MotoKms, federation: str) -> Iterator[AwsKmsProvider]:
    created = make_provider(aws_env, federation)
    yield created
    created.close()
    aws_env.clear()


def create_foreign_key(
    kms: MotoKms, algorithm: KeyAlgorithm, usage: str = "SIGN_VERIFY"
) -> str:
    """Create a key the way another team would: with an alias of its own."""
    client = kms.client()
    created = client.create_key(KeySpec=KEY_SPECS[algorithm], KeyUsage=usage)
    created_id = created["KeyMetadata"]["KeyId"]
    client.create_alias(AliasName=f"alias/team-x/{created_id}", TargetKeyId=created_id)
    return format_key_uri(created_id, kms.region)


def key_id(uri: str) -> str:
    return parse_key_uri(uri)[0]


def tagged_keys(kms: MotoKms, federation: str, key_name: str) -> list[str]:
    """Every key carrying this federation's tags for ``key_name``."""
    client = kms.client(direct=True)
    found = []
    for key in client.list_keys(Limit=1000)["Keys"]:
        tags = client.list_resource_tags(KeyId=key["KeyId"])["Tags"]
        values = {tag["TagKey"]: tag["TagValue"] for tag in tags}
        if values.get(TAG_FEDERATION) == federation and (
            values.get(TAG_KEY_NAME) == key_name
        ):
            found.append(key["KeyId"])
    return found


class TestAwsKmsConformance(ProviderConformance):
    @pytest.fixture
    def harness(self, aws_env: MotoKms, federation: str) -> Iterator[ProviderHarness]:
        provider = make_provider(aws_env, federation)
        extra = [
            SignatureScheme(KeyAlgorithm.RSA_2048, name, pad)
            for name in (HashName.SHA384, HashName.SHA512)
            for pad in RsaPadding
        ]
        yield ProviderHarness(
            provider=provider,
            algorithms=ALGORITHMS,
            protection_level=ProtectionLevel.HSM,
            reopen=lambda: make_provider(aws_env, federation),
            create_foreign_key=lambda algorithm: create_foreign_key(aws_env, algorithm),
            faults=aws_env,
            extra_schemes=extra,
        )
        provider.close()
        aws_env.clear()


# --- names and crash safety ---------------------------------------------------------


def test_alias_layout(provider: AwsKmsProvider, kms: MotoKms, federation: str) -> None:
    info = provider.find_or_create_key("issuing-g2", KeyAlgorithm.EC_P256)
    client = kms.client(direct=True)
    aliases = {
        alias["AliasName"]: alias.get("TargetKeyId")
        for alias in client.list_aliases(KeyId=key_id(info.uri))["Aliases"]
    }
    tags = client.list_resource_tags(KeyId=key_id(info.uri))["Tags"]
    metadata = client.describe_key(KeyId=key_id(info.uri))["KeyMetadata"]

    assert aliases == {f"alias/pkifed/{federation}/issuing-g2": key_id(info.uri)}
    assert {"TagKey": TAG_FEDERATION, "TagValue": federation} in tags
    assert {"TagKey": TAG_KEY_NAME, "TagValue": "issuing-g2"} in tags
    assert metadata["KeyUsage"] == "SIGN_VERIFY"
    assert metadata["KeySpec"] == "ECC_NIST_P256"
    assert info.uri == f"awskms:key-id={key_id(info.uri)};region={kms.region}"


def test_crash_before_alias_no_second_key(
    provider: AwsKmsProvider, kms: MotoKms, federation: str
) -> None:
    # The first step of create_key alone is what a crash before CreateAlias
    # leaves behind.
    name = unique_name("crash")
    orphan = provider._create_unaliased(name, KeyAlgorithm.EC_P384)
    restarted = make_provider(kms, federation)
    try:
        found = restarted.find_key(name)
        recovered = restarted.find_or_create_key(name, KeyAlgorithm.EC_P384)
        again = restarted.find_or_create_key(name, KeyAlgorithm.EC_P384)
        listed = [k for k in restarted.list_keys() if k.name == name]
    finally:
        restarted.close()

    assert found is not None
    assert key_id(found.uri) == orphan["KeyId"]
    assert key_id(recovered.uri) == orphan["KeyId"]
    assert again.uri == recovered.uri
    assert tagged_keys(kms, federation, name) == [orphan["KeyId"]]
    assert [key_id(k.uri) for k in listed] == [orphan["KeyId"]]


def test_crash_orphan_disabled_not_reused(
    provider: AwsKmsProvider, kms: MotoKms, federation: str
) -> None:
    name = unique_name("crash")
    orphan = provider._create_unaliased(name, KeyAlgorithm.EC_P256)
    kms.disable_key(orphan["KeyId"])
    created = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)

    assert key_id(created.uri) != orphan["KeyId"]
    assert created.state is KeyState.ENABLED


def test_crash_orphan_other_algorithm(provider: AwsKmsProvider) -> None:
    name = unique_name("crash")
    provider._create_unaliased(name, KeyAlgorithm.EC_P256)

    with pytest.raises(UnsupportedAlgorithmError):
        provider.find_or_create_key(name, KeyAlgorithm.EC_P384)


def test_alias_race_keeps_first_key(provider: AwsKmsProvider, kms: MotoKms) -> None:
    name = unique_name("race")
    winner = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    loser = provider._create_unaliased(name, KeyAlgorithm.EC_P256)
    result = provider._attach_alias(name, loser)
    loser_state = kms.client(direct=True).describe_key(KeyId=loser["KeyId"])

    assert result.uri == winner.uri
    assert loser_state["KeyMetadata"]["KeyState"] == "PendingDeletion"


def test_key_name_outside_alias_rules(provider: AwsKmsProvider) -> None:
    with pytest.raises(ProviderPermanentError, match="cannot be used in a KMS alias"):
        provider.find_or_create_key("root.v2", KeyAlgorithm.EC_P256)


def test_federation_outside_alias_rules(aws_env: MotoKms) -> None:
    with pytest.raises(ProviderPermanentError, match="federation name"):
        make_provider(aws_env, "corp:prod")


# --- key URIs and descriptions --------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("awskms:key-id=1234abcd;region=eu-west-1", ("1234abcd", "eu-west-1")),
        ("awskms:key-id=1234abcd", ("1234abcd", None)),
        (
            "awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
            ("arn:aws:kms:eu-west-1:111122223333:key/1234abcd", "eu-west-1"),
        ),
    ],
)
def test_parse_key_uri(uri: str, expected: tuple[str, str | None]) -> None:
    assert parse_key_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
        "awskms:key-id=alias/pkifed/fed/root",
        "awskms:key-id=arn:aws:kms:eu-west-1:111122223333:alias/root",
        "awskms:region=eu-west-1",
        "awskms:key-id=1234abcd;profile=prod",
        "awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1;region=us-east-1",
    ],
)
def test_parse_key_uri_rejects(uri: str) -> None:
    with pytest.raises(ProviderPermanentError):
        parse_key_uri(uri)


def test_describe_other_region_rejected(provider: AwsKmsProvider) -> None:
    with pytest.raises(ProviderPermanentError, match="region eu-west-1"):
        provider.describe_key("awskms:key-id=1234abcd;region=eu-west-1")


def test_describe_missing_key(provider: AwsKmsProvider, kms: MotoKms) -> None:
    missing = format_key_uri(str(uuid.uuid4()), kms.region)

    with pytest.raises(KeyNotFoundError) as raised:
        provider.describe_key(missing)
    assert "NotFoundException" in str(raised.value)
    assert missing in str(raised.value)


def test_adopt_by_arn(provider: AwsKmsProvider, kms: MotoKms) -> None:
    uri = create_foreign_key(kms, KeyAlgorithm.RSA_2048)
    arn = kms.client().describe_key(KeyId=key_id(uri))["KeyMetadata"]["Arn"]
    adopted = provider.adopt_key(f"awskms:key-id={arn}", KeyAlgorithm.RSA_2048)

    assert adopted.uri == uri
    assert adopted.name is None


def test_adopt_untested_algorithm_rejected(provider: AwsKmsProvider) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match="ml-dsa-65"):
        provider.adopt_key("awskms:key-id=1234abcd", KeyAlgorithm.ML_DSA_65)


def test_adopt_encryption_key_rejected(provider: AwsKmsProvider, kms: MotoKms) -> None:
    uri = create_foreign_key(kms, KeyAlgorithm.RSA_2048, usage="ENCRYPT_DECRYPT")

    with pytest.raises(UnsupportedAlgorithmError, match="SIGN_VERIFY"):
        provider.adopt_key(uri, KeyAlgorithm.RSA_2048)


def test_pending_deletion_state(provider: AwsKmsProvider, kms: MotoKms) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    kms.client().schedule_key_deletion(KeyId=key_id(info.uri), PendingWindowInDays=7)

    assert provider.describe_key(info.uri).state is KeyState.PENDING_DELETION
    with pytest.raises(KeyUnusableError, match="KMSInvalidStateException"):
        signer.sign(b"data", ec.ECDSA(hashes.SHA256()))


# --- signing and the harness's corrections -------------------------------------------


def test_large_crl_sent_as_digest(provider: AwsKmsProvider, kms: MotoKms) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P384)
    public = provider.public_key(info.uri)
    signer = provider.private_key(info.uri, public)
    now = datetime.datetime.now(datetime.UTC)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl issuer")])
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
    )
    for serial in range(1, 301):
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(signer, hashes.SHA384())
    request = kms.sign_requests[-1]

    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert len(crl.tbs_certlist_bytes) > 4096
    assert crl.is_signature_valid(public)
    assert request["MessageType"] == "DIGEST"
    assert request["MessageLength"] == 48
    assert request["SigningAlgorithm"] == "ECDSA_SHA_384"


def test_raw_message_over_limit_rejected(kms: MotoKms) -> None:
    uri = create_foreign_key(kms, KeyAlgorithm.EC_P256)
    client = kms.client(validate=False)
    accepted = client.sign(
        KeyId=key_id(uri),
        Message=b"m" * 4096,
        MessageType="RAW",
        SigningAlgorithm="ECDSA_SHA_256",
    )

    with pytest.raises(ClientError) as raised:
        client.sign(
            KeyId=key_id(uri),
            Message=b"m" * 4097,
            MessageType="RAW",
            SigningAlgorithm="ECDSA_SHA_256",
        )
    assert accepted["Signature"]
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_digest_length_checked_by_harness(kms: MotoKms) -> None:
    uri = create_foreign_key(kms, KeyAlgorithm.EC_P256)

    with pytest.raises(ClientError) as raised:
        kms.client().sign(
            KeyId=key_id(uri),
            Message=b"\x00" * 48,
            MessageType="DIGEST",
            SigningAlgorithm="ECDSA_SHA_256",
        )
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def _sign_digest(client: Any, uri: str, digest: bytes, algorithm: str) -> bytes:
    response = client.sign(
        KeyId=key_id(uri),
        Message=digest,
        MessageType="DIGEST",
        SigningAlgorithm=algorithm,
    )
    return bytes(response["Signature"])


def _public_key(kms: MotoKms, uri: str) -> Any:
    der = kms.client(direct=True).get_public_key(KeyId=key_id(uri))["PublicKey"]
    return load_der_public_key(der)


def test_moto_rehashes_digest(kms: MotoKms) -> None:
    # moto hashes a DIGEST message again; the harness's correction is needed.
    uri = create_foreign_key(kms, KeyAlgorithm.EC_P256)
    public = _public_key(kms, uri)
    digest = hashlib.sha256(b"to be signed").digest()
    from_moto = _sign_digest(kms.client(direct=True), uri, digest, "ECDSA_SHA_256")
    corrected = _sign_digest(kms.client(), uri, digest, "ECDSA_SHA_256")

    with pytest.raises(InvalidSignature):
        public.verify(from_moto, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    public.verify(from_moto, digest, ec.ECDSA(hashes.SHA256()))
    public.verify(corrected, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_moto_pss_salt_maximal(kms: MotoKms) -> None:
    # moto signs PSS with the maximal salt; KMS uses the digest length.
    uri = create_foreign_key(kms, KeyAlgorithm.RSA_2048)
    public = _public_key(kms, uri)
    digest = hashlib.sha256(b"to be signed").digest()
    sha256 = hashes.SHA256()
    from_moto = kms.client(direct=True).sign(
        KeyId=key_id(uri),
        Message=b"to be signed",
        MessageType="RAW",
        SigningAlgorithm="RSASSA_PSS_SHA_256",
    )["Signature"]
    corrected = _sign_digest(kms.client(), uri, digest, "RSASSA_PSS_SHA_256")
    exact = padding.PSS(padding.MGF1(sha256), 32)

    assert isinstance(public, rsa.RSAPublicKey)
    with pytest.raises(InvalidSignature):
        public.verify(from_moto, b"to be signed", exact, sha256)
    public.verify(
        from_moto, b"to be signed", padding.PSS(padding.MGF1(sha256), 222), sha256
    )
    public.verify(corrected, digest, exact, Prehashed(sha256))


def test_moto_signs_with_disabled_key(kms: MotoKms) -> None:
    uri = create_foreign_key(kms, KeyAlgorithm.EC_P256)
    kms.disable_key(uri)
    digest = hashlib.sha256(b"x").digest()
    from_moto = _sign_digest(kms.client(direct=True), uri, digest, "ECDSA_SHA_256")

    with pytest.raises(ClientError) as raised:
        _sign_digest(kms.client(), uri, digest, "ECDSA_SHA_256")
    assert from_moto
    assert raised.value.response["Error"]["Code"] == "DisabledException"


def test_message_scheme_limit(provider: AwsKmsProvider, kms: MotoKms) -> None:
    before = len(kms.sign_requests)
    scheme = SignatureScheme(KeyAlgorithm.ML_DSA_65)

    with pytest.raises(UnsupportedAlgorithmError, match="4096"):
        provider._sign_message("awskms:key-id=1234abcd", scheme, b"m" * 4097)
    assert len(kms.sign_requests) == before


# --- error table ----------------------------------------------------------------------


ERROR_CASES = [
    ("ThrottlingException", 400, ProviderTemporaryError),
    ("KMSInternalException", 500, ProviderTemporaryError),
    ("DependencyTimeoutException", 503, ProviderTemporaryError),
    ("KeyUnavailableException", 500, ProviderTemporaryError),
    ("InternalFailure", 502, ProviderTemporaryError),
    ("NotFoundException", 400, KeyNotFoundError),
    ("AccessDeniedException", 400, AccessDeniedError),
    ("UnrecognizedClientException", 400, AccessDeniedError),
    ("DisabledException", 400, KeyUnusableError),
    ("KMSInvalidStateException", 400, KeyUnusableError),
    ("UnsupportedOperationException", 400, UnsupportedAlgorithmError),
    ("InvalidKeyUsageException", 400, UnsupportedAlgorithmError),
    ("ValidationException", 400, ProviderPermanentError),
]


@pytest.mark.parametrize(("code", "status", "expected"), ERROR_CASES)
def test_error_table(
    provider: AwsKmsProvider,
    kms: MotoKms,
    code: str,
    status: int,
    expected: type[ProviderError],
) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    kms.inject(code, status, 100)

    with pytest.raises(expected) as raised:
        signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert type(raised.value) is expected
    assert code in str(raised.value)
    assert info.uri in str(raised.value)
    assert "aws-test" in str(raised.value)


def test_permanent_error_not_retried(provider: AwsKmsProvider, kms: MotoKms) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    before = len(kms.sign_requests)
    kms.inject("AccessDeniedException", 400, 100)

    with pytest.raises(AccessDeniedError):
        signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert len(kms.sign_requests) == before


def test_read_timeout_temporary(aws_env: MotoKms, federation: str) -> None:
    provider = make_provider(aws_env, federation, read_timeout=0.2)
    try:
        info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
        signer = provider.private_key(info.uri)
        aws_env.delay(0.6)
        with pytest.raises(ProviderTemporaryError, match="ReadTimeoutError"):
            signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
    finally:
        aws_env.clear()
        provider.close()


def test_connection_closed_temporary(provider: AwsKmsProvider, kms: MotoKms) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    kms.drop(100)

    with pytest.raises(ProviderTemporaryError, match="ConnectionClosedError"):
        signer.sign(b"data", ec.ECDSA(hashes.SHA256()))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_endpoint_unreachable_temporary(aws_env: MotoKms, federation: str) -> None:
    provider = make_provider(
        aws_env, federation, endpoint_url=f"http://127.0.0.1:{_closed_port()}"
    )
    try:
        with pytest.raises(ProviderTemporaryError, match="EndpointConnectionError"):
            provider.find_key("root")
    finally:
        provider.close()


def test_no_credentials_access_denied() -> None:
    error = map_error(
        NoCredentialsError(), provider="aws", operation="Sign", target="awskms:key-id=k"
    )

    assert isinstance(error, AccessDeniedError)
    assert "NoCredentialsError" in str(error)


def test_no_credentials_in_messages(
    kms: MotoKms,
    federation: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in kms.client_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LEAK_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LEAK_SECRET)
    provider = make_provider(kms, federation)
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    # A service message echoing the request's credential scope, as SigV4
    # failures can.
    echo = f"Credential={LEAK_ACCESS_KEY}/20240101/us-east-1/kms/aws4_request"
    messages: list[str] = []
    caplog.set_level(logging.DEBUG, logger="pkifed")
    try:
        for code, status, _expected in ERROR_CASES:
            kms.inject(code, status, 100, message=f"{echo} rejected {LEAK_ACCESS_KEY}")
            with pytest.raises(ProviderError) as raised:
                signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
            messages.append(str(raised.value))
            kms.clear()
        kms.drop(100)
        with pytest.raises(ProviderError) as dropped:
            signer.sign(b"data", ec.ECDSA(hashes.SHA256()))
        messages.append(str(dropped.value))
    finally:
        kms.clear()
        provider.close()

    text = "\n".join(messages) + caplog.text
    assert len(messages) == len(ERROR_CASES) + 1
    assert LEAK_ACCESS_KEY not in text
    assert LEAK_SECRET not in text
    assert "Credential=<redacted>" in text


# --- check, client, imports -----------------------------------------------------------


def test_check_reports_missing_permission(
    provider: AwsKmsProvider, kms: MotoKms
) -> None:
    provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    kms.inject(
        "AccessDeniedException", 400, 100, operations=["ListKeys", "GetPublicKey"]
    )
    status = provider.check()

    assert status.reachable
    assert status.missing_permissions == ("kms:ListKeys", "kms:GetPublicKey")
    assert kms.endpoint_url in status.identity
    assert "us-east-1" in status.identity
    assert status.protection_levels == frozenset({ProtectionLevel.HSM})


def test_check_unreachable(aws_env: MotoKms, federation: str) -> None:
    provider = make_provider(
        aws_env, federation, endpoint_url=f"http://127.0.0.1:{_closed_port()}"
    )
    try:
        status = provider.check()
    finally:
        provider.close()

    assert not status.reachable
    assert "EndpointConnectionError" in status.message


def test_client_shared_across_threads(provider: AwsKmsProvider) -> None:
    clients: list[object] = []
    barrier = threading.Barrier(8)

    def fetch() -> None:
        barrier.wait()
        clients.append(provider._client())

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(clients) == 8
    assert len({id(client) for client in clients}) == 1


def test_import_does_not_load_boto3() -> None:
    script = (
        "import sys, pkifed.providers.aws\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("source", ["environment", "credential_process"])
def test_loopback_endpoint_placeholder_credentials(
    kms: MotoKms,
    federation: str,
    source: Literal["environment", "credential_process"],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = install_credential_trap(tmp_path, monkeypatch, source)
    kms.clear()
    provider = make_provider(kms, federation)
    try:
        info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
        signature = provider.private_key(info.uri).sign(
            b"data", ec.ECDSA(hashes.SHA256())
        )
        status = provider.check()
    finally:
        provider.close()
    sent = set(kms.access_key_ids)
    kms.clear()

    public_key = _public_key(kms, info.uri)
    public_key.verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
    assert sent == {LOOPBACK_ACCESS_KEY_ID}
    assert TRAP_ACCESS_KEY_ID not in sent
    assert not marker.exists()
    assert "placeholder credentials" in status.identity


@pytest.mark.parametrize(
    "endpoint_url",
    [
        None,
        "https://kms.eu-west-1.amazonaws.com",
        "https://vpce-0123.kms.eu-west-1.vpce.amazonaws.com",
        "https://169.254.169.254",
    ],
)
def test_remote_endpoint_uses_credential_chain(endpoint_url: str | None) -> None:
    settings = AwsKmsSettings(
        type="aws-kms", region="eu-west-1", endpoint_url=endpoint_url
    )

    assert placeholder_credentials(endpoint_url) == (None, None)
    assert not settings.uses_placeholder_credentials


@pytest.mark.parametrize(
    "endpoint_url", ["http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:1"]
)
def test_loopback_endpoint_placeholder_pair(endpoint_url: str) -> None:
    access_key_id, secret_access_key = placeholder_credentials(endpoint_url)

    assert access_key_id == LOOPBACK_ACCESS_KEY_ID
    assert secret_access_key


def test_settings_reject_profile_on_loopback() -> None:
    with pytest.raises(ValueError, match="profile 'prod' would not be used"):
        AwsKmsSettings(
            type="aws-kms",
            region="us-east-1",
            endpoint_url="http://127.0.0.1:4566",
            profile="prod",
        )


def test_settings_reject_unknown_field() -> None:
    with pytest.raises(ValueError, match="access_key"):
        AwsKmsSettings(type="aws-kms", region="eu-west-1", access_key="x")  # type: ignore[call-arg]


def test_settings_fields_described() -> None:
    for name, field in AwsKmsSettings.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://kms.example.com", "plain http:// is allowed for loopback"),
        ("ftp://127.0.0.1:21", "expected an http:// or https:// URL"),
    ],
)
def test_settings_reject_endpoint(endpoint: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AwsKmsSettings(type="aws-kms", region="us-east-1", endpoint_url=endpoint)


def test_settings_accept_https_endpoint() -> None:
    settings = AwsKmsSettings(
        type="aws-kms",
        region="eu-west-1",
        endpoint_url="https://vpce-0a1b.kms.eu-west-1.vpce.amazonaws.com",
    )
    assert not settings.uses_placeholder_credentials

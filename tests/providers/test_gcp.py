"""The gcp-kms provider against the local Cloud KMS fake.

The unmodified google-cloud-kms client talks to the fake over its REST
transport, so request and response shapes, CRC32C fields, pagination and
Google's JSON errors all cross a real HTTP connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import google_crc32c
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import kms_v1
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    IntegrityError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderPermanentError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.providers.algorithms import (
    KeyAlgorithm,
    RsaPadding,
    SignatureScheme,
)
from pkifed.providers.base import KeyState, ProtectionLevel, ProviderContext
from pkifed.providers.gcp import (
    GcpKmsProvider,
    GcpKmsSettings,
    parse_uri,
)
from pkifed.providers.localservices.gcp_kms import FakeCloudKms, crc32c
from pkifed.providers.retry import RetrySettings
from tests.providers.conformance import (
    ProviderConformance,
    ProviderHarness,
    unique_name,
    verify_offline,
)

PROJECT = "pkifed-test"
LOCATION = "us-east1"
FEDERATION = "fed"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
FAST_RETRY = RetrySettings(attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCloudKms]:
    # A page size of 2 makes every listing follow nextPageToken.
    with FakeCloudKms(max_page_size=2) as service:
        yield service


@pytest.fixture(autouse=True)
def no_faults(fake: FakeCloudKms) -> Iterator[None]:
    yield
    fake.clear()


def make_provider(fake: FakeCloudKms, **extra: Any) -> GcpKmsProvider:
    values: dict[str, Any] = {
        "type": "gcp-kms",
        "project": PROJECT,
        "location": LOCATION,
        "endpoint": fake.endpoint,
        "retry": FAST_RETRY.model_dump(),
    }
    values.update(extra)
    settings = GcpKmsSettings.model_validate(values)
    return GcpKmsProvider(settings, ProviderContext("gcp", FEDERATION))


@pytest.fixture(scope="module")
def provider(fake: FakeCloudKms) -> Iterator[GcpKmsProvider]:
    instance = make_provider(fake)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def pss_provider(fake: FakeCloudKms) -> Iterator[GcpKmsProvider]:
    instance = make_provider(
        fake, key_ring="fed-pss", rsa_padding="pss", protection_level="software"
    )
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def client(fake: FakeCloudKms) -> Any:
    return kms_v1.KeyManagementServiceClient(
        transport="rest",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": fake.endpoint},
    )


def foreign_key_factory(fake: FakeCloudKms) -> Any:
    def create(algorithm: KeyAlgorithm) -> str:
        other = make_provider(fake, key_ring=unique_name("foreign"))
        try:
            return other.create_key(unique_name(), algorithm).uri
        finally:
            other.close()

    return create


def sign_requests(fake: FakeCloudKms) -> int:
    return sum(1 for _, path in fake.requests if path.endswith(":asymmetricSign"))


# --- conformance ---------------------------------------------------------------------


class TestGcpConformance(ProviderConformance):
    """HSM keys, RSA keys bound to PKCS#1 v1.5."""

    @pytest.fixture
    def harness(self, fake: FakeCloudKms, provider: GcpKmsProvider) -> ProviderHarness:
        return ProviderHarness(
            provider=provider,
            algorithms=[
                KeyAlgorithm.EC_P256,
                KeyAlgorithm.EC_P384,
                KeyAlgorithm.RSA_2048,
                KeyAlgorithm.ED25519,
            ],
            protection_level=ProtectionLevel.HSM,
            reopen=lambda: make_provider(fake),
            create_foreign_key=foreign_key_factory(fake),
            faults=fake,
            rsa_paddings=(RsaPadding.PKCS1V15,),
        )


class TestGcpPssConformance(ProviderConformance):
    """SOFTWARE keys, RSA keys bound to RSASSA-PSS."""

    @pytest.fixture
    def harness(
        self, fake: FakeCloudKms, pss_provider: GcpKmsProvider
    ) -> ProviderHarness:
        return ProviderHarness(
            provider=pss_provider,
            algorithms=[KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048],
            protection_level=ProtectionLevel.SOFTWARE,
            reopen=lambda: make_provider(
                fake, key_ring="fed-pss", rsa_padding="pss", protection_level="software"
            ),
            create_foreign_key=foreign_key_factory(fake),
            faults=fake,
            rsa_paddings=(RsaPadding.PSS,),
        )


# --- layout and algorithms -----------------------------------------------------------


def test_layout_key_ring_and_crypto_key(provider: GcpKmsProvider, client: Any) -> None:
    name = unique_name()
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    key_name = f"{PARENT}/keyRings/{FEDERATION}/cryptoKeys/{name}"
    key = client.get_crypto_key(request={"name": key_name})

    assert info.uri == f"cloudkms:{key_name}/cryptoKeyVersions/1"
    assert info.name == name
    assert key.purpose.name == "ASYMMETRIC_SIGN"
    assert key.version_template.algorithm.name == "EC_SIGN_P256_SHA256"
    assert key.version_template.protection_level.name == "HSM"
    assert key.labels["managed-by"] == "pkifed"


@pytest.mark.parametrize(
    ("algorithm", "rsa_padding", "expected"),
    [
        (KeyAlgorithm.EC_P256, "pkcs1v15", "EC_SIGN_P256_SHA256"),
        (KeyAlgorithm.EC_P384, "pkcs1v15", "EC_SIGN_P384_SHA384"),
        (KeyAlgorithm.ED25519, "pkcs1v15", "EC_SIGN_ED25519"),
        (KeyAlgorithm.RSA_2048, "pkcs1v15", "RSA_SIGN_PKCS1_2048_SHA256"),
        (KeyAlgorithm.RSA_3072, "pss", "RSA_SIGN_PSS_3072_SHA256"),
        (KeyAlgorithm.RSA_2048, "pss", "RSA_SIGN_PSS_2048_SHA256"),
    ],
)
def test_creation_algorithm_per_version(
    fake: FakeCloudKms,
    client: Any,
    algorithm: KeyAlgorithm,
    rsa_padding: str,
    expected: str,
) -> None:
    creator = make_provider(fake, rsa_padding=rsa_padding)
    info = creator.create_key(unique_name(), algorithm)
    version = client.get_crypto_key_version(request={"name": parse_uri(info.uri)})

    assert version.algorithm.name == expected
    assert info.algorithm is algorithm


def test_p521_not_offered(provider: GcpKmsProvider) -> None:
    assert KeyAlgorithm.EC_P521 not in provider.supported_algorithms()
    with pytest.raises(UnsupportedAlgorithmError):
        provider.create_key(unique_name(), KeyAlgorithm.EC_P521)


def test_invalid_key_name_rejected(provider: GcpKmsProvider) -> None:
    with pytest.raises(ProviderPermanentError, match="not a valid crypto key id"):
        provider.find_or_create_key("bad name/with slash", KeyAlgorithm.EC_P256)


def test_protection_levels_truthful(
    provider: GcpKmsProvider, pss_provider: GcpKmsProvider, client: Any
) -> None:
    hsm = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    software = pss_provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    hsm_version = client.get_crypto_key_version(request={"name": parse_uri(hsm.uri)})
    software_version = client.get_crypto_key_version(
        request={"name": parse_uri(software.uri)}
    )

    assert hsm.protection_level is ProtectionLevel.HSM
    assert hsm_version.protection_level.name == "HSM"
    assert software.protection_level is ProtectionLevel.SOFTWARE
    assert software_version.protection_level.name == "SOFTWARE"


def test_list_keys_follows_pages(fake: FakeCloudKms) -> None:
    lister = make_provider(fake, key_ring=unique_name("paged"))
    names = {unique_name() for _ in range(5)}
    for name in names:
        lister.create_key(name, KeyAlgorithm.EC_P256)

    listed = {info.name for info in lister.list_keys()}

    assert listed == names


def test_list_keys_missing_ring_empty(fake: FakeCloudKms) -> None:
    assert make_provider(fake, key_ring=unique_name("absent")).list_keys() == []


# --- URIs and versions ---------------------------------------------------------------


def test_uri_spellings_parsed() -> None:
    name = f"{PARENT}/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3"

    assert parse_uri(f"cloudkms:{name}") == name
    assert parse_uri(f"cloudkms:resource={name}") == name
    with pytest.raises(KeyNotFoundError):
        parse_uri(f"gcpkms:{name}")
    with pytest.raises(KeyNotFoundError):
        parse_uri("cloudkms:projects/p/keyRings/r")


def test_key_uri_resolves_version(provider: GcpKmsProvider, client: Any) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    key_name = parse_uri(info.uri).rpartition("/cryptoKeyVersions/")[0]
    second = client.create_crypto_key_version(
        request={"parent": key_name, "crypto_key_version": {}}
    )

    assert provider.describe_key(f"cloudkms:{key_name}").uri == info.uri

    client.destroy_crypto_key_version(request={"name": parse_uri(info.uri)})

    assert (
        provider.describe_key(f"cloudkms:{key_name}").uri == f"cloudkms:{second.name}"
    )
    assert provider.find_key(info.name or "") is not None


def test_destroy_scheduled_pending_deletion(
    provider: GcpKmsProvider, client: Any
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    signer = provider.private_key(info.uri)
    client.destroy_crypto_key_version(request={"name": parse_uri(info.uri)})

    assert provider.describe_key(info.uri).state is KeyState.PENDING_DELETION
    with pytest.raises(KeyUnusableError, match="FAILED_PRECONDITION"):
        signer.sign(b"data", ec.ECDSA(hashes.SHA256()))


def test_pending_generation_waited() -> None:
    with FakeCloudKms(pending_generation_seconds=0.2) as slow:
        creator = make_provider(slow)
        try:
            info = creator.create_key(unique_name(), KeyAlgorithm.EC_P256)
        finally:
            creator.close()
        states = [path for _, path in slow.requests if "cryptoKeyVersions/1" in path]

    assert info.state is KeyState.ENABLED
    assert len(states) > 1


def test_pending_existing_key_waited() -> None:
    with FakeCloudKms(pending_generation_seconds=0.2) as slow:
        creator = make_provider(slow)
        crashed = make_provider(slow)
        try:
            name = unique_name()
            assert crashed._create_crypto_key(name, KeyAlgorithm.EC_P256)
            info = creator.find_or_create_key(name, KeyAlgorithm.EC_P256)
        finally:
            creator.close()
            crashed.close()

    assert info.state is KeyState.ENABLED
    assert info.uri.endswith(f"/cryptoKeys/{name}/cryptoKeyVersions/1")


# --- signing and integrity -----------------------------------------------------------


def test_pss_on_pkcs1_key_rejected_before_call(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.RSA_2048)
    signer = provider.private_key(info.uri)
    requests_before = len(fake.requests)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)

    with pytest.raises(UnsupportedAlgorithmError, match="rsa_padding: pss"):
        signer.sign(b"data", pss, hashes.SHA256())
    assert len(fake.requests) == requests_before


def test_pkcs1_on_pss_key_rejected_before_call(
    fake: FakeCloudKms, pss_provider: GcpKmsProvider
) -> None:
    info = pss_provider.create_key(unique_name(), KeyAlgorithm.RSA_2048)
    signer = pss_provider.private_key(info.uri)
    requests_before = len(fake.requests)

    with pytest.raises(UnsupportedAlgorithmError, match="RSA_SIGN_PSS_2048_SHA256"):
        signer.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    assert len(fake.requests) == requests_before


def test_crc32c_corruption_retried(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    public = provider.public_key(info.uri)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    digest = hashlib.sha256(b"data").digest()
    before = sign_requests(fake)
    fake.corrupt_signature_crc32c(1)

    signature = provider.sign_digest(info.uri, scheme, digest)

    assert sign_requests(fake) - before == 2
    verify_offline(public, signature, b"data", scheme)


def test_crc32c_corruption_exhausts_retries(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    digest = hashlib.sha256(b"data").digest()
    before = sign_requests(fake)
    fake.corrupt_signature_crc32c(1000)

    with pytest.raises(IntegrityError, match="signature_crc32c") as raised:
        provider.sign_digest(info.uri, scheme, digest)
    assert sign_requests(fake) - before == FAST_RETRY.attempts
    assert info.uri in str(raised.value)


def test_wrong_version_name_rejected(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    fake.wrong_version_name(1000)

    with pytest.raises(IntegrityError, match="name"):
        provider.sign_digest(info.uri, scheme, hashlib.sha256(b"x").digest())


def test_unverified_digest_rejected(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    fake.unverified_digest(1000)

    with pytest.raises(IntegrityError, match="verified_digest_crc32c"):
        provider.sign_digest(info.uri, scheme, hashlib.sha256(b"x").digest())


def test_slow_service_still_signs(fake: FakeCloudKms, provider: GcpKmsProvider) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    public = provider.public_key(info.uri)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    fake.delay(0.2)

    signature = provider.sign_digest(info.uri, scheme, hashlib.sha256(b"d").digest())

    verify_offline(public, signature, b"d", scheme)


# --- error table ---------------------------------------------------------------------


def test_throttling_exhausted_temporary(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    fake.throttle(1000)

    with pytest.raises(ProviderTemporaryError) as raised:
        provider.sign_digest(info.uri, scheme, hashlib.sha256(b"x").digest())
    assert "RESOURCE_EXHAUSTED" in str(raised.value)
    assert info.uri in str(raised.value)
    assert "'gcp'" in str(raised.value)


def test_disabled_key_names_status(
    fake: FakeCloudKms, provider: GcpKmsProvider
) -> None:
    info = provider.create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    fake.disable_key(info.uri)

    with pytest.raises(KeyUnusableError, match="FAILED_PRECONDITION"):
        provider.sign_digest(info.uri, scheme, hashlib.sha256(b"x").digest())


@pytest.mark.parametrize(
    ("sdk_error", "expected"),
    [
        (api_exceptions.TooManyRequests("quota"), ProviderTemporaryError),
        (api_exceptions.ResourceExhausted("quota"), ProviderTemporaryError),
        (api_exceptions.InternalServerError("boom"), ProviderTemporaryError),
        (api_exceptions.ServiceUnavailable("down"), ProviderTemporaryError),
        (api_exceptions.DeadlineExceeded("slow"), ProviderTemporaryError),
        (api_exceptions.NotFound("gone"), KeyNotFoundError),
        (api_exceptions.PermissionDenied("no"), AccessDeniedError),
        (api_exceptions.Unauthenticated("who"), AccessDeniedError),
        (api_exceptions.FailedPrecondition("disabled"), KeyUnusableError),
        (api_exceptions.InvalidArgument("bad"), ProviderPermanentError),
    ],
)
def test_error_table_grpc_types(
    provider: GcpKmsProvider, sdk_error: Exception, expected: type[Exception]
) -> None:
    uri = f"cloudkms:{PARENT}/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"

    def operation(client: Any) -> None:
        raise sdk_error

    with pytest.raises(expected) as raised:
        provider._call("signing with", uri, operation, retry=False)
    assert raised.value.__cause__ is sdk_error
    assert uri in str(raised.value)


def test_missing_key_not_found(provider: GcpKmsProvider) -> None:
    uri = (
        f"cloudkms:{PARENT}/keyRings/{FEDERATION}/cryptoKeys/absent/cryptoKeyVersions/1"
    )

    with pytest.raises(KeyNotFoundError, match="NOT_FOUND"):
        provider.public_key(uri)


# --- settings ------------------------------------------------------------------------


def test_endpoint_plain_http_loopback_only() -> None:
    base = {"type": "gcp-kms", "project": PROJECT, "location": LOCATION}

    with pytest.raises(ValidationError, match="loopback"):
        GcpKmsSettings.model_validate({**base, "endpoint": "http://10.1.2.3:8080"})
    accepted = GcpKmsSettings.model_validate(
        {**base, "endpoint": "https://kms.internal.example"}
    )
    assert accepted.endpoint == "https://kms.internal.example"


def test_key_ring_defaults_to_federation(fake: FakeCloudKms) -> None:
    assert make_provider(fake).key_ring_name == f"{PARENT}/keyRings/{FEDERATION}"
    assert make_provider(fake, key_ring="other").key_ring_name.endswith("/other")


# --- the fake's own rules, through the real client -----------------------------------


@pytest.fixture(scope="module")
def p256_version(provider: GcpKmsProvider) -> str:
    return parse_uri(provider.create_key(unique_name(), KeyAlgorithm.EC_P256).uri)


def error_status(error: api_exceptions.GoogleAPICallError) -> str:
    assert error.response is not None
    body = error.response.json()
    return str(body["error"]["status"])


def test_fake_rejects_wrong_digest_length(client: Any, p256_version: str) -> None:
    short = hashlib.sha256(b"x").digest()[:31]

    with pytest.raises(api_exceptions.BadRequest) as raised:
        client.asymmetric_sign(
            request={"name": p256_version, "digest": {"sha256": short}}
        )
    assert error_status(raised.value) == "INVALID_ARGUMENT"
    assert "31 bytes" in raised.value.message


def test_fake_rejects_wrong_digest_field(client: Any, p256_version: str) -> None:
    digest = hashlib.sha384(b"x").digest()

    with pytest.raises(api_exceptions.BadRequest) as raised:
        client.asymmetric_sign(
            request={"name": p256_version, "digest": {"sha384": digest}}
        )
    assert error_status(raised.value) == "INVALID_ARGUMENT"
    assert "digest.sha256" in raised.value.message


def test_fake_rejects_bad_digest_crc32c(client: Any, p256_version: str) -> None:
    digest = hashlib.sha256(b"x").digest()
    wrong = (google_crc32c.value(digest) + 1) % 2**32

    with pytest.raises(api_exceptions.BadRequest) as raised:
        client.asymmetric_sign(
            request={
                "name": p256_version,
                "digest": {"sha256": digest},
                "digest_crc32c": wrong,
            }
        )
    assert error_status(raised.value) == "INVALID_ARGUMENT"
    assert raised.value.response.json()["error"]["code"] == 400


def test_fake_sign_response_fields(client: Any, p256_version: str) -> None:
    digest = hashlib.sha256(b"x").digest()
    response = client.asymmetric_sign(
        request={
            "name": p256_version,
            "digest": {"sha256": digest},
            "digest_crc32c": google_crc32c.value(digest),
        }
    )

    assert response.name == p256_version
    assert response.verified_digest_crc32c is True
    assert response.signature_crc32c == google_crc32c.value(response.signature)
    assert response.protection_level.name == "HSM"


def test_fake_public_key_crc32c(client: Any, p256_version: str) -> None:
    public = client.get_public_key(request={"name": p256_version})

    assert public.pem_crc32c == google_crc32c.value(public.pem.encode())
    assert public.algorithm.name == "EC_SIGN_P256_SHA256"
    assert public.name == p256_version


def test_fake_duplicate_ids_already_exist(client: Any) -> None:
    ring_id = unique_name("ring")
    client.create_key_ring(request={"parent": PARENT, "key_ring_id": ring_id})

    with pytest.raises(api_exceptions.Conflict) as raised:
        client.create_key_ring(request={"parent": PARENT, "key_ring_id": ring_id})
    assert error_status(raised.value) == "ALREADY_EXISTS"


def test_fake_crc32c_matches_reference() -> None:
    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert crc32c(data) == google_crc32c.value(data)


def test_fake_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeCloudKms(host="0.0.0.0")  # noqa: S104 - the address is the rejected case.


def test_refused_connection_names_endpoint(fake: FakeCloudKms) -> None:
    import socket

    # A port that was just free and is closed again refuses connections.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    provider = make_provider(fake, endpoint=endpoint)
    try:
        with pytest.raises(ProviderTemporaryError) as raised:
            provider.find_key("absent")
    finally:
        provider.close()
    message = str(raised.value)
    assert f"failed with UNAVAILABLE: cannot connect to {endpoint}" in message
    assert "HTTPConnectionPool" not in message

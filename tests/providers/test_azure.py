"""The azure-keyvault provider against the local Key Vault fake over TLS.

The real azure-keyvault-keys client talks to the fake through its whole
pipeline: the 401 challenge, bearer tokens, TLS verified against a throwaway
CA, paging and Key Vault's JSON errors.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    RsaPadding,
    SignatureScheme,
    ecdsa_der_to_raw,
)
from pkifed.providers.azure import (
    FEDERATION_TAG,
    KEY_NAME_TAG,
    AzureKeyUri,
    AzureKeyVaultProvider,
    AzureKeyVaultSettings,
    parse_key_uri,
    vault_label,
)
from pkifed.providers.base import (
    KeyState,
    ProtectionLevel,
    ProviderContext,
    RemoteECPrivateKey,
    RemoteRSAPrivateKey,
)
from pkifed.providers.localservices.azure_keyvault import (
    AzureKeyVaultFake,
    LoopbackTls,
    RecordedRequest,
)
from pkifed.providers.registry import PROVIDER_GROUP, load_plugin
from pkifed.providers.retry import RetrySettings
from tests.harness.tls import client_context, loopback_tls
from tests.providers.conformance import (
    ProviderConformance,
    ProviderHarness,
    sign_arguments,
    unique_name,
    verify_offline,
)

FEDERATION = "fed"
TOKEN = "vault-token-" + uuid.uuid4().hex
ALGORITHMS = [
    KeyAlgorithm.EC_P256,
    KeyAlgorithm.EC_P384,
    KeyAlgorithm.EC_P521,
    KeyAlgorithm.RSA_2048,
]
FAST_RETRY = RetrySettings(attempts=3, base_delay=0.01, max_delay=0.02)
_CURVES = {
    KeyAlgorithm.EC_P256: "P-256",
    KeyAlgorithm.EC_P384: "P-384",
    KeyAlgorithm.EC_P521: "P-521",
}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Reject and record any connection that leaves 127.0.0.1.

    This proves that no credential reaches a metadata address such as
    169.254.169.254 or an identity provider such as login.microsoftonline.com.
    """
    outside: list[object] = []
    connect = socket.socket.connect

    def checked_connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            outside.append(address)
            raise ConnectionRefusedError(f"test blocks {address}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", checked_connect)
    yield outside
    assert outside == []


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LoopbackTls:
    return loopback_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def vault(tls: LoopbackTls) -> Iterator[AzureKeyVaultFake]:
    # A small page size makes every list_keys call follow nextLink.
    fake = AzureKeyVaultFake(tls=tls, expected_token=TOKEN, page_size=3)
    with fake:
        yield fake


def make_settings(vault_url: str, ca_bundle: Path, token_file: Path, **extra: Any):
    values: dict[str, Any] = {
        "type": "azure-keyvault",
        "vault_url": vault_url,
        "ca_bundle": str(ca_bundle),
        "credential": "local-static",
        "local_token": f"${{file:{token_file}}}",
        "unsafe_skip_challenge_resource_check": True,
        "retry": FAST_RETRY.model_dump(),
    }
    values.update(extra)
    return AzureKeyVaultSettings.model_validate(values)


def make_provider(
    vault: AzureKeyVaultFake, token_file: Path, **extra: Any
) -> AzureKeyVaultProvider:
    settings = make_settings(vault.url, vault.ca_bundle, token_file, **extra)
    return AzureKeyVaultProvider(settings, ProviderContext("azure", FEDERATION))


@pytest.fixture(scope="module")
def provider(
    vault: AzureKeyVaultFake, token_file: Path
) -> Iterator[AzureKeyVaultProvider]:
    built = make_provider(vault, token_file)
    yield built
    built.close()


def foreign_key(vault: AzureKeyVaultFake, algorithm: KeyAlgorithm) -> str:
    name = unique_name("foreign")
    if algorithm.is_ec:
        kid = vault.create_key(name, "EC-HSM", curve=_CURVES[algorithm])
    else:
        kid = vault.create_key(name, "RSA-HSM", size=algorithm.key_size)
    version = kid.rsplit("/", 1)[1]
    return str(AzureKeyUri(name=name, vault=vault_label(vault.url), version=version))


def sign_requests(vault: AzureKeyVaultFake, name: str) -> list[RecordedRequest]:
    return [
        r
        for r in vault.requests
        if r.method == "POST" and r.path.endswith("/sign") and f"/{name}/" in r.path
    ]


def decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class TestAzureConformance(ProviderConformance):
    @pytest.fixture
    def harness(
        self,
        provider: AzureKeyVaultProvider,
        vault: AzureKeyVaultFake,
        token_file: Path,
    ) -> Iterator[ProviderHarness]:
        rsa = KeyAlgorithm.RSA_2048
        yield ProviderHarness(
            provider=provider,
            algorithms=list(ALGORITHMS),
            protection_level=ProtectionLevel.HSM,
            reopen=lambda: make_provider(vault, token_file),
            create_foreign_key=lambda algorithm: foreign_key(vault, algorithm),
            faults=vault,
            extra_schemes=[
                SignatureScheme(rsa, HashName.SHA384, RsaPadding.PKCS1V15),
                SignatureScheme(rsa, HashName.SHA512, RsaPadding.PKCS1V15),
                SignatureScheme(rsa, HashName.SHA384, RsaPadding.PSS),
                SignatureScheme(rsa, HashName.SHA512, RsaPadding.PSS),
            ],
        )
        vault.clear()


# --- signing on the wire ------------------------------------------------------------


def test_es512_raw_signature_converts(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P521)
    scheme = SignatureScheme(KeyAlgorithm.EC_P521, HashName.SHA512)
    digest = bytes(range(64))

    der = provider.sign_digest(info.uri, scheme, digest)
    public = provider.public_key(info.uri)
    (request,) = sign_requests(vault, parse_key_uri(info.uri).name)
    raw = decode(request.response_body["value"])

    assert request.body["alg"] == "ES512"
    assert len(raw) == 132
    assert ecdsa_der_to_raw(der, KeyAlgorithm.EC_P521) == raw
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, digest, ec.ECDSA(Prehashed(HashName.SHA512.algorithm())))


@pytest.mark.parametrize(
    ("algorithm", "hash_name", "rsa_padding", "expected_alg"),
    [
        (KeyAlgorithm.EC_P256, HashName.SHA256, None, "ES256"),
        (KeyAlgorithm.EC_P384, HashName.SHA384, None, "ES384"),
        (KeyAlgorithm.EC_P521, HashName.SHA512, None, "ES512"),
        (KeyAlgorithm.RSA_2048, HashName.SHA256, RsaPadding.PKCS1V15, "RS256"),
        (KeyAlgorithm.RSA_2048, HashName.SHA384, RsaPadding.PSS, "PS384"),
        (KeyAlgorithm.RSA_2048, HashName.SHA512, RsaPadding.PSS, "PS512"),
    ],
)
def test_sign_sends_digest_only(
    provider: AzureKeyVaultProvider,
    vault: AzureKeyVaultFake,
    algorithm: KeyAlgorithm,
    hash_name: HashName,
    rsa_padding: RsaPadding | None,
    expected_alg: str,
) -> None:
    info = provider.find_or_create_key(unique_name(), algorithm)
    scheme = SignatureScheme(algorithm, hash_name, rsa_padding)
    message = b"to be signed " * 1000
    signer = provider.private_key(info.uri)

    if isinstance(signer, RemoteECPrivateKey):
        signature = signer.sign(message, ec.ECDSA(hash_name.algorithm()))
    else:
        assert isinstance(signer, RemoteRSAPrivateKey)
        hash_algorithm, extra = sign_arguments(scheme)
        rsa_padding_object = extra.get("rsa_padding", padding.PKCS1v15())
        signature = signer.sign(message, rsa_padding_object, hash_algorithm)
    (request,) = sign_requests(vault, parse_key_uri(info.uri).name)

    assert request.body["alg"] == expected_alg
    assert len(decode(request.body["value"])) == hash_name.digest_size
    verify_offline(provider.public_key(info.uri), signature, message, scheme)


# --- protection level and key state ------------------------------------------------


def test_protection_level_software(vault: AzureKeyVaultFake, token_file: Path) -> None:
    software = make_provider(vault, token_file, key_protection="software")
    try:
        info = software.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
        created = [
            r
            for r in vault.requests
            if r.path.endswith("/create") and parse_key_uri(info.uri).name in r.path
        ]
    finally:
        software.close()

    assert info.protection_level is ProtectionLevel.SOFTWARE
    assert created[-1].body["kty"] == "EC"


def test_protection_level_hsm(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.RSA_2048)
    created = [
        r
        for r in vault.requests
        if r.path.endswith("/create") and parse_key_uri(info.uri).name in r.path
    ]

    assert info.protection_level is ProtectionLevel.HSM
    assert created[-1].body["kty"] == "RSA-HSM"


def test_pending_deletion_state(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    name = unique_name()
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    vault.delete_key(parse_key_uri(info.uri).name)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)

    found = provider.find_key(name)
    described = provider.describe_key(info.uri)
    with pytest.raises(KeyUnusableError) as raised:
        provider.sign_digest(info.uri, scheme, bytes(32))

    assert found is not None
    assert found.state is KeyState.PENDING_DELETION
    assert found.uri == info.uri
    assert described.state is KeyState.PENDING_DELETION
    assert "pending deletion" in str(raised.value)


def test_pending_deletion_blocks_create(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    name = unique_name()
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    vault.delete_key(parse_key_uri(info.uri).name)

    with pytest.raises(ProviderPermanentError):
        provider.create_key(name, KeyAlgorithm.EC_P256)


def test_disabled_key_state(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P384)
    vault.disable_key(info.uri)

    described = provider.describe_key(info.uri)

    assert described.state is KeyState.DISABLED


# --- naming, versions and listing -----------------------------------------------------


def test_uri_step_ca_format(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    name = unique_name()
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    parsed = parse_key_uri(info.uri)

    assert info.uri.startswith(f"azurekms:name={FEDERATION}-{name};vault=")
    assert parsed.name == f"{FEDERATION}-{name}"
    assert parsed.vault == vault.url.removeprefix("https://")
    assert parsed.version is not None
    assert "?version=" in info.uri


def test_vault_label_public_cloud() -> None:
    assert vault_label("https://my-vault.vault.azure.net") == "my-vault"
    assert vault_label("https://ops.vault.azure.cn") == "ops"
    assert vault_label("https://127.0.0.1:8443") == "127.0.0.1:8443"


def test_parse_key_uri_forms() -> None:
    plain = parse_key_uri("azurekms:name=root;vault=my-vault")
    versioned = parse_key_uri("azurekms:vault=my-vault;name=root?version=abc123")

    assert plain == AzureKeyUri(name="root", vault="my-vault")
    assert versioned == AzureKeyUri(name="root", vault="my-vault", version="abc123")
    assert str(versioned) == "azurekms:name=root;vault=my-vault?version=abc123"
    with pytest.raises(KeyNotFoundError):
        parse_key_uri("awskms:key-id=abc")
    with pytest.raises(KeyNotFoundError):
        parse_key_uri("azurekms:vault=my-vault")


def test_other_vault_uri_rejected(provider: AzureKeyVaultProvider) -> None:
    with pytest.raises(ProviderPermanentError) as raised:
        provider.describe_key("azurekms:name=root;vault=elsewhere")

    assert "elsewhere" in str(raised.value)


def test_create_existing_name_rejected(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    name = unique_name()
    provider.create_key(name, KeyAlgorithm.EC_P256)
    azure_name = provider.azure_name(name)

    with pytest.raises(ProviderPermanentError):
        provider.create_key(name, KeyAlgorithm.EC_P256)
    creates = [r for r in vault.requests if r.path == f"/keys/{azure_name}/create"]
    assert len(creates) == 1


def test_create_race_pins_oldest_version(tls: LoopbackTls, token_file: Path) -> None:
    # Two racing creators each add a version; both must settle on the first.
    # Each call of the fake's clock advances it by one second, so the two
    # versions get different creation times as they would across real calls.
    ticks = iter(range(1_800_000_000, 1_800_001_000))
    with AzureKeyVaultFake(tls=tls, clock=lambda: float(next(ticks))) as fresh:
        provider = make_provider(fresh, token_file)
        reopened = make_provider(fresh, token_file)
        try:
            name = unique_name()
            azure_name = provider.azure_name(name)
            tags = {FEDERATION_TAG: FEDERATION, KEY_NAME_TAG: name}
            first = fresh.create_key(azure_name, "EC-HSM", curve="P-256", tags=tags)
            fresh.create_key(azure_name, "EC-HSM", curve="P-256", tags=tags)
            found = provider.find_key(name)
            found_again = reopened.find_key(name)
        finally:
            provider.close()
            reopened.close()

    assert found is not None
    assert found.uri.endswith(f"?version={first.rsplit('/', 1)[1]}")
    assert found_again == found


def test_invalid_key_name_rejected(provider: AzureKeyVaultProvider) -> None:
    with pytest.raises(ProviderPermanentError):
        provider.find_key("under_score")
    with pytest.raises(ProviderPermanentError):
        provider.find_key("x" * 127)


def test_list_keys_follows_next_link(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    names = [unique_name("listed") for _ in range(4)]
    for name in names:
        provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    vault.create_key(unique_name("unmanaged"), "EC", curve="P-256")
    before = len(vault.requests)

    listed = {info.name for info in provider.list_keys()}
    pages = [
        r for r in vault.requests[before:] if r.method == "GET" and r.path == "/keys"
    ]

    assert set(names) <= listed
    assert all(name is not None for name in listed)
    assert len(pages) > 1
    assert any("$skiptoken" in r.query for r in pages)


def test_other_federation_key_rejected(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    name = unique_name()
    tags = {FEDERATION_TAG: "another", KEY_NAME_TAG: name}
    vault.create_key(provider.azure_name(name), "EC-HSM", curve="P-256", tags=tags)

    with pytest.raises(ProviderPermanentError) as raised:
        provider.find_key(name)

    assert "another" in str(raised.value)


# --- authentication, TLS and settings -----------------------------------------------


def test_challenge_precedes_token(tls: LoopbackTls, token_file: Path) -> None:
    with AzureKeyVaultFake(tls=tls, expected_token=TOKEN) as fresh:
        provider = make_provider(fresh, token_file)
        try:
            assert provider.find_key(unique_name()) is None
        finally:
            provider.close()
        first, second = fresh.requests[:2]

    assert first.status == 401
    assert not first.authorized
    assert second.authorized
    assert second.path == first.path


def test_challenge_header_format(vault: AzureKeyVaultFake) -> None:
    status, headers, body = vault.handle("GET", "/keys?api-version=7.6", {}, b"")

    assert status == 401
    # The authority is the fake itself, so no client is sent to a real one.
    assert headers["WWW-Authenticate"].startswith(f'Bearer authorization="{vault.url}/')
    assert 'resource="https://vault.azure.net"' in headers["WWW-Authenticate"]
    assert body["error"]["code"] == "Unauthorized"


def test_wrong_token_access_denied(
    vault: AzureKeyVaultFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-token-" + uuid.uuid4().hex
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text(wrong)
    provider = make_provider(vault, wrong_file)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(AccessDeniedError) as raised:
            provider.find_key(unique_name())
    finally:
        provider.close()

    assert "azurekms:name=" in str(raised.value)
    assert wrong not in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert wrong not in caplog.text
    assert TOKEN not in caplog.text


def test_errors_hide_token(
    provider: AzureKeyVaultProvider,
    vault: AzureKeyVaultFake,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    vault.disable_key(info.uri)
    vault.throttle(1)
    try:
        with pytest.raises(KeyUnusableError) as raised:
            provider.sign_digest(info.uri, scheme, bytes(32))
    finally:
        vault.clear()

    assert "KeyDisabled" in str(raised.value)
    assert "signing (ES256) with azurekms:" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert TOKEN not in caplog.text
    assert "will retry" in caplog.text


def test_unsafe_switch_refused_remote(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as raised:
        AzureKeyVaultSettings.model_validate(
            {
                "type": "azure-keyvault",
                "vault_url": "https://my-vault.vault.azure.net",
                "unsafe_skip_challenge_resource_check": True,
            }
        )

    assert "unsafe_skip_challenge_resource_check" in str(raised.value)


def test_local_credential_refused_remote() -> None:
    with pytest.raises(ValidationError) as raised:
        AzureKeyVaultSettings.model_validate(
            {
                "type": "azure-keyvault",
                "vault_url": "https://my-vault.vault.azure.net",
                "credential": "local-static",
            }
        )

    assert "local-static" in str(raised.value)


def test_vault_url_must_be_https() -> None:
    for url in ("http://127.0.0.1:8200", "https://my-vault.vault.azure.net/keys"):
        with pytest.raises(ValidationError):
            AzureKeyVaultSettings.model_validate(
                {"type": "azure-keyvault", "vault_url": url}
            )


def test_default_settings_remote() -> None:
    settings = AzureKeyVaultSettings.model_validate(
        {"type": "azure-keyvault", "vault_url": "https://my-vault.vault.azure.net/"}
    )

    assert settings.vault_url == "https://my-vault.vault.azure.net"
    assert settings.key_protection == "hsm"
    assert settings.credential == "default"
    assert settings.unsafe_skip_challenge_resource_check is False


def test_unsafe_switch_warns(
    vault: AzureKeyVaultFake, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pkifed.providers.azure")
    provider = make_provider(vault, token_file)
    provider.close()

    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "unsafe_skip_challenge_resource_check" in r.getMessage()
    ]
    assert warnings


def test_loopback_certificate_verifies(
    vault: AzureKeyVaultFake, tls: LoopbackTls
) -> None:
    # Stdlib hostname checking against the IP SAN, as any other client does it.
    port = int(vault.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(tls), timeout=5
    )
    try:
        connection.request("GET", "/keys?api-version=7.6")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()

    assert response.status == 401
    assert response.getheader("WWW-Authenticate") is not None


def test_untrusted_certificate_fails(
    vault: AzureKeyVaultFake, token_file: Path, tmp_path: Path
) -> None:
    other_ca = loopback_tls(tmp_path / "other").ca_bundle
    settings = make_settings(vault.url, other_ca, token_file)
    provider = AzureKeyVaultProvider(settings, ProviderContext("azure", FEDERATION))
    try:
        with pytest.raises(ProviderTemporaryError):
            provider.find_key(unique_name())
    finally:
        provider.close()


def test_relative_ca_bundle_from_config_dir(
    vault: AzureKeyVaultFake, token_file: Path, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    (config_dir / "tls").mkdir(parents=True)
    (config_dir / "tls" / "ca.pem").write_bytes(vault.ca_bundle.read_bytes())
    settings = make_settings(vault.url, Path("tls/ca.pem"), token_file)
    context = ProviderContext("azure", FEDERATION, config_dir=config_dir)
    provider = AzureKeyVaultProvider(settings, context)
    try:
        # The working directory is not the config file's, so only a path
        # resolved against the config file finds the bundle.
        assert Path.cwd() != config_dir
        assert provider.find_key(unique_name()) is None
    finally:
        provider.close()


# --- packaging --------------------------------------------------------------


def test_entry_point_loads_provider() -> None:
    assert load_plugin(PROVIDER_GROUP, "azure-keyvault") is AzureKeyVaultProvider


def test_import_leaves_sdk_unloaded() -> None:
    code = (
        "import sys, pkifed.providers.azure; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# --- transport faults ---------------------------------------------------------


def test_connection_refused_temporary(tls: LoopbackTls, token_file: Path) -> None:
    with AzureKeyVaultFake(tls=tls) as stopped:
        url = stopped.url
    provider = AzureKeyVaultProvider(
        make_settings(url, tls.ca_bundle, token_file),
        ProviderContext("azure", FEDERATION),
    )
    try:
        with pytest.raises(ProviderTemporaryError) as raised:
            provider.find_key(unique_name())
    finally:
        provider.close()

    assert "no response from the vault" in str(raised.value)


def test_read_timeout_temporary(vault: AzureKeyVaultFake, token_file: Path) -> None:
    provider = make_provider(vault, token_file, timeout=0.2)
    try:
        # Warm up so the challenge is cached and only the delayed read times out.
        provider.find_key(unique_name())
        vault.delay(0.5)
        with pytest.raises(ProviderTemporaryError):
            provider.find_key(unique_name())
    finally:
        vault.clear()
        provider.close()


def test_missing_api_version_rejected(vault: AzureKeyVaultFake) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    status, _, body = vault.handle("GET", "/keys", headers, b"")

    assert status == 400
    assert body["error"]["code"] == "BadParameter"


def test_wrong_digest_length_rejected(
    provider: AzureKeyVaultProvider, vault: AzureKeyVaultFake
) -> None:
    info = provider.find_or_create_key(unique_name(), KeyAlgorithm.EC_P256)
    name = parse_key_uri(info.uri).name
    version = parse_key_uri(info.uri).version
    headers = {"authorization": f"Bearer {TOKEN}"}
    body = b'{"alg": "ES256", "value": "AAAA"}'
    target = f"/keys/{name}/{version}/sign?api-version=7.6"

    status, _, response_body = vault.handle("POST", target, headers, body)

    assert status == 400
    assert "32 bytes" in response_body["error"]["message"]


def test_offered_matches_supported(vault: AzureKeyVaultFake, token_file: Path) -> None:
    provider = make_provider(vault, token_file)
    try:
        offered = AzureKeyVaultProvider.offered_algorithms(provider.settings)
        assert offered == provider.supported_algorithms()
    finally:
        provider.close()
    assert not any(str(algorithm).startswith("ml-dsa") for algorithm in offered)

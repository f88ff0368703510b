"""The pkcs11 provider against SoftHSM2, and the PKCS#11 URI parser."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderPermanentError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.providers import pkcs11 as pkcs11_provider
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme
from pkifed.providers.base import KeyState, ProtectionLevel, ProviderContext
from pkifed.providers.pkcs11 import (
    Pkcs11Provider,
    Pkcs11Settings,
    decode_ec_point,
    key_id_for_label,
)
from pkifed.providers.pkcs11_uri import Pkcs11Uri, Pkcs11UriError, parse_pkcs11_uri
from pkifed.providers.retry import RetrySettings
from tests.harness.softhsm import SoftHsm, SoftHsmToken, require_softhsm
from tests.providers.conformance import (
    ProviderConformance,
    ProviderHarness,
    self_signed,
    unique_name,
)

PIN_VARIABLE = "PKIFED_TEST_HSM_PIN"
WRONG_PIN_VARIABLE = "PKIFED_TEST_HSM_WRONG_PIN"
WRONG_PIN = "9999-wrong-pin"
FAST_RETRY = RetrySettings(attempts=2, base_delay=0.01, max_delay=0.02)


@dataclass(frozen=True)
class Tokens:
    main: SoftHsmToken
    # A token no provider logs in to before the wrong-PIN test, so the PIN
    # reaches C_Login instead of riding on this process's existing login.
    login: SoftHsmToken


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    require_softhsm()
    with pytest.MonkeyPatch.context() as monkeypatch:
        hsm = SoftHsm(tmp_path_factory.mktemp("softhsm"), monkeypatch)
        found = Tokens(hsm.add_token("pkifed-main"), hsm.add_token("pkifed-login"))
        hsm.activate()
        monkeypatch.setenv(PIN_VARIABLE, found.main.pin)
        monkeypatch.setenv(WRONG_PIN_VARIABLE, WRONG_PIN)
        yield found


def make_provider(
    token: SoftHsmToken, pin_variable: str = PIN_VARIABLE, federation: str = "conf"
) -> Pkcs11Provider:
    settings = Pkcs11Settings.model_validate(
        {
            "type": "pkcs11",
            "module": str(token.module),
            "token": token.label,
            "pin": f"${{env:{pin_variable}}}",
            "retry": FAST_RETRY.model_dump(),
        }
    )
    return Pkcs11Provider(settings, ProviderContext("hsm", federation))


def open_direct(token: SoftHsmToken) -> pkcs11.Session:
    """A session of this process on ``token``, outside the provider.

    PKCS#11 login state is shared by every session of the application, so
    while a provider is logged in this session can read private objects too.
    """
    library = pkcs11.lib(str(token.module))
    return library.get_token(token_label=token.label).open(rw=True)


def create_foreign_key(
    token: SoftHsmToken, algorithm: KeyAlgorithm, sign: bool = True
) -> tuple[str, bytes]:
    """Create a key pair labelled outside any federation; return label and id."""
    label = f"foreign-{uuid.uuid4().hex[:10]}"
    key_id = uuid.uuid4().bytes
    private_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.SIGN: sign,
    }
    public_template = {Attribute.TOKEN: True}
    with open_direct(token) as session:
        if algorithm.is_rsa:
            session.generate_keypair(
                KeyType.RSA,
                algorithm.key_size,
                label=label,
                id=key_id,
                store=True,
                public_template=public_template,
                private_template=private_template,
            )
        else:
            public_template[Attribute.EC_PARAMS] = pkcs11_provider._EC_PARAMS[algorithm]
            session.generate_keypair(
                KeyType.EC,
                label=label,
                id=key_id,
                store=True,
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template=public_template,
                private_template=private_template,
            )
    return label, key_id


def foreign_uri(token: SoftHsmToken, label: str, key_id: bytes | None = None) -> str:
    return str(Pkcs11Uri(token=token.label, object=label, id=key_id, type="private"))


@pytest.fixture(scope="module")
def provider(tokens: Tokens) -> Iterator[Pkcs11Provider]:
    opened = make_provider(tokens.main)
    # Log in before any direct session is opened, so those share the login.
    opened.supported_algorithms()
    yield opened
    opened.close()


# --- the conformance kit ------------------------------------------------------------


@pytest.mark.softhsm
class TestPkcs11Conformance(ProviderConformance):
    @pytest.fixture
    def harness(self, tokens: Tokens, provider: Pkcs11Provider) -> ProviderHarness:
        def create_foreign(algorithm: KeyAlgorithm) -> str:
            label, _ = create_foreign_key(tokens.main, algorithm)
            return foreign_uri(tokens.main, label)

        algorithms = [
            KeyAlgorithm.EC_P256,
            KeyAlgorithm.EC_P384,
            KeyAlgorithm.EC_P521,
            KeyAlgorithm.RSA_2048,
        ]
        if KeyAlgorithm.ED25519 in provider.supported_algorithms():
            algorithms.append(KeyAlgorithm.ED25519)
        return ProviderHarness(
            provider=provider,
            algorithms=algorithms,
            protection_level=ProtectionLevel.HSM,
            reopen=lambda: make_provider(tokens.main),
            create_foreign_key=create_foreign,
        )


# --- provider-specific behaviour ----------------------------------------------------


@pytest.mark.softhsm
def test_private_key_attributes(tokens: Tokens, provider: Pkcs11Provider) -> None:
    name = unique_name("attrs")
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    label = f"conf/{name}"

    with open_direct(tokens.main) as session:
        private = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
        attributes = private.get_attributes(
            [
                Attribute.SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.TOKEN,
                Attribute.SIGN,
                Attribute.DECRYPT,
                Attribute.ID,
            ]
        )

    assert attributes[Attribute.SENSITIVE] is True
    assert attributes[Attribute.EXTRACTABLE] is False
    assert attributes[Attribute.TOKEN] is True
    assert attributes[Attribute.SIGN] is True
    assert attributes[Attribute.DECRYPT] is False
    assert attributes[Attribute.ID] == key_id_for_label(label)
    assert parse_pkcs11_uri(info.uri).id == key_id_for_label(label)


@pytest.mark.softhsm
def test_rsa_3072_key(provider: Pkcs11Provider) -> None:
    info = provider.find_or_create_key(unique_name("rsa3072"), KeyAlgorithm.RSA_3072)
    public = provider.public_key(info.uri)
    scheme = SignatureScheme.default_for(KeyAlgorithm.RSA_3072)
    certificate = self_signed(provider.private_key(info.uri, public), scheme)

    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    certificate.verify_directly_issued_by(certificate)


@pytest.mark.softhsm
def test_p521_signature_verifies(provider: Pkcs11Provider) -> None:
    # P-521 components are 66 bytes, the one curve where r || s is not a
    # multiple of 8 bytes per component.
    info = provider.find_or_create_key(unique_name("p521"), KeyAlgorithm.EC_P521)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P521)
    certificate = self_signed(provider.private_key(info.uri), scheme)

    certificate.verify_directly_issued_by(certificate)


@pytest.mark.softhsm
def test_ed25519_reported_truthfully(tokens: Tokens, provider: Pkcs11Provider) -> None:
    with open_direct(tokens.main) as session:
        mechanisms = session.token.slot.get_mechanisms()
    offers_eddsa = Mechanism.EDDSA in mechanisms

    assert (KeyAlgorithm.ED25519 in provider.supported_algorithms()) == offers_eddsa


@pytest.mark.softhsm
def test_adopt_by_id_only(tokens: Tokens, provider: Pkcs11Provider) -> None:
    _, key_id = create_foreign_key(tokens.main, KeyAlgorithm.EC_P384)
    uri = str(Pkcs11Uri(token=tokens.main.label, id=key_id, type="private"))
    adopted = provider.adopt_key(uri, KeyAlgorithm.EC_P384)

    assert adopted.algorithm is KeyAlgorithm.EC_P384
    assert adopted.state is KeyState.ENABLED
    assert adopted.name is None


@pytest.mark.softhsm
def test_adopt_other_token_rejected(tokens: Tokens, provider: Pkcs11Provider) -> None:
    label, key_id = create_foreign_key(tokens.main, KeyAlgorithm.EC_P256)
    uri = str(Pkcs11Uri(token="elsewhere", object=label, id=key_id, type="private"))

    with pytest.raises(KeyNotFoundError) as raised:
        provider.adopt_key(uri, KeyAlgorithm.EC_P256)
    assert "elsewhere" in str(raised.value)


@pytest.mark.softhsm
def test_list_keys_only_federation(tokens: Tokens, provider: Pkcs11Provider) -> None:
    create_foreign_key(tokens.main, KeyAlgorithm.EC_P256)
    other = make_provider(tokens.main, federation="other-federation")
    try:
        other_info = other.find_or_create_key(
            unique_name("other"), KeyAlgorithm.EC_P256
        )
        listed = {info.uri for info in provider.list_keys()}
    finally:
        other.close()

    assert other_info.uri not in listed
    assert all("object=conf%2F" in uri for uri in listed)


@pytest.mark.softhsm
def test_sign_not_permitted_unusable(tokens: Tokens, provider: Pkcs11Provider) -> None:
    label, _ = create_foreign_key(tokens.main, KeyAlgorithm.EC_P256, sign=False)
    uri = foreign_uri(tokens.main, label)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)

    with pytest.raises(KeyUnusableError) as raised:
        self_signed(provider.private_key(uri), scheme)
    assert "CKR_KEY_FUNCTION_NOT_PERMITTED" in str(raised.value)
    assert uri in str(raised.value)


@pytest.mark.softhsm
def test_wrong_pin_access_denied(tokens: Tokens) -> None:
    wrong = make_provider(tokens.login, pin_variable=WRONG_PIN_VARIABLE)
    try:
        with pytest.raises(AccessDeniedError) as raised:
            wrong.list_keys()
    finally:
        wrong.close()

    message = str(raised.value)
    assert "CKR_PIN_INCORRECT" in message
    assert WRONG_PIN not in message
    assert tokens.login.pin not in message
    assert WRONG_PIN_VARIABLE in message


@pytest.mark.softhsm
def test_right_pin_after_wrong(tokens: Tokens) -> None:
    right = make_provider(tokens.login)
    try:
        keys = right.list_keys()
    finally:
        right.close()

    assert keys == []


@pytest.mark.softhsm
def test_second_pin_on_shared_login(tokens: Tokens, provider: Pkcs11Provider) -> None:
    # The main token is already logged in by the module's provider, so the
    # token would accept any PIN; the provider compares it instead.
    wrong = make_provider(tokens.main, pin_variable=WRONG_PIN_VARIABLE)
    try:
        with pytest.raises(AccessDeniedError) as raised:
            wrong.list_keys()
    finally:
        wrong.close()

    assert WRONG_PIN not in str(raised.value)
    assert tokens.main.pin not in str(raised.value)


@pytest.mark.softhsm
def test_missing_token_permanent(tokens: Tokens) -> None:
    absent = SoftHsmToken(
        tokens.main.module, "no-such-token", "", "", tokens.main.config
    )
    missing = make_provider(absent)

    with pytest.raises(ProviderPermanentError) as raised:
        missing.list_keys()
    assert "no-such-token" in str(raised.value)


@pytest.mark.softhsm
def test_missing_module_permanent(tokens: Tokens) -> None:
    settings = Pkcs11Settings.model_validate(
        {
            "type": "pkcs11",
            "module": "/nonexistent/libpkcs11.so",
            "token": "t",
            "pin": f"${{env:{PIN_VARIABLE}}}",
        }
    )
    missing = Pkcs11Provider(settings, ProviderContext("hsm", "conf"))

    with pytest.raises(ProviderPermanentError) as raised:
        missing.list_keys()
    assert "/nonexistent/libpkcs11.so" in str(raised.value)


@pytest.mark.softhsm
def test_check_reports_token(provider: Pkcs11Provider) -> None:
    status = provider.check()

    assert status.reachable
    assert "pkifed-main" in status.identity
    assert "SoftHSM" in status.identity
    assert status.protection_levels == frozenset({ProtectionLevel.HSM})
    assert KeyAlgorithm.EC_P256 in status.algorithms


@pytest.mark.softhsm
# python-pkcs11 0.10 ends an interrupted object search in a destructor, which
# raises CKR_SESSION_HANDLE_INVALID on the closed session; Python can only
# print that, and pytest turns the print into this warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_session_reopens_after_loss(provider: Pkcs11Provider) -> None:
    info = provider.find_or_create_key(unique_name("reopen"), KeyAlgorithm.EC_P256)
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)
    shared = provider._shared
    assert shared is not None
    # Close the session under the provider, as a token reset would.
    shared.session.close()

    certificate = self_signed(provider.private_key(info.uri), scheme)

    certificate.verify_directly_issued_by(certificate)
    assert provider._shared is not shared


@pytest.mark.softhsm
def test_real_ec_point_is_der(tokens: Tokens, provider: Pkcs11Provider) -> None:
    name = unique_name("point")
    provider.find_or_create_key(name, KeyAlgorithm.EC_P256)
    with open_direct(tokens.main) as session:
        public = session.get_key(ObjectClass.PUBLIC_KEY, label=f"conf/{name}")
        stored = bytes(public[Attribute.EC_POINT])

    assert stored[:2] == b"\x04\x41"
    assert len(decode_ec_point(stored, KeyAlgorithm.EC_P256)) == 65


# --- CKA_EC_POINT encodings ---------------------------------------------------------


def der_octet_string(content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([0x04, len(content)]) + content
    return bytes([0x04, 0x81, len(content)]) + content


@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.EC_P521]
)
def test_ec_point_both_encodings(algorithm: KeyAlgorithm) -> None:
    point = (
        ec.generate_private_key(algorithm.curve)
        .public_key()
        .public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )

    assert decode_ec_point(point, algorithm) == point
    assert decode_ec_point(der_octet_string(point), algorithm) == point


def test_ed25519_point_both_encodings() -> None:
    point = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()

    assert decode_ec_point(point, KeyAlgorithm.ED25519) == point
    assert decode_ec_point(der_octet_string(point), KeyAlgorithm.ED25519) == point


@pytest.mark.parametrize(
    "value",
    [b"\x04" * 10, b"\x04\x41" + b"\x04" * 64, b"\x04\x42" + b"\x04" * 65 + b"\x00"],
)
def test_ec_point_bad_length(value: bytes) -> None:
    with pytest.raises(ProviderPermanentError):
        decode_ec_point(value, KeyAlgorithm.EC_P256)


def test_missing_token_names_softhsm_config(tokens: Tokens) -> None:
    absent = dataclasses.replace(tokens.main, label="pkifed-absent")
    provider = make_provider(absent)
    try:
        with pytest.raises(ProviderPermanentError) as raised:
            provider.find_key("root")
    finally:
        provider.close()
    message = str(raised.value)
    assert "no token with this label" in message
    assert f"SOFTHSM2_CONF ({os.environ['SOFTHSM2_CONF']})" in message


# --- error table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (p11.PinIncorrect(), AccessDeniedError),
        (p11.PinLocked(), AccessDeniedError),
        (p11.NoSuchToken(), ProviderPermanentError),
        (p11.TokenNotPresent(), ProviderTemporaryError),
        (p11.DeviceRemoved(), ProviderTemporaryError),
        (p11.MechanismInvalid(), UnsupportedAlgorithmError),
        (p11.NoSuchKey(), KeyNotFoundError),
        (p11.PKCS11Error("Unmapped error code 0x68"), KeyUnusableError),
        (p11.PKCS11Error("Unmapped error code 0x999"), ProviderPermanentError),
    ],
)
def test_error_table(error: p11.PKCS11Error, expected: type[Exception]) -> None:
    assert pkcs11_provider._mapping_of(error).error is expected


def test_settings_reject_literal_pin() -> None:
    with pytest.raises(ValueError, match="secret reference") as raised:
        Pkcs11Settings.model_validate(
            {"type": "pkcs11", "module": "/x.so", "token": "t", "pin": "123456"}
        )
    assert "123456" not in str(raised.value)


# --- RFC 7512 URIs ------------------------------------------------------------------

# Examples from RFC 7512 section 3.
RFC_EXAMPLES = [
    "pkcs11:",
    "pkcs11:object=my-pubkey;type=public",
    "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
    "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;"
    "manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;"
    "id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
    "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
    "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
    "pkcs11:slot-description=Sun%20Metaslot",
    "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
    "library-description=Soft%20Token%20Library;library-version=1.23",
    "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;"
    "id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
    "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;"
    "type=cert",
    "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;"
    "object=my-certificate;type=cert",
    "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a"
    "?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
]


@pytest.mark.parametrize("text", RFC_EXAMPLES)
def test_uri_rfc_example_round_trip(text: str) -> None:
    parsed = parse_pkcs11_uri(text)
    rebuilt = str(parsed)

    assert parse_pkcs11_uri(rebuilt) == parsed
    assert len(rebuilt) == len(text)


def test_uri_decodes_values() -> None:
    parsed = parse_pkcs11_uri(RFC_EXAMPLES[3])

    assert parsed.token == "The Software PKCS#11 Softtoken"
    assert parsed.object == "my-certificate"
    assert parsed.id == bytes.fromhex("69953e5cf4bdec91")
    assert parsed.type == "cert"
    assert ("manufacturer", "Snake Oil, Inc.") in parsed.path_attributes
    assert ("serial", "") in parsed.path_attributes
    assert parsed.query_attributes == (("pin-source", "file:/etc/token_pin"),)


def test_uri_decodes_utf8_and_percent() -> None:
    assert parse_pkcs11_uri(RFC_EXAMPLES[10]).token == (
        "Name with a small A with acute: \u00e1"
    )
    assert parse_pkcs11_uri(RFC_EXAMPLES[9]).token == "A name with a substring %;"


def test_uri_builds_encoded_label() -> None:
    uri = Pkcs11Uri(
        token="CA token", object="prod/root;1", id=b"\x00\xff", type="private"
    )

    assert str(uri) == (
        "pkcs11:token=CA%20token;object=prod%2Froot%3B1;id=%00%ff;type=private"
    )
    assert parse_pkcs11_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "file:/tmp/key.pem",
        "pkcs11:object=a;object=b",
        "pkcs11:object=with space",
        "pkcs11:object=bad%zz",
        "pkcs11:object",
        "pkcs11:type=secret",
        "pkcs11:token=%ff%fe",
    ],
)
def test_uri_invalid_rejected(text: str) -> None:
    with pytest.raises(Pkcs11UriError):
        parse_pkcs11_uri(text)


def test_uri_pin_value_rejected_unrepeated() -> None:
    with pytest.raises(Pkcs11UriError) as raised:
        parse_pkcs11_uri("pkcs11:token=t;object=k?pin-value=s3cret-pin")

    assert "s3cret-pin" not in str(raised.value)
    assert "pin-value" in str(raised.value)

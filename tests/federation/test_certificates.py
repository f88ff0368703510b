"""CA certificate building: the RFC 5280 properties every issued certificate has."""

from __future__ import annotations

import datetime

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from pkifed.config.names import build_name_constraints, parse_subject
from pkifed.config.schema import NameConstraintsConfig
from pkifed.errors import UnsupportedAlgorithmError
from pkifed.federation.certificates import (
    CaProfile,
    IssuanceError,
    Issuer,
    build_ca_certificate,
    subject_key_identifier,
)
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    RsaPadding,
    SignatureScheme,
)

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
BACKDATE = datetime.timedelta(minutes=5)


def profile(
    subject: str,
    algorithm: KeyAlgorithm,
    validity_days: int,
    path_length: int | None = None,
    constraints: x509.NameConstraints | None = None,
    padding_: RsaPadding | None = None,
) -> CaProfile:
    return CaProfile(
        subject=parse_subject(subject),
        validity=datetime.timedelta(days=validity_days),
        path_length=path_length,
        name_constraints=constraints,
        scheme=SignatureScheme.default_for(algorithm, padding_),
    )


def make_root(
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P384, now: datetime.datetime = NOW
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(algorithm.curve)
    root_profile = profile("CN=Root,O=Example", algorithm, 7300, path_length=1)
    certificate = build_ca_certificate(
        root_profile,
        key.public_key(),
        issuer=None,
        self_signing_key=key,
        now=now,
        backdate=BACKDATE,
    )
    return certificate, key


def issue_child(
    parent: x509.Certificate,
    parent_key: ec.EllipticCurvePrivateKey,
    validity_days: int = 1825,
    constraints: x509.NameConstraints | None = None,
    now: datetime.datetime = NOW,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    parent_algorithm = KeyAlgorithm(f"ec-p{parent_key.curve.key_size}")
    return build_ca_certificate(
        profile(
            "CN=Issuing,O=Example",
            KeyAlgorithm.EC_P256,
            validity_days,
            path_length=0,
            constraints=constraints,
        ),
        key.public_key(),
        issuer=Issuer(
            parent, parent_key, SignatureScheme.default_for(parent_algorithm)
        ),
        now=now,
        backdate=BACKDATE,
    )


def test_serial_positive_and_short() -> None:
    root, _ = make_root()

    assert root.serial_number > 0
    assert root.serial_number.bit_length() <= 159


def test_serials_differ() -> None:
    root, key = make_root()
    serials = {issue_child(root, key).serial_number for _ in range(20)}

    assert len(serials) == 20


def test_issuer_copied_byte_for_byte() -> None:
    root, key = make_root()
    child = issue_child(root, key)
    parsed_root = asn1_x509.Certificate.load(
        root.public_bytes(serialization.Encoding.DER)
    )
    parsed_child = asn1_x509.Certificate.load(
        child.public_bytes(serialization.Encoding.DER)
    )

    assert (
        parsed_child["tbs_certificate"]["issuer"].dump()
        == parsed_root["tbs_certificate"]["subject"].dump()
    )


def test_aki_equals_parent_ski() -> None:
    root, key = make_root()
    child = issue_child(root, key)
    aki = child.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)

    assert aki.value.key_identifier == subject_key_identifier(root)
    assert aki.value.authority_cert_issuer is None


def test_root_has_no_aki() -> None:
    root, _ = make_root()

    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_basic_constraints_and_key_usage_critical() -> None:
    root, key = make_root()
    child = issue_child(root, key)
    constraints = child.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = child.extensions.get_extension_for_class(x509.KeyUsage)

    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature


def test_not_before_backdated() -> None:
    root, key = make_root(now=NOW - datetime.timedelta(days=30))
    child = issue_child(root, key)

    assert child.not_valid_before_utc == NOW - BACKDATE


def test_not_before_never_before_parent() -> None:
    # A replica whose clock runs two minutes behind the one that issued the root.
    root, key = make_root()
    child = issue_child(root, key, now=NOW - datetime.timedelta(minutes=2))

    assert child.not_valid_before_utc == root.not_valid_before_utc


def test_not_after_capped_at_parent() -> None:
    root, key = make_root()
    child = issue_child(root, key, validity_days=9000)

    assert child.not_valid_after_utc == root.not_valid_after_utc


def test_name_constraints_critical() -> None:
    root, key = make_root()
    constraints = build_name_constraints(
        NameConstraintsConfig(permitted=["dns:example.com"], excluded=["ip:10.0.0.0/8"])
    )
    child = issue_child(root, key, constraints=constraints)
    extension = child.extensions.get_extension_for_class(x509.NameConstraints)

    assert extension.critical
    assert extension.value == constraints


@pytest.mark.parametrize(
    ("algorithm", "hash_name"),
    [
        (KeyAlgorithm.EC_P256, "sha256"),
        (KeyAlgorithm.EC_P384, "sha384"),
        (KeyAlgorithm.EC_P521, "sha512"),
    ],
)
def test_hash_follows_curve(algorithm: KeyAlgorithm, hash_name: str) -> None:
    root, _ = make_root(algorithm)

    assert root.signature_hash_algorithm is not None
    assert root.signature_hash_algorithm.name == hash_name


def test_hash_mismatch_refused() -> None:
    with pytest.raises(UnsupportedAlgorithmError):
        SignatureScheme(KeyAlgorithm.EC_P256, HashName.SHA384)


def test_scheme_for_other_key_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    wrong = profile("CN=Root", KeyAlgorithm.EC_P384, 365)

    with pytest.raises(IssuanceError):
        build_ca_certificate(
            wrong,
            key.public_key(),
            issuer=None,
            self_signing_key=key,
            now=NOW,
            backdate=BACKDATE,
        )


def test_pss_salt_is_digest_length() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root_profile = profile(
        "CN=Root", KeyAlgorithm.RSA_2048, 365, padding_=RsaPadding.PSS
    )
    root = build_ca_certificate(
        root_profile,
        key.public_key(),
        issuer=None,
        self_signing_key=key,
        now=NOW,
        backdate=BACKDATE,
    )
    parameters = root.signature_algorithm_parameters

    assert isinstance(parameters, padding.PSS)
    assert parameters._salt_length == 32
    key.public_key().verify(
        root.signature,
        root.tbs_certificate_bytes,
        padding.PSS(padding.MGF1(hashes.SHA256()), 32),
        hashes.SHA256(),
    )


def test_expired_issuer_refused() -> None:
    root, key = make_root(now=NOW - datetime.timedelta(days=8000))

    with pytest.raises(IssuanceError, match="expired"):
        issue_child(root, key)


def test_profile_differences_detected() -> None:
    root, _ = make_root()
    same = profile("CN=Root,O=Example", KeyAlgorithm.EC_P384, 7300, path_length=1)
    changed = profile("CN=Root,O=Other", KeyAlgorithm.EC_P384, 7300, path_length=2)

    assert same.differences(root) == []
    assert len(changed.differences(root)) == 2

"""Tests of the bundle formats: PEM, DER, PKCS#7 and SPIFFE JSON."""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from pkifed.federation.bundles import pem_bundle
from pkifed.federation.formats import (
    BundleFormat,
    BundleFormatError,
    decode_spiffe_bundle,
    encode_bundle,
    object_suffix,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def self_signed(name: str, key: PrivateKey) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


@pytest.fixture(scope="module")
def certificates() -> list[x509.Certificate]:
    return [
        self_signed("Root P-256", ec.generate_private_key(ec.SECP256R1())),
        self_signed("Root P-521", ec.generate_private_key(ec.SECP521R1())),
        self_signed("Root RSA", rsa.generate_private_key(65537, 2048)),
        self_signed("Root Ed25519", ed25519.Ed25519PrivateKey.generate()),
    ]


def openssl(*arguments: str) -> str:
    result = subprocess.run(
        ["openssl", *arguments], capture_output=True, check=True, text=True
    )
    return result.stdout


def fingerprints(certificates: list[x509.Certificate]) -> list[bytes]:
    return [c.fingerprint(hashes.SHA256()) for c in certificates]


def test_pem_matches_pem_bundle(certificates: list[x509.Certificate]) -> None:
    encoded = encode_bundle(certificates, "pem")
    assert encoded == pem_bundle(certificates)
    assert len(x509.load_pem_x509_certificates(encoded)) == len(certificates)


def test_pem_parsed_by_openssl(
    certificates: list[x509.Certificate], tmp_path: Path
) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(encode_bundle(certificates, BundleFormat.PEM))
    output = openssl("crl2pkcs7", "-nocrl", "-certfile", str(path), "-outform", "PEM")
    (tmp_path / "bundle.p7").write_text(output)
    printed = openssl("pkcs7", "-in", str(tmp_path / "bundle.p7"), "-print_certs")
    assert printed.count("BEGIN CERTIFICATE") == len(certificates)


def test_der_parsed_by_openssl(
    certificates: list[x509.Certificate], tmp_path: Path
) -> None:
    path = tmp_path / "root.der"
    path.write_bytes(encode_bundle(certificates[:1], "der"))
    output = openssl("x509", "-inform", "DER", "-in", str(path), "-noout", "-subject")
    assert "Root P-256" in output


def test_der_needs_one_certificate(certificates: list[x509.Certificate]) -> None:
    with pytest.raises(BundleFormatError, match="exactly one certificate, got 2"):
        encode_bundle(certificates[:2], "der")
    with pytest.raises(BundleFormatError, match="got 0"):
        encode_bundle([], "der")


def test_der_counts_duplicates_once(certificates: list[x509.Certificate]) -> None:
    encoded = encode_bundle([certificates[0], certificates[0]], "der")
    assert x509.load_der_x509_certificate(encoded) == certificates[0]


def test_pkcs7_parsed_by_openssl(
    certificates: list[x509.Certificate], tmp_path: Path
) -> None:
    path = tmp_path / "bundle.p7b"
    path.write_bytes(encode_bundle(certificates, "pkcs7"))
    output = openssl("pkcs7", "-inform", "DER", "-in", str(path), "-print_certs")
    assert output.count("BEGIN CERTIFICATE") == len(certificates)
    for name in ("Root P-256", "Root P-521", "Root RSA", "Root Ed25519"):
        assert f"CN = {name}" in output


def test_pkcs7_needs_a_certificate() -> None:
    with pytest.raises(BundleFormatError, match="at least one"):
        encode_bundle([], "pkcs7")


def test_spiffe_round_trip(certificates: list[x509.Certificate]) -> None:
    encoded = encode_bundle(certificates, "spiffe", sequence=7)
    decoded = decode_spiffe_bundle(encoded)
    assert sorted(fingerprints(decoded)) == sorted(fingerprints(certificates))


def test_spiffe_document_fields(certificates: list[x509.Certificate]) -> None:
    document = json.loads(
        encode_bundle(certificates, "spiffe", sequence=3, refresh_hint=300)
    )
    assert document["spiffe_sequence"] == 3
    assert document["spiffe_refresh_hint"] == 300
    assert len(document["keys"]) == len(certificates)
    for entry in document["keys"]:
        assert entry["use"] == "x509-svid"
        assert "kid" not in entry
        assert len(entry["x5c"]) == 1
    assert "spiffe_refresh_hint" not in json.loads(encode_bundle([], "spiffe"))


def test_spiffe_key_parameters(certificates: list[x509.Certificate]) -> None:
    document = json.loads(encode_bundle(certificates, "spiffe"))
    by_subject = {}
    for entry in document["keys"]:
        der = base64.b64decode(entry["x5c"][0])
        certificate = x509.load_der_x509_certificate(der)
        by_subject[certificate.subject.rfc4514_string()] = (entry, certificate)

    entry, certificate = by_subject["CN=Root P-521"]
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert (entry["kty"], entry["crv"]) == ("EC", "P-521")
    x = base64.urlsafe_b64decode(entry["x"] + "==")
    assert len(x) == 66
    assert int.from_bytes(x, "big") == key.public_numbers().x

    entry, certificate = by_subject["CN=Root RSA"]
    rsa_key = certificate.public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    assert entry["kty"] == "RSA"
    assert entry["e"] == "AQAB"
    n = base64.urlsafe_b64decode(entry["n"] + "==")
    assert int.from_bytes(n, "big") == rsa_key.public_numbers().n
    assert n[0] != 0

    entry, certificate = by_subject["CN=Root Ed25519"]
    assert (entry["kty"], entry["crv"]) == ("OKP", "Ed25519")
    raw = certificate.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.urlsafe_b64decode(entry["x"] + "=") == raw


def test_spiffe_json_is_canonical(certificates: list[x509.Certificate]) -> None:
    encoded = encode_bundle(certificates, "spiffe", refresh_hint=60)
    document = json.loads(encoded)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert encoded == canonical.encode()
    assert b" " not in encoded
    assert b"\n" not in encoded


def test_spiffe_rejects_bad_numbers(certificates: list[x509.Certificate]) -> None:
    with pytest.raises(BundleFormatError, match="sequence"):
        encode_bundle(certificates, "spiffe", sequence=-1)
    with pytest.raises(BundleFormatError, match="refresh hint"):
        encode_bundle(certificates, "spiffe", refresh_hint=0)


def test_spiffe_decode_skips_other_uses(certificates: list[x509.Certificate]) -> None:
    document = json.loads(encode_bundle(certificates[:1], "spiffe"))
    document["keys"].append({"kty": "EC", "use": "jwt-svid", "kid": "a"})
    document["keys"].append({"kty": "EC", "use": "x509-svid"})
    decoded = decode_spiffe_bundle(json.dumps(document).encode())
    assert decoded == certificates[:1]


@pytest.mark.parametrize("name", ["pem", "pkcs7", "spiffe"])
def test_order_independent(certificates: list[x509.Certificate], name: str) -> None:
    outputs = {
        encode_bundle(list(order), name)
        for order in itertools.permutations(certificates)
    }
    assert len(outputs) == 1
    with_duplicates = encode_bundle([*certificates, certificates[1]], name)
    assert outputs == {with_duplicates}


def test_object_suffixes() -> None:
    assert object_suffix("pem") == ".pem"
    assert object_suffix(BundleFormat.DER) == ".der"
    assert object_suffix("pkcs7") == ".p7b"
    assert object_suffix("spiffe") == ".json"
    with pytest.raises(BundleFormatError, match="unknown bundle format 'jks'"):
        object_suffix("jks")

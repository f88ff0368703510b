"""A CRL with many entries: pkifed's path against ``openssl ca -gencrl``.

Both sign the same entries with the same P-384 key. pkifed builds the CRL
with pyca's CertificateRevocationListBuilder and signs through the local
provider's remote key. openssl reads the same key, decrypted into a temporary
PEM file, and an index.txt that lists every entry as revoked. Only the
-gencrl step is timed, process start included, because that is what an
operator runs.
"""

from __future__ import annotations

import datetime
import os
import random
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bench.report import Row, Section
from bench.signing import NOW, _name, _provider
from pkifed.federation.certificates import CaProfile, build_ca_certificate
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme
from pkifed.providers.base import RemoteKey

REVOKED_AT = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
CRL_NUMBER = 4096

_OPENSSL_CONFIG = """\
[ca]
default_ca = bench_ca

[bench_ca]
dir = {directory}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca-key.pem
default_md = sha384
default_crl_days = 7
crl_extensions = crl_extensions

[crl_extensions]
authorityKeyIdentifier = keyid:always
"""


def _serials(count: int) -> list[int]:
    # Fixed seed, so every run revokes the same serials; 127 bits keeps them
    # positive and under RFC 5280's 20 octets.
    generator = random.Random(count)
    return sorted({generator.getrandbits(127) | 1 << 126 for _ in range(count)})


def _pkifed_crl(
    ca: x509.Certificate, signer: RemoteKey, serials: list[int]
) -> x509.CertificateRevocationList:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(REVOKED_AT)
        .build()
        for serial in serials
    ]
    # The entries go to the constructor in one list, as pkifed.federation.crl
    # passes them, because add_revoked_certificate copies the list on every
    # call, which is quadratic in the number of entries.
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(ca.subject)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(days=7))
        .add_extension(x509.CRLNumber(CRL_NUMBER), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), False)
    )
    return builder.sign(signer, hashes.SHA384())


def _openssl_directory(
    directory: Path, ca: x509.Certificate, private_pem: bytes, serials: list[int]
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "ca-key.pem"
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "crlnumber").write_text(f"{CRL_NUMBER:X}\n", encoding="ascii")
    expiry = "310101000000Z"
    revoked = REVOKED_AT.strftime("%y%m%d%H%M%SZ")
    # index.txt columns (openssl-ca(1), "database"): status, expiry,
    # revocation date, serial in hex, file name, subject.
    lines = [
        f"R\t{expiry}\t{revoked}\t{serial:X}\tunknown\t/CN=revoked {serial:X}\n"
        for serial in serials
    ]
    (directory / "index.txt").write_text("".join(lines), encoding="ascii")
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(directory=directory), encoding="ascii")
    return config


def _openssl_verify(crl: Path, ca: Path, der: bool) -> bool:
    result = subprocess.run(
        [
            "openssl",
            "crl",
            "-in",
            str(crl),
            "-inform",
            "DER" if der else "PEM",
            "-CAfile",
            str(ca),
            "-verify",
            "-noout",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and "verify OK" in result.stdout + result.stderr


def run(directory: Path, count: int) -> Section:
    """Build and sign a ``count``-entry CRL both ways, verify both, compare times."""
    section = Section()
    provider = _provider(directory / "keys")
    info = provider.find_or_create_key("crl-issuer", KeyAlgorithm.EC_P384)
    signer = provider.private_key(info.uri)
    ca = build_ca_certificate(
        CaProfile(
            _name("Bench CRL Issuer"),
            datetime.timedelta(days=3650),
            None,
            None,
            SignatureScheme.default_for(KeyAlgorithm.EC_P384),
        ),
        signer.public_key(),
        issuer=None,
        self_signing_key=signer,
        now=NOW,
        backdate=datetime.timedelta(0),
    )
    serials = _serials(count)

    start = time.perf_counter()
    crl = _pkifed_crl(ca, signer, serials)
    pkifed_seconds = time.perf_counter() - start
    pkifed_path = directory / "pkifed.crl"
    pkifed_path.write_bytes(crl.public_bytes(serialization.Encoding.DER))

    passphrase = provider._settings.passphrase.resolve().encode()
    key_file = Path(info.uri.removeprefix("file:"))
    private_key = serialization.load_pem_private_key(key_file.read_bytes(), passphrase)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    openssl_directory = directory / "openssl-ca"
    config = _openssl_directory(openssl_directory, ca, private_pem, serials)
    openssl_path = openssl_directory / "openssl.crl"
    start = time.perf_counter()
    subprocess.run(
        ["openssl", "ca", "-config", str(config), "-gencrl", "-out", str(openssl_path)],
        capture_output=True,
        check=True,
    )
    openssl_seconds = time.perf_counter() - start
    (openssl_directory / "ca-key.pem").unlink()

    ca_path = openssl_directory / "ca.pem"
    openssl_crl = x509.load_pem_x509_crl(openssl_path.read_bytes())
    both_verify = _openssl_verify(pkifed_path, ca_path, der=True) and _openssl_verify(
        openssl_path, ca_path, der=False
    )
    same_entries = len(crl) == len(openssl_crl) == len(serials)
    section.rows.append(
        Row(
            f"CRL: {len(serials)} entries, ec-p384",
            f"{pkifed_seconds * 1000:.0f} ms",
            f"{openssl_seconds * 1000:.0f} ms (openssl ca -gencrl)",
            f"{pkifed_seconds / openssl_seconds:.2f}x openssl's time",
            "both verify",
            "met" if both_verify and same_entries else "missed: verification failed",
        )
    )
    section.details.append(
        f"CRL sizes: pkifed {len(crl.public_bytes(serialization.Encoding.DER))} "
        f"bytes DER, openssl "
        f"{len(openssl_crl.public_bytes(serialization.Encoding.DER))} bytes DER; "
        f"entries {len(crl)} and {len(openssl_crl)}; openssl crl -verify: "
        f"{'OK for both' if both_verify else 'FAILED'}"
    )
    return section

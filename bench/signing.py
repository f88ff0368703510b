"""Signing through pkifed's signer interface against pyca with the key in memory.

The limit is pyca's CertificateBuilder signing with the private key loaded
into this process. pkifed signs the same certificates through
``KeyProvider.private_key``, which hashes locally and sends the digest to
the local provider, and through ``build_ca_certificate``, the path every CA
certificate takes.
"""

from __future__ import annotations

import cProfile
import datetime
import pstats
import random
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from bench.federation import PASSPHRASE_VARIABLE
from bench.report import Row, Section, at_least
from pkifed.federation.certificates import (
    CaProfile,
    Issuer,
    build_ca_certificate,
    signing_arguments,
)
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme
from pkifed.providers.base import ProviderContext, _hash_locally
from pkifed.providers.local import LocalProvider, LocalSettings
from pkifed.providers.retry import call_with_retry

TARGET_RATIO = 0.9
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _provider(directory: Path) -> LocalProvider:
    settings = LocalSettings(
        type="local",
        path=str(directory),
        passphrase="${env:" + PASSPHRASE_VARIABLE + "}",  # type: ignore[arg-type]
    )
    return LocalProvider(settings, ProviderContext("bench-keys", "bench"))


class _Signers:
    """One key in the local keystore, as pyca's key and as pkifed's remote key."""

    def __init__(self, provider: LocalProvider, algorithm: KeyAlgorithm) -> None:
        info = provider.find_or_create_key(f"signing-{algorithm}", algorithm)
        self.remote = provider.private_key(info.uri)
        # The same key, decrypted from its file with the keystore's passphrase,
        # exactly as an operator would load it into a tool of their own.
        path = Path(info.uri.removeprefix("file:"))
        self.memory = serialization.load_pem_private_key(
            path.read_bytes(), provider._settings.passphrase.resolve().encode()
        )
        self.scheme = SignatureScheme.default_for(algorithm)
        self.hash, _ = signing_arguments(self.scheme)
        subject_key = provider.find_or_create_key(f"subject-{algorithm}", algorithm)
        self.subject_public = provider.public_key(subject_key.uri)
        self.issuer = self._issuer_certificate()

    def _issuer_certificate(self) -> x509.Certificate:
        profile = CaProfile(
            _name("Bench Issuer"),
            datetime.timedelta(days=3650),
            None,
            None,
            self.scheme,
        )
        return build_ca_certificate(
            profile,
            self.remote.public_key(),
            issuer=None,
            self_signing_key=self.remote,
            now=NOW,
            backdate=datetime.timedelta(0),
        )

    def plain_certificate(self, key: object, serial: int) -> x509.Certificate:
        """Build a small certificate directly with pyca's builder."""
        return (
            x509.CertificateBuilder()
            .subject_name(_name("Bench Subject"))
            .issuer_name(self.issuer.subject)
            .public_key(self.subject_public)
            .serial_number(serial)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=90))
            .sign(key, self.hash)  # type: ignore[arg-type]
        )

    def ca_certificate_limit(self, serial: int) -> x509.Certificate:
        """Build the CA certificate that build_ca_certificate makes, with pyca only."""
        public = self.subject_public
        issuer_ski = self.issuer.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        return (
            x509.CertificateBuilder()
            .subject_name(_name("Bench CA"))
            .issuer_name(self.issuer.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(_CA_KEY_USAGE, True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
            .add_extension(
                x509.AuthorityKeyIdentifier(issuer_ski.digest, None, None), False
            )
            .sign(self.memory, self.hash)  # type: ignore[arg-type]
        )

    def ca_certificate_pkifed(self, serial: int) -> x509.Certificate:
        """Issue a CA certificate the way the reconciler issues one."""
        profile = CaProfile(
            _name("Bench CA"), datetime.timedelta(days=1825), 0, None, self.scheme
        )
        return build_ca_certificate(
            profile,
            self.subject_public,  # type: ignore[arg-type]
            issuer=Issuer(self.issuer, self.remote, self.scheme),
            now=NOW,
            backdate=datetime.timedelta(0),
            serial_number=serial,
        )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _rate(make: Callable[[int], x509.Certificate], count: int) -> float:
    start = time.perf_counter()
    for serial in range(1, count + 1):
        make(serial)
    return count / (time.perf_counter() - start)


def _best_rates(
    limit: Callable[[int], x509.Certificate],
    pkifed: Callable[[int], x509.Certificate],
    count: int,
    rounds: int,
) -> tuple[float, float]:
    """Alternate the two paths round by round and keep each one's best rate.

    Alternating exposes both to the same background load, and the best round
    is the one least disturbed by it.
    """
    best_limit = best_pkifed = 0.0
    for _ in range(rounds):
        best_limit = max(best_limit, _rate(limit, count))
        best_pkifed = max(best_pkifed, _rate(pkifed, count))
    return best_limit, best_pkifed


def _row(label: str, limit: float, pkifed: float) -> Row:
    ratio = pkifed / limit
    return Row(
        label,
        f"{pkifed:,.0f} cert/s",
        f"{limit:,.0f} cert/s (pyca, key in memory)",
        f"{ratio:.2f}",
        f">= {TARGET_RATIO}",
        at_least(ratio, TARGET_RATIO),
    )


def _profile(signers: _Signers, count: int) -> list[str]:
    """Name the pkifed functions that take the most time per signature."""
    profiler = cProfile.Profile()
    profiler.enable()
    for serial in range(1, count + 1):
        signers.plain_certificate(signers.remote, serial)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, function), values in stats.stats.items():  # type: ignore[attr-defined]
        own_time, cumulative = values[2], values[3]
        if "/pkifed/" in filename or filename.endswith("random.py"):
            short = filename.rsplit("/", 2)[-2:]
            label = f"{'/'.join(short)}:{line} {function}"
            entries.append((own_time, cumulative, label))
    entries.sort(reverse=True)
    lines = [
        f"  {own / count * 1e6:6.2f} us own, {cumulative / count * 1e6:6.2f} us "
        f"cumulative per signature: {label}"
        for own, cumulative, label in entries[:8]
    ]
    return [
        "Profile of the ec-p256 RemoteKey path (cProfile, which inflates small "
        "Python calls; read it for the ranking, not the absolute times):",
        *lines,
    ]


def _microseconds(call: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count * 1e6


def _components(signers: _Signers, provider: LocalProvider, count: int) -> list[str]:
    """Time each step the RemoteKey path adds to pyca's own signing."""
    uri = signers.remote.uri
    scheme = signers.scheme
    digest = _hash_locally(b"to be signed", hashes.SHA256())
    prehashed = ec.ECDSA(Prehashed(hashes.SHA256()))
    memory = signers.memory
    steps = [
        (
            "pyca signs the digest, key in memory",
            lambda: memory.sign(digest, prehashed),
        ),  # type: ignore[union-attr, call-arg]
        (
            "KeyProvider.sign_digest, in all",
            lambda: provider.sign_digest(uri, scheme, digest),
        ),
        (
            "LocalProvider._sign_digest",
            lambda: provider._sign_digest(uri, scheme, digest),
        ),
        (
            "call_with_retry around a no-op",
            lambda: call_with_retry(
                lambda: None, provider.settings.retry, description=""
            ),
        ),
        ("of which random.Random() for the jitter", random.Random),
        ("LocalProvider._usable_key", lambda: provider._usable_key(uri)),
        ("SignatureScheme()", lambda: SignatureScheme(scheme.key, scheme.hash)),
        (
            "hashing the message locally",
            lambda: _hash_locally(b"x" * 400, hashes.SHA256()),
        ),
    ]
    return [
        "Steps of one ec-p256 signature through the local provider, timed alone:",
        *(f"  {_microseconds(call, count):7.2f} us  {label}" for label, call in steps),
    ]


def run(directory: Path, count: int, rounds: int) -> Section:
    """Measure certificates per second on both paths for P-256 and P-384 keys."""
    section = Section()
    provider = _provider(directory / "keys")
    for algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384):
        signers = _Signers(provider, algorithm)
        limit, pkifed = _best_rates(
            lambda serial, s=signers: s.plain_certificate(s.memory, serial),
            lambda serial, s=signers: s.plain_certificate(s.remote, serial),
            count,
            rounds,
        )
        section.rows.append(_row(f"signing {algorithm}: RemoteKey", limit, pkifed))
        limit, pkifed = _best_rates(
            signers.ca_certificate_limit, signers.ca_certificate_pkifed, count, rounds
        )
        section.rows.append(
            _row(f"signing {algorithm}: build_ca_certificate", limit, pkifed)
        )
        if algorithm is KeyAlgorithm.EC_P256:
            section.details.extend(_components(signers, provider, count * 5))
            section.details.extend(_profile(signers, count))
    return section

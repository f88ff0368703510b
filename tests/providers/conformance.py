"""The conformance kit every key provider's tests run.

A provider's test module subclasses :class:`ProviderConformance` and defines a
``harness`` fixture returning a :class:`ProviderHarness` wired to a real service
(SoftHSM2, moto's server, the project's GCP and Azure fakes, or a temporary
directory). Every signature is verified offline with the exported public key,
never with the service's own verify.
"""

from __future__ import annotations

import datetime
import pathlib
import subprocess
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from pkifed.errors import (
    KeyNotFoundError,
    KeyUnusableError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)
from pkifed.providers.base import KeyProvider, KeyState, ProtectionLevel


class FaultInjector(Protocol):
    """Tells a local service to misbehave for the next requests."""

    def throttle(self, count: int) -> None:
        """Throttle the next ``count`` signing requests."""

    def fail(self, count: int) -> None:
        """Fail the next ``count`` signing requests with a server error (500)."""

    def disable_key(self, uri: str) -> None:
        """Disable the key at ``uri`` in the service."""

    def clear(self) -> None:
        """Stop all injected faults."""


@dataclass
class ProviderHarness:
    """A provider under test and the levers its service offers the kit."""

    provider: KeyProvider
    algorithms: list[KeyAlgorithm]
    protection_level: ProtectionLevel
    # Builds a second provider instance on the same service, as a restarted
    # process would, to prove find-or-create survives a crash.
    reopen: Callable[[], KeyProvider]
    # Creates a key outside the federation's namespace and returns its URI.
    create_foreign_key: Callable[[KeyAlgorithm], str]
    faults: FaultInjector | None = None
    # Extra schemes beyond each algorithm's default that the provider signs with.
    extra_schemes: list[SignatureScheme] = field(default_factory=list)
    # RSA paddings that one RSA key from the provider signs with. Services that
    # bind the padding to the key, such as Cloud KMS, list only that one.
    rsa_paddings: tuple[RsaPadding, ...] = (RsaPadding.PKCS1V15, RsaPadding.PSS)


def unique_name(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def self_signed(
    private_key: object, scheme: SignatureScheme, common_name: str = "conformance"
) -> x509.Certificate:
    """Build and sign a CA certificate with a provider's key through pyca."""
    key = private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return _call_sign(builder.sign, key, scheme)


def sign_arguments(
    scheme: SignatureScheme,
) -> tuple[hashes.HashAlgorithm | None, dict[str, object]]:
    """The ``algorithm`` and ``rsa_padding`` arguments pyca's builders take."""
    if scheme.hash is None:
        return None, {}
    hash_algorithm = scheme.hash.algorithm()
    if scheme.padding is RsaPadding.PSS:
        pss = padding.PSS(padding.MGF1(hash_algorithm), padding.PSS.DIGEST_LENGTH)
        return hash_algorithm, {"rsa_padding": pss}
    return hash_algorithm, {}


def _call_sign(
    builder_sign: Callable[..., x509.Certificate], key: object, scheme: SignatureScheme
) -> x509.Certificate:
    algorithm, extra = sign_arguments(scheme)
    return builder_sign(key, algorithm, **extra)


def verify_offline(
    public_key: PublicKey, signature: bytes, data: bytes, scheme: SignatureScheme
) -> None:
    """Verify with pyca and the exported public key; raise InvalidSignature."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        assert scheme.hash is not None
        public_key.verify(signature, data, ec.ECDSA(scheme.hash.algorithm()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        assert scheme.hash is not None
        hash_algorithm = scheme.hash.algorithm()
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
        if scheme.padding is RsaPadding.PSS:
            # The salt must be exactly the digest length, not merely verifiable
            # with "auto" salt detection.
            pad = padding.PSS(padding.MGF1(hash_algorithm), scheme.hash.digest_size)
        public_key.verify(signature, data, pad, hash_algorithm)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise AssertionError(f"no offline verifier for {type(public_key).__name__}")


def schemes_for(harness: ProviderHarness) -> list[SignatureScheme]:
    schemes: list[SignatureScheme] = []
    for algorithm in harness.algorithms:
        if algorithm.is_rsa:
            for rsa_padding in harness.rsa_paddings:
                schemes.append(SignatureScheme(algorithm, HashName.SHA256, rsa_padding))
        else:
            schemes.append(SignatureScheme.default_for(algorithm))
    schemes.extend(harness.extra_schemes)
    return schemes


class ProviderConformance:
    """Tests every key provider must pass; subclasses supply ``harness``."""

    @pytest.fixture
    def harness(self) -> ProviderHarness:
        raise NotImplementedError("a provider's test class defines this fixture")

    def _key(self, harness: ProviderHarness, algorithm: KeyAlgorithm | None = None):
        algorithm = algorithm or harness.algorithms[0]
        return harness.provider.find_or_create_key(unique_name(), algorithm)

    # --- key lifecycle ------------------------------------------------------------

    def test_find_or_create_idempotent(self, harness: ProviderHarness) -> None:
        name = unique_name()
        algorithm = harness.algorithms[0]
        first = harness.provider.find_or_create_key(name, algorithm)
        second = harness.provider.find_or_create_key(name, algorithm)

        assert first.uri == second.uri
        assert first.algorithm == algorithm
        matching = [k for k in harness.provider.list_keys() if k.name == name]
        assert len(matching) == 1

    def test_find_or_create_after_restart(self, harness: ProviderHarness) -> None:
        # A process that created the key and died before recording it must not
        # cause a second key: a new instance finds the first one by name.
        name = unique_name()
        algorithm = harness.algorithms[0]
        created = harness.provider.create_key(name, algorithm)
        reopened = harness.reopen()
        try:
            found = reopened.find_or_create_key(name, algorithm)
            listed = [k for k in reopened.list_keys() if k.name == name]
        finally:
            reopened.close()

        assert found.uri == created.uri
        assert len(listed) == 1

    def test_find_missing_key_returns_none(self, harness: ProviderHarness) -> None:
        assert harness.provider.find_key(unique_name("absent")) is None

    def test_existing_key_other_algorithm(self, harness: ProviderHarness) -> None:
        if len(harness.algorithms) < 2:
            pytest.skip("the harness offers one algorithm")
        name = unique_name()
        harness.provider.find_or_create_key(name, harness.algorithms[0])

        with pytest.raises(UnsupportedAlgorithmError):
            harness.provider.find_or_create_key(name, harness.algorithms[1])

    def test_unsupported_algorithm_rejected(self, harness: ProviderHarness) -> None:
        unsupported = set(KeyAlgorithm) - harness.provider.supported_algorithms()
        if not unsupported:
            pytest.skip("the provider supports every algorithm")
        algorithm = sorted(unsupported)[0]

        with pytest.raises(UnsupportedAlgorithmError):
            harness.provider.find_or_create_key(unique_name(), algorithm)

    def test_adopt_foreign_key(self, harness: ProviderHarness) -> None:
        algorithm = harness.algorithms[0]
        uri = harness.create_foreign_key(algorithm)
        adopted = harness.provider.adopt_key(uri, algorithm)

        assert adopted.uri == uri
        assert adopted.algorithm == algorithm
        assert adopted.state is KeyState.ENABLED

    def test_adopt_wrong_algorithm(self, harness: ProviderHarness) -> None:
        algorithm = harness.algorithms[0]
        other = next(a for a in KeyAlgorithm if a != algorithm)
        uri = harness.create_foreign_key(algorithm)

        with pytest.raises(UnsupportedAlgorithmError):
            harness.provider.adopt_key(uri, other)

    def test_describe_missing_uri(self, harness: ProviderHarness) -> None:
        created = self._key(harness)
        missing = created.uri.replace(created.name or "", unique_name("missing"))
        if missing == created.uri:
            pytest.skip("the URI does not contain the key name")

        with pytest.raises(KeyNotFoundError):
            harness.provider.describe_key(missing)

    def test_protection_level_truthful(self, harness: ProviderHarness) -> None:
        info = self._key(harness)

        assert info.protection_level is harness.protection_level
        assert harness.provider.describe_key(info.uri).protection_level is (
            harness.protection_level
        )

    def test_public_key_export(self, harness: ProviderHarness) -> None:
        for algorithm in harness.algorithms:
            info = self._key(harness, algorithm)
            public = harness.provider.public_key(info.uri)

            assert algorithm_of_public_key(public) == algorithm

    # --- signing --------------------------------------------------------------------

    def test_sign_every_scheme(
        self, harness: ProviderHarness, tmp_path: pathlib.Path
    ) -> None:
        keys = {a: self._key(harness, a) for a in harness.algorithms}
        for index, scheme in enumerate(schemes_for(harness)):
            info = keys[scheme.key]
            exported = harness.provider.public_key(info.uri)
            signer = harness.provider.private_key(info.uri, exported)
            certificate = self_signed(signer, scheme, common_name=str(scheme))

            # The certificate carries the exported key, so this check uses
            # nothing but the exported public key and pyca.
            certificate.verify_directly_issued_by(certificate)
            verify_offline(
                exported,
                certificate.signature,
                certificate.tbs_certificate_bytes,
                scheme,
            )
            path = tmp_path / f"certificate-{index}.pem"
            path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
            result = subprocess.run(
                ["openssl", "verify", "-x509_strict", "-CAfile", path.name, path.name],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                check=False,
            )
            assert result.returncode == 0, f"{scheme}: {result.stdout}{result.stderr}"

    def test_pss_parameters_in_certificate(self, harness: ProviderHarness) -> None:
        rsa_algorithms = [a for a in harness.algorithms if a.is_rsa]
        if not rsa_algorithms:
            pytest.skip("the harness offers no RSA key")
        if RsaPadding.PSS not in harness.rsa_paddings:
            pytest.skip("the harness's RSA keys do not sign RSA-PSS")
        info = self._key(harness, rsa_algorithms[0])
        scheme = SignatureScheme(rsa_algorithms[0], HashName.SHA256, RsaPadding.PSS)
        certificate = self_signed(harness.provider.private_key(info.uri), scheme)
        parameters = certificate.signature_algorithm_parameters

        assert isinstance(parameters, padding.PSS)
        assert parameters._salt_length == 32

    def test_hash_mismatch_rejected_before_call(
        self, harness: ProviderHarness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ec_algorithms = [a for a in harness.algorithms if a.is_ec]
        if not ec_algorithms:
            pytest.skip("the harness offers no EC key")
        algorithm = ec_algorithms[0]
        info = self._key(harness, algorithm)
        signer = harness.provider.private_key(info.uri)
        calls: list[bytes] = []
        monkeypatch.setattr(
            harness.provider, "_sign_digest", lambda *args: calls.append(args[-1])
        )
        wrong = next(h for h in HashName if h not in algorithm.allowed_hashes())

        with pytest.raises(UnsupportedAlgorithmError):
            signer.sign(b"data", ec.ECDSA(wrong.algorithm()))
        assert calls == []

    def test_digest_length_checked(self, harness: ProviderHarness) -> None:
        algorithm = next(a for a in harness.algorithms if not a.signs_message)
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)

        with pytest.raises(UnsupportedAlgorithmError):
            harness.provider.sign_digest(info.uri, scheme, b"\x00" * 20)

    def test_large_crl_signs(
        self, harness: ProviderHarness, tmp_path: pathlib.Path
    ) -> None:
        # A to-be-signed part over 4,096 bytes proves the digest path: services
        # that sign raw messages cap them at 4,096 bytes.
        algorithm = harness.algorithms[0]
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)
        signer = harness.provider.private_key(info.uri)
        issuer = self_signed(signer, scheme, common_name="crl issuer")
        name = issuer.subject
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(now)
            .next_update(now + datetime.timedelta(days=1))
        )
        for serial in range(1, 301):
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial * 7919)
                .revocation_date(now)
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        crl = _call_sign(builder.sign, signer, scheme)  # type: ignore[arg-type]

        assert len(crl.tbs_certlist_bytes) > 4096
        assert crl.is_signature_valid(harness.provider.public_key(info.uri))  # type: ignore[arg-type]
        (tmp_path / "issuer.pem").write_bytes(
            issuer.public_bytes(serialization.Encoding.PEM)
        )
        (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            [
                "openssl",
                "crl",
                "-verify",
                "-noout",
                "-CAfile",
                "issuer.pem",
                "-in",
                "crl.pem",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "verify OK" in result.stderr + result.stdout

    def test_concurrent_signing(self, harness: ProviderHarness) -> None:
        algorithm = harness.algorithms[0]
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)
        exported = harness.provider.public_key(info.uri)
        signer = harness.provider.private_key(info.uri, exported)
        barrier = threading.Barrier(8)

        def sign_one(index: int) -> x509.Certificate:
            barrier.wait()
            return self_signed(signer, scheme, common_name=f"thread {index}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            certificates = list(pool.map(sign_one, range(24)))

        for certificate in certificates:
            certificate.verify_directly_issued_by(certificate)
        assert len({c.serial_number for c in certificates}) == 24

    # --- faults -----------------------------------------------------------------------

    def _faults(self, harness: ProviderHarness) -> FaultInjector:
        if harness.faults is None:
            pytest.skip("this provider has no service to inject faults into")
        return harness.faults

    def test_throttling_retried(self, harness: ProviderHarness) -> None:
        faults = self._faults(harness)
        algorithm = harness.algorithms[0]
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)
        signer = harness.provider.private_key(info.uri)
        faults.throttle(harness.provider.settings.retry.attempts - 1)
        try:
            certificate = self_signed(signer, scheme)
        finally:
            faults.clear()

        certificate.verify_directly_issued_by(certificate)

    def test_server_error_temporary(self, harness: ProviderHarness) -> None:
        faults = self._faults(harness)
        algorithm = harness.algorithms[0]
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)
        signer = harness.provider.private_key(info.uri)
        faults.fail(1000)
        try:
            with pytest.raises(ProviderTemporaryError) as raised:
                self_signed(signer, scheme)
        finally:
            faults.clear()

        assert info.uri in str(raised.value)

    def test_disabled_key_permanent(self, harness: ProviderHarness) -> None:
        faults = self._faults(harness)
        algorithm = harness.algorithms[0]
        info = self._key(harness, algorithm)
        scheme = SignatureScheme.default_for(algorithm)
        signer = harness.provider.private_key(info.uri)
        faults.disable_key(info.uri)

        with pytest.raises(KeyUnusableError) as raised:
            self_signed(signer, scheme)
        assert info.uri in str(raised.value)
        assert harness.provider.describe_key(info.uri).state is KeyState.DISABLED

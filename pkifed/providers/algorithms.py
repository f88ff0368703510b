"""Key algorithms, signature schemes and the encoding rules every signer shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from pkifed.errors import UnsupportedAlgorithmError

PublicKey = (
    ec.EllipticCurvePublicKey
    | rsa.RSAPublicKey
    | ed25519.Ed25519PublicKey
    | mldsa.MLDSA44PublicKey
    | mldsa.MLDSA65PublicKey
    | mldsa.MLDSA87PublicKey
)


class KeyAlgorithm(StrEnum):
    """A key type and size, named as in the configuration file."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    EC_P521 = "ec-p521"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"
    ML_DSA_44 = "ml-dsa-44"
    ML_DSA_65 = "ml-dsa-65"
    ML_DSA_87 = "ml-dsa-87"

    @property
    def family(self) -> str:
        """``ec``, ``rsa``, ``ed25519`` or ``ml-dsa``."""
        # A table lookup, because signing reads the family several times per
        # signature.
        return _FAMILIES[self]

    @property
    def is_ec(self) -> bool:
        return self.family == "ec"

    @property
    def is_rsa(self) -> bool:
        return self.family == "rsa"

    @property
    def signs_message(self) -> bool:
        """Whether the scheme signs the whole message instead of a digest.

        Ed25519 (RFC 8032 PureEdDSA) and ML-DSA (FIPS 204) hash internally, so
        for them the message itself is sent to the key's home.
        """
        return self.family in ("ed25519", "ml-dsa")

    @property
    def key_size(self) -> int:
        """Size in bits: the curve's order size for EC, the modulus for RSA."""
        sizes = {
            KeyAlgorithm.EC_P256: 256,
            KeyAlgorithm.EC_P384: 384,
            KeyAlgorithm.EC_P521: 521,
            KeyAlgorithm.RSA_2048: 2048,
            KeyAlgorithm.RSA_3072: 3072,
            KeyAlgorithm.RSA_4096: 4096,
            KeyAlgorithm.ED25519: 256,
            KeyAlgorithm.ML_DSA_44: 1312 * 8,
            KeyAlgorithm.ML_DSA_65: 1952 * 8,
            KeyAlgorithm.ML_DSA_87: 2592 * 8,
        }
        return sizes[self]

    @property
    def curve(self) -> ec.EllipticCurve:
        """The pyca curve object of an EC algorithm."""
        curves: dict[KeyAlgorithm, ec.EllipticCurve] = {
            KeyAlgorithm.EC_P256: ec.SECP256R1(),
            KeyAlgorithm.EC_P384: ec.SECP384R1(),
            KeyAlgorithm.EC_P521: ec.SECP521R1(),
        }
        if self not in curves:
            raise UnsupportedAlgorithmError(f"{self} is not an elliptic curve")
        return curves[self]

    @property
    def component_size(self) -> int:
        """Bytes in each of r and s of a raw ECDSA signature (66 for P-521)."""
        return (self.curve.key_size + 7) // 8

    @property
    def default_hash(self) -> HashName | None:
        """The hash used when the configuration does not name one."""
        if self.signs_message:
            return None
        if self.is_ec:
            return EC_HASHES[self]
        return HashName.SHA256

    def allowed_hashes(self) -> frozenset[HashName]:
        """Hashes that may be paired with this key.

        ECDSA pairs each curve with the hash of matching strength (RFC 5480
        section 4, CA/Browser Forum BR 7.1.3.2): P-256 with SHA-256, P-384 with
        SHA-384 and P-521 with SHA-512. RSA accepts any SHA-2 hash.
        """
        if self.signs_message:
            return frozenset()
        if self.is_ec:
            return frozenset({EC_HASHES[self]})
        return frozenset(HashName)


_FAMILIES = {
    algorithm: algorithm.value.rsplit("-", 1)[0]
    if algorithm.value != "ed25519"
    else "ed25519"
    for algorithm in KeyAlgorithm
}


class HashName(StrEnum):
    """A SHA-2 hash, by its common name."""

    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    def algorithm(self) -> hashes.HashAlgorithm:
        """Create a new pyca hash object."""
        constructors: dict[HashName, Callable[[], hashes.HashAlgorithm]] = {
            HashName.SHA256: hashes.SHA256,
            HashName.SHA384: hashes.SHA384,
            HashName.SHA512: hashes.SHA512,
        }
        return constructors[self]()

    @property
    def digest_size(self) -> int:
        return {HashName.SHA256: 32, HashName.SHA384: 48, HashName.SHA512: 64}[self]

    @classmethod
    def of(cls, algorithm: hashes.HashAlgorithm) -> HashName:
        """Map a pyca hash object to its name.

        Raises:
            UnsupportedAlgorithmError: the hash is not SHA-256, SHA-384 or SHA-512.
        """
        try:
            return cls(algorithm.name.replace("-", ""))
        except ValueError:
            raise UnsupportedAlgorithmError(
                f"hash {algorithm.name} is not supported; use sha256, sha384 or sha512"
            ) from None


EC_HASHES = {
    KeyAlgorithm.EC_P256: HashName.SHA256,
    KeyAlgorithm.EC_P384: HashName.SHA384,
    KeyAlgorithm.EC_P521: HashName.SHA512,
}


class RsaPadding(StrEnum):
    """RSA signature padding."""

    PKCS1V15 = "pkcs1v15"
    PSS = "pss"


@dataclass(frozen=True)
class SignatureScheme:
    """A complete signature algorithm: key algorithm, hash and RSA padding.

    For RSA-PSS the salt length always equals the digest length (RFC 8017
    section 9.1 recommends it, and RFC 4055 section 3.1 parameters record it in
    the certificate), so it is not a separate setting.
    """

    key: KeyAlgorithm
    hash: HashName | None = None
    padding: RsaPadding | None = None

    def __post_init__(self) -> None:
        if self.key.signs_message:
            if self.hash is not None or self.padding is not None:
                raise UnsupportedAlgorithmError(
                    f"{self.key} signs the message itself and takes no hash or padding"
                )
            return
        if self.hash is None:
            raise UnsupportedAlgorithmError(f"{self.key} needs a hash")
        if self.hash not in self.key.allowed_hashes():
            expected = ", ".join(sorted(self.key.allowed_hashes()))
            raise UnsupportedAlgorithmError(
                f"hash {self.hash} does not match key {self.key}; expected {expected}"
            )
        if self.key.is_rsa and self.padding is None:
            raise UnsupportedAlgorithmError(f"{self.key} needs a padding")
        if not self.key.is_rsa and self.padding is not None:
            raise UnsupportedAlgorithmError(
                f"padding {self.padding} applies to RSA keys only, not {self.key}"
            )

    @classmethod
    def default_for(
        cls, key: KeyAlgorithm, padding: RsaPadding | None = None
    ) -> SignatureScheme:
        """Return the scheme for a key when only the padding is configured."""
        if key.is_rsa and padding is None:
            padding = RsaPadding.PKCS1V15
        return cls(key, key.default_hash, padding if key.is_rsa else None)

    def __str__(self) -> str:
        parts = [str(self.key)]
        if self.padding is not None:
            parts.append(str(self.padding))
        if self.hash is not None:
            parts.append(str(self.hash))
        return "/".join(parts)


def algorithm_of_public_key(public_key: PublicKey) -> KeyAlgorithm:
    """Name the algorithm of a public key.

    Raises:
        UnsupportedAlgorithmError: the key's type or size is not one pkifed uses.
    """
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        by_curve = {
            "secp256r1": KeyAlgorithm.EC_P256,
            "secp384r1": KeyAlgorithm.EC_P384,
            "secp521r1": KeyAlgorithm.EC_P521,
        }
        if public_key.curve.name in by_curve:
            return by_curve[public_key.curve.name]
        raise UnsupportedAlgorithmError(f"curve {public_key.curve.name} is not used")
    if isinstance(public_key, rsa.RSAPublicKey):
        try:
            return KeyAlgorithm(f"rsa-{public_key.key_size}")
        except ValueError:
            raise UnsupportedAlgorithmError(
                f"RSA key size {public_key.key_size} is not used"
            ) from None
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyAlgorithm.ED25519
    if isinstance(public_key, mldsa.MLDSA44PublicKey):
        return KeyAlgorithm.ML_DSA_44
    if isinstance(public_key, mldsa.MLDSA65PublicKey):
        return KeyAlgorithm.ML_DSA_65
    if isinstance(public_key, mldsa.MLDSA87PublicKey):
        return KeyAlgorithm.ML_DSA_87
    raise UnsupportedAlgorithmError(f"key type {type(public_key).__name__} is not used")


def ecdsa_raw_to_der(signature: bytes, key: KeyAlgorithm) -> bytes:
    """Convert a raw ``r || s`` ECDSA signature (PKCS#11, JOSE) to DER.

    Each component is exactly ``key.component_size`` bytes, so a P-521 signature
    is 132 bytes. Any other length is rejected instead of guessed at.
    """
    size = key.component_size
    if len(signature) != 2 * size:
        raise UnsupportedAlgorithmError(
            f"raw {key} signature has {len(signature)} bytes, expected {2 * size}"
        )
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    return encode_dss_signature(r, s)


def ecdsa_der_to_raw(signature: bytes, key: KeyAlgorithm) -> bytes:
    """Convert a DER ECDSA signature to fixed-width ``r || s``."""
    r, s = decode_dss_signature(signature)
    size = key.component_size
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")

"""The ``local`` key provider: a software keystore in a directory on disk.

Each key is one file, ``<path>/<federation>/<key name>.pem``, holding the
private key as encrypted PKCS#8 PEM (pyca's BestAvailableEncryption with the
configured passphrase). Key files are mode 0600 and the directories 0700.

A key's URI is ``file:`` followed by the key file's absolute path, with
characters outside the RFC 3986 path set percent-encoded and no authority
part, which is the minimal ``file:/path`` form that RFC 8089 allows. For
example ``file:/var/lib/pkifed/keys/prod/root-ca.pem``.

An operator disables a key by creating an empty file next to it named
``<key file>.disabled``. Until the marker is removed, the key reports state
``disabled`` and signing with it raises KeyUnusableError.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import ClassVar, Literal, NoReturn
from urllib.parse import quote, unquote

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pydantic import ConfigDict, Field

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderPermanentError,
    UnsupportedAlgorithmError,
)
from pkifed.providers.algorithms import (
    KeyAlgorithm,
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)
from pkifed.providers.base import (
    KeyInfo,
    KeyProvider,
    KeyState,
    ProtectionLevel,
    ProviderContext,
    ProviderSettings,
    ProviderStatus,
)
from pkifed.secrets import SecretRef

logger = logging.getLogger(__name__)

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | mldsa.MLDSA44PrivateKey
    | mldsa.MLDSA65PrivateKey
    | mldsa.MLDSA87PrivateKey
)

URI_PREFIX = "file:"
KEY_SUFFIX = ".pem"
DISABLED_SUFFIX = ".disabled"
# Key and federation names become file names, so they are kept to a set that
# needs no quoting and cannot climb out of the directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LocalSettings(ProviderSettings):
    """Settings of a ``local`` provider."""

    # Validation errors would otherwise repeat the input, which for a
    # passphrase typed in by mistake is the secret itself.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["local"] = Field(description="Provider type: local.")
    path: str = Field(
        min_length=1,
        description=(
            "Directory of the keystore; a relative path is resolved against the "
            "configuration file's directory."
        ),
    )
    passphrase: SecretRef = Field(
        description=(
            "Passphrase that encrypts every key file, as a reference such as "
            "${env:PKIFED_KEY_PASSPHRASE}."
        )
    )


def _generate(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm.is_ec:
        return ec.generate_private_key(algorithm.curve)
    if algorithm.is_rsa:
        return rsa.generate_private_key(
            public_exponent=65537, key_size=algorithm.key_size
        )
    if algorithm is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm is KeyAlgorithm.ML_DSA_44:
        return mldsa.MLDSA44PrivateKey.generate()
    if algorithm is KeyAlgorithm.ML_DSA_65:
        return mldsa.MLDSA65PrivateKey.generate()
    return mldsa.MLDSA87PrivateKey.generate()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalProvider(KeyProvider):
    """Keys in encrypted PEM files under one directory."""

    type_name: ClassVar[str] = "local"
    settings_model: ClassVar[type[ProviderSettings]] = LocalSettings
    uri_scheme: ClassVar[str] = "file"

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        if not isinstance(settings, LocalSettings):
            raise ProviderPermanentError(
                f"provider {context.provider_name!r}: expected local settings, got "
                f"{type(settings).__name__}"
            )
        super().__init__(settings, context)
        self._settings = settings
        root = Path(settings.path).expanduser()
        if not root.is_absolute() and context.config_dir is not None:
            root = Path(context.config_dir) / root
        self.root = root.resolve()
        # Decrypted keys stay in this instance's memory, keyed by file path,
        # so each file is decrypted once per process and not once per signature.
        self._keys: dict[Path, PrivateKey] = {}
        # Parsed key URIs; a URI always names the same file, so this never goes
        # stale.
        self._paths: dict[str, Path] = {}
        self._lock = threading.Lock()

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        return frozenset(KeyAlgorithm)

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        return frozenset(KeyAlgorithm)

    # --- paths and URIs -----------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The directory holding this federation's keys."""
        return self.root / self._checked_name(self.context.federation, "federation")

    def _checked_name(self, name: str, kind: str) -> str:
        if not _SAFE_NAME.match(name):
            raise ProviderPermanentError(
                f"provider {self.name!r} (local): {kind} name {name!r} is invalid; "
                "use letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return name

    def _key_path(self, key_name: str) -> Path:
        return self.directory / f"{self._checked_name(key_name, 'key')}{KEY_SUFFIX}"

    @staticmethod
    def uri_of(path: Path) -> str:
        """Build the ``file:`` URI of a key file."""
        return URI_PREFIX + quote(str(path))

    def _path_of(self, uri: str) -> Path:
        cached = self._paths.get(uri)
        if cached is not None:
            return cached
        path = self._parse_uri(uri)
        self._paths[uri] = path
        return path

    def _parse_uri(self, uri: str) -> Path:
        if not uri.startswith(URI_PREFIX):
            raise KeyNotFoundError(
                f"provider {self.name!r} (local): {uri!r} is not a file: URI"
            )
        path = Path(unquote(uri[len(URI_PREFIX) :]))
        if not path.is_absolute():
            raise KeyNotFoundError(
                f"provider {self.name!r} (local): {uri!r} does not name an absolute "
                "path; expected file:/absolute/path.pem"
            )
        return path

    # --- errors -------------------------------------------------------------------

    def _fail_os(self, error: OSError, action: str, uri: str) -> NoReturn:
        code = errno.errorcode.get(error.errno or 0, "unknown")
        message = f"provider {self.name!r} (local): {action} {uri} failed: {code}"
        if error.errno == errno.ENOENT:
            raise KeyNotFoundError(message) from error
        if error.errno in (errno.EACCES, errno.EPERM):
            raise AccessDeniedError(
                f"{message}; check the keystore's file permissions"
            ) from error
        raise ProviderPermanentError(f"{message} ({error.strerror})") from error

    # --- reading keys -------------------------------------------------------------

    def _load(self, path: Path) -> PrivateKey:
        with self._lock:
            cached = self._keys.get(path)
        if cached is not None:
            return cached
        uri = self.uri_of(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            self._fail_os(error, "reading", uri)
        passphrase = self._settings.passphrase.resolve().encode("utf-8")
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except TypeError as error:
            raise ProviderPermanentError(
                f"provider {self.name!r} (local): key file {uri} is not encrypted; "
                "the local keystore accepts encrypted PKCS#8 PEM only"
            ) from error
        except ValueError as error:
            # pyca raises ValueError both for a wrong passphrase and for a
            # file that is not a PEM key; neither message repeats the password.
            raise AccessDeniedError(
                f"provider {self.name!r} (local): cannot decrypt key file {uri}: "
                "wrong passphrase or not a PEM private key; check the passphrase "
                f"that {self._settings.passphrase.reference} holds"
            ) from error
        except UnsupportedAlgorithm as error:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (local): key file {uri} contains a key type "
                "this build of pyca cannot load"
            ) from error
        if not isinstance(key, PrivateKey):
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (local): key file {uri} contains a "
                f"{type(key).__name__}, which pkifed does not use"
            )
        with self._lock:
            self._keys[path] = key
        return key

    def _info(self, path: Path, uri: str | None = None) -> KeyInfo:
        key = self._load(path)
        algorithm = algorithm_of_public_key(key.public_key())
        name = None
        if path.parent == self.directory and path.name.endswith(KEY_SUFFIX):
            name = path.name[: -len(KEY_SUFFIX)]
        disabled = path.with_name(path.name + DISABLED_SUFFIX).exists()
        return KeyInfo(
            uri=uri if uri is not None else self.uri_of(path),
            algorithm=algorithm,
            protection_level=ProtectionLevel.SOFTWARE,
            state=KeyState.DISABLED if disabled else KeyState.ENABLED,
            name=name,
        )

    def find_key(self, key_name: str) -> KeyInfo | None:
        path = self._key_path(key_name)
        if not path.exists():
            return None
        return self._info(path)

    def describe_key(self, uri: str) -> KeyInfo:
        # The URI is kept as given, so an adopted key keeps its configured URI.
        return self._info(self._path_of(uri), uri)

    def list_keys(self) -> list[KeyInfo]:
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as error:
            self._fail_os(error, "listing", self.uri_of(self.directory))
        # Names starting with "." are temporary files of an unfinished write.
        paths = [
            entry
            for entry in entries
            if entry.name.endswith(KEY_SUFFIX) and not entry.name.startswith(".")
        ]
        return [self._info(path) for path in paths]

    def public_key(self, uri: str) -> PublicKey:
        return self._load(self._path_of(uri)).public_key()

    def check(self) -> ProviderStatus:
        keys = self.list_keys()
        return ProviderStatus(
            reachable=True,
            identity=f"local keystore {self.directory}",
            algorithms=self.supported_algorithms(),
            protection_levels=frozenset({ProtectionLevel.SOFTWARE}),
            message=f"{len(keys)} keys",
        )

    # --- creating keys ------------------------------------------------------------

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        self.require_algorithm(algorithm)
        existing = self.find_key(key_name)
        if existing is None:
            existing = self._create(key_name, algorithm, exist_ok=True)
        if existing.algorithm != algorithm:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {existing.uri} is {existing.algorithm}, "
                f"expected {algorithm}"
            )
        return existing

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        self.require_algorithm(algorithm)
        return self._create(key_name, algorithm, exist_ok=False)

    def _ensure_directory(self) -> None:
        for directory in (self.root, self.directory):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask, so the key directory's mode
        # is set explicitly.
        self.directory.chmod(0o700)

    def _create(
        self, key_name: str, algorithm: KeyAlgorithm, exist_ok: bool
    ) -> KeyInfo:
        path = self._key_path(key_name)
        uri = self.uri_of(path)
        key = _generate(algorithm)
        passphrase = self._settings.passphrase.resolve().encode("utf-8")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        try:
            self._ensure_directory()
            created = self._write_once(path, pem)
        except OSError as error:
            self._fail_os(error, "writing", uri)
        if not created:
            if not exist_ok:
                raise ProviderPermanentError(
                    f"provider {self.name!r} (local): key {uri} already exists; use "
                    "find_or_create_key"
                )
            logger.info("provider %s: key %s was created concurrently", self.name, uri)
            return self._info(path)
        with self._lock:
            self._keys[path] = key
        logger.info("provider %s: created %s key %s", self.name, algorithm, uri)
        return self._info(path)

    def _write_once(self, path: Path, data: bytes) -> bool:
        """Write ``data`` to ``path`` unless it exists; return whether it wrote.

        The data goes to a temporary file in the same directory, is synced,
        and is then hard-linked to the final name. The link fails if the name
        exists, so two writers, or a retry after a crash, never replace a key.
        A crash before the link leaves only a temporary file, which key
        listing ignores.
        """
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)
        return True

    # --- signing ------------------------------------------------------------------

    def _usable_key(self, uri: str) -> PrivateKey:
        path = self._path_of(uri)
        key = self._load(path)
        # The marker is checked on every signature, so disabling a key takes
        # effect at once; os.path.exists avoids building a second Path.
        if os.path.exists(f"{path}{DISABLED_SUFFIX}"):
            raise KeyUnusableError(
                f"provider {self.name!r} (local): key {uri} is disabled; remove "
                f"{path.name}{DISABLED_SUFFIX} to enable it"
            )
        return key

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        assert scheme.hash is not None  # noqa: S101 - sign_digest checked it.
        key = self._usable_key(uri)
        prehashed = Prehashed(scheme.hash.algorithm())
        if isinstance(key, ec.EllipticCurvePrivateKey) and scheme.key.is_ec:
            return key.sign(digest, ec.ECDSA(prehashed))
        if isinstance(key, rsa.RSAPrivateKey) and scheme.key.is_rsa:
            rsa_padding: padding.AsymmetricPadding = padding.PKCS1v15()
            if scheme.padding is RsaPadding.PSS:
                mgf = padding.MGF1(scheme.hash.algorithm())
                rsa_padding = padding.PSS(mgf, scheme.hash.digest_size)
            return key.sign(digest, rsa_padding, prehashed)
        raise UnsupportedAlgorithmError(
            f"provider {self.name!r} (local): key {uri} cannot sign {scheme}"
        )

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        key = self._usable_key(uri)
        if algorithm_of_public_key(key.public_key()) != scheme.key:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (local): key {uri} cannot sign {scheme}"
            )
        if isinstance(
            key,
            ed25519.Ed25519PrivateKey
            | mldsa.MLDSA44PrivateKey
            | mldsa.MLDSA65PrivateKey
            | mldsa.MLDSA87PrivateKey,
        ):
            return key.sign(message)
        raise UnsupportedAlgorithmError(
            f"provider {self.name!r} (local): key {uri} cannot sign {scheme}"
        )

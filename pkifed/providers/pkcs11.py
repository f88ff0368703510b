"""The ``pkcs11`` key provider: keys in an HSM reached through a PKCS#11 library.

Keys the federation creates are labelled ``<federation>/<key name>`` and get a
CKA_ID made of the first 16 bytes of the label's SHA-256, so a restarted
process finds them again by name. Key URIs follow RFC 7512, for example
``pkcs11:token=CA;object=prod%2Froot;id=%5a%01...;type=private``.

Every call into the PKCS#11 library is made under one process-wide lock,
because python-pkcs11 sessions are not safe to use from several threads at
once. PKCS#11 login state belongs to the application, not to a session. So
providers of this process that name the same module and token share one
logged-in session. It is opened on first use and closed when the last of
those providers closes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pydantic import ConfigDict, Field

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderError,
    ProviderPermanentError,
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
    ecdsa_raw_to_der,
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
from pkifed.providers.pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from pkifed.providers.retry import call_with_retry
from pkifed.secrets import SecretRef

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LIBRARY_LOCK = threading.RLock()


class Pkcs11Settings(ProviderSettings):
    """Settings of a ``pkcs11`` provider."""

    # Validation errors would otherwise repeat the input, which for a PIN typed
    # in by mistake is the secret itself.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["pkcs11"] = Field(description="Provider type: pkcs11.")
    module: str = Field(
        min_length=1,
        description=(
            "Path to the PKCS#11 library, such as /usr/lib/softhsm/libsofthsm2.so."
        ),
    )
    token: str = Field(
        min_length=1,
        max_length=32,
        description="Label of the token that contains the keys.",
    )
    pin: SecretRef = Field(
        description="User PIN of the token, as a reference such as ${env:HSM_PIN}."
    )


# --- encodings ----------------------------------------------------------------------

# DER of the named-curve OIDs in CKA_EC_PARAMS: the NIST curves of RFC 5480,
# and id-Ed25519 of RFC 8410 for PKCS#11 3.0 CKK_EC_EDWARDS keys.
_EC_PARAMS = {
    KeyAlgorithm.EC_P256: bytes.fromhex("06082a8648ce3d030107"),
    KeyAlgorithm.EC_P384: bytes.fromhex("06052b81040022"),
    KeyAlgorithm.EC_P521: bytes.fromhex("06052b81040023"),
    KeyAlgorithm.ED25519: bytes.fromhex("06032b6570"),
}
_ALGORITHM_OF_EC_PARAMS = {value: key for key, value in _EC_PARAMS.items()}
# PKCS#11 3.0 also lets CKA_EC_PARAMS name Edwards curves as a PrintableString.
_ALGORITHM_OF_EC_PARAMS[b"\x13\x0cedwards25519"] = KeyAlgorithm.ED25519

# DER prefix of the PKCS#1 v1.5 DigestInfo for each hash (RFC 8017, EMSA-PKCS1-v1_5).
_DIGEST_INFO_PREFIX = {
    HashName.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    HashName.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    HashName.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS_HASH = {
    HashName.SHA256: (Mechanism.SHA256, MGF.SHA256),
    HashName.SHA384: (Mechanism.SHA384, MGF.SHA384),
    HashName.SHA512: (Mechanism.SHA512, MGF.SHA512),
}


def key_id_for_label(label: str) -> bytes:
    """Derive the CKA_ID of a key created under ``label``."""
    return hashlib.sha256(label.encode("utf-8")).digest()[:16]


def decode_ec_point(value: bytes, algorithm: KeyAlgorithm) -> bytes:
    """Return the public point from CKA_EC_POINT in either encoding.

    PKCS#11 specifies CKA_EC_POINT as a DER OCTET STRING containing the point,
    but some tokens return the bare point. The curve fixes the bare point's length
    (1 + 2 * component size uncompressed, 32 for Ed25519), and the DER form is
    always longer, so the length decides without guessing.
    """
    if algorithm is KeyAlgorithm.ED25519:
        point_size = 32
    else:
        point_size = 1 + 2 * algorithm.component_size
    if len(value) == point_size:
        return value
    content = _der_octet_string(value)
    if content is None or len(content) != point_size:
        raise ProviderPermanentError(
            f"CKA_EC_POINT of a {algorithm} key has {len(value)} bytes, expected a "
            f"{point_size}-byte point, bare or in a DER OCTET STRING"
        )
    return content


def _der_octet_string(value: bytes) -> bytes | None:
    if len(value) < 2 or value[0] != 0x04:
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(value) < 2 + count:
            return None
        length = int.from_bytes(value[2 : 2 + count], "big")
        offset = 2 + count
    if len(value) != offset + length:
        return None
    return value[offset:]


# --- error table --------------------------------------------------------------------


@dataclass(frozen=True)
class _Mapping:
    error: type[ProviderError]
    code: str
    hint: str = ""
    # The session cannot be used any more and is reopened on the next call.
    drops_session: bool = False


_ERRORS: dict[type[p11.PKCS11Error], _Mapping] = {
    p11.PinIncorrect: _Mapping(
        AccessDeniedError, "CKR_PIN_INCORRECT", "check the PIN the pin setting names"
    ),
    p11.PinInvalid: _Mapping(
        AccessDeniedError, "CKR_PIN_INVALID", "check the PIN the pin setting names"
    ),
    p11.PinLenRange: _Mapping(
        AccessDeniedError, "CKR_PIN_LEN_RANGE", "check the PIN the pin setting names"
    ),
    p11.PinLocked: _Mapping(
        AccessDeniedError, "CKR_PIN_LOCKED", "unlock the user PIN with the SO PIN"
    ),
    p11.PinExpired: _Mapping(AccessDeniedError, "CKR_PIN_EXPIRED", "set a new PIN"),
    p11.UserPinNotInitialized: _Mapping(
        AccessDeniedError, "CKR_USER_PIN_NOT_INITIALIZED", "initialise the user PIN"
    ),
    p11.UserNotLoggedIn: _Mapping(
        AccessDeniedError, "CKR_USER_NOT_LOGGED_IN", drops_session=True
    ),
    p11.TokenWriteProtected: _Mapping(AccessDeniedError, "CKR_TOKEN_WRITE_PROTECTED"),
    p11.NoSuchToken: _Mapping(
        ProviderPermanentError, "no token with this label", "check the token setting"
    ),
    p11.MultipleTokensReturned: _Mapping(
        ProviderPermanentError, "several tokens have this label", "relabel one"
    ),
    p11.TokenNotRecognised: _Mapping(
        ProviderPermanentError, "CKR_TOKEN_NOT_RECOGNIZED"
    ),
    p11.NoSuchKey: _Mapping(KeyNotFoundError, "no such object"),
    p11.KeyHandleInvalid: _Mapping(
        KeyNotFoundError, "CKR_KEY_HANDLE_INVALID", drops_session=True
    ),
    p11.ObjectHandleInvalid: _Mapping(
        KeyNotFoundError, "CKR_OBJECT_HANDLE_INVALID", drops_session=True
    ),
    p11.MultipleObjectsReturned: _Mapping(
        ProviderPermanentError, "several objects match", "name the key by id as well"
    ),
    p11.MechanismInvalid: _Mapping(UnsupportedAlgorithmError, "CKR_MECHANISM_INVALID"),
    p11.MechanismParamInvalid: _Mapping(
        UnsupportedAlgorithmError, "CKR_MECHANISM_PARAM_INVALID"
    ),
    p11.KeyTypeInconsistent: _Mapping(
        UnsupportedAlgorithmError, "CKR_KEY_TYPE_INCONSISTENT"
    ),
    p11.KeySizeRange: _Mapping(UnsupportedAlgorithmError, "CKR_KEY_SIZE_RANGE"),
    p11.DomainParamsInvalid: _Mapping(
        UnsupportedAlgorithmError, "CKR_DOMAIN_PARAMS_INVALID"
    ),
    p11.FunctionNotSupported: _Mapping(
        UnsupportedAlgorithmError, "CKR_FUNCTION_NOT_SUPPORTED"
    ),
    p11.TemplateInconsistent: _Mapping(
        ProviderPermanentError, "CKR_TEMPLATE_INCONSISTENT"
    ),
    p11.TemplateIncomplete: _Mapping(ProviderPermanentError, "CKR_TEMPLATE_INCOMPLETE"),
    p11.AttributeValueInvalid: _Mapping(
        ProviderPermanentError, "CKR_ATTRIBUTE_VALUE_INVALID"
    ),
    p11.AttributeSensitive: _Mapping(ProviderPermanentError, "CKR_ATTRIBUTE_SENSITIVE"),
    p11.DataLenRange: _Mapping(ProviderPermanentError, "CKR_DATA_LEN_RANGE"),
    p11.DataInvalid: _Mapping(ProviderPermanentError, "CKR_DATA_INVALID"),
    p11.ArgumentsBad: _Mapping(ProviderPermanentError, "CKR_ARGUMENTS_BAD"),
    p11.TokenNotPresent: _Mapping(
        ProviderTemporaryError, "CKR_TOKEN_NOT_PRESENT", drops_session=True
    ),
    p11.DeviceRemoved: _Mapping(
        ProviderTemporaryError, "CKR_DEVICE_REMOVED", drops_session=True
    ),
    p11.SessionHandleInvalid: _Mapping(
        ProviderTemporaryError, "CKR_SESSION_HANDLE_INVALID", drops_session=True
    ),
    p11.SessionClosed: _Mapping(
        ProviderTemporaryError, "CKR_SESSION_CLOSED", drops_session=True
    ),
    p11.SessionCount: _Mapping(ProviderTemporaryError, "CKR_SESSION_COUNT"),
    p11.DeviceError: _Mapping(ProviderTemporaryError, "CKR_DEVICE_ERROR"),
    p11.DeviceMemory: _Mapping(ProviderTemporaryError, "CKR_DEVICE_MEMORY"),
    p11.HostMemory: _Mapping(ProviderTemporaryError, "CKR_HOST_MEMORY"),
    p11.FunctionFailed: _Mapping(ProviderTemporaryError, "CKR_FUNCTION_FAILED"),
    p11.GeneralError: _Mapping(ProviderTemporaryError, "CKR_GENERAL_ERROR"),
    p11.OperationActive: _Mapping(
        ProviderTemporaryError, "CKR_OPERATION_ACTIVE", drops_session=True
    ),
}

# python-pkcs11 0.10 has no exception class for these return values and
# raises a bare PKCS11Error whose message ends in the hexadecimal code.
_UNMAPPED_CODES = {
    "0x68": _Mapping(
        KeyUnusableError,
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        "the key's CKA_SIGN attribute is false",
    ),
    "0x190": _Mapping(
        ProviderTemporaryError, "CKR_CRYPTOKI_NOT_INITIALIZED", drops_session=True
    ),
}


def _mapping_of(error: p11.PKCS11Error) -> _Mapping:
    for error_type in type(error).__mro__:
        if error_type in _ERRORS:
            return _ERRORS[error_type]
    for suffix, mapping in _UNMAPPED_CODES.items():
        if str(error).endswith(suffix):
            return mapping
    return _Mapping(ProviderPermanentError, type(error).__name__)


# --- shared sessions ----------------------------------------------------------------


@dataclass
class _TokenSession:
    """A logged-in session on one token, shared by this process's providers."""

    session: pkcs11.Session
    # A salted hash of the PIN that logged in, so a provider configured with
    # another PIN is rejected instead of riding on this login.
    pin_digest: bytes
    mechanisms: frozenset[int]
    users: int = 0
    valid: bool = True
    private_keys: dict[str, pkcs11.PrivateKey] = field(default_factory=dict)


_SESSIONS: dict[tuple[str, str], _TokenSession] = {}
_PIN_SALT = os.urandom(16)


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(_PIN_SALT + pin.encode("utf-8")).digest()


# --- the provider -------------------------------------------------------------------


class Pkcs11Provider(KeyProvider):
    """Keys in a PKCS#11 token, such as an HSM or SoftHSM2."""

    type_name: ClassVar[str] = "pkcs11"
    settings_model: ClassVar[type[ProviderSettings]] = Pkcs11Settings
    uri_scheme: ClassVar[str] = "pkcs11"

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        if not isinstance(settings, Pkcs11Settings):
            raise ProviderPermanentError(
                f"provider {context.provider_name!r}: expected pkcs11 settings, got "
                f"{type(settings).__name__}"
            )
        super().__init__(settings, context)
        self._settings = settings
        self._shared: _TokenSession | None = None

    @property
    def _prefix(self) -> str:
        return f"{self.context.federation}/"

    def _label(self, key_name: str) -> str:
        return f"{self._prefix}{key_name}"

    def _uri(self, label: str, key_id: bytes | None) -> str:
        uri = Pkcs11Uri(
            token=self._settings.token, object=label, id=key_id, type="private"
        )
        return str(uri)

    # --- sessions and errors ------------------------------------------------------

    def _fail(self, error: p11.PKCS11Error, action: str, target: str) -> NoReturn:
        mapping = _mapping_of(error)
        if mapping.drops_session:
            self._drop_session()
        hint = f"; {mapping.hint}" if mapping.hint else ""
        if mapping.error is AccessDeniedError:
            hint += f" ({self._settings.pin.reference})"
        if isinstance(error, p11.NoSuchToken) and "softhsm" in str(
            self._settings.module
        ):
            # SoftHSM2 reads its token directory from the file that SOFTHSM2_CONF
            # names, so a shell without that variable uses another directory.
            configured = os.environ.get("SOFTHSM2_CONF")
            hint += (
                f", and that SOFTHSM2_CONF ({configured}) names the configuration "
                "of the token directory that contains it"
                if configured
                else ", and set SOFTHSM2_CONF to the configuration file of the "
                "token directory that contains it (it is unset)"
            )
        message = (
            f"provider {self.name!r} (pkcs11): {action} {target} failed: "
            f"{mapping.code}{hint}"
        )
        raise mapping.error(message) from error

    def _token_target(self) -> str:
        return f"token {self._settings.token!r} of {self._settings.module}"

    def _retrying(self, description: str, operation: Callable[[], T]) -> T:
        # A lost session is a temporary error that reopening cures, so reads
        # are retried like signing is.
        return call_with_retry(
            operation,
            self.settings.retry,
            description=f"provider {self.name}: {description}",
        )

    @contextmanager
    def _calls(self, action: str, target: str) -> Iterator[_TokenSession]:
        """Hold the library lock and map PKCS#11 errors raised inside."""
        with _LIBRARY_LOCK:
            try:
                yield self._attach()
            except p11.PKCS11Error as error:
                self._fail(error, action, target)

    def _attach(self) -> _TokenSession:
        if self._shared is not None and self._shared.valid:
            return self._shared
        self._shared = None
        pin = self._settings.pin.resolve()
        key = (self._settings.module, self._settings.token)
        shared = _SESSIONS.get(key)
        if shared is None:
            shared = self._open(pin)
            _SESSIONS[key] = shared
        elif not hmac.compare_digest(shared.pin_digest, _pin_digest(pin)):
            raise AccessDeniedError(
                f"provider {self.name!r} (pkcs11): {self._token_target()} is already "
                f"logged in by another provider of this process with a different "
                f"PIN; check the PIN that {self._settings.pin.reference} holds"
            )
        shared.users += 1
        self._shared = shared
        return shared

    def _open(self, pin: str) -> _TokenSession:
        try:
            library = pkcs11.lib(self._settings.module)
        except p11.PKCS11Error as error:
            raise ProviderPermanentError(
                f"provider {self.name!r} (pkcs11): cannot load PKCS#11 module "
                f"{self._settings.module}; check the module setting"
            ) from error
        target = self._token_target()
        try:
            token = library.get_token(token_label=self._settings.token)
        except p11.PKCS11Error as error:
            self._fail(error, "finding", target)
        mechanisms = frozenset(int(m) for m in token.slot.get_mechanisms())
        try:
            # NOTE: python-pkcs11 0.10 leaves the session it opened for
            # C_Login open when the login fails, so each failed login leaks
            # one unauthenticated session until the process ends.
            session = token.open(rw=True, user_pin=pin)
        except p11.PKCS11Error as error:
            self._fail(error, "logging in to", target)
        logger.info(
            "provider %s: opened a session on %s", self.name, self._token_target()
        )
        return _TokenSession(session, _pin_digest(pin), mechanisms)

    def _drop_session(self) -> None:
        shared = self._shared
        self._shared = None
        if shared is None or not shared.valid:
            return
        shared.valid = False
        _SESSIONS.pop((self._settings.module, self._settings.token), None)
        logger.warning(
            "provider %s: dropped the session on %s; the next call opens a new one",
            self.name,
            self._token_target(),
        )
        try:
            shared.session.close()
        except p11.PKCS11Error as error:
            logger.info(
                "provider %s: closing a broken session failed: %r", self.name, error
            )

    def close(self) -> None:
        with _LIBRARY_LOCK:
            shared = self._shared
            self._shared = None
            if shared is None or not shared.valid:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            shared.valid = False
            _SESSIONS.pop((self._settings.module, self._settings.token), None)
            try:
                shared.session.close()
            except p11.PKCS11Error as error:
                self._fail(error, "closing the session on", self._token_target())
            logger.info(
                "provider %s: closed the session on %s", self.name, self._token_target()
            )

    # --- capabilities -------------------------------------------------------------

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        # Whether a token has Ed25519 shows only in its mechanism list, which
        # supported_algorithms reads once the token is open.
        return _algorithms_of(frozenset(int(m) for m in _ALL_MECHANISMS))

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        with self._calls("reading the mechanisms of", self._token_target()) as shared:
            return _algorithms_of(shared.mechanisms)

    def check(self) -> ProviderStatus:
        with self._calls("probing", self._token_target()) as shared:
            token = shared.session.token
            serial = token.serial.decode(errors="replace")
            identity = (
                f"token {token.label!r} ({token.manufacturer_id.strip()} "
                f"{token.model.strip()}, serial {serial})"
            )
            algorithms = _algorithms_of(shared.mechanisms)
        self.list_keys()
        return ProviderStatus(
            reachable=True,
            identity=identity,
            algorithms=algorithms,
            protection_levels=frozenset({ProtectionLevel.HSM}),
        )

    # --- finding keys -------------------------------------------------------------

    def _private_keys(
        self, session: pkcs11.Session, label: str | None, key_id: bytes | None
    ) -> list[pkcs11.PrivateKey]:
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if label is not None:
            template[Attribute.LABEL] = label
        if key_id is not None:
            template[Attribute.ID] = key_id
        return [
            key
            for key in session.get_objects(template)
            if isinstance(key, pkcs11.PrivateKey)
        ]

    def _public_key_of(
        self, session: pkcs11.Session, private: pkcs11.PrivateKey
    ) -> PublicKey:
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY}
        key_id = private.id
        if key_id:
            template[Attribute.ID] = key_id
        else:
            template[Attribute.LABEL] = private.label
        publics = list(session.get_objects(template))
        source: pkcs11.Object = publics[0] if len(publics) == 1 else private
        return _public_key_from_attributes(source, private.key_type)

    def _info(
        self,
        session: pkcs11.Session,
        private: pkcs11.PrivateKey,
        uri: str | None = None,
    ) -> KeyInfo:
        label = private.label
        key_id = private.id or None
        public = self._public_key_of(session, private)
        name = label[len(self._prefix) :] if label.startswith(self._prefix) else None
        return KeyInfo(
            uri=uri if uri is not None else self._uri(label, key_id),
            algorithm=algorithm_of_public_key(public),
            protection_level=ProtectionLevel.HSM,
            # PKCS#11 has no disabled state: a key object either exists and
            # signs or is gone, so every key found is reported as enabled.
            state=KeyState.ENABLED,
            name=name,
        )

    def _resolve(self, shared: _TokenSession, uri: str) -> pkcs11.PrivateKey:
        cached = shared.private_keys.get(uri)
        if cached is not None:
            return cached
        parsed = parse_pkcs11_uri(uri)
        if parsed.token is not None and parsed.token != self._settings.token:
            raise KeyNotFoundError(
                f"provider {self.name!r} (pkcs11): key {uri} is on token "
                f"{parsed.token!r}, but this provider uses {self._settings.token!r}"
            )
        if parsed.type not in (None, "private"):
            raise KeyNotFoundError(
                f"provider {self.name!r} (pkcs11): key {uri} names a {parsed.type} "
                "object; expected type=private"
            )
        if parsed.object is None and parsed.id is None:
            raise KeyNotFoundError(
                f"provider {self.name!r} (pkcs11): key {uri} has neither object nor id"
            )
        found = self._private_keys(shared.session, parsed.object, parsed.id)
        if not found:
            raise KeyNotFoundError(
                f"provider {self.name!r} (pkcs11): no private key matches {uri}"
            )
        if len(found) > 1:
            raise ProviderPermanentError(
                f"provider {self.name!r} (pkcs11): {len(found)} private keys match "
                f"{uri}; add the id attribute to the URI"
            )
        shared.private_keys[uri] = found[0]
        return found[0]

    def find_key(self, key_name: str) -> KeyInfo | None:
        label = self._label(key_name)
        return self._retrying(f"searching for key {label!r}", lambda: self._find(label))

    def _find(self, label: str) -> KeyInfo | None:
        with self._calls("searching for", f"key {label!r}") as shared:
            found = self._private_keys(shared.session, label, None)
            if not found:
                return None
            if len(found) > 1:
                raise ProviderPermanentError(
                    f"provider {self.name!r} (pkcs11): {len(found)} private keys on "
                    f"{self._token_target()} are labelled {label!r}; delete the "
                    "extra ones"
                )
            return self._info(shared.session, found[0])

    def describe_key(self, uri: str) -> KeyInfo:
        return self._retrying(f"describing {uri}", lambda: self._describe(uri))

    def _describe(self, uri: str) -> KeyInfo:
        with self._calls("describing", uri) as shared:
            # The URI is kept as given, so an adopted key keeps the URI it
            # was configured with.
            return self._info(shared.session, self._resolve(shared, uri), uri)

    def list_keys(self) -> list[KeyInfo]:
        return self._retrying("listing keys", self._list)

    def _list(self) -> list[KeyInfo]:
        with self._calls("listing the keys of", self._token_target()) as shared:
            keys = self._private_keys(shared.session, None, None)
            ours = [key for key in keys if key.label.startswith(self._prefix)]
            return [self._info(shared.session, key) for key in ours]

    def public_key(self, uri: str) -> PublicKey:
        return self._retrying(
            f"reading the public key of {uri}", lambda: self._public(uri)
        )

    def _public(self, uri: str) -> PublicKey:
        with self._calls("reading the public key of", uri) as shared:
            return self._public_key_of(shared.session, self._resolve(shared, uri))

    # --- creating keys ------------------------------------------------------------

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        # Holding the library lock across the search and the creation keeps two
        # threads of this process from creating the same label twice.
        # NOTE: two processes can still race; PKCS#11 has no create-if-absent.
        with _LIBRARY_LOCK:
            return super().find_or_create_key(key_name, algorithm)

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        self.require_algorithm(algorithm)
        label = self._label(key_name)
        key_id = key_id_for_label(label)
        with self._calls("creating", f"key {label!r}") as shared:
            if self._private_keys(shared.session, label, None):
                raise ProviderPermanentError(
                    f"provider {self.name!r} (pkcs11): a key labelled {label!r} "
                    f"already exists on {self._token_target()}; use find_or_create_key"
                )
            _, private = _generate(shared.session, algorithm, label, key_id)
            logger.info(
                "provider %s: created %s key %s on %s",
                self.name,
                algorithm,
                label,
                self._token_target(),
            )
            return self._info(shared.session, private)

    # --- signing ------------------------------------------------------------------

    def _require_mechanism(
        self, shared: _TokenSession, mechanism: Mechanism, scheme: SignatureScheme
    ) -> None:
        if int(mechanism) not in shared.mechanisms:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (pkcs11): {self._token_target()} does not "
                f"offer {mechanism.name}, needed for {scheme}"
            )

    def _sign(
        self,
        uri: str,
        key: pkcs11.PrivateKey,
        data: bytes,
        mechanism: Mechanism,
        parameters: tuple[Mechanism, MGF, int] | None = None,
    ) -> bytes:
        if not isinstance(key, pkcs11.SignMixin):
            # python-pkcs11 gives a key the sign method only when CKA_SIGN is
            # true, so the token would return CKR_KEY_FUNCTION_NOT_PERMITTED.
            raise KeyUnusableError(
                f"provider {self.name!r} (pkcs11): key {uri} cannot sign: its "
                "CKA_SIGN attribute is false (CKR_KEY_FUNCTION_NOT_PERMITTED)"
            )
        if parameters is None:
            return key.sign(data, mechanism=mechanism)
        return key.sign(data, mechanism=mechanism, mechanism_param=parameters)

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        assert scheme.hash is not None  # noqa: S101 - sign_digest checked it.
        with self._calls("signing with", uri) as shared:
            private = self._resolve(shared, uri)
            if scheme.key.is_ec:
                self._require_mechanism(shared, Mechanism.ECDSA, scheme)
                raw = self._sign(uri, private, digest, Mechanism.ECDSA)
                # CKM_ECDSA returns r || s, each as long as the curve's order,
                # which is 66 bytes per component for P-521.
                return ecdsa_raw_to_der(raw, scheme.key)
            if scheme.padding is RsaPadding.PSS:
                self._require_mechanism(shared, Mechanism.RSA_PKCS_PSS, scheme)
                hash_mechanism, mgf = _PSS_HASH[scheme.hash]
                parameters = (hash_mechanism, mgf, scheme.hash.digest_size)
                return self._sign(
                    uri, private, digest, Mechanism.RSA_PKCS_PSS, parameters
                )
            self._require_mechanism(shared, Mechanism.RSA_PKCS, scheme)
            digest_info = _DIGEST_INFO_PREFIX[scheme.hash] + digest
            return self._sign(uri, private, digest_info, Mechanism.RSA_PKCS)

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        if scheme.key is not KeyAlgorithm.ED25519:
            return super()._sign_message(uri, scheme, message)
        with self._calls("signing with", uri) as shared:
            self._require_mechanism(shared, Mechanism.EDDSA, scheme)
            private = self._resolve(shared, uri)
            # CKM_EDDSA without parameters is pure Ed25519 (PKCS#11 3.0), which
            # the conformance kit verifies with pyca.
            return self._sign(uri, private, message, Mechanism.EDDSA)


# --- helpers that call the library with the lock held ---------------------------------


_ALL_MECHANISMS = (
    Mechanism.EC_KEY_PAIR_GEN,
    Mechanism.ECDSA,
    Mechanism.RSA_PKCS_KEY_PAIR_GEN,
    Mechanism.RSA_PKCS,
    Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
    Mechanism.EDDSA,
)


def _algorithms_of(mechanisms: frozenset[int]) -> frozenset[KeyAlgorithm]:
    def offers(*needed: Mechanism) -> bool:
        return all(int(mechanism) in mechanisms for mechanism in needed)

    algorithms: set[KeyAlgorithm] = set()
    if offers(Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA):
        algorithms |= {KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.EC_P521}
    if offers(Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.RSA_PKCS):
        algorithms |= {
            KeyAlgorithm.RSA_2048,
            KeyAlgorithm.RSA_3072,
            KeyAlgorithm.RSA_4096,
        }
    if offers(Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA):
        algorithms.add(KeyAlgorithm.ED25519)
    return frozenset(algorithms)


def _generate(
    session: pkcs11.Session, algorithm: KeyAlgorithm, label: str, key_id: bytes
) -> tuple[pkcs11.PublicKey, pkcs11.PrivateKey]:
    common: dict[Attribute, Any] = {
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
    }
    public_template = {**common, Attribute.PRIVATE: False, Attribute.VERIFY: True}
    # The private half can sign and nothing else, and never leaves the token.
    private_template = {
        **common,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    capabilities = pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY
    if algorithm.is_rsa:
        return session.generate_keypair(
            KeyType.RSA,
            algorithm.key_size,
            store=True,
            capabilities=capabilities,
            public_template=public_template,
            private_template=private_template,
        )
    public_template[Attribute.EC_PARAMS] = _EC_PARAMS[algorithm]
    if algorithm is KeyAlgorithm.ED25519:
        key_type, mechanism = KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN
    else:
        key_type, mechanism = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
    return session.generate_keypair(
        key_type,
        store=True,
        capabilities=capabilities,
        mechanism=mechanism,
        public_template=public_template,
        private_template=private_template,
    )


def _public_key_from_attributes(source: pkcs11.Object, key_type: KeyType) -> PublicKey:
    """Build a pyca public key from a key object's public attributes."""
    if key_type == KeyType.RSA:
        modulus = int.from_bytes(source[Attribute.MODULUS], "big")
        exponent = int.from_bytes(source[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if key_type not in (KeyType.EC, KeyType.EC_EDWARDS):
        raise UnsupportedAlgorithmError(f"PKCS#11 key type {key_type!r} is not used")
    params = bytes(source[Attribute.EC_PARAMS])
    algorithm = _ALGORITHM_OF_EC_PARAMS.get(params)
    if algorithm is None:
        raise UnsupportedAlgorithmError(
            f"PKCS#11 key with CKA_EC_PARAMS {params.hex()} is on an unused curve"
        )
    point = decode_ec_point(bytes(source[Attribute.EC_POINT]), algorithm)
    if algorithm is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    return ec.EllipticCurvePublicKey.from_encoded_point(algorithm.curve, point)

"""Parsing and building of PKCS#11 URIs (RFC 7512).

A PKCS#11 URI names a token and an object in it, for example::

    pkcs11:token=CA%20token;object=prod%2Froot-ca;id=%a1%b2;type=private

The path contains ``;``-separated attributes, and an optional query after
``?`` contains ``&``-separated ones. Values are UTF-8 strings with percent-encoding
(RFC 7512), except ``id``, which is a byte string and is written
with every byte percent-encoded, as the RFC's examples do. Each attribute may
appear once. Attributes other than ``token``, ``object``, ``id`` and ``type``
(vendor ones included) are kept in :attr:`Pkcs11Uri.path_attributes` and
:attr:`Pkcs11Uri.query_attributes` so that a parsed URI builds back unchanged
apart from attribute order and the case of hex digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from pkifed.errors import ProviderPermanentError

SCHEME = "pkcs11"

# Characters the RFC 7512 grammar lets appear unencoded besides the RFC 3986
# unreserved set: pk11-path-res-avail in the path, pk11-query-res-avail in the
# query. "/" is reserved in the path, so an object label such as "fed/key" is
# written "fed%2Fkey".
_PATH_SAFE = ":[]@!$'()*+,=&"
_QUERY_SAFE = ":[]@!$'()*+,=/?"
_UNRESERVED = r"A-Za-z0-9\-._~"
_PATH_VALUE = re.compile(
    rf"^(?:[{_UNRESERVED}{re.escape(_PATH_SAFE)}]|%[0-9A-Fa-f]{{2}})*$"
)
_QUERY_VALUE = re.compile(
    rf"^(?:[{_UNRESERVED}{re.escape(_QUERY_SAFE)}]|%[0-9A-Fa-f]{{2}})*$"
)
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

# Object classes named by the "type" attribute of RFC 7512.
OBJECT_TYPES = frozenset({"public", "private", "cert", "secret-key", "data"})


class Pkcs11UriError(ProviderPermanentError):
    """A string that is not a valid PKCS#11 URI."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI with its values percent-decoded."""

    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    path_attributes: tuple[tuple[str, str], ...] = ()
    query_attributes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in OBJECT_TYPES:
            expected = ", ".join(sorted(OBJECT_TYPES))
            raise Pkcs11UriError(
                f"PKCS#11 URI type {self.type!r} is invalid; expected one of {expected}"
            )

    def __str__(self) -> str:
        path: list[str] = []
        if self.token is not None:
            path.append(f"token={_encode(self.token, _PATH_SAFE)}")
        if self.object is not None:
            path.append(f"object={_encode(self.object, _PATH_SAFE)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{byte:02x}" for byte in self.id))
        if self.type is not None:
            path.append(f"type={self.type}")
        path.extend(
            f"{name}={_encode(value, _PATH_SAFE)}"
            for name, value in self.path_attributes
        )
        text = f"{SCHEME}:{';'.join(path)}"
        if self.query_attributes:
            query = "&".join(
                f"{name}={_encode(value, _QUERY_SAFE)}"
                for name, value in self.query_attributes
            )
            text += f"?{query}"
        return text


def _encode(value: str, safe: str) -> str:
    return quote(value.encode("utf-8"), safe=safe)


def _split_attributes(
    component: str, separator: str, pattern: re.Pattern[str], text: str
) -> list[tuple[str, str]]:
    attributes: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in component.split(separator) if component else []:
        name, equals, value = part.partition("=")
        if not equals or not _ATTRIBUTE_NAME.match(name):
            raise Pkcs11UriError(
                f"PKCS#11 URI {text!r} has an invalid attribute {part!r}; expected "
                "name=value"
            )
        if name in seen:
            # A repeated attribute would be ambiguous, so it is rejected.
            raise Pkcs11UriError(f"PKCS#11 URI {text!r} repeats attribute {name!r}")
        if not pattern.match(value):
            raise Pkcs11UriError(
                f"PKCS#11 URI {text!r}: attribute {name!r} contains characters that "
                "must be percent-encoded"
            )
        seen.add(name)
        attributes.append((name, value))
    return attributes


def _decode_text(name: str, value: str, text: str) -> str:
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise Pkcs11UriError(
            f"PKCS#11 URI {text!r}: attribute {name!r} is not UTF-8 after "
            "percent-decoding"
        ) from None


def _redact(text: str) -> str:
    path, _, query = text.partition("?")
    return f"{path}?<redacted>" if "pin-value" in query else text


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse a PKCS#11 URI.

    A ``pin-value`` query attribute is rejected: PINs belong in the provider's
    settings as secret references, and a URI is logged and stored in state.

    Raises:
        Pkcs11UriError: the scheme is not ``pkcs11``, an attribute is malformed
            or repeated, a value has a character that must be encoded, or the
            URI contains a PIN.
    """
    text = _redact(uri)
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() != SCHEME:
        raise Pkcs11UriError(f"{text!r} is not a PKCS#11 URI; expected 'pkcs11:...'")
    path_text, _, query_text = rest.partition("?")
    path = _split_attributes(path_text, ";", _PATH_VALUE, text)
    query = _split_attributes(query_text, "&", _QUERY_VALUE, text)
    if any(name == "pin-value" for name, _ in query):
        raise Pkcs11UriError(
            f"PKCS#11 URI {text!r} contains pin-value; set the PIN as a secret "
            "reference in the provider's pin setting instead"
        )

    known: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    for name, value in path:
        if name in ("token", "object", "type"):
            known[name] = _decode_text(name, value, text)
        elif name == "id":
            known[name] = value
        else:
            others.append((name, _decode_text(name, value, text)))
    decoded_query = tuple(
        (name, _decode_text(name, value, text)) for name, value in query
    )

    object_id = unquote_to_bytes(known["id"]) if "id" in known else None
    return Pkcs11Uri(
        token=known.get("token"),
        object=known.get("object"),
        id=object_id,
        type=known.get("type"),
        path_attributes=tuple(others),
        query_attributes=decoded_query,
    )

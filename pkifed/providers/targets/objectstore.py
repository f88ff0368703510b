"""Helpers shared by the object-store targets: key prefixes, endpoints, types."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from pkifed.errors import ProviderPermanentError
from pkifed.loopback import is_loopback_url

# Content types of the objects pkifed publishes, so a bucket served over HTTP
# gives clients the media types of RFC 2585 section 4 (pkix-cert, pkix-crl),
# RFC 5751 section 3.2 (pkcs7-mime) and RFC 8259 (JSON).
_CONTENT_TYPES = {
    ".pem": "application/x-pem-file",
    ".der": "application/pkix-cert",
    ".crt": "application/pkix-cert",
    ".crl": "application/pkix-crl",
    ".p7b": "application/pkcs7-mime",
    ".p7c": "application/pkcs7-mime",
    ".json": "application/json",
}


def content_type(object_name: str) -> str:
    """Return the media type for an object name, by its suffix."""
    suffix = object_name[object_name.rfind(".") :] if "." in object_name else ""
    return _CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")


def normalize_prefix(value: str) -> str:
    """Strip slashes around a key prefix and reject empty or relative segments.

    Raises:
        ValueError: a segment is empty, ``.`` or ``..``.
    """
    stripped = value.strip("/")
    if not stripped:
        return ""
    for segment in stripped.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(
                f"got {value!r}, expected segments separated by single '/' and "
                "none of them '.' or '..'"
            )
    return stripped


def check_endpoint(value: str) -> str:
    """Accept an https:// URL, or an http:// URL on a loopback address.

    Raises:
        ValueError: the URL has another scheme, no host, or is plain http
            to a host that is not loopback.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"got {value!r}, expected an http:// or https:// URL")
    if parts.scheme == "http" and not is_loopback_url(value):
        raise ValueError(
            f"got {value!r}: plain http:// is allowed for loopback addresses only; "
            "use https://"
        )
    return value


class ObjectKeys:
    """Maps object names such as ``root.pem`` to keys under a target's prefix.

    Object names follow the file target's rule: no ``/`` and no leading ``.``,
    so every target accepts the same names and a listing never descends into
    another target's prefix.
    """

    def __init__(self, target: str, prefix: str) -> None:
        self.target = target
        self.prefix = prefix
        self.list_prefix = f"{prefix}/" if prefix else ""

    def key(self, object_name: str) -> str:
        """Return the store key of ``object_name``.

        Raises:
            ProviderPermanentError: the name is empty, contains ``/`` or
                starts with ``.``.
        """
        if not object_name or "/" in object_name or object_name.startswith("."):
            raise ProviderPermanentError(
                f"target {self.target}: invalid object name {object_name!r}; use a "
                "name without '/' that does not start with '.'"
            )
        return self.list_prefix + object_name

    def names(self, keys: Iterable[str]) -> list[str]:
        """Return the sorted object names among ``keys``, directly under the prefix."""
        found = []
        for key in keys:
            if not key.startswith(self.list_prefix):
                continue
            name = key[len(self.list_prefix) :]
            if name and "/" not in name and not name.startswith("."):
                found.append(name)
        return sorted(found)

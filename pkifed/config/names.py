"""Subjects and name constraints, from their configuration form to pyca objects."""

from __future__ import annotations

import ipaddress
import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from pkifed.config.schema import NameConstraintsConfig

# Mapping keys accepted in a subject mapping, with their RFC 4514 short names.
# Attributes are written in the conventional order, broadest first.
SUBJECT_ATTRIBUTES: dict[str, x509.ObjectIdentifier] = {
    "country": NameOID.COUNTRY_NAME,
    "state": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizational_unit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "common_name": NameOID.COMMON_NAME,
    "serial_number": NameOID.SERIAL_NUMBER,
}
_SHORT_NAMES = {
    "c": "country",
    "st": "state",
    "l": "locality",
    "o": "organization",
    "ou": "organizational_unit",
    "cn": "common_name",
}


def parse_subject(subject: str | dict[str, str]) -> x509.Name:
    """Build an X.509 name from an RFC 4514 string or an attribute mapping.

    Raises:
        ValueError: the string does not parse, an attribute is unknown, or the
            name is empty.
    """
    if isinstance(subject, str):
        shown = subject if len(subject) <= 80 else subject[:77] + "..."
        try:
            name = x509.Name.from_rfc4514_string(subject)
        except ValueError as error:
            detail = str(error) or "expected ATTRIBUTE=value pairs separated by commas"
            raise ValueError(f"invalid RFC 4514 name {shown!r}: {detail}") from None
    else:
        attributes = []
        keys = {
            _SHORT_NAMES.get(key.lower(), key.lower()): v for key, v in subject.items()
        }
        unknown = sorted(set(keys) - set(SUBJECT_ATTRIBUTES))
        if unknown:
            known = ", ".join(SUBJECT_ATTRIBUTES)
            raise ValueError(
                f"unknown subject attribute {unknown[0]!r} (known: {known})"
            )
        for key, oid in SUBJECT_ATTRIBUTES.items():
            if key in keys:
                attributes.append(x509.NameAttribute(oid, keys[key]))
        name = x509.Name(attributes)
    if len(name) == 0:
        raise ValueError("the subject is empty")
    if name.get_attributes_for_oid(NameOID.COUNTRY_NAME):
        country = name.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value
        if not isinstance(country, str) or len(country) != 2:
            raise ValueError(f"country must be a two-letter code, got {country!r}")
    return name


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _check_dns_name(value: str, entry: str) -> str:
    # RFC 5280 section 4.2.1.10: a DNS constraint is a host or domain name,
    # optionally with a leading period for subdomains only. Names outside
    # ASCII must be written as A-labels (xn--...).
    labels = value.removeprefix(".").split(".")
    if not value.isascii() or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(
            f"invalid DNS name in {entry!r}; expected labels of letters, digits and "
            "hyphens separated by dots (IDNs as xn-- A-labels), such as example.com "
            "or .example.com"
        )
    return value


def _check_email(value: str, entry: str) -> str:
    # RFC 5280 section 4.2.1.10: a mailbox, a host, or a domain with a
    # leading period.
    local, at, domain = value.rpartition("@")
    if at and (not local or any(c.isspace() for c in local)):
        raise ValueError(f"invalid email constraint in {entry!r}")
    _check_dns_name(domain, entry)
    return value


def parse_general_name(entry: str) -> x509.GeneralName:
    """Parse ``TYPE:VALUE`` (dns, email, ip, uri, dn) into a general name.

    Raises:
        ValueError: the type is unknown or the value is malformed.
    """
    kind, separator, value = entry.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not separator or not value:
        raise ValueError(f"invalid name constraint {entry!r}; expected TYPE:VALUE")
    if kind == "dns":
        return x509.DNSName(_check_dns_name(value, entry))
    if kind == "email":
        return x509.RFC822Name(_check_email(value, entry))
    if kind == "uri":
        return x509.UniformResourceIdentifier(value)
    if kind == "dn":
        return x509.DirectoryName(parse_subject(value))
    if kind == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_network(value, strict=True))
        except ValueError as error:
            raise ValueError(f"invalid IP network {value!r}: {error}") from None
    raise ValueError(
        f"unknown name constraint type {kind!r} in {entry!r} (known: dns, email, ip, "
        "uri, dn)"
    )


def build_name_constraints(config: NameConstraintsConfig) -> x509.NameConstraints:
    """Build the extension; raises ValueError like :func:`parse_general_name`."""
    permitted = [parse_general_name(entry) for entry in config.permitted]
    excluded = [parse_general_name(entry) for entry in config.excluded]
    if not permitted and not excluded:
        raise ValueError(
            "name constraints need at least one permitted or excluded name"
        )
    return x509.NameConstraints(
        permitted_subtrees=permitted or None, excluded_subtrees=excluded or None
    )

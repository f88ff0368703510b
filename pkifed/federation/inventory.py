"""The inventory: every authority, bundle, provider and published object.

By default the inventory is read from the configuration and the state store
only, so a report works even when a cloud is unreachable: key states are
``unknown`` and each published object's state comes from its publication
record. Given a :class:`~pkifed.federation.runtime.Runtime`, the inventory is
*live*: it describes each authority's key in its provider (state and protection
level), lists each provider's keys to find orphans, and reads every object the
federation publishes to compare it with what the federation would publish.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import SignatureAlgorithmOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from pkifed.config.loader import LoadedConfig
from pkifed.config.schema import AuthorityConfig, FederationConfig
from pkifed.errors import KeyNotFoundError, PkifedError, StateError
from pkifed.federation import bundles, crl, publishing
from pkifed.federation.certificates import (
    fingerprint_sha256,
    subject_key_identifier,
    to_pem,
)
from pkifed.federation.hierarchy import ancestors, parents_first
from pkifed.federation.publishing import DesiredObject, Snapshot
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import KeyRecord, PublicationRecord, Store
from pkifed.providers.algorithms import KeyAlgorithm
from pkifed.secrets import redact

logger = logging.getLogger(__name__)

# Values of AuthorityEntry.level.
ROOT = "root"
INTERMEDIATE = "intermediate"
ISSUING = "issuing"

# Values of TargetEntry.state.
IN_SYNC = "in-sync"
DRIFTED = "drifted"
MISSING = "missing"
UNKNOWN = "unknown"

_SIGNATURE_NAMES = {
    getattr(SignatureAlgorithmOID, attribute): attribute.lower().replace("_", "-")
    for attribute in dir(SignatureAlgorithmOID)
    if not attribute.startswith("_")
}


@dataclass(frozen=True)
class NameConstraintsEntry:
    """RFC 5280 name constraints as TYPE:VALUE strings, like the configuration."""

    permitted: list[str]
    excluded: list[str]


@dataclass(frozen=True)
class CrlEntry:
    """The authority's current CRL.

    ``state`` is ``none`` (no CRL issued), ``current``, ``stale`` (two thirds
    of the time from thisUpdate to nextUpdate have passed, so apply signs a new
    one) or ``expired`` (nextUpdate has passed). ``required`` is true when the
    authority's configuration requests CRLs. ``entries`` counts the revoked
    serials it lists, and ``targets`` names the targets whose DER object contains
    exactly this CRL (by publication record, or read back in a live report);
    ``location`` is the first of them.
    """

    required: bool = False
    state: str = "none"
    number: int | None = None
    this_update: str = ""
    next_update: str = ""
    location: str = ""
    entries: int | None = None
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RevocationEntry:
    """A revoked certificate of the authority.

    ``replaced`` is false while the revoked certificate is still the current
    one, before apply issues the replacement.
    """

    serial: str
    reason: str
    revoked_at: str
    issuer: str
    replaced: bool


@dataclass(frozen=True)
class ChainEntry:
    """Whether the chain from the authority up to its root verifies.

    ``valid`` is None when the authority has no certificate yet.
    """

    valid: bool | None
    length: int
    problems: list[str]


@dataclass(frozen=True)
class TargetEntry:
    """One object the federation publishes to one target, and its state.

    ``sha256`` is the digest the publication record stores (empty when the
    object was never published), ``expected_sha256`` the digest of what the
    federation would publish now, and ``observed_sha256`` the digest read from
    the target by a live report. ``state`` is in-sync, drifted, missing or
    unknown, and ``source`` names where it comes from: the ``record`` or a
    ``live`` read.
    """

    name: str
    location: str
    sha256: str
    published_at: str
    object_name: str = ""
    state: str = UNKNOWN
    source: str = "record"
    expected_sha256: str = ""
    observed_sha256: str = ""
    error: str = ""


@dataclass(frozen=True)
class AuthorityEntry:
    """One authority's row in the inventory; empty strings where nothing exists yet.

    ``level`` is root (no parent), intermediate (has children) or issuing (a CA
    without children). ``key_state`` is ``unknown`` unless the report is live.
    """

    name: str
    provider: str
    parent: str | None
    key_uri: str
    algorithm: str
    protection_level: str
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    days_left: int | None
    fingerprint_sha256: str
    subject_key_identifier: str
    path_length: int | None
    certificate_pem: str
    provider_type: str = ""
    level: str = ROOT
    children: list[str] = field(default_factory=list)
    configured_algorithm: str = ""
    key_size: int | None = None
    key_state: str = UNKNOWN
    key_error: str = ""
    authority_key_identifier: str = ""
    lifetime_days: int | None = None
    signature_algorithm: str = ""
    signature_hash: str = ""
    name_constraints: NameConstraintsEntry | None = None
    crl: CrlEntry = field(default_factory=CrlEntry)
    revocations: list[RevocationEntry] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    publications: list[TargetEntry] = field(default_factory=list)
    chain: ChainEntry = field(default_factory=lambda: ChainEntry(None, 0, []))


@dataclass(frozen=True)
class BundleEntry:
    """A trust bundle, its members and its object on each target."""

    name: str
    authorities: list[str]
    targets: list[TargetEntry]
    expected_sha256: str = ""


@dataclass(frozen=True)
class ProviderKeyEntry:
    """A key a live report found in a provider.

    ``status`` is ``current`` (an authority's key), ``retired`` (an earlier
    generation the state store records) or ``orphaned`` (unknown to the state).
    """

    name: str
    uri: str
    algorithm: str
    protection_level: str
    state: str
    status: str
    authority: str | None


@dataclass(frozen=True)
class ProviderEntry:
    """A configured provider and, in a live report, the keys found in it."""

    name: str
    type: str
    offered_algorithms: list[str]
    observed: bool = False
    error: str = ""
    keys: list[ProviderKeyEntry] = field(default_factory=list)


@dataclass(frozen=True)
class Inventory:
    """Everything a report shows, before the policy's findings are added."""

    federation: str
    generated_at: str
    authorities: list[AuthorityEntry]
    bundles: list[BundleEntry]
    providers: list[ProviderEntry] = field(default_factory=list)
    live: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def authority(self, name: str) -> AuthorityEntry:
        """Return the entry of the authority ``name``."""
        return next(entry for entry in self.authorities if entry.name == name)


@dataclass
class _StoreSnapshot:
    """The state store's rows the inventory uses, read in one transaction."""

    keys: dict[str, KeyRecord]
    certificates: dict[str, x509.Certificate]
    all_keys: list[KeyRecord]
    publications: dict[tuple[str, str], PublicationRecord]


def iso(moment: datetime.datetime) -> str:
    """Format a time as ISO-8601 UTC with a ``Z``, to the second."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def level_of(model: FederationConfig, name: str) -> str:
    """Name the authority's level by its position in the hierarchy."""
    if model.authorities[name].parent is None:
        return ROOT
    if any(a.parent == name for a in model.authorities.values()):
        return INTERMEDIATE
    return ISSUING


def crl_required(authority: AuthorityConfig) -> bool:
    """Return whether the authority's configuration requests CRLs."""
    return authority.crl is not None


def build_inventory(
    config: LoadedConfig,
    store: Store,
    now: datetime.datetime,
    runtime: Runtime | None = None,
) -> Inventory:
    """Collect the inventory from the configuration and the state store.

    With a ``runtime``, providers and targets are observed too (a live report);
    a provider or target that fails is reported in its entry, not raised.
    """
    model = config.model
    with store.transaction() as session:
        snapshot = _read_store(store, session, model)
        history = publishing.read_snapshot(session)
    desired = publishing.desired_objects(model)
    expected = {(d.target, d.object_name): _render(d, history, now) for d in desired}
    bundle_objects = {d.bundle: d.object_name for d in desired if d.bundle}
    targets = {
        (d.target, d.object_name): _target_entry(
            d, snapshot.publications.get((d.target, d.object_name)), expected, runtime
        )
        for d in desired
    }
    providers = _provider_entries(config, snapshot, runtime)
    authorities = [
        _authority_entry(config, name, snapshot, history, targets, runtime, now)
        for name in parents_first(model)
    ]
    bundle_entries = [
        BundleEntry(
            name,
            list(bundle.authorities),
            [targets[(t, bundle_objects[name])] for t in bundle.targets],
            _sha256(expected.get((bundle.targets[0], bundle_objects[name]))),
        )
        for name, bundle in model.bundles.items()
    ]
    return Inventory(
        model.name,
        iso(now),
        authorities,
        bundle_entries,
        providers,
        runtime is not None,
    )


# --- the state store --------------------------------------------------------------


def _read_store(
    store: Store, session: Session, model: FederationConfig
) -> _StoreSnapshot:
    keys: dict[str, KeyRecord] = {}
    certificates: dict[str, x509.Certificate] = {}
    for name in model.authorities:
        key = store.current_key(session, name)
        if key is not None:
            keys[name] = key
        record = store.current_certificate(session, name)
        if record is not None:
            certificates[name] = x509.load_der_x509_certificate(record.der)
    publications = {}
    for entry in publishing.desired_objects(model):
        target, object_name = entry.target, entry.object_name
        publication = store.publication(session, target, object_name)
        if publication is not None:
            publications[(target, object_name)] = publication
    all_keys = list(session.scalars(select(KeyRecord)).all())
    return _StoreSnapshot(keys, certificates, all_keys, publications)


# --- published objects ------------------------------------------------------------


def _render(
    desired: DesiredObject, history: Snapshot, now: datetime.datetime
) -> bytes | None:
    """Render what the federation would publish, or None without a certificate."""
    try:
        return publishing.render(history, desired, now)
    except StateError:
        return None


def _sha256(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _target_entry(
    desired: DesiredObject,
    record: PublicationRecord | None,
    expected: dict[tuple[str, str], bytes | None],
    runtime: Runtime | None,
) -> TargetEntry:
    expected_sha256 = _sha256(expected[(desired.target, desired.object_name)])
    entry = TargetEntry(
        name=desired.target,
        location=record.location if record is not None else "",
        sha256=record.sha256 if record is not None else "",
        published_at=iso(record.published_at) if record is not None else "",
        object_name=desired.object_name,
        expected_sha256=expected_sha256,
    )
    if runtime is not None:
        return _observe_target(entry, runtime)
    if record is None or not expected_sha256:
        return entry
    state = IN_SYNC if record.sha256 == expected_sha256 else DRIFTED
    return _replace(entry, state=state)


def _observe_target(entry: TargetEntry, runtime: Runtime) -> TargetEntry:
    try:
        target = runtime.target(entry.name)
        stored = target.read(entry.object_name)
        location = entry.location or target.location(entry.object_name)
    except PkifedError as error:
        logger.warning(
            "target %s: reading %s failed: %s", entry.name, entry.object_name, error
        )
        return _replace(entry, source="live", error=redact(str(error)))
    if stored is None:
        return _replace(entry, source="live", state=MISSING, location=location)
    observed = hashlib.sha256(stored.data).hexdigest()
    # What pkifed last published and what it would publish now both count as
    # in sync: between the two, an apply is pending, not a foreign change.
    known = {entry.sha256, entry.expected_sha256} - {""}
    state = IN_SYNC if observed in known else DRIFTED
    if not known:
        state = UNKNOWN
    return _replace(
        entry, source="live", state=state, observed_sha256=observed, location=location
    )


def _replace(entry: TargetEntry, **changes: Any) -> TargetEntry:
    return TargetEntry(**{**asdict(entry), **changes})


# --- providers and keys -----------------------------------------------------------


def _provider_entries(
    config: LoadedConfig, snapshot: _StoreSnapshot, runtime: Runtime | None
) -> list[ProviderEntry]:
    entries = []
    for name, plugin in config.providers.items():
        offered = plugin.plugin.offered_algorithms(plugin.settings)
        entry = ProviderEntry(
            name=name,
            type=plugin.plugin.type_name,
            offered_algorithms=sorted(str(a) for a in offered),
        )
        if runtime is not None:
            entry = _observe_provider(entry, snapshot, runtime)
        entries.append(entry)
    return entries


def _observe_provider(
    entry: ProviderEntry, snapshot: _StoreSnapshot, runtime: Runtime
) -> ProviderEntry:
    try:
        listed = runtime.provider(entry.name).list_keys()
    except PkifedError as error:
        logger.warning("provider %s: listing keys failed: %s", entry.name, error)
        return ProviderEntry(
            entry.name,
            entry.type,
            entry.offered_algorithms,
            observed=False,
            error=redact(str(error)),
        )
    current = {key.uri: key.authority for key in snapshot.keys.values()}
    recorded = {
        key.uri: key.authority
        for key in snapshot.all_keys
        if key.provider == entry.name
    }
    keys = []
    for info in listed:
        if info.uri in current:
            status, authority = "current", current[info.uri]
        elif info.uri in recorded:
            status, authority = "retired", recorded[info.uri]
        else:
            status, authority = "orphaned", None
        keys.append(
            ProviderKeyEntry(
                name=info.name or "",
                uri=info.uri,
                algorithm=str(info.algorithm),
                protection_level=str(info.protection_level),
                state=str(info.state),
                status=status,
                authority=authority,
            )
        )
    return ProviderEntry(
        entry.name, entry.type, entry.offered_algorithms, observed=True, keys=keys
    )


def _observe_key(runtime: Runtime, key: KeyRecord) -> tuple[str, str | None, str]:
    """Describe a key live: its state, protection level and any error."""
    try:
        info = runtime.provider(key.provider).describe_key(key.uri)
    except KeyNotFoundError as error:
        return "not-found", None, redact(str(error))
    except PkifedError as error:
        logger.warning(
            "provider %s: describing %s failed: %s", key.provider, key.uri, error
        )
        return UNKNOWN, None, redact(str(error))
    return str(info.state), str(info.protection_level), ""


# --- authorities ------------------------------------------------------------------


def _authority_entry(
    config: LoadedConfig,
    name: str,
    snapshot: _StoreSnapshot,
    history: Snapshot,
    targets: dict[tuple[str, str], TargetEntry],
    runtime: Runtime | None,
    now: datetime.datetime,
) -> AuthorityEntry:
    model = config.model
    authority = model.authorities[name]
    key = snapshot.keys.get(name)
    certificate = snapshot.certificates.get(name)
    key_state, protection, key_error = UNKNOWN, None, ""
    if key is not None and runtime is not None:
        key_state, protection, key_error = _observe_key(runtime, key)
    algorithm = key.algorithm if key is not None else ""
    plugin = config.providers.get(authority.provider)
    publications = [
        targets[(target, object_name)]
        for target in authority.publish
        for object_name in (
            bundles.certificate_object_name(name),
            bundles.chain_object_name(name),
        )
    ]
    crl_publications = [
        entry
        for (_, object_name), entry in targets.items()
        if object_name
        in (
            publishing.crl_object_name(name, "der"),
            publishing.crl_object_name(name, "pem"),
        )
    ]
    return AuthorityEntry(
        name=name,
        provider=authority.provider,
        parent=authority.parent,
        key_uri=key.uri if key else "",
        algorithm=algorithm,
        protection_level=protection or (key.protection_level if key else ""),
        provider_type=plugin.plugin.type_name if plugin is not None else "",
        level=level_of(model, name),
        children=[n for n, a in model.authorities.items() if a.parent == name],
        configured_algorithm=str(authority.algorithm),
        key_size=_key_size(algorithm or str(authority.algorithm)),
        key_state=key_state,
        key_error=key_error,
        crl=_crl_entry(authority, name, history, crl_publications, now),
        revocations=_revocation_entries(name, history),
        bundles=[
            b for b, bundle in model.bundles.items() if name in bundle.authorities
        ],
        publications=publications + crl_publications,
        chain=check_chain(model, name, snapshot.certificates),
        **_certificate_fields(certificate, now),
    )


def _crl_entry(
    authority: AuthorityConfig,
    name: str,
    history: Snapshot,
    publications: list[TargetEntry],
    now: datetime.datetime,
) -> CrlEntry:
    required = crl_required(authority)
    record = history.crls.get(name)
    if record is None:
        return CrlEntry(required=required)
    digest = hashlib.sha256(record.der).hexdigest()
    der_name = publishing.crl_object_name(name, "der")
    holding = [
        entry
        for entry in publications
        if entry.object_name == der_name
        and (entry.observed_sha256 if entry.source == "live" else entry.sha256)
        == digest
    ]
    return CrlEntry(
        required=required,
        state=crl.crl_state(record.this_update, record.next_update, now),
        number=record.number,
        this_update=iso(record.this_update),
        next_update=iso(record.next_update),
        location=holding[0].location if holding else "",
        entries=record.entries,
        targets=[entry.name for entry in holding],
    )


def _revocation_entries(name: str, history: Snapshot) -> list[RevocationEntry]:
    current = history.current_certificate(name)
    current_serial = current.record.serial if current is not None else None
    return [
        RevocationEntry(
            serial=record.serial,
            reason=record.reason,
            revoked_at=iso(record.revoked_at),
            issuer=record.issuer,
            replaced=record.serial != current_serial,
        )
        for record in sorted(
            history.revocations.values(), key=lambda r: (r.revoked_at, r.serial)
        )
        if record.authority == name
    ]


def _key_size(algorithm: str) -> int | None:
    try:
        return KeyAlgorithm(algorithm).key_size
    except ValueError:
        return None


def _certificate_fields(
    certificate: x509.Certificate | None, now: datetime.datetime
) -> dict[str, Any]:
    if certificate is None:
        return {
            "subject": "",
            "issuer": "",
            "serial": "",
            "not_before": "",
            "not_after": "",
            "days_left": None,
            "fingerprint_sha256": "",
            "subject_key_identifier": "",
            "path_length": None,
            "certificate_pem": "",
        }
    ski = subject_key_identifier(certificate)
    aki = _extension(certificate, x509.AuthorityKeyIdentifier)
    constraints = _extension(certificate, x509.BasicConstraints)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_before": iso(certificate.not_valid_before_utc),
        "not_after": iso(certificate.not_valid_after_utc),
        "days_left": (certificate.not_valid_after_utc - now).days,
        "lifetime_days": lifetime.days,
        "fingerprint_sha256": fingerprint_sha256(certificate),
        "subject_key_identifier": ski.hex(":") if ski else "",
        "authority_key_identifier": (
            aki.key_identifier.hex(":") if aki and aki.key_identifier else ""
        ),
        "path_length": constraints.path_length if constraints else None,
        "name_constraints": _name_constraints(certificate),
        "signature_algorithm": signature_algorithm_name(certificate),
        "signature_hash": _signature_hash(certificate),
        "certificate_pem": to_pem(certificate).decode(),
    }


def signature_algorithm_name(certificate: x509.Certificate) -> str:
    """Name the certificate's signature algorithm, such as ``ecdsa-with-sha384``."""
    oid = certificate.signature_algorithm_oid
    return _SIGNATURE_NAMES.get(oid, oid.dotted_string)


def _signature_hash(certificate: x509.Certificate) -> str:
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unsupported"
    return algorithm.name if algorithm is not None else ""


def _extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"uri:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"dn:{name.value.rfc4514_string()}"
    return f"other:{name.value!r}"


def _name_constraints(certificate: x509.Certificate) -> NameConstraintsEntry | None:
    constraints = _extension(certificate, x509.NameConstraints)
    if constraints is None:
        return None
    return NameConstraintsEntry(
        permitted=[_general_name(n) for n in constraints.permitted_subtrees or []],
        excluded=[_general_name(n) for n in constraints.excluded_subtrees or []],
    )


# --- chains -----------------------------------------------------------------------


def check_chain(
    model: FederationConfig, name: str, certificates: dict[str, x509.Certificate]
) -> ChainEntry:
    """Verify the chain from ``name`` up to its root with pyca.

    Each certificate must be signed by its parent's key and name its parent as
    issuer (pyca's ``verify_directly_issued_by``). Its authority key identifier
    must equal the parent's subject key identifier. Its validity must lie within
    the parent's, because a certificate outlasting its issuer stops validating
    when the issuer expires. The root must verify itself.
    """
    chain = [name, *ancestors(model, name)]
    if name not in certificates:
        return ChainEntry(None, 0, [])
    problems = []
    for child, parent in zip(chain, [*chain[1:], chain[-1]], strict=True):
        if parent not in certificates:
            problems.append(f"{parent} has no certificate, so {child} cannot verify")
            break
        problems.extend(_link_problems(child, parent, certificates))
    return ChainEntry(not problems, len(chain), problems)


def _link_problems(
    child: str, parent: str, certificates: dict[str, x509.Certificate]
) -> list[str]:
    issued = certificates[child]
    issuer = certificates[parent]
    problems = []
    try:
        issued.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as error:
        reason = str(error) or type(error).__name__
        problems.append(f"{child} does not verify with {parent}'s key: {reason}")
    if child == parent:
        return problems
    aki = _extension(issued, x509.AuthorityKeyIdentifier)
    ski = subject_key_identifier(issuer)
    if aki is None or aki.key_identifier != ski:
        problems.append(
            f"{child}'s authority key identifier does not match {parent}'s subject "
            "key identifier"
        )
    if issued.not_valid_before_utc < issuer.not_valid_before_utc:
        problems.append(f"{child} becomes valid before {parent}")
    if issued.not_valid_after_utc > issuer.not_valid_after_utc:
        problems.append(f"{child} expires after {parent}")
    return problems

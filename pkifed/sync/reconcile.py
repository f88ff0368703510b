"""The reconciler: observe the federation, plan the changes, apply them.

Observation reads the state store, each authority's key in its provider (one
read) and each published object in its target (one read). Planning compares
that with the configuration and yields typed actions. Applying runs them in
order, recording each result in the state store before the next one starts,
so a pass killed at any point resumes where it stopped.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy.orm import Session

from pkifed.config.loader import LoadedConfig
from pkifed.config.schema import AuthorityConfig, KeyAdoption
from pkifed.errors import KeyNotFoundError, PkifedError, StateError
from pkifed.federation import bundles
from pkifed.federation.certificates import (
    Issuer,
    build_ca_certificate,
    fingerprint_sha256,
    subject_key_identifier,
)
from pkifed.federation.hierarchy import (
    ancestors,
    ca_profile,
    key_name,
    parents_first,
    signature_scheme,
)
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import (
    CertificateRecord,
    KeyRecord,
    PublicationRecord,
    Store,
)
from pkifed.providers.algorithms import PublicKey, RsaPadding, SignatureScheme
from pkifed.providers.base import KeyInfo, KeyState
from pkifed.sync.plan import Action, ActionKind, Plan, PlanProblem

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class ActionOutcome:
    """Result of one action: ``done``, ``failed`` or ``skipped``."""

    action: Action
    outcome: str
    message: str = ""


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of every action of an applied plan."""

    plan: Plan
    outcomes: tuple[ActionOutcome, ...]

    @property
    def failed(self) -> list[ActionOutcome]:
        return [o for o in self.outcomes if o.outcome != "done"]

    @property
    def succeeded(self) -> bool:
        return not self.failed and not self.plan.problems


@dataclass(frozen=True)
class _DesiredObject:
    """An object a target must contain: a sorted bundle, or a chain in order."""

    target: str
    object_name: str
    authorities: tuple[str, ...]
    is_bundle: bool = False


class Reconciler:
    """Plans and applies one federation against its providers, targets and state."""

    def __init__(
        self,
        config: LoadedConfig,
        store: Store,
        runtime: Runtime,
        *,
        clock: Clock = utc_now,
        on_progress: Callable[[ActionOutcome], None] | None = None,
    ) -> None:
        self.config = config
        self.model = config.model
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.on_progress = on_progress

    # --- planning -------------------------------------------------------------------

    def plan(self) -> Plan:
        """Observe providers, targets and state, and list what must change."""
        now = self.clock()
        actions: list[Action] = []
        problems: list[PlanProblem] = []
        new_keys: set[str] = set()
        new_certificates: set[str] = set()
        blocked: set[str] = set()

        with self.store.transaction() as session:
            for name in parents_first(self.model):
                authority = self.model.authorities[name]
                if set(ancestors(self.model, name)) & blocked:
                    blocked.add(name)
                    continue
                key_action, problem = self._plan_key(session, name, authority)
                if problem is not None:
                    problems.append(problem)
                    blocked.add(name)
                    continue
                if key_action is not None:
                    actions.append(key_action)
                    new_keys.add(name)
                reason = self._certificate_reason(
                    session, name, authority, now, new_keys, new_certificates
                )
                if reason is not None:
                    actions.append(
                        Action(
                            ActionKind.ISSUE_CERTIFICATE,
                            f"authority {name}",
                            reason,
                            authority=name,
                        )
                    )
                    new_certificates.add(name)

            for desired in self._desired_objects():
                action, problem = self._plan_publish(
                    session, desired, new_certificates, blocked
                )
                if action is not None:
                    actions.append(action)
                if problem is not None:
                    problems.append(problem)

        return Plan(self.model.name, now, tuple(actions), tuple(problems))

    def _plan_key(
        self, session: Session, name: str, authority: AuthorityConfig
    ) -> tuple[Action | None, PlanProblem | None]:
        record = self.store.current_key(session, name)
        subject = f"authority {name}"
        if record is not None:
            change = _key_change(record, authority)
            if change is None:
                return None, self._check_key_usable(name, record)
            reason = f"key changed: {change}"
        else:
            reason = "missing"

        if isinstance(authority.key, KeyAdoption):
            return Action(
                ActionKind.ADOPT_KEY,
                subject,
                f"{reason}; adopting {authority.key.uri}",
                authority=name,
            ), None

        generation = self.store.next_generation(session, name)
        provider = self.runtime.provider(authority.provider)
        try:
            found = provider.find_key(key_name(name, generation))
        except PkifedError as error:
            return None, PlanProblem(subject, f"provider {authority.provider}: {error}")
        if found is not None:
            return Action(
                ActionKind.RECORD_KEY,
                subject,
                f"key {found.uri} exists in provider {authority.provider} but is not "
                "recorded (an earlier run stopped before recording it); it will be "
                "recorded, not created again",
                authority=name,
            ), None
        return Action(
            ActionKind.CREATE_KEY,
            subject,
            f"{reason}; creating a {authority.algorithm} key in provider "
            f"{authority.provider}",
            authority=name,
        ), None

    def _check_key_usable(self, name: str, record: KeyRecord) -> PlanProblem | None:
        provider = self.runtime.provider(record.provider)
        subject = f"authority {name}"
        try:
            info = provider.describe_key(record.uri)
        except KeyNotFoundError:
            return PlanProblem(
                subject,
                f"key {record.uri} no longer exists in provider {record.provider}; "
                "pkifed does not replace a key silently. Restore it, or set a new key "
                "for the authority",
            )
        except PkifedError as error:
            return PlanProblem(subject, f"provider {record.provider}: {error}")
        if info.state is not KeyState.ENABLED:
            return PlanProblem(
                subject,
                f"key {record.uri} is {info.state} in provider {record.provider}; "
                "pkifed does not replace it silently. Enable it again, or set a new "
                "key "
                "for the authority",
            )
        return None

    def _certificate_reason(
        self,
        session: Session,
        name: str,
        authority: AuthorityConfig,
        now: datetime.datetime,
        new_keys: set[str],
        new_certificates: set[str],
    ) -> str | None:
        record = self.store.current_certificate(session, name)
        if record is None:
            return "missing"
        if name in new_keys:
            return "the key changes"
        certificate = x509.load_der_x509_certificate(record.der)
        parent = authority.parent
        if parent is not None and parent in new_keys:
            return f"parent {parent} gets a new key"

        differences = ca_profile(authority).differences(certificate)
        if differences:
            return "profile changed: " + "; ".join(differences)
        issuer_scheme = signature_scheme(
            self.model.authorities[parent] if parent else authority
        )
        if _signature_label(certificate) != _scheme_label(issuer_scheme):
            return (
                f"signature is {_signature_label(certificate)}, expected "
                f"{_scheme_label(issuer_scheme)}"
            )
        if parent is not None and parent not in new_certificates:
            parent_record = self.store.current_certificate(session, parent)
            if parent_record is not None:
                parent_certificate = x509.load_der_x509_certificate(parent_record.der)
                if _authority_key_id(certificate) != subject_key_identifier(
                    parent_certificate
                ):
                    return f"issued by an earlier key of parent {parent}"

        remaining = certificate.not_valid_after_utc - now
        if remaining <= datetime.timedelta(0):
            return f"expired at {_iso(certificate.not_valid_after_utc)}"
        if remaining <= authority.renewal_window:
            return (
                f"expires in {remaining.days} days, within renew_before "
                f"({authority.renewal_window.days} days)"
            )
        return None

    def _desired_objects(self) -> list[_DesiredObject]:
        desired = []
        for bundle_name, bundle in self.model.bundles.items():
            members = tuple(sorted(set(bundle.authorities)))
            for target in bundle.targets:
                name = bundles.bundle_object_name(bundle_name)
                desired.append(_DesiredObject(target, name, members, is_bundle=True))
        for name, authority in self.model.authorities.items():
            chain = (name, *ancestors(self.model, name))
            for target in authority.publish:
                certificate_name = bundles.certificate_object_name(name)
                chain_name = bundles.chain_object_name(name)
                desired.append(_DesiredObject(target, certificate_name, (name,)))
                desired.append(_DesiredObject(target, chain_name, chain))
        return desired

    def _render(self, session: Session, desired: _DesiredObject) -> bytes:
        certificates = [self._certificate(session, a) for a in desired.authorities]
        if desired.is_bundle:
            return bundles.pem_bundle(certificates)
        return bundles.pem_chain(certificates)

    def _plan_publish(
        self,
        session: Session,
        desired: _DesiredObject,
        new_certificates: set[str],
        blocked: set[str],
    ) -> tuple[Action | None, PlanProblem | None]:
        subject = f"target {desired.target}: {desired.object_name}"
        pending = sorted(set(desired.authorities) & new_certificates)
        missing = [
            a
            for a in desired.authorities
            if a not in new_certificates
            and self.store.current_certificate(session, a) is None
        ]
        if missing:
            # Only blocked authorities can lack a certificate here.
            return None, PlanProblem(
                subject,
                f"not published: no certificate for {', '.join(missing)} yet",
            )
        action = Action(
            ActionKind.PUBLISH,
            subject,
            "",
            target=desired.target,
            object_name=desired.object_name,
        )
        if pending:
            reason = f"content changes: new certificate for {', '.join(pending)}"
            return _with_reason(action, reason), None

        data = self._render(session, desired)
        target = self.runtime.target(desired.target)
        try:
            stored = target.read(desired.object_name)
        except PkifedError as error:
            return None, PlanProblem(subject, str(error))
        if stored is None:
            return _with_reason(action, "missing"), None
        if stored.data != data:
            return _with_reason(
                action, "drifted: content differs from the federation's"
            ), None
        del blocked
        return None, None

    def _certificate(self, session: Session, authority: str) -> x509.Certificate:
        record = self.store.current_certificate(session, authority)
        if record is None:
            raise StateError(
                f"authority {authority} has no certificate in the state store"
            )
        return x509.load_der_x509_certificate(record.der)

    # --- applying -------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        """Run the plan's actions in order, skipping those whose inputs failed."""
        failed: set[str] = set()
        outcomes = []
        for action in plan.actions:
            dependencies = self._dependencies(action)
            if dependencies & failed:
                outcome = ActionOutcome(
                    action,
                    "skipped",
                    "skipped because "
                    f"{', '.join(sorted(dependencies & failed))} failed",
                )
            else:
                outcome = self._run(action)
                if outcome.outcome != "done" and action.authority is not None:
                    failed.add(action.authority)
            self._record(outcome)
            outcomes.append(outcome)
            if self.on_progress is not None:
                self.on_progress(outcome)
        return ApplyResult(plan, tuple(outcomes))

    def _dependencies(self, action: Action) -> set[str]:
        if action.authority is not None:
            return {action.authority, *ancestors(self.model, action.authority)}
        for desired in self._desired_objects():
            if (desired.target, desired.object_name) == (
                action.target,
                action.object_name,
            ):
                return set(desired.authorities)
        return set()

    def _run(self, action: Action) -> ActionOutcome:
        logger.info("%s: %s (%s)", action.object, action.kind, action.reason)
        try:
            message = self._execute(action)
        except PkifedError as error:
            logger.error("%s: %s failed: %s", action.object, action.kind, error)
            return ActionOutcome(action, "failed", str(error))
        return ActionOutcome(action, "done", message)

    def _execute(self, action: Action) -> str:
        if action.target is not None and action.object_name is not None:
            return self._publish(action.target, action.object_name)
        if action.authority is None:
            raise StateError(f"action {action} names no authority or target")
        if action.kind is ActionKind.ISSUE_CERTIFICATE:
            return self._issue(action.authority)
        return self._obtain_key(action.kind, action.authority)

    def _obtain_key(self, kind: ActionKind, name: str) -> str:
        authority = self.model.authorities[name]
        provider = self.runtime.provider(authority.provider)
        with self.store.transaction() as session:
            generation = self.store.next_generation(session, name)
        label = key_name(name, generation)
        info: KeyInfo | None
        if isinstance(authority.key, KeyAdoption):
            info = provider.adopt_key(authority.key.uri, authority.key.algorithm)
        elif kind is ActionKind.RECORD_KEY:
            info = provider.find_key(label)
            if info is None:
                info = provider.find_or_create_key(label, authority.algorithm)
        else:
            info = provider.find_or_create_key(label, authority.algorithm)
        public = provider.public_key(info.uri)
        now = self.clock()
        with self.store.transaction() as session:
            previous = self.store.current_key(session, name)
            if previous is not None:
                previous.retired_at = now
            session.add(
                KeyRecord(
                    authority=name,
                    generation=generation,
                    provider=authority.provider,
                    key_name=label,
                    uri=info.uri,
                    algorithm=str(info.algorithm),
                    protection_level=str(info.protection_level),
                    adopted=isinstance(authority.key, KeyAdoption),
                    public_key_der=public.public_bytes(
                        serialization.Encoding.DER,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    ),
                    created_at=now,
                    retired_at=None,
                )
            )
        return f"key {info.uri} ({info.protection_level})"

    def _issue(self, name: str) -> str:
        authority = self.model.authorities[name]
        now = self.clock()
        with self.store.transaction() as session:
            key = self._require_key(session, name)
            public = _load_public_key(key.public_key_der)
            issuer: Issuer | None = None
            own_key = None
            parent_serial = None
            if authority.parent is None:
                own_key = self.runtime.provider(key.provider).private_key(
                    key.uri, public
                )
            else:
                parent_config = self.model.authorities[authority.parent]
                parent_key = self._require_key(session, authority.parent)
                parent_certificate = self._certificate(session, authority.parent)
                parent_signer = self.runtime.provider(parent_key.provider).private_key(
                    parent_key.uri, _load_public_key(parent_key.public_key_der)
                )
                issuer = Issuer(
                    parent_certificate, parent_signer, signature_scheme(parent_config)
                )
                parent_serial = format(parent_certificate.serial_number, "x")

        certificate = build_ca_certificate(
            ca_profile(authority),
            public,
            issuer=issuer,
            self_signing_key=own_key,
            now=now,
            backdate=self.model.issuance.backdate,
        )
        # A faulty signer must be caught here, before anything depends on the
        # certificate: verify it with the issuer's public key, offline.
        certificate.verify_directly_issued_by(
            issuer.certificate if issuer is not None else certificate
        )

        with self.store.transaction() as session:
            previous = self.store.current_certificate(session, name)
            if previous is not None:
                previous.superseded_at = now
            key = self._require_key(session, name)
            session.add(
                CertificateRecord(
                    authority=name,
                    serial=format(certificate.serial_number, "x"),
                    key_id=key.id,
                    issuer_serial=parent_serial,
                    der=certificate.public_bytes(serialization.Encoding.DER),
                    fingerprint_sha256=fingerprint_sha256(certificate),
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    issued_at=now,
                    superseded_at=None,
                )
            )
        expiry = _iso(certificate.not_valid_after_utc)
        return f"serial {certificate.serial_number:x}, valid until {expiry}"

    def _require_key(self, session: Session, name: str) -> KeyRecord:
        key = self.store.current_key(session, name)
        if key is None:
            raise StateError(f"authority {name} has no key in the state store")
        return key

    def _publish(self, target_name: str, object_name: str) -> str:
        desired = next(
            d
            for d in self._desired_objects()
            if (d.target, d.object_name) == (target_name, object_name)
        )
        with self.store.transaction() as session:
            data = self._render(session, desired)
        target = self.runtime.target(target_name)
        target.publish(object_name, data)
        digest = hashlib.sha256(data).hexdigest()
        location = target.location(object_name)
        with self.store.transaction() as session:
            record = self.store.publication(session, target_name, object_name)
            if record is None:
                record = PublicationRecord(target=target_name, object_name=object_name)
                session.add(record)
            record.location = location
            record.sha256 = digest
            record.published_at = self.clock()
        return f"{location} sha256 {digest[:16]}"

    def _record(self, outcome: ActionOutcome) -> None:
        try:
            with self.store.transaction() as session:
                self.store.record_event(
                    session,
                    at=self.clock(),
                    kind=str(outcome.action.kind),
                    subject=outcome.action.object,
                    outcome=outcome.outcome,
                    message=outcome.message or outcome.action.reason,
                )
        except StateError as error:
            logger.error(
                "%s: recording the event failed: %s", outcome.action.object, error
            )


def _with_reason(action: Action, reason: str) -> Action:
    return Action(
        action.kind,
        action.object,
        reason,
        authority=action.authority,
        target=action.target,
        object_name=action.object_name,
    )


def _key_change(record: KeyRecord, authority: AuthorityConfig) -> str | None:
    if record.provider != authority.provider:
        return f"provider {record.provider} -> {authority.provider}"
    if record.algorithm != str(authority.algorithm):
        return f"algorithm {record.algorithm} -> {authority.algorithm}"
    if isinstance(authority.key, KeyAdoption) and record.uri != authority.key.uri:
        return f"adopted key {record.uri} -> {authority.key.uri}"
    if not isinstance(authority.key, KeyAdoption) and record.adopted:
        return "the key is no longer adopted"
    return None


def _load_public_key(der: bytes) -> PublicKey:
    return serialization.load_der_public_key(der)  # type: ignore[return-value]


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    return extension.value.key_identifier


def _signature_label(certificate: x509.Certificate) -> str:
    """Name a certificate's signature as ``<hash>`` or ``<hash>/<RSA padding>``."""
    hash_algorithm = certificate.signature_hash_algorithm
    label = hash_algorithm.name.replace("-", "") if hash_algorithm else "none"
    parameters = certificate.signature_algorithm_parameters
    if isinstance(parameters, padding.PSS):
        return f"{label}/{RsaPadding.PSS}"
    if isinstance(parameters, padding.PKCS1v15):
        return f"{label}/{RsaPadding.PKCS1V15}"
    return label


def _scheme_label(scheme: SignatureScheme) -> str:
    """Name a scheme the way :func:`_signature_label` names a certificate's."""
    label = str(scheme.hash) if scheme.hash is not None else "none"
    return f"{label}/{scheme.padding}" if scheme.padding is not None else label


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

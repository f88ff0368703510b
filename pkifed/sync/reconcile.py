"""The reconciler: observe the federation, plan the changes, apply them.

A pass reads the state store once, then each authority's key in its provider
and each published object in its target (one read each, concurrently). Planning
compares that with the configuration and yields typed actions. Applying runs
them in phases (keys, then certificates level by level, then publications),
recording each result in the state store as soon as it is done, so a pass
killed at any point resumes where it stopped.

Ordered procedures span passes, each confirming the previous step by reading
back: a CA whose parent gets a new key is re-issued only once every bundle that
contains the parent serves the parent's new certificate, and an old root leaves
the bundles only when no unexpired certificate chains to it.

A revoked authority (``pkifed revoke``) gets a new key and certificate, its
issuer signs a CRL listing the revoked serial, and its descendants are
re-issued under the new key. CRLs are signed after the certificates of a pass
and before anything is published.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy import select
from sqlalchemy.orm import Session

from pkifed.config.loader import LoadedConfig
from pkifed.config.schema import AuthorityConfig, KeyAdoption
from pkifed.errors import KeyNotFoundError, PkifedError, StateError, TemporaryError
from pkifed.federation import crl
from pkifed.federation.certificates import (
    IssuanceError,
    Issuer,
    build_ca_certificate,
    fingerprint_sha256,
)
from pkifed.federation.groupcommit import GroupWriter
from pkifed.federation.hierarchy import (
    ancestors,
    ca_profile,
    key_name,
    parents_first,
    signature_scheme,
)
from pkifed.federation.publishing import (
    DesiredObject,
    IssuedCertificate,
    Snapshot,
    cross_certificates,
    cross_label,
    decode,
    desired_objects,
    fingerprints,
    read_snapshot,
    render,
)
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import (
    CertificateRecord,
    CrlRecord,
    KeyRecord,
    PublicationRecord,
    RevocationRecord,
    Store,
)
from pkifed.providers.algorithms import (
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)
from pkifed.providers.base import KeyInfo, KeyState
from pkifed.providers.targets.base import StoredObject
from pkifed.sync.observe import KeyOutcome, ObjectOutcome, run_bounded
from pkifed.sync.plan import Action, ActionKind, Plan, PlanProblem

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]
# Checks, inside a state-store transaction, that this process may still write,
# and raises a PkifedError when it may not (see Reconciler).
Fence = Callable[[Session], None]
_Result = TypeVar("_Result")


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


@dataclass
class _PlanState:
    """Decisions planning has made so far in one pass."""

    now: datetime.datetime
    snapshot: Snapshot
    key_outcomes: dict[str, KeyOutcome]
    object_outcomes: dict[str, ObjectOutcome]
    actions: list[Action] = field(default_factory=list)
    problems: list[PlanProblem] = field(default_factory=list)
    waiting: list[PlanProblem] = field(default_factory=list)
    new_keys: set[str] = field(default_factory=set)
    new_certificates: set[str] = field(default_factory=set)
    new_crls: set[str] = field(default_factory=set)
    new_cross: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _CrlInputs:
    """The state an issuer's next CRL is built from, read in one transaction."""

    certificate: CertificateRecord
    key: KeyRecord
    previous_this_update: datetime.datetime | None
    entries: list[crl.RevokedSerial]


def _object_id(target: str, object_name: str) -> str:
    return f"{target}/{object_name}"


def _crl_failure(issuer: str) -> str:
    """Name the entry a failed CRL signature adds to apply's failed set.

    It differs from the authority's own name, so a CRL that fails to sign
    holds back the CRL's publication but not the authority's certificate.
    """
    return f"crl:{issuer}"


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
        fence: Fence | None = None,
    ) -> None:
        self.config = config
        self.model = config.model
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.on_progress = on_progress
        # A leader that lost its lease must not write: apply calls the fence
        # before each phase and inside each state write's own transaction, so
        # a takeover commits either before the check or after the write.
        self.fence = fence
        self._desired: list[DesiredObject] | None = None
        self._phase_snapshot: Snapshot | None = None
        # State writes of concurrent actions share transactions, each checked
        # by the fence first, so workers do not wait for one fsync apiece.
        self._writer = GroupWriter(store, fence)
        self._progress_lock = threading.Lock()

    @property
    def _concurrency(self) -> int:
        return self.model.reconcile.concurrency

    # --- observing ------------------------------------------------------------------

    def _observe_keys(self, snapshot: Snapshot) -> dict[str, KeyOutcome]:
        calls: dict[str, Callable[[], KeyInfo | None]] = {}
        for name, authority in self.model.authorities.items():
            record = snapshot.keys.get(name)
            provider = self.runtime.provider(authority.provider)
            if record is not None and _key_change(record, authority) is None:
                calls[name] = _bind(provider.describe_key, record.uri)
            elif isinstance(authority.key, KeyAdoption):
                calls[name] = _bind(provider.describe_key, authority.key.uri)
            else:
                generation = snapshot.next_generations.get(name, 1)
                calls[name] = _bind(provider.find_key, key_name(name, generation))
        return run_bounded(calls, self._concurrency)

    def _observe_objects(self) -> dict[str, ObjectOutcome]:
        calls: dict[str, Callable[[], StoredObject | None]] = {}
        for desired in self._desired_objects():
            target = self.runtime.target(desired.target)
            key = _object_id(desired.target, desired.object_name)
            calls[key] = _bind(target.read, desired.object_name)
        return run_bounded(calls, self._concurrency)

    # --- planning -------------------------------------------------------------------

    def plan(self) -> Plan:
        """Observe providers, targets and state, and list what must change."""
        now = self.clock()
        with self.store.transaction() as session:
            snapshot = read_snapshot(session)
        state = _PlanState(
            now=now,
            snapshot=snapshot,
            key_outcomes=self._observe_keys(snapshot),
            object_outcomes=self._observe_objects(),
        )

        for name in parents_first(self.model):
            self._plan_authority(state, name)
        for name in parents_first(self.model):
            self._plan_cross(state, name)
        for name in parents_first(self.model):
            self._plan_crl(state, name)
        for desired in self._desired_objects():
            self._plan_publish(state, desired)
        self._plan_retirements(state)

        return Plan(
            self.model.name,
            now,
            tuple(state.actions),
            tuple(state.problems),
            tuple(state.waiting),
        )

    def _plan_authority(self, state: _PlanState, name: str) -> None:
        authority = self.model.authorities[name]
        subject = f"authority {name}"
        if set(ancestors(self.model, name)) & state.blocked:
            state.blocked.add(name)
            return

        record = state.snapshot.keys.get(name)
        unchanged = record is not None and _key_change(record, authority) is None
        revocation = self._revoked_key(state, name)
        if unchanged and revocation is not None:
            # The revoked key may be compromised, so it is replaced even when
            # the provider reports it disabled or deleted, and never certified
            # again, whatever the rekey setting.
            key_action = self._replacement_key_action(
                state, name, authority, revocation
            )
            if key_action is None:
                state.blocked.add(name)
                return
            state.actions.append(key_action)
            state.new_keys.add(name)
        elif unchanged:
            problem = self._key_problem(state, name, record)
            if problem is not None:
                state.problems.append(problem)
                state.blocked.add(name)
                return
            renewal = self._certificate_reason(state, name, authority)
            expiring = renewal is not None and renewal.startswith(
                ("expires", "expired")
            )
            if (
                expiring
                and authority.rekey
                and self._certifies_current_key(state, name)
            ):
                state.actions.append(
                    Action(
                        ActionKind.CREATE_KEY,
                        subject,
                        f"rekey on renewal: the certificate {renewal}",
                        authority=name,
                    )
                )
                state.new_keys.add(name)
        else:
            key_action = self._key_action(state, name, authority, record)
            if key_action is None:
                state.blocked.add(name)
                return
            state.actions.append(key_action)
            state.new_keys.add(name)

        reason = self._certificate_reason(state, name, authority)
        if reason is None:
            return
        wait = self._wait_for_parent(state, name, authority, reason)
        if wait is not None:
            state.waiting.append(PlanProblem(subject, wait))
            return
        state.actions.append(
            Action(ActionKind.ISSUE_CERTIFICATE, subject, reason, authority=name)
        )
        state.new_certificates.add(name)

    def _revoked_key(self, state: _PlanState, name: str) -> RevocationRecord | None:
        """Return the revocation of the current certificate while it certifies
        the current key, or None once a replacement key exists."""
        revocation = state.snapshot.revoked_current(name)
        if revocation is None or not self._certifies_current_key(state, name):
            return None
        return revocation

    def _certifies_current_key(self, state: _PlanState, name: str) -> bool:
        """Return whether the current certificate certifies the current key.

        It does not after a run stopped between creating a key and issuing
        its certificate; the next certificate then certifies the newer key.
        """
        issued = state.snapshot.current_certificate(name)
        key = state.snapshot.keys.get(name)
        return issued is not None and key is not None and issued.record.key_id == key.id

    def _replacement_key_action(
        self,
        state: _PlanState,
        name: str,
        authority: AuthorityConfig,
        revocation: RevocationRecord,
    ) -> Action | None:
        subject = f"authority {name}"
        revoked = (
            f"certificate {revocation.serial} was revoked ({revocation.reason}) at "
            f"{_iso(revocation.revoked_at)}"
        )
        if isinstance(authority.key, KeyAdoption):
            state.problems.append(
                PlanProblem(
                    subject,
                    f"{revoked}, and its adopted key {authority.key.uri} is never "
                    "certified again; set authorities."
                    f"{name}.key to another key to adopt, or to an algorithm for "
                    "pkifed to create one",
                )
            )
            return None
        return Action(
            ActionKind.CREATE_KEY,
            subject,
            f"{revoked}; a revoked authority gets a new key: creating "
            f"{_with_article(str(authority.algorithm))} key in provider "
            f"{authority.provider}",
            authority=name,
        )

    def _key_problem(
        self, state: _PlanState, name: str, record: KeyRecord | None
    ) -> PlanProblem | None:
        if record is None:
            return None
        subject = f"authority {name}"
        outcome = state.key_outcomes.get(name)
        if outcome is None:
            return None
        info = outcome.value
        if isinstance(outcome.error, KeyNotFoundError):
            info = None
        elif outcome.error is not None:
            return PlanProblem(
                subject,
                _observation_failure(f"provider {record.provider}", outcome.error),
            )
        if info is None:
            return PlanProblem(
                subject,
                f"key {record.uri} no longer exists in provider {record.provider}; "
                "pkifed does not replace a key silently. Restore it, or set a new key "
                "for the authority",
            )
        if info.state is not KeyState.ENABLED:
            return PlanProblem(
                subject,
                f"key {record.uri} is {info.state} in provider {record.provider}; "
                "pkifed does not replace it silently. Enable it again, or set a new "
                "key for the authority",
            )
        return None

    def _key_action(
        self,
        state: _PlanState,
        name: str,
        authority: AuthorityConfig,
        record: KeyRecord | None,
    ) -> Action | None:
        subject = f"authority {name}"
        change = _key_change(record, authority) if record is not None else None
        reason = f"key changed: {change}" if change else "missing"
        outcome = state.key_outcomes[name]
        if isinstance(authority.key, KeyAdoption):
            problem = _adoption_problem(authority, outcome)
            if problem is not None:
                state.problems.append(PlanProblem(subject, problem))
                return None
            return Action(
                ActionKind.ADOPT_KEY,
                subject,
                f"{reason}; adopting {authority.key.uri}",
                authority=name,
            )
        if outcome.error is not None:
            source = f"provider {authority.provider}"
            state.problems.append(
                PlanProblem(subject, _observation_failure(source, outcome.error))
            )
            return None
        if outcome.value is not None:
            return Action(
                ActionKind.RECORD_KEY,
                subject,
                f"key {outcome.value.uri} exists in provider {authority.provider} but "
                "is not recorded (an earlier run stopped before recording it, or the "
                "state store is new); it will be recorded, not created again",
                authority=name,
            )
        return Action(
            ActionKind.CREATE_KEY,
            subject,
            f"{reason}; creating {_with_article(str(authority.algorithm))} key in "
            "provider "
            f"{authority.provider}",
            authority=name,
        )

    def _certificate_reason(
        self, state: _PlanState, name: str, authority: AuthorityConfig
    ) -> str | None:
        issued = state.snapshot.current_certificate(name)
        if issued is None:
            return "missing"
        revocation = state.snapshot.revocation(issued)
        if revocation is not None:
            return f"certificate {revocation.serial} revoked ({revocation.reason})"
        if name in state.new_keys:
            return "the key changes"
        parent = authority.parent
        if parent is not None and parent in state.new_keys:
            return f"parent {parent} gets a new key"
        if not self._certifies_current_key(state, name):
            return "the certificate certifies an earlier key"

        certificate = issued.certificate
        parent_config = self.model.authorities[parent] if parent else None
        differences = ca_profile(authority, parent_config).differences(certificate)
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
        if parent is not None:
            parent_issued = state.snapshot.current_certificate(parent)
            if (
                parent_issued is not None
                and issued.authority_key_id != parent_issued.subject_key_id
            ):
                return f"issued by an earlier key of parent {parent}"
            if parent_issued is not None and parent not in state.new_certificates:
                # A parent re-issued later starts later, so an older child would
                # begin before its issuer; re-issuing clamps it to the parent.
                outer = parent_issued.certificate
                if (
                    certificate.not_valid_before_utc < outer.not_valid_before_utc
                    or certificate.not_valid_after_utc > outer.not_valid_after_utc
                ):
                    return f"validity is no longer within parent {parent}'s"

        remaining = certificate.not_valid_after_utc - state.now
        if remaining <= datetime.timedelta(0):
            return f"expired at {_iso(certificate.not_valid_after_utc)}"
        if remaining <= authority.renewal_window:
            return (
                f"expires in {remaining.days} days, within renew_before "
                f"({authority.renewal_window.days} days)"
            )
        return None

    def _wait_for_parent(
        self, state: _PlanState, name: str, authority: AuthorityConfig, reason: str
    ) -> str | None:
        """Why issuing ``name`` under its parent's new key must wait, if it must.

        Relying parties trust the parent's new key only once their bundle
        contains its certificate. So while a parent in a bundle rotates, a child
        is issued only after every such bundle serves the parent's current
        certificate, as read back at the start of this pass.
        """
        parent = authority.parent
        if parent is None:
            return None
        holders = [
            d
            for d in self._desired_objects()
            if d.is_bundle and parent in d.authorities
        ]
        if not holders or not self._rotating(state, parent):
            return None
        if parent in state.new_certificates:
            return (
                f"{reason}; issued once the new certificate of {parent} is "
                "published to every bundle and read back"
            )
        parent_issued = state.snapshot.current_certificate(parent)
        if parent_issued is None:
            return f"{reason}; {parent} has no certificate yet"
        fingerprint = parent_issued.record.fingerprint_sha256
        for desired in holders:
            outcome = state.object_outcomes.get(
                _object_id(desired.target, desired.object_name)
            )
            stored = outcome.value if outcome is not None else None
            if stored is None or fingerprint not in fingerprints(
                stored.data, desired.format
            ):
                return (
                    f"{reason}; waiting until target {desired.target} serves the "
                    f"new certificate of {parent} in {desired.object_name}"
                )
        return None

    def _rotating(self, state: _PlanState, authority: str) -> bool:
        """Return whether ``authority`` had a certificate for another key before.

        The first certificate of a new federation needs no waiting, because no
        certificate chains to an earlier key that relying parties might hold.
        """
        if authority in state.new_keys:
            return any(
                issued.record.authority == authority
                for issued in state.snapshot.history
            )
        current = state.snapshot.current_certificate(authority)
        if current is None:
            return False
        return any(
            issued.record.authority == authority
            and issued.subject_key_id != current.subject_key_id
            for issued in state.snapshot.history
        )

    def _desired_objects(self) -> list[DesiredObject]:
        # The configuration is fixed for the reconciler's life, so the list is
        # built once; planning needs it once per authority and object.
        if self._desired is None:
            self._desired = desired_objects(self.model)
        return self._desired

    def _plan_crl(self, state: _PlanState, name: str) -> None:
        authority = self.model.authorities[name]
        if authority.crl is None or name in state.blocked:
            return
        if name not in state.new_certificates:
            issued = state.snapshot.current_certificate(name)
            # Without a usable certificate there is nothing to sign under; the
            # authority's own entry already reports why.
            if issued is None or state.snapshot.revocation(issued) is not None:
                return
        reason = self._crl_reason(state, name, authority.crl.validity)
        if reason is None:
            return
        state.actions.append(
            Action(ActionKind.SIGN_CRL, f"crl {name}", reason, authority=name)
        )
        state.new_crls.add(name)

    def _crl_reason(
        self, state: _PlanState, name: str, validity: datetime.timedelta
    ) -> str | None:
        latest = state.snapshot.crls.get(name)
        if latest is None:
            return "missing"
        if name in state.new_certificates:
            return "issuer re-issued: the CRL is signed under its new certificate"
        issued = state.snapshot.current_certificate(name)
        if issued is not None and issued.record.serial != latest.issuer_serial:
            return "issuer re-issued: the CRL is signed under its new certificate"
        listed = {entry.serial_number for entry in x509.load_der_x509_crl(latest.der)}
        new = sorted(
            revocation.serial
            for revocation in state.snapshot.revocations.values()
            if revocation.issuer == name and int(revocation.serial, 16) not in listed
        )
        if new:
            return f"revocation of {', '.join(new)}"
        if state.now >= latest.next_update:
            return f"expired at {_iso(latest.next_update)}"
        if state.now >= crl.resign_time(latest.this_update, latest.next_update):
            return (
                "two thirds of its validity passed (nextUpdate "
                f"{_iso(latest.next_update)})"
            )
        if latest.next_update - latest.this_update > validity:
            return f"validity changed to {validity.days} days"
        return None

    def _plan_cross(self, state: _PlanState, name: str) -> None:
        """Plan a cross certificate when a root with ``cross_sign`` changed key.

        Each unexpired certificate of an earlier root key certifies the current
        key once, so relying parties that still trust only the earlier root
        accept chains under the new one.
        """
        authority = self.model.authorities[name]
        if not authority.cross_sign or name in state.blocked:
            return
        previous = self._cross_issuers(state.snapshot, name, state.now)
        if not previous:
            return
        if name in state.new_keys or name in state.new_certificates:
            reason = "the root's key changed; its earlier key certifies the new one"
        else:
            reason = "no cross certificate from the root's earlier key yet"
            certified = {
                issued.authority_key_id
                for issued in cross_certificates(state.snapshot, name, state.now)
            }
            if all(issued.subject_key_id in certified for issued in previous):
                return
        state.actions.append(
            Action(ActionKind.CROSS_SIGN, f"authority {name}", reason, authority=name)
        )
        state.new_cross.add(name)

    def _cross_issuers(
        self, snapshot: Snapshot, name: str, now: datetime.datetime
    ) -> list[IssuedCertificate]:
        """Unexpired, unrevoked certificates of the root's earlier keys."""
        current = snapshot.current_certificate(name)
        seen: set[bytes | None] = set()
        found = []
        for issued in reversed(snapshot.history):
            if issued.record.authority != name or not issued.valid_at(now):
                continue
            if current is not None and issued.subject_key_id == current.subject_key_id:
                continue
            if issued.subject_key_id in seen or snapshot.revocation(issued) is not None:
                continue
            seen.add(issued.subject_key_id)
            found.append(issued)
        return found

    def _plan_publish(self, state: _PlanState, desired: DesiredObject) -> None:
        subject = f"target {desired.target}: {desired.object_name}"
        action = Action(
            ActionKind.PUBLISH,
            subject,
            "",
            target=desired.target,
            object_name=desired.object_name,
        )
        problem: str | None = None
        reason: str | None = None
        if desired.cross:
            root = desired.authorities[0]
            if root in state.new_cross:
                reason = f"content changes: new cross certificate of {root}"
            elif not cross_certificates(state.snapshot, root, state.now):
                # No rotation has happened yet, so there is nothing to publish.
                return
        else:
            problem, reason = self._publish_precondition(state, desired)
        if problem is not None:
            state.problems.append(PlanProblem(subject, problem))
            return
        if reason is not None:
            state.actions.append(_with_reason(action, reason))
            return

        outcome = state.object_outcomes[_object_id(desired.target, desired.object_name)]
        if outcome.error is not None:
            state.problems.append(
                PlanProblem(
                    subject,
                    _observation_failure(f"target {desired.target}", outcome.error),
                )
            )
            return
        data = render(state.snapshot, desired, state.now)
        stored = outcome.value
        if stored is None:
            state.actions.append(_with_reason(action, "missing"))
        elif stored.data != data:
            reason = _drift_reason(stored.data, desired, state.snapshot, subject)
            state.actions.append(_with_reason(action, reason))

    def _publish_precondition(
        self, state: _PlanState, desired: DesiredObject
    ) -> tuple[str | None, str | None]:
        """Why ``desired`` cannot be published, or why it changes this pass.

        Returns a problem, a reason to publish, or neither when only reading
        the target back can tell.
        """
        if desired.is_crl:
            issuer = desired.authorities[0]
            if issuer in state.new_crls:
                return None, f"content changes: new CRL of {issuer}"
            if issuer not in state.snapshot.crls:
                return f"not published: {issuer} has not signed a CRL yet", None
            return None, None
        pending = sorted(set(desired.authorities) & state.new_certificates)
        missing = [
            a
            for a in desired.authorities
            if a not in state.new_certificates
            and state.snapshot.current_certificate(a) is None
        ]
        if missing:
            return f"not published: no certificate for {', '.join(missing)} yet", None
        revoked = [
            a
            for a in desired.authorities
            if a not in state.new_certificates and state.snapshot.revoked_current(a)
        ]
        if revoked:
            return (
                f"not published: the certificate of {', '.join(revoked)} is "
                "revoked and its replacement is not issued yet",
                None,
            )
        if pending:
            return None, f"content changes: new certificate for {', '.join(pending)}"
        return None, None

    def _plan_retirements(self, state: _PlanState) -> None:
        desired = {(d.target, d.object_name) for d in self._desired_objects()}
        for target, object_name in sorted(state.snapshot.publications):
            if (target, object_name) in desired:
                continue
            if target not in self.model.targets:
                continue
            state.actions.append(
                Action(
                    ActionKind.RETIRE,
                    f"target {target}: {object_name}",
                    "no longer declared; pkifed published it earlier and removes it",
                    target=target,
                    object_name=object_name,
                )
            )

    # --- applying -------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        """Run the plan's actions in phases, skipping those whose inputs failed."""
        failed: set[str] = set()
        outcomes: list[ActionOutcome] = []
        self._record_blocked(plan)
        for phase in self._phases(plan):
            if self.fence is not None:
                with self.store.transaction() as session:
                    self.fence(session)
            # Every earlier phase has finished, so one snapshot serves every
            # object this phase publishes instead of one read per object.
            self._phase_snapshot = None
            if any(a.kind is ActionKind.PUBLISH for a in phase):
                with self.store.transaction() as session:
                    self._phase_snapshot = read_snapshot(session)
            results = self._run_phase(phase, failed)
            outcomes.extend(results)
        self._phase_snapshot = None
        return ApplyResult(plan, tuple(outcomes))

    def converge(self) -> list[ApplyResult]:
        """Plan and apply pass after pass until nothing is left or progress stops."""
        results = []
        for _ in range(self.model.reconcile.max_passes):
            plan = self.plan()
            if not plan.actions:
                results.append(ApplyResult(plan, ()))
                return results
            result = self.apply(plan)
            results.append(result)
            if result.failed:
                break
        # The last entry is always an unapplied plan of what remains, so callers
        # can report what is still blocked or waiting.
        results.append(ApplyResult(self.plan(), ()))
        return results

    def _phases(self, plan: Plan) -> list[list[Action]]:
        keys = [a for a in plan.actions if a.kind in _KEY_KINDS]
        by_depth: dict[int, list[Action]] = {}
        for action in plan.actions:
            if action.kind is ActionKind.ISSUE_CERTIFICATE and action.authority:
                depth = len(ancestors(self.model, action.authority))
                by_depth.setdefault(depth, []).append(action)
        crosses = [a for a in plan.actions if a.kind is ActionKind.CROSS_SIGN]
        crls = [a for a in plan.actions if a.kind is ActionKind.SIGN_CRL]
        publishing = [
            a for a in plan.actions if a.kind in (ActionKind.PUBLISH, ActionKind.RETIRE)
        ]
        phases = [
            keys,
            *(by_depth[d] for d in sorted(by_depth)),
            crosses,
            crls,
            publishing,
        ]
        return [phase for phase in phases if phase]

    def _add_record(self, record: object) -> None:
        """Add one new row to the state store, durable when this returns."""
        self._writer.write(lambda session: session.add(record))

    def _run_phase(self, phase: list[Action], failed: set[str]) -> list[ActionOutcome]:
        def run(action: Action) -> ActionOutcome:
            dependencies = self._dependencies(action)
            if dependencies & failed:
                blocked_by = ", ".join(sorted(dependencies & failed))
                outcome = ActionOutcome(
                    action, "skipped", f"skipped because {blocked_by} failed"
                )
            else:
                outcome = self._run(action)
            self._record(outcome)
            with self._progress_lock:
                if self.on_progress is not None:
                    self.on_progress(outcome)
            return outcome

        workers = max(1, min(self._concurrency, len(phase)))
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="apply"
        ) as pool:
            results = list(pool.map(run, phase))
        for result in results:
            authority = result.action.authority
            if result.outcome == "done" or authority is None:
                continue
            if result.action.kind is ActionKind.SIGN_CRL:
                failed.add(_crl_failure(authority))
            else:
                failed.add(authority)
        return results

    def _dependencies(self, action: Action) -> set[str]:
        if action.authority is not None:
            return {action.authority, *ancestors(self.model, action.authority)}
        for desired in self._desired_objects():
            if (desired.target, desired.object_name) == (
                action.target,
                action.object_name,
            ):
                dependencies = set(desired.authorities)
                for authority in desired.authorities:
                    dependencies.update(ancestors(self.model, authority))
                if desired.is_crl:
                    dependencies.add(_crl_failure(desired.authorities[0]))
                return dependencies
        return set()

    def _run(self, action: Action) -> ActionOutcome:
        logger.info("%s: %s (%s)", action.object, action.kind, action.reason)
        try:
            message = self._execute(action)
        except PkifedError as error:
            retry = "will be retried on the next run"
            if not isinstance(error, TemporaryError):
                retry = "it needs a fix before the next run"
            logger.error(
                "%s: %s failed: %s; %s", action.object, action.kind, error, retry
            )
            return ActionOutcome(action, "failed", f"{error}; {retry}")
        return ActionOutcome(action, "done", message)

    def _execute(self, action: Action) -> str:
        if action.target is not None and action.object_name is not None:
            if action.kind is ActionKind.RETIRE:
                return self._retire(action.target, action.object_name)
            return self._publish(action.target, action.object_name, action.reason)
        if action.authority is None:
            raise StateError(f"action {action} names no authority or target")
        if action.kind is ActionKind.ISSUE_CERTIFICATE:
            return self._issue(action.authority)
        if action.kind is ActionKind.SIGN_CRL:
            return self._sign_crl(action.authority)
        if action.kind is ActionKind.CROSS_SIGN:
            return self._cross_sign(action.authority)
        return self._obtain_key(action.authority)

    def _obtain_key(self, name: str) -> str:
        authority = self.model.authorities[name]
        provider = self.runtime.provider(authority.provider)
        with self.store.transaction() as session:
            generation = self.store.next_generation(session, name)
        label = key_name(name, generation)
        if isinstance(authority.key, KeyAdoption):
            info = provider.adopt_key(authority.key.uri, authority.key.algorithm)
        else:
            # A key found after a crash goes through find-or-create too, because
            # providers finish an interrupted creation there: aws-kms, for one,
            # names a key it found only by its tags.
            info = provider.find_or_create_key(label, authority.algorithm)
        public = provider.public_key(info.uri)
        now = self.clock()

        def write(session: Session) -> None:
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

        self._writer.write(write)
        return f"key {info.uri} (protection level {info.protection_level})"

    def _issue(self, name: str) -> str:
        authority = self.model.authorities[name]
        now = self.clock()
        with self.store.transaction() as session:
            key = self._require_key(session, name)
            public = _load_public_key(key.public_key_der)
            issuer: Issuer | None = None
            own_key = None
            parent_serial = None
            parent_key = key
            if authority.parent is None:
                own_key = self.runtime.provider(key.provider).private_key(
                    key.uri, public
                )
            else:
                parent_config = self.model.authorities[authority.parent]
                parent_key = self._require_key(session, authority.parent)
                parent_record = self.store.current_certificate(
                    session, authority.parent
                )
                if parent_record is None:
                    raise StateError(
                        f"authority {authority.parent} has no certificate to issue "
                        f"{name} with"
                    )
                parent_certificate = x509.load_der_x509_certificate(parent_record.der)
                parent_signer = self.runtime.provider(parent_key.provider).private_key(
                    parent_key.uri, _load_public_key(parent_key.public_key_der)
                )
                issuer = Issuer(
                    parent_certificate, parent_signer, signature_scheme(parent_config)
                )
                parent_serial = format(parent_certificate.serial_number, "x")

        parent_profile = (
            self.model.authorities[authority.parent] if authority.parent else None
        )
        certificate = build_ca_certificate(
            ca_profile(authority, parent_profile),
            public,
            issuer=issuer,
            self_signing_key=own_key,
            now=now,
            backdate=self.model.issuance.backdate,
        )
        # A faulty signer must be caught here, before anything depends on the
        # certificate: verify it with the issuer's public key, offline.
        signing_key = key if issuer is None else parent_key
        try:
            certificate.verify_directly_issued_by(
                issuer.certificate if issuer is not None else certificate
            )
        except InvalidSignature:
            raise IssuanceError(
                f"the signature made with key {signing_key.uri} does not verify with "
                "the public key recorded for it; the key in provider "
                f"{signing_key.provider} is not the one pkifed created or adopted. "
                "Nothing was recorded or published"
            ) from None

        def write(session: Session) -> None:
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

        self._writer.write(write)
        expiry = _iso(certificate.not_valid_after_utc)
        return f"serial {certificate.serial_number:x}, valid until {expiry}"

    def _cross_sign(self, name: str) -> str:
        """Certify the root's current key with each earlier, unexpired root key."""
        authority = self.model.authorities[name]
        now = self.clock()
        with self.store.transaction() as session:
            snapshot = read_snapshot(session)
            current = snapshot.current_certificate(name)
            if current is None:
                raise StateError(f"authority {name} has no certificate to cross-sign")
            certified = {
                issued.authority_key_id
                for issued in cross_certificates(snapshot, name, now)
            }
            pending = [
                issued
                for issued in self._cross_issuers(snapshot, name, now)
                if issued.subject_key_id not in certified
            ]
            signers = {
                issued.record.serial: session.get(KeyRecord, issued.record.key_id)
                for issued in pending
            }
            current_key = self._require_key(session, name)
        public = _load_public_key(current_key.public_key_der)

        issued_serials = []
        for previous in pending:
            old_key = signers[previous.record.serial]
            if old_key is None:
                raise StateError(
                    f"the key of {name}'s earlier certificate "
                    f"{previous.record.serial} is not in the state store"
                )
            old_public = _load_public_key(old_key.public_key_der)
            old_algorithm = algorithm_of_public_key(old_public)
            scheme = SignatureScheme.default_for(old_algorithm, authority.signature)
            signer = self.runtime.provider(old_key.provider).private_key(
                old_key.uri, old_public
            )
            certificate = build_ca_certificate(
                ca_profile(authority),
                public,
                issuer=Issuer(previous.certificate, signer, scheme),
                now=now,
                backdate=self.model.issuance.backdate,
            )
            try:
                certificate.verify_directly_issued_by(previous.certificate)
            except InvalidSignature:
                raise IssuanceError(
                    f"the cross signature made with key {old_key.uri} does not "
                    "verify with the public key recorded for it; nothing was recorded"
                ) from None

            record = CertificateRecord(
                authority=cross_label(name),
                serial=format(certificate.serial_number, "x"),
                key_id=current_key.id,
                issuer_serial=previous.record.serial,
                der=certificate.public_bytes(serialization.Encoding.DER),
                fingerprint_sha256=fingerprint_sha256(certificate),
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                issued_at=now,
                superseded_at=None,
            )
            self._add_record(record)
            issued_serials.append(format(certificate.serial_number, "x"))
        if not issued_serials:
            return "no cross certificate needed"
        noun = "cross certificate" if len(issued_serials) == 1 else "cross certificates"
        return f"{noun} {', '.join(issued_serials)}"

    def _sign_crl(self, name: str) -> str:
        authority = self.model.authorities[name]
        if authority.crl is None:
            raise StateError(f"authority {name} has no crl: section")
        now = self.clock()
        inputs = self._crl_inputs(name)
        issuer = x509.load_der_x509_certificate(inputs.certificate.der)
        this_update, next_update = crl.crl_times(
            now,
            authority.crl.validity,
            issuer.not_valid_after_utc,
            previous_this_update=inputs.previous_this_update,
            latest_revocation=max((e.revoked_at for e in inputs.entries), default=None),
        )
        signer = self.runtime.provider(inputs.key.provider).private_key(
            inputs.key.uri, _load_public_key(inputs.key.public_key_der)
        )

        # The number is allocated last, just before signing, in a transaction
        # of its own, so a run that stops here leaves a gap and never a repeat.
        number = self.store.allocate_crl_number(name)
        signed = crl.build_crl(
            issuer,
            signer,
            signature_scheme(authority),
            number=number,
            this_update=this_update,
            next_update=next_update,
            revoked=[crl.revoked_entry(entry) for entry in inputs.entries],
        )

        def write(session: Session) -> None:
            session.add(
                CrlRecord(
                    issuer=name,
                    number=number,
                    issuer_serial=inputs.certificate.serial,
                    this_update=this_update,
                    next_update=next_update,
                    entries=len(inputs.entries),
                    der=signed.public_bytes(serialization.Encoding.DER),
                    signed_at=now,
                )
            )

        self._writer.write(write)
        return (
            f"CRL number {number}, {_plural(len(inputs.entries), 'entry', 'entries')}, "
            "next update "
            f"{_iso(next_update)}"
        )

    def _crl_inputs(self, name: str) -> _CrlInputs:
        """Read the issuer's certificate, its key and the entries of its next CRL."""
        with self.store.transaction() as session:
            record = self.store.current_certificate(session, name)
            if record is None:
                raise StateError(f"authority {name} has no certificate to sign a CRL")
            # The key of the certificate signs, not necessarily the newest key,
            # because a new key may still wait for its certificate.
            # NOTE: only the current certificate's key signs CRLs. After an
            # issuer's key changes, certificates its earlier key issued get no
            # fresh CRL from that key and are listed on the new key's CRL.
            key = session.get(KeyRecord, record.key_id)
            if key is None:
                raise StateError(f"certificate {record.serial} has no recorded key")
            previous = crl.latest_crl(session, name)
            query = select(RevocationRecord).where(RevocationRecord.issuer == name)
            revocations = list(session.scalars(query))
            expiries = crl.certificate_expiries(
                session, (r.serial for r in revocations)
            )
        previous_this_update = previous.this_update if previous is not None else None
        entries = crl.listed_revocations(revocations, expiries, previous_this_update)
        return _CrlInputs(record, key, previous_this_update, entries)

    def _require_key(self, session: object, name: str) -> KeyRecord:
        key = self.store.current_key(session, name)  # type: ignore[arg-type]
        if key is None:
            raise StateError(f"authority {name} has no key in the state store")
        return key

    def _publish(self, target_name: str, object_name: str, reason: str) -> str:
        desired = next(
            d
            for d in self._desired_objects()
            if (d.target, d.object_name) == (target_name, object_name)
        )
        snapshot = self._phase_snapshot
        if snapshot is None:
            with self.store.transaction() as session:
                snapshot = read_snapshot(session)
        data = render(snapshot, desired, self.clock())
        target = self.runtime.target(target_name)
        target.publish(object_name, data)
        digest = hashlib.sha256(data).hexdigest()
        location = target.location(object_name)
        if reason.startswith("foreign certificate"):
            logger.warning(
                "security: %s contained certificates the federation never issued "
                "and they were removed: %s",
                location,
                reason,
            )

        def write(session: Session) -> None:
            record = self.store.publication(session, target_name, object_name)
            if record is None:
                record = PublicationRecord(target=target_name, object_name=object_name)
                session.add(record)
            record.location = location
            record.sha256 = digest
            record.published_at = self.clock()
            if reason.startswith("foreign certificate"):
                self.store.record_event(
                    session,
                    at=self.clock(),
                    kind="security",
                    subject=f"target {target_name}: {object_name}",
                    outcome="repaired",
                    message=reason,
                )

        self._writer.write(write)
        return f"{location} sha256 {digest[:16]}"

    def _retire(self, target_name: str, object_name: str) -> str:
        target = self.runtime.target(target_name)
        stored = target.read(object_name)
        if stored is not None:
            target.delete(object_name, stored.version)

        def write(session: Session) -> None:
            record = self.store.publication(session, target_name, object_name)
            if record is not None:
                session.delete(record)

        self._writer.write(write)
        return f"removed {target.location(object_name)}"

    def _record_blocked(self, plan: Plan) -> None:
        if not plan.problems:
            return
        now = self.clock()
        try:

            def write(session: Session) -> None:
                for problem in plan.problems:
                    self.store.record_status(
                        session,
                        _status_object(problem.object),
                        "blocked",
                        problem.message,
                        at=now,
                    )

            self._writer.write(write)
        except StateError as error:
            logger.error("recording the status of blocked objects failed: %s", error)

    def _record(self, outcome: ActionOutcome) -> None:
        message = outcome.message or outcome.action.reason
        now = self.clock()
        try:

            def write(session: Session) -> None:
                self.store.record_event(
                    session,
                    at=now,
                    kind=str(outcome.action.kind),
                    subject=outcome.action.object,
                    outcome=outcome.outcome,
                    message=message,
                )
                self.store.record_status(
                    session,
                    _status_object(outcome.action.object),
                    _STATUS_OF_OUTCOME[outcome.outcome],
                    message,
                    at=now,
                )

            self._writer.write(write)
        except StateError as error:
            logger.error(
                "%s: recording the event failed: %s", outcome.action.object, error
            )


_KEY_KINDS = (ActionKind.CREATE_KEY, ActionKind.ADOPT_KEY, ActionKind.RECORD_KEY)

# The object_status value of each action outcome.
_STATUS_OF_OUTCOME: dict[str, Literal["ok", "failed", "blocked"]] = {
    "done": "ok",
    "failed": "failed",
    "skipped": "blocked",
}


def _with_article(name: str) -> str:
    """Prefix an algorithm name with "a" or "an" as it is read aloud.

    The names are spelled out letter by letter ("an EC-P256", "an RSA-2048"),
    so the article follows the sound of the first letter's name.
    """
    article = "an" if name[:1] in "aefhilmnorsx" else "a"
    return f"{article} {name}"


def _plural(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _status_object(subject: str) -> str:
    """Turn ``authority root`` or ``target out: trust.pem`` into ``kind/name``."""
    kind, _, name = subject.partition(" ")
    return f"{kind}/{name.replace(': ', '/')}"


def _bind(function: Callable[[str], _Result], argument: str) -> Callable[[], _Result]:
    return lambda: function(argument)


def _observation_failure(source: str, error: PkifedError) -> str:
    # Provider and target errors already name their source, so only the
    # retry decision is added.
    if isinstance(error, TemporaryError):
        return f"{source} is unavailable ({error}); will be retried on the next run"
    return str(error)


def _adoption_problem(authority: AuthorityConfig, outcome: KeyOutcome) -> str | None:
    """Why the configured key cannot be adopted, from its observation."""
    if not isinstance(authority.key, KeyAdoption):
        return None
    uri = authority.key.uri
    if isinstance(outcome.error, KeyNotFoundError):
        return f"key {uri} to adopt was not found in provider {authority.provider}"
    if outcome.error is not None:
        return _observation_failure(f"provider {authority.provider}", outcome.error)
    info = outcome.value
    if info is None:
        return f"key {uri} to adopt was not found in provider {authority.provider}"
    if info.algorithm != authority.key.algorithm:
        return (
            f"key {uri} is {info.algorithm}, but the configuration says "
            f"{authority.key.algorithm}"
        )
    if info.state is not KeyState.ENABLED:
        return f"key {uri} to adopt is {info.state} in provider {authority.provider}"
    return None


def _drift_reason(
    stored: bytes, desired: DesiredObject, snapshot: Snapshot, subject: str
) -> str:
    if desired.is_crl:
        return _crl_drift_reason(stored, desired, snapshot)
    certificates = decode(stored, desired.format)
    if certificates is None:
        return "drifted: content is not what the federation published"
    known = snapshot.known_fingerprints()
    foreign = [c for c in certificates if fingerprint_sha256(c) not in known]
    if not foreign:
        return "drifted: content differs from the federation's"
    described = "; ".join(
        f"{c.subject.rfc4514_string()} (sha256 {fingerprint_sha256(c)[:23]})"
        for c in foreign
    )
    logger.warning(
        "security: %s contains %d certificates the federation never issued: %s",
        subject,
        len(foreign),
        described,
    )
    return f"foreign certificate present, to be removed: {described}"


def _crl_drift_reason(stored: bytes, desired: DesiredObject, snapshot: Snapshot) -> str:
    try:
        if desired.crl_encoding == "der":
            found = x509.load_der_x509_crl(stored)
        else:
            found = x509.load_pem_x509_crl(stored)
    except ValueError:
        return "drifted: content is not a CRL"
    record = snapshot.crls[desired.authorities[0]]
    number = crl.crl_number(found)
    if number is not None and number < record.number:
        return f"drifted: target serves CRL number {number}, current is {record.number}"
    return "drifted: content differs from the federation's CRL"


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

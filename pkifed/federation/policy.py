"""The policy engine: checks an inventory against the configured rules.

Each rule yields findings about objects, named ``authority/<name>``,
``bundle/<name>``, ``target/<target>/<object>``, ``provider/<name>`` or
``provider/<name>/<key>``. A finding's id is ``<rule>:<object>``, so it stays
the same from one report to the next and a waiver can name it. Rules that need
provider or target reads (key_state, orphaned_keys, observation_failed) run
only on a live inventory.

A waiver applies through its ``expires`` day (UTC). After that the finding
counts again, and an ``expired_waiver`` finding (low) names the waiver. A waiver
that matches no finding of a rule that ran gives an ``unused_waiver`` finding
(info).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pkifed.config.policy import (
    AllowedAlgorithmsRule,
    CrlFreshnessRule,
    ExpiryWindowRule,
    HsmProtectionRule,
    KeySizeRule,
    MaxValidityRule,
    PolicyConfig,
    RuleSettings,
    Severity,
    WaiverConfig,
)
from pkifed.config.schema import FederationConfig
from pkifed.federation.inventory import (
    DRIFTED,
    ISSUING,
    MISSING,
    UNKNOWN,
    AuthorityEntry,
    Inventory,
    TargetEntry,
)
from pkifed.providers.algorithms import KeyAlgorithm

EXPIRED_WAIVER = "expired_waiver"
UNUSED_WAIVER = "unused_waiver"


@dataclass(frozen=True)
class WaiverEntry:
    """The waiver that accepts a finding, as the report shows it."""

    owner: str
    reason: str
    expires: str


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one object."""

    id: str
    rule: str
    severity: str
    object: str
    authority: str | None
    message: str
    remediation: str
    waived: bool = False
    waiver: WaiverEntry | None = None


@dataclass(frozen=True)
class PolicyResult:
    """Every finding, sorted by severity (highest first) and then by id."""

    findings: list[Finding]
    rules_run: list[str]
    live: bool

    @property
    def unwaived(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.waived]

    def fails(self, threshold: Severity) -> bool:
        """Return whether an unwaived finding is at or above ``threshold``."""
        return any(
            Severity(finding.severity).rank >= threshold.rank
            for finding in self.unwaived
        )

    def summary(self) -> dict[str, Any]:
        """Count unwaived findings per severity, the waived ones and the highest."""
        counts = {str(severity): 0 for severity in Severity}
        for finding in self.unwaived:
            counts[finding.severity] += 1
        highest = max(
            (Severity(f.severity) for f in self.unwaived),
            key=lambda s: s.rank,
            default=None,
        )
        return {
            "findings": counts,
            "waived": len(self.findings) - len(self.unwaived),
            "highest_severity": str(highest) if highest is not None else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [asdict(finding) for finding in self.findings],
            "rules_run": self.rules_run,
        }


@dataclass(frozen=True)
class _Draft:
    """A finding before its severity and waiver are known."""

    object: str
    message: str
    remediation: str
    authority: str | None = None


@dataclass(frozen=True)
class _Context:
    inventory: Inventory
    model: FederationConfig
    now: datetime.datetime
    settings: Any = field(default=None)


Check = Callable[[_Context], list[_Draft]]


def _authority_object(entry: AuthorityEntry) -> str:
    return f"authority/{entry.name}"


def _algorithm(entry: AuthorityEntry) -> KeyAlgorithm | None:
    try:
        return KeyAlgorithm(entry.algorithm or entry.configured_algorithm)
    except ValueError:
        return None


def _draft(entry: AuthorityEntry, message: str, remediation: str) -> _Draft:
    return _Draft(_authority_object(entry), message, remediation, entry.name)


# --- keys -------------------------------------------------------------------------


def _check_key_size(context: _Context) -> list[_Draft]:
    settings: KeySizeRule = context.settings
    drafts = []
    for entry in context.inventory.authorities:
        algorithm = _algorithm(entry)
        if algorithm is None:
            continue
        if algorithm.is_rsa:
            minimum, family = settings.minimum_rsa_bits, "RSA"
        elif algorithm.is_ec:
            minimum, family = settings.minimum_ec_bits, "elliptic curve"
        else:
            continue
        if algorithm.key_size < minimum:
            drafts.append(
                _draft(
                    entry,
                    f"{algorithm} key has {algorithm.key_size} bits, below the "
                    f"minimum of {minimum} bits for {family} keys",
                    f"Set authorities.{entry.name}.key to a key of at least "
                    f"{minimum} bits and run pkifed apply, which creates the new "
                    "key and re-issues the certificates below it.",
                )
            )
    return drafts


def _check_allowed_algorithms(context: _Context) -> list[_Draft]:
    settings: AllowedAlgorithmsRule = context.settings
    allowed = set(settings.algorithms)
    drafts = []
    for entry in context.inventory.authorities:
        algorithm = _algorithm(entry)
        if algorithm is not None and algorithm not in allowed:
            drafts.append(
                _draft(
                    entry,
                    f"key algorithm {algorithm} is not allowed (allowed: "
                    f"{', '.join(sorted(allowed))})",
                    f"Set authorities.{entry.name}.key to an allowed algorithm and "
                    "run pkifed apply.",
                )
            )
    return drafts


def _check_hsm_protection(context: _Context) -> list[_Draft]:
    settings: HsmProtectionRule = context.settings
    drafts = []
    for entry in context.inventory.authorities:
        if entry.level not in settings.levels or not entry.protection_level:
            continue
        if entry.protection_level != "hsm":
            drafts.append(
                _draft(
                    entry,
                    f"{entry.level} key in provider {entry.provider} has protection "
                    f"level {entry.protection_level}, expected hsm",
                    f"Move authorities.{entry.name} to a provider with HSM "
                    "protection (pkcs11, or a cloud KMS with an HSM protection "
                    "level) and run pkifed apply.",
                )
            )
    return drafts


def _check_key_state(context: _Context) -> list[_Draft]:
    drafts = []
    for entry in context.inventory.authorities:
        if entry.key_state in ("enabled", UNKNOWN):
            continue
        drafts.append(
            _draft(
                entry,
                f"key {entry.key_uri} is {entry.key_state} in provider "
                f"{entry.provider}, so the authority cannot sign",
                "Enable or restore the key in its provider, or set a new key for "
                "the authority and run pkifed apply.",
            )
        )
    return drafts


def _check_orphaned_keys(context: _Context) -> list[_Draft]:
    drafts = []
    for provider in context.inventory.providers:
        for key in provider.keys:
            if key.status != "orphaned":
                continue
            drafts.append(
                _Draft(
                    f"provider/{provider.name}/{key.name or key.uri}",
                    f"key {key.uri} ({key.algorithm}, {key.state}) is in the "
                    "federation's namespace but no authority uses it and the "
                    "state store does not record it",
                    "Adopt the key for an authority, or schedule its deletion in "
                    "the provider after checking that nothing else uses it.",
                )
            )
    return drafts


def _check_observation_failed(context: _Context) -> list[_Draft]:
    inventory = context.inventory
    drafts = [
        _Draft(
            f"provider/{p.name}",
            f"provider {p.name} could not be read: {p.error}",
            "Run pkifed providers check, fix access, and run the report again.",
        )
        for p in inventory.providers
        if p.error
    ]
    drafts.extend(
        _draft(
            entry,
            f"key {entry.key_uri} could not be described: {entry.key_error}",
            "Run pkifed providers check, fix access, and run the report again.",
        )
        for entry in inventory.authorities
        if entry.key_error and entry.key_state == UNKNOWN
    )
    drafts.extend(
        _Draft(
            f"target/{t.name}/{t.object_name}",
            f"target {t.name} could not be read: {t.error}",
            f"Check access to target {t.name} and run the report again.",
        )
        for t in _published_objects(inventory)
        if t.error
    )
    return drafts


def _check_pq_readiness(context: _Context) -> list[_Draft]:
    offered = {
        p.name: [a for a in p.offered_algorithms if a.startswith("ml-dsa")]
        for p in context.inventory.providers
    }
    drafts = []
    for entry in context.inventory.authorities:
        algorithm = _algorithm(entry)
        if algorithm is None or algorithm.family == "ml-dsa":
            continue
        ml_dsa = offered.get(entry.provider, [])
        if ml_dsa:
            where = f"provider {entry.provider} offers {', '.join(ml_dsa)}"
            remediation = (
                "Plan a migration to an ML-DSA hierarchy (FIPS 204) in the same "
                "provider. This pkifed release cannot issue ML-DSA CA certificates "
                "through a provider yet, and relying parties need ML-DSA support."
            )
        else:
            where = f"provider {entry.provider} offers no ML-DSA algorithm"
            remediation = (
                "Plan a migration to an ML-DSA hierarchy (FIPS 204) and choose a "
                "provider that offers ML-DSA for it. This pkifed release cannot "
                "issue ML-DSA CA certificates through a provider yet."
            )
        drafts.append(
            _draft(
                entry,
                f"{algorithm} is not quantum-resistant and needs migration; {where}",
                remediation,
            )
        )
    return drafts


# --- certificates -----------------------------------------------------------------


def _check_max_validity(context: _Context) -> list[_Draft]:
    settings: MaxValidityRule = context.settings
    drafts = []
    for entry in context.inventory.authorities:
        limit = getattr(settings, entry.level)
        configured = context.model.authorities[entry.name].validity
        # The certificate's lifetime in whole days, which drops the few minutes
        # of backdating. Before issuance the configured validity is used.
        days = entry.lifetime_days
        if days is None:
            days = configured.days
        if days > limit.days:
            drafts.append(
                _draft(
                    entry,
                    f"{entry.level} certificate lifetime is {days} days, above the "
                    f"maximum of {limit.days} days",
                    f"Set authorities.{entry.name}.validity to at most "
                    f"{limit.days}d and run pkifed apply to re-issue it.",
                )
            )
    return drafts


def _check_issuing_path_length(context: _Context) -> list[_Draft]:
    drafts = []
    for entry in context.inventory.authorities:
        configured = context.model.authorities[entry.name].path_length
        path_length = entry.path_length if entry.serial else configured
        if entry.level == ISSUING and path_length is None:
            drafts.append(
                _draft(
                    entry,
                    "issuing CA has no path length constraint, so it could "
                    "certify further CAs",
                    f"Set authorities.{entry.name}.path_length to 0 and run "
                    "pkifed apply to re-issue it.",
                )
            )
    return drafts


def _check_issuing_name_constraints(context: _Context) -> list[_Draft]:
    drafts = []
    for entry in context.inventory.authorities:
        configured = context.model.authorities[entry.name].name_constraints
        present = entry.name_constraints if entry.serial else configured
        if entry.level == ISSUING and present is None:
            drafts.append(
                _draft(
                    entry,
                    "issuing CA has no name constraints, so it can certify any name",
                    f"Set authorities.{entry.name}.name_constraints.permitted to "
                    "the names it serves and run pkifed apply.",
                )
            )
    return drafts


def _not_after(entry: AuthorityEntry) -> datetime.datetime | None:
    if not entry.not_after:
        return None
    parsed = datetime.datetime.strptime(entry.not_after, "%Y-%m-%dT%H:%M:%SZ")
    return parsed.replace(tzinfo=datetime.UTC)


def _check_expiry_window(context: _Context) -> list[_Draft]:
    settings: ExpiryWindowRule = context.settings
    drafts = []
    for entry in context.inventory.authorities:
        not_after = _not_after(entry)
        if not_after is None or not_after <= context.now:
            continue
        remaining = not_after - context.now
        if remaining <= settings.window:
            drafts.append(
                _draft(
                    entry,
                    f"certificate expires on {entry.not_after}, in {remaining.days} "
                    f"days, within the {settings.window.days}-day window",
                    "Run pkifed apply, which re-issues certificates within "
                    f"renew_before; if it does not, set authorities.{entry.name}."
                    "renew_before to a longer duration.",
                )
            )
    return drafts


def _check_expired(context: _Context) -> list[_Draft]:
    drafts = []
    for entry in context.inventory.authorities:
        not_after = _not_after(entry)
        if not_after is not None and not_after <= context.now:
            drafts.append(
                _draft(
                    entry,
                    f"certificate expired on {entry.not_after}",
                    "Run pkifed apply to issue a new certificate, then publish it "
                    "to every relying party.",
                )
            )
    return drafts


def _check_not_issued(context: _Context) -> list[_Draft]:
    return [
        _draft(
            entry,
            "authority has no certificate in the state store",
            "Run pkifed apply to create its key and issue its certificate.",
        )
        for entry in context.inventory.authorities
        if not entry.serial
    ]


def _check_chain_validity(context: _Context) -> list[_Draft]:
    return [
        _draft(
            entry,
            "chain does not verify: " + "; ".join(entry.chain.problems),
            "Run pkifed plan to see which certificates pkifed re-issues, then "
            "pkifed apply.",
        )
        for entry in context.inventory.authorities
        if entry.chain.valid is False
    ]


def _check_weak_signature_hash(context: _Context) -> list[_Draft]:
    return [
        _draft(
            entry,
            f"certificate is signed with {entry.signature_algorithm}, whose hash "
            f"{entry.signature_hash} has practical collision attacks",
            f"Re-issue the certificate with a SHA-2 hash (authorities."
            f"{entry.parent or entry.name}.hash) by running pkifed apply.",
        )
        for entry in context.inventory.authorities
        if entry.signature_hash in ("sha1", "md5")
    ]


def _check_crl_freshness(context: _Context) -> list[_Draft]:
    settings: CrlFreshnessRule = context.settings
    drafts = []
    for entry in context.inventory.authorities:
        crl = entry.crl
        if not crl.required:
            continue
        if crl.state == "none":
            drafts.append(
                _draft(
                    entry,
                    "the authority publishes CRLs but has none",
                    "Run pkifed apply to issue and publish its CRL.",
                )
            )
            continue
        next_update = datetime.datetime.strptime(
            crl.next_update, "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=datetime.UTC)
        if next_update - context.now < settings.minimum_remaining:
            state = "expired" if next_update <= context.now else "about to expire"
            drafts.append(
                _draft(
                    entry,
                    f"CRL is {state}: nextUpdate is {crl.next_update}",
                    "Run pkifed apply to issue a fresh CRL and publish it.",
                )
            )
        elif crl.state == "stale":
            # apply signs a new CRL once two thirds of its validity have passed,
            # so a CRL past that point means apply has not run since.
            drafts.append(
                _draft(
                    entry,
                    "CRL is past two thirds of its validity and was not signed "
                    f"again: nextUpdate is {crl.next_update}",
                    "Run pkifed apply to issue a fresh CRL and publish it.",
                )
            )
    return drafts


# --- published objects ------------------------------------------------------------


def _published_objects(inventory: Inventory) -> list[TargetEntry]:
    """List each published (target, object) once, bundles first."""
    seen: dict[tuple[str, str], TargetEntry] = {}
    for bundle in inventory.bundles:
        for target in bundle.targets:
            seen.setdefault((target.name, target.object_name), target)
    for entry in inventory.authorities:
        for target in entry.publications:
            seen.setdefault((target.name, target.object_name), target)
    return list(seen.values())


def _check_target_drift(context: _Context) -> list[_Draft]:
    drafts = []
    for target in _published_objects(context.inventory):
        if target.state not in (DRIFTED, MISSING):
            continue
        if target.state == MISSING:
            message = f"{target.location or target.object_name} is missing"
        elif target.source == "live":
            message = (
                f"{target.location} differs from what the federation publishes "
                f"(sha256 {target.observed_sha256[:16]}, expected "
                f"{target.expected_sha256[:16]})"
            )
        else:
            message = (
                f"{target.location} was last published with content the "
                "federation has since changed"
            )
        drafts.append(
            _Draft(
                f"target/{target.name}/{target.object_name}",
                message,
                "Run pkifed apply to publish the federation's content again, and "
                "find out who changed the object.",
            )
        )
    return drafts


def _check_bundle_consistency(context: _Context) -> list[_Draft]:
    drafts = []
    for bundle in context.inventory.bundles:
        digests = {
            target.name: target.observed_sha256 or target.sha256
            for target in bundle.targets
            if target.observed_sha256 or target.sha256
        }
        if len(set(digests.values())) > 1:
            shown = ", ".join(f"{name} {d[:16]}" for name, d in sorted(digests.items()))
            drafts.append(
                _Draft(
                    f"bundle/{bundle.name}",
                    f"bundle {bundle.name} differs between targets: {shown}",
                    "Run pkifed apply so every target receives the same bundle.",
                )
            )
    return drafts


@dataclass(frozen=True)
class _Rule:
    check: Check
    severity: Severity
    live_only: bool = False


RULES: dict[str, _Rule] = {
    "key_size": _Rule(_check_key_size, Severity.HIGH),
    "allowed_algorithms": _Rule(_check_allowed_algorithms, Severity.HIGH),
    "hsm_protection": _Rule(_check_hsm_protection, Severity.HIGH),
    "max_validity": _Rule(_check_max_validity, Severity.MEDIUM),
    "issuing_path_length": _Rule(_check_issuing_path_length, Severity.MEDIUM),
    "issuing_name_constraints": _Rule(_check_issuing_name_constraints, Severity.MEDIUM),
    "expiry_window": _Rule(_check_expiry_window, Severity.HIGH),
    "expired": _Rule(_check_expired, Severity.CRITICAL),
    "not_issued": _Rule(_check_not_issued, Severity.MEDIUM),
    "chain_validity": _Rule(_check_chain_validity, Severity.CRITICAL),
    "crl_freshness": _Rule(_check_crl_freshness, Severity.HIGH),
    "weak_signature_hash": _Rule(_check_weak_signature_hash, Severity.CRITICAL),
    "bundle_consistency": _Rule(_check_bundle_consistency, Severity.HIGH),
    "target_drift": _Rule(_check_target_drift, Severity.HIGH),
    "key_state": _Rule(_check_key_state, Severity.HIGH, live_only=True),
    "orphaned_keys": _Rule(_check_orphaned_keys, Severity.MEDIUM, live_only=True),
    "observation_failed": _Rule(
        _check_observation_failed, Severity.HIGH, live_only=True
    ),
    "pq_readiness": _Rule(_check_pq_readiness, Severity.INFO),
}


# --- evaluation -------------------------------------------------------------------


def evaluate(
    inventory: Inventory, model: FederationConfig, now: datetime.datetime
) -> PolicyResult:
    """Run every enabled rule on the inventory and apply the waivers."""
    policy: PolicyConfig = model.policy
    findings: list[Finding] = []
    rules_run = []
    for rule_id, rule in RULES.items():
        settings: RuleSettings = getattr(policy.rules, rule_id)
        if not settings.enabled or (rule.live_only and not inventory.live):
            continue
        rules_run.append(rule_id)
        severity = settings.severity or rule.severity
        context = _Context(inventory, model, now, settings)
        findings.extend(
            Finding(
                id=f"{rule_id}:{draft.object}",
                rule=rule_id,
                severity=str(severity),
                object=draft.object,
                authority=draft.authority,
                message=draft.message,
                remediation=draft.remediation,
            )
            for draft in rule.check(context)
        )
    findings = _apply_waivers(findings, policy.waivers, set(rules_run), now.date())
    findings.sort(key=lambda f: (-Severity(f.severity).rank, f.id))
    return PolicyResult(findings, rules_run, inventory.live)


def _apply_waivers(
    findings: list[Finding],
    waivers: list[WaiverConfig],
    rules_run: set[str],
    today: datetime.date,
) -> list[Finding]:
    by_key: dict[tuple[str, str], list[WaiverConfig]] = {}
    for waiver in waivers:
        by_key.setdefault((waiver.rule, waiver.target_object), []).append(waiver)

    result = []
    matched: set[tuple[str, str]] = set()
    for finding in findings:
        candidates = by_key.get((finding.rule, finding.object), [])
        if candidates:
            matched.add((finding.rule, finding.object))
        active = [w for w in candidates if w.expires >= today]
        if not active:
            result.append(finding)
            continue
        waiver = max(active, key=lambda w: w.expires)
        entry = WaiverEntry(waiver.owner, waiver.reason, waiver.expires.isoformat())
        result.append(Finding(**{**asdict(finding), "waived": True, "waiver": entry}))

    for waiver in waivers:
        result.extend(_waiver_findings(waiver, matched, rules_run, today))
    return result


def _waiver_findings(
    waiver: WaiverConfig,
    matched: set[tuple[str, str]],
    rules_run: set[str],
    today: datetime.date,
) -> list[Finding]:
    subject = f"waiver/{waiver.rule}/{waiver.target_object}"
    if waiver.expires < today:
        return [
            Finding(
                id=f"{EXPIRED_WAIVER}:{subject}",
                rule=EXPIRED_WAIVER,
                severity=str(Severity.LOW),
                object=subject,
                authority=waiver.authority,
                message=(
                    f"waiver of {waiver.rule} on {waiver.target_object} owned by "
                    f"{waiver.owner} expired on {waiver.expires.isoformat()} and no "
                    "longer applies"
                ),
                remediation=(
                    "Fix the finding, or renew the waiver with a new expires date "
                    "after review."
                ),
            )
        ]
    if waiver.rule in rules_run and (waiver.rule, waiver.target_object) not in matched:
        return [
            Finding(
                id=f"{UNUSED_WAIVER}:{subject}",
                rule=UNUSED_WAIVER,
                severity=str(Severity.INFO),
                object=subject,
                authority=waiver.authority,
                message=(
                    f"waiver of {waiver.rule} on {waiver.target_object} matches no "
                    "finding"
                ),
                remediation="Remove the waiver from policy.waivers.",
            )
        ]
    return []

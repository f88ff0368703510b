"""The ``policy:`` section of the federation file: report rules and waivers.

Every rule has a default severity and can be switched off or given another
severity. Waivers accept a finding for a while: each names the rule, the object
(or authority), who owns the exception, why, and the date it expires. The engine
that evaluates the rules is :mod:`pkifed.federation.policy`.
"""

from __future__ import annotations

import datetime
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pkifed.config.durations import Duration
from pkifed.providers.algorithms import KeyAlgorithm


class Severity(StrEnum):
    """How much a finding matters, lowest first."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Position in the order info < low < medium < high < critical."""
        return list(Severity).index(self)


Level = Literal["root", "intermediate", "issuing"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSettings(_Model):
    """Settings every rule accepts."""

    enabled: bool = Field(default=True, description="Whether the rule runs.")
    severity: Severity | None = Field(
        default=None,
        description=(
            "Severity of the rule's findings: info, low, medium, high or critical. "
            "Absent: the rule's default."
        ),
    )


class KeySizeRule(RuleSettings):
    """Minimum key sizes, in bits."""

    minimum_rsa_bits: int = Field(
        default=2048, ge=1024, description="Smallest RSA modulus allowed, in bits."
    )
    minimum_ec_bits: int = Field(
        default=256, ge=256, description="Smallest elliptic curve allowed, in bits."
    )


class AllowedAlgorithmsRule(RuleSettings):
    """Key algorithms the federation may use."""

    algorithms: list[KeyAlgorithm] = Field(
        default_factory=lambda: list(KeyAlgorithm),
        description="Allowed key algorithms, such as [ec-p384, rsa-4096].",
    )


def _roots_only() -> list[Level]:
    return ["root"]


class HsmProtectionRule(RuleSettings):
    """Levels whose keys must be protected by an HSM."""

    levels: list[Level] = Field(
        default_factory=_roots_only,
        description=(
            "Levels that need protection level hsm: root (no parent), "
            "intermediate (has children) or issuing (has no children)."
        ),
    )


class MaxValidityRule(RuleSettings):
    """Maximum certificate lifetime at each level."""

    root: Duration = Field(
        default=timedelta(days=25 * 365), description="Maximum for roots."
    )
    intermediate: Duration = Field(
        default=timedelta(days=10 * 365), description="Maximum for intermediates."
    )
    issuing: Duration = Field(
        default=timedelta(days=5 * 365), description="Maximum for issuing CAs."
    )


class ExpiryWindowRule(RuleSettings):
    """Certificates that expire soon."""

    window: Duration = Field(
        default=timedelta(days=90),
        description="Report a certificate that expires within this time, e.g. 90d.",
    )


class CrlFreshnessRule(RuleSettings):
    """CRLs that are missing, expired or about to expire."""

    minimum_remaining: Duration = Field(
        default=timedelta(days=1),
        description="Report a CRL whose nextUpdate is closer than this, e.g. 1d.",
    )


class RulesConfig(_Model):
    """Every built-in rule by id. Each can be switched off or given another severity."""

    key_size: KeySizeRule = Field(
        default_factory=KeySizeRule, description="Minimum key sizes (high)."
    )
    allowed_algorithms: AllowedAlgorithmsRule = Field(
        default_factory=AllowedAlgorithmsRule,
        description="Key algorithms outside the allowed list (high).",
    )
    hsm_protection: HsmProtectionRule = Field(
        default_factory=HsmProtectionRule,
        description="Keys without HSM protection at the listed levels (high).",
    )
    max_validity: MaxValidityRule = Field(
        default_factory=MaxValidityRule,
        description="Certificate lifetimes above the level's maximum (medium).",
    )
    issuing_path_length: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Issuing CAs without a path length constraint (medium).",
    )
    issuing_name_constraints: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Issuing CAs without name constraints (medium).",
    )
    expiry_window: ExpiryWindowRule = Field(
        default_factory=ExpiryWindowRule,
        description="Certificates expiring within the window (high).",
    )
    expired: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Certificates already expired (critical).",
    )
    not_issued: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Authorities without a certificate in the state store (medium).",
    )
    chain_validity: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Chains that fail signature checks or whose validity does not "
        "nest inside the issuer's (critical).",
    )
    crl_freshness: CrlFreshnessRule = Field(
        default_factory=CrlFreshnessRule,
        description="Missing or stale CRLs of authorities that publish CRLs (high).",
    )
    weak_signature_hash: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Certificates signed with SHA-1 or MD5 (critical).",
    )
    bundle_consistency: RuleSettings = Field(
        default_factory=RuleSettings,
        description="A bundle whose content differs between its targets (high).",
    )
    target_drift: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Published objects that differ from the federation's (high).",
    )
    key_state: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Keys that are disabled, deleted or not found; --live (high).",
    )
    orphaned_keys: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Keys in a provider that no authority uses; --live (medium).",
    )
    observation_failed: RuleSettings = Field(
        default_factory=RuleSettings,
        description="Providers or targets that could not be read; --live (high).",
    )
    pq_readiness: RuleSettings = Field(
        default_factory=RuleSettings,
        description="CAs that need a migration to ML-DSA (info).",
    )


RULE_IDS = tuple(RulesConfig.model_fields)


class WaiverConfig(_Model):
    """An accepted finding: which rule, on which object, whose, why, until when."""

    rule: str = Field(description="Id of the waived rule, such as hsm_protection.")
    authority: str | None = Field(
        default=None, description="Authority the waiver covers (authority/<name>)."
    )
    object: str | None = Field(
        default=None,
        description=(
            "Object the waiver covers, as findings name it: authority/<name>, "
            "bundle/<name>, target/<target>/<object> or provider/<name>/<key>."
        ),
    )
    owner: str = Field(min_length=1, description="Who owns the exception.")
    reason: str = Field(min_length=1, description="Why the finding is accepted.")
    expires: datetime.date = Field(
        description="Last day (UTC) the waiver applies, as YYYY-MM-DD."
    )

    @field_validator("rule")
    @classmethod
    def _check_rule(cls, value: str) -> str:
        if value not in RULE_IDS:
            raise ValueError(f"unknown rule {value!r} (known: {', '.join(RULE_IDS)})")
        return value

    @model_validator(mode="after")
    def _check_subject(self) -> WaiverConfig:
        if (self.authority is None) == (self.object is None):
            raise ValueError("set exactly one of authority or object")
        return self

    @property
    def target_object(self) -> str:
        """The object name findings use, such as ``authority/root``."""
        if self.authority is not None:
            return f"authority/{self.authority}"
        return self.object or ""


class PolicyConfig(_Model):
    """Rules the report checks and the waivers that accept some findings."""

    rules: RulesConfig = Field(
        default_factory=RulesConfig, description="Built-in rules by id."
    )
    waivers: list[WaiverConfig] = Field(
        default_factory=list, description="Accepted findings, each with an expiry."
    )

"""The federation file, version 1, as pydantic models.

Provider and target settings are validated in a second step by the plugin that
owns each ``type:`` (see :mod:`pkifed.config.loader`), so this module keeps
them as plain mappings.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pkifed.config.crl import CrlConfig
from pkifed.config.daemon import (
    DaemonConfig,
    EventsConfig,
    LoggingConfig,
    ScheduleConfig,
)
from pkifed.config.durations import Duration
from pkifed.config.policy import PolicyConfig
from pkifed.providers.algorithms import HashName, KeyAlgorithm, RsaPadding

# Names become parts of key labels, aliases and file names in every provider,
# so they are limited to characters every provider accepts.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyAdoption(_Model):
    """An existing key that the federation adopts instead of creating one."""

    algorithm: KeyAlgorithm = Field(
        description="The key's algorithm, checked on adoption."
    )
    uri: str = Field(
        min_length=1,
        description="The key's URI in its provider (pkcs11:, file:, awskms:, ...).",
    )


class NameConstraintsConfig(_Model):
    """RFC 5280 name constraints (section 4.2.1.10) on what a CA may certify."""

    permitted: list[str] = Field(
        default_factory=list,
        description=(
            "Permitted subtrees as TYPE:VALUE, TYPE one of dns, email, ip, uri, dn "
            "(dns:example.com, ip:10.0.0.0/8)."
        ),
    )
    excluded: list[str] = Field(
        default_factory=list,
        description="Excluded subtrees, written like the permitted ones.",
    )


class AuthorityConfig(_Model):
    """One certificate authority: a root, an intermediate or an issuing CA."""

    provider: str = Field(description="Name of the provider that stores the key.")
    key: KeyAlgorithm | KeyAdoption = Field(
        description=(
            "Algorithm of a key the federation creates (ec-p256, ec-p384, ec-p521, "
            "rsa-2048, rsa-3072, rsa-4096, ed25519), or a mapping with algorithm "
            "and uri to adopt an existing key."
        )
    )
    signature: RsaPadding | None = Field(
        default=None,
        description="RSA signature padding for what this CA signs: pkcs1v15 or pss.",
    )
    hash: HashName | None = Field(
        default=None,
        description=(
            "Hash for what this CA signs. Defaults to the hash matching the key: "
            "sha256 for P-256 and RSA, sha384 for P-384, sha512 for P-521."
        ),
    )
    parent: str | None = Field(
        default=None, description="The issuing authority's name; absent for a root."
    )
    subject: str | dict[str, str] = Field(
        description=(
            "Subject as an RFC 4514 string ('CN=Root,O=Example') or a mapping of "
            "attribute names (common_name, organization, country, ...) to values."
        )
    )
    validity: Duration = Field(description="Certificate lifetime, such as 20y or 90d.")
    renew_before: Duration | None = Field(
        default=None,
        description=(
            "Re-issue the certificate when less than this remains before expiry. "
            "Defaults to a third of the validity."
        ),
    )
    path_length: int | None = Field(
        default=None,
        ge=0,
        le=32,
        description="Maximum number of CAs allowed below this one; absent: no limit.",
    )
    name_constraints: NameConstraintsConfig | None = Field(
        default=None, description="Name constraints written into the certificate."
    )
    publish: list[str] = Field(
        default_factory=list,
        description="Targets that receive this authority's certificate and chain.",
    )
    cross_sign: bool = Field(
        default=False,
        description=(
            "Roots only: when the root's key changes, certify the new key with the "
            "previous one too and publish that cross certificate as "
            "<name>-cross.pem, so relying parties that trust only the old root "
            "accept chains under the new one."
        ),
    )
    rekey: bool = Field(
        default=False,
        description=(
            "Create a new key at each renewal instead of certifying the same key "
            "again. A root that gets a new key is rotated: both roots are published "
            "before children move to the new one."
        ),
    )
    crl: CrlConfig | None = Field(
        default=None,
        description=(
            "Sign and publish a CRL of the certificates this authority issues; "
            "absent: no CRL."
        ),
    )

    @property
    def algorithm(self) -> KeyAlgorithm:
        """The key's algorithm, whether created or adopted."""
        return self.key if isinstance(self.key, KeyAlgorithm) else self.key.algorithm

    @property
    def renewal_window(self) -> timedelta:
        """How long before expiry the certificate is re-issued."""
        return self.renew_before if self.renew_before is not None else self.validity / 3


class BundleConfig(_Model):
    """A trust bundle: the certificates of some authorities, published together."""

    authorities: list[str] = Field(
        min_length=1, description="Authorities whose certificates the bundle contains."
    )
    format: Literal["pem", "der", "pkcs7", "spiffe"] = Field(
        default="pem",
        description=(
            "Encoding of the bundle: pem (<name>.pem), der (one certificate, "
            "<name>.der), pkcs7 (certs-only, <name>.p7b) or spiffe (a SPIFFE trust "
            "bundle, <name>.json)."
        ),
    )
    refresh_hint: Duration | None = Field(
        default=None,
        description="spiffe only: how often consumers should fetch the bundle again.",
    )
    targets: list[str] = Field(
        min_length=1, description="Targets the bundle is published to."
    )


class ReconcileConfig(_Model):
    """Settings of each reconcile pass."""

    concurrency: int = Field(
        default=16,
        ge=1,
        le=256,
        description=(
            "Maximum provider and target calls in flight at once, so slow remote "
            "services overlap instead of adding up."
        ),
    )
    max_passes: int = Field(
        default=5,
        ge=1,
        le=50,
        description=(
            "Passes one apply runs at most. Ordered procedures such as a root "
            "rotation finish a step per pass, after reading back the previous one."
        ),
    )


class IssuanceConfig(_Model):
    """Settings that apply to every certificate the federation issues."""

    backdate: Duration = Field(
        default=timedelta(minutes=5),
        description=(
            "How far notBefore is set into the past, to tolerate relying parties "
            "whose clocks run slow. Never earlier than the issuer's notBefore."
        ),
    )


class FederationConfig(_Model):
    """The whole federation file."""

    version: Literal[1] = Field(description="Format version of this file; must be 1.")
    name: str = Field(
        pattern=NAME_PATTERN,
        description="The federation's name, used to label the keys it creates.",
    )
    state: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the state store. Defaults to a SQLite file under "
            ".pkifed/ beside this file."
        ),
    )
    issuance: IssuanceConfig = Field(
        default_factory=IssuanceConfig,
        description="Settings for every certificate the federation issues.",
    )
    reconcile: ReconcileConfig = Field(
        default_factory=ReconcileConfig,
        description="Settings of each reconcile pass.",
    )
    providers: dict[str, dict[str, Any]] = Field(
        description="Key providers by name; each has a type and that type's settings."
    )
    authorities: dict[str, AuthorityConfig] = Field(
        min_length=1, description="Certificate authorities by name."
    )
    targets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Publish targets by name; each has a type and its settings.",
    )
    bundles: dict[str, BundleConfig] = Field(
        default_factory=dict, description="Trust bundles by name."
    )
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="Rules and waivers that pkifed report checks.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="When pkifed daemon runs a reconcile pass.",
    )
    daemon: DaemonConfig = Field(
        default_factory=DaemonConfig,
        description="pkifed daemon's HTTP endpoint and leader election.",
    )
    events: EventsConfig = Field(
        default_factory=EventsConfig,
        description="Lifecycle events of pkifed daemon and where they are sent.",
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig,
        description="Format and level of pkifed daemon's log lines.",
    )

    @field_validator("providers", "authorities", "targets", "bundles")
    @classmethod
    def _check_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        pattern = re.compile(NAME_PATTERN)
        for name in value:
            if not pattern.match(name):
                raise ValueError(
                    f"invalid name {name!r}: use 1 to 48 lowercase letters, digits "
                    "and hyphens, starting and ending with a letter or digit"
                )
        return value

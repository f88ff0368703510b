"""The ``crl:`` section of an authority: how it signs and publishes its CRL."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from pkifed.config.durations import Duration


class CrlConfig(BaseModel):
    """CRL settings of one authority (RFC 5280, section 5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validity: Duration = Field(
        default=timedelta(days=7),
        description=(
            "Time from thisUpdate to nextUpdate, such as 7d. The CRL is signed "
            "again once two thirds of it have passed, and never outlives the "
            "authority's certificate."
        ),
    )
    targets: list[str] = Field(
        default_factory=list,
        description="Targets that receive the CRL as <authority>.crl (DER).",
    )
    pem: bool = Field(
        default=False,
        description="Also publish the CRL PEM-encoded as <authority>.crl.pem.",
    )
    distribution_points: list[str] = Field(
        default_factory=list,
        description=(
            "URLs of this CRL, written as the CRL distribution points extension "
            "(RFC 5280, section 4.2.1.13) into the certificates this authority "
            "issues. Changing them re-issues those certificates."
        ),
    )

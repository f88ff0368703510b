"""CRL building rules: times, entries, extensions and the crl: configuration."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pkifed.config.loader import load_config
from pkifed.errors import ConfigError
from pkifed.federation.certificates import (
    CaProfile,
    IssuanceError,
    build_ca_certificate,
)
from pkifed.federation.crl import (
    CURRENT,
    EXPIRED,
    STALE,
    RevokedSerial,
    build_crl,
    crl_state,
    crl_times,
    listed_revocations,
    revoked_entry,
)
from pkifed.federation.store import RevocationRecord
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme

T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
SCHEME = SignatureScheme.default_for(KeyAlgorithm.EC_P256)


def issuer(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name.from_rfc4514_string("CN=CRL Unit Issuer")
    profile = CaProfile(name, 30 * DAY, None, None, SCHEME)
    return build_ca_certificate(
        profile,
        key.public_key(),
        issuer=None,
        self_signing_key=key,
        now=T0,
        backdate=datetime.timedelta(0),
    )


def test_times_follow_clock() -> None:
    this_update, next_update = crl_times(
        T0, 7 * DAY, T0 + 30 * DAY, previous_this_update=None, latest_revocation=None
    )

    assert this_update == T0
    assert next_update == T0 + 7 * DAY


def test_times_keep_previous_after_step_back() -> None:
    earlier = T0 - datetime.timedelta(hours=1)

    this_update, next_update = crl_times(
        earlier, 7 * DAY, T0 + 30 * DAY, previous_this_update=T0, latest_revocation=None
    )

    assert this_update == T0
    assert next_update == T0 + 7 * DAY


def test_times_never_before_revocation() -> None:
    later = T0 + datetime.timedelta(minutes=10)

    this_update, _ = crl_times(
        T0, 7 * DAY, T0 + 30 * DAY, previous_this_update=None, latest_revocation=later
    )

    assert this_update == later


def test_times_capped_by_issuer() -> None:
    _, next_update = crl_times(
        T0, 7 * DAY, T0 + 2 * DAY, previous_this_update=None, latest_revocation=None
    )

    assert next_update == T0 + 2 * DAY


def test_times_reject_expired_issuer() -> None:
    with pytest.raises(IssuanceError, match="renew the issuer first"):
        crl_times(
            T0, 7 * DAY, T0 - DAY, previous_this_update=None, latest_revocation=None
        )


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(DAY, CURRENT), (5 * DAY, STALE), (7 * DAY, EXPIRED), (8 * DAY, EXPIRED)],
)
def test_state_by_elapsed_time(elapsed: datetime.timedelta, expected: str) -> None:
    assert crl_state(T0, T0 + 7 * DAY, T0 + elapsed) == expected


def record(serial: str, reason: str = "keyCompromise") -> RevocationRecord:
    return RevocationRecord(
        authority="child", serial=serial, issuer="root", reason=reason, revoked_at=T0
    )


def test_entries_kept_until_listed_after_expiry() -> None:
    expiries = {"0a": T0 + DAY, "0b": T0 + 9 * DAY}
    revocations = [record("0b"), record("0a")]

    before = listed_revocations(revocations, expiries, T0)
    after = listed_revocations(revocations, expiries, T0 + 2 * DAY)

    assert [entry.serial for entry in before] == [0x0A, 0x0B]
    assert [entry.serial for entry in after] == [0x0B]


def test_unspecified_reason_omitted() -> None:
    unspecified = revoked_entry(RevokedSerial(7, T0, x509.ReasonFlags.unspecified))
    compromised = revoked_entry(RevokedSerial(8, T0, x509.ReasonFlags.key_compromise))
    reason = compromised.extensions.get_extension_for_class(x509.CRLReason)

    assert len(unspecified.extensions) == 0
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    assert not reason.critical


def test_build_rejects_wrong_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())

    with pytest.raises(IssuanceError, match="does not verify"):
        build_crl(
            issuer(key),
            other,
            SCHEME,
            number=1,
            this_update=T0,
            next_update=T0 + DAY,
            revoked=[],
        )


def test_build_sets_extensions() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = issuer(key)

    crl = build_crl(
        certificate,
        key,
        SCHEME,
        number=2**70,
        this_update=T0,
        next_update=T0 + DAY,
        revoked=[revoked_entry(RevokedSerial(5, T0, x509.ReasonFlags.superseded))],
    )
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    identifier = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    assert number.value.crl_number == 2**70
    assert identifier.value.key_identifier == ski.value.digest
    assert crl.issuer == certificate.subject
    assert crl.last_update_utc == T0
    assert crl.next_update_utc == T0 + DAY
    assert crl.get_revoked_certificate_by_serial_number(5) is not None


# --- the crl: section -------------------------------------------------------------


def write_config(tmp_path: Path, crl: dict[str, Any]) -> Path:
    document = {
        "version": 1,
        "name": "crl-config",
        "providers": {
            "disk": {"type": "local", "path": "keys", "passphrase": "${env:NOPE}"}
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p256",
                "subject": "CN=Root",
                "validity": "10y",
                "crl": crl,
            }
        },
        "targets": {"out": {"type": "file", "path": "out"}},
    }
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_config_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {}), check_secrets=False)
    crl = config.model.authorities["root"].crl

    assert crl is not None
    assert crl.validity == 7 * DAY
    assert crl.targets == []
    assert crl.pem is False
    assert crl.distribution_points == []


def test_config_problems_listed(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "validity": "20y",
            "targets": ["missing"],
            "distribution_points": ["ftp://pki.example.com/root.crl", "http:/x"],
        },
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path, check_secrets=False)
    problems = {problem.path: problem.message for problem in raised.value.problems}

    assert problems["authorities.root.crl.targets.0"].startswith(
        "unknown target 'missing'"
    )
    assert "invalid URL" in problems["authorities.root.crl.distribution_points.0"]
    assert "invalid URL" in problems["authorities.root.crl.distribution_points.1"]
    assert (
        "shorter than the authority's validity"
        in (problems["authorities.root.crl.validity"])
    )


def test_config_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, {"lifetime": "7d"}), check_secrets=False)

    assert [p.path for p in raised.value.problems] == ["authorities.root.crl.lifetime"]

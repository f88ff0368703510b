"""The policy engine on real federations: planted violations, waivers, --fail-on.

Each federation uses the local keystore and file targets, is applied by the
real reconciler, and is then reported on, from the state store and live.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from pkifed.config.loader import load_config
from pkifed.config.policy import Severity
from pkifed.errors import ConfigError
from pkifed.federation.inventory import AuthorityEntry, CrlEntry
from pkifed.federation.policy import evaluate
from pkifed.federation.reports import Report, build_report
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.algorithms import KeyAlgorithm
from pkifed.sync.cli import cli
from pkifed.sync.reconcile import Reconciler, utc_now

PASSPHRASE = "policy-test-passphrase-b7e4f1c9"
PASSPHRASE_VARIABLE = "PKIFED_POLICY_TEST_PASSPHRASE"


def federation_document() -> dict[str, Any]:
    """A root and an issuing CA with no violation except the root's software key."""
    return {
        "version": 1,
        "name": "audit",
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": f"${{env:{PASSPHRASE_VARIABLE}}}",
            }
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p384",
                "subject": "CN=Audit Root,O=Example",
                "validity": "20y",
                "path_length": 1,
                "publish": ["out"],
            },
            "issuing": {
                "provider": "disk",
                "parent": "root",
                "key": "ec-p256",
                "subject": "CN=Audit Issuing,O=Example",
                "validity": "5y",
                "renew_before": "1y",
                "path_length": 0,
                "name_constraints": {"permitted": ["dns:example.com"]},
                "publish": ["out"],
            },
        },
        "targets": {
            "out": {"type": "file", "path": "out"},
            "mirror": {"type": "file", "path": "mirror"},
        },
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out", "mirror"]}},
    }


@dataclass
class Federation:
    """A federation file in a temporary directory, applied and reported on."""

    directory: Path
    document: dict[str, Any]
    now: datetime.datetime

    @property
    def path(self) -> Path:
        return self.directory / "federation.yaml"

    def save(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document), encoding="utf-8")

    def apply(self) -> None:
        self.save()
        config = load_config(self.path)
        store = Store(config.state_url)
        store.initialise()
        try:
            with Runtime(config) as runtime:
                reconciler = Reconciler(config, store, runtime, clock=lambda: self.now)
                results = reconciler.converge()
        finally:
            store.close()
        assert all(result.succeeded for result in results)

    def report(self, live: bool = False) -> Report:
        self.save()
        config = load_config(self.path, check_secrets=live)
        store = Store(config.state_url)
        store.initialise()
        try:
            if not live:
                return build_report(config, store, self.now)
            with Runtime(config) as runtime:
                return build_report(config, store, self.now, runtime)
        finally:
            store.close()

    def cli(self, *arguments: str) -> Result:
        """Run ``pkifed report`` in this process against the saved file."""
        self.save()
        return CliRunner().invoke(
            cli, ["report", "-c", str(self.path), *arguments], catch_exceptions=False
        )

    def policy(self) -> dict[str, Any]:
        return self.document.setdefault("policy", {})

    def rules(self) -> dict[str, Any]:
        return self.policy().setdefault("rules", {})

    def waive(self, rule: str, subject: str, expires: datetime.date) -> None:
        key = "object" if "/" in subject else "authority"
        self.policy().setdefault("waivers", []).append(
            {
                "rule": rule,
                key: subject,
                "owner": "pki-team",
                "reason": "accepted until the HSM arrives",
                "expires": expires.isoformat(),
            }
        )


def make_federation(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Federation:
    monkeypatch.setenv(PASSPHRASE_VARIABLE, PASSPHRASE)
    return Federation(directory, federation_document(), utc_now())


@pytest.fixture
def federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Federation:
    return make_federation(tmp_path, monkeypatch)


@pytest.fixture
def violating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Federation:
    """A federation with every planted violation, applied, observed live later."""
    federation = make_federation(tmp_path, monkeypatch)
    issuing = federation.document["authorities"]["issuing"]
    issuing["key"] = "rsa-2048"
    issuing["validity"] = "30d"
    issuing["renew_before"] = "5d"
    federation.rules()["key_size"] = {"minimum_rsa_bits": 3072}
    federation.apply()
    trust = tmp_path / "out" / "trust.pem"
    trust.write_bytes(trust.read_bytes() + b"# tampered\n")
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        runtime.provider("disk").find_or_create_key("stray", KeyAlgorithm.EC_P256)
    return federation


def severities(report: Report) -> dict[str, str]:
    return {finding.id: finding.severity for finding in report.policy.findings}


PLANTED = {
    "hsm_protection:authority/root": "high",
    "key_size:authority/issuing": "high",
    "expiry_window:authority/issuing": "high",
    "target_drift:target/out/trust.pem": "high",
    "bundle_consistency:bundle/trust": "high",
    "orphaned_keys:provider/disk/stray": "medium",
}


def test_clean_federation_findings(federation: Federation) -> None:
    federation.apply()

    found = severities(federation.report(live=True))

    assert found == {
        "hsm_protection:authority/root": "high",
        "pq_readiness:authority/issuing": "info",
        "pq_readiness:authority/root": "info",
    }


def test_planted_violations_live(violating: Federation) -> None:
    found = severities(violating.report(live=True))

    for finding_id, severity in PLANTED.items():
        assert found.get(finding_id) == severity, finding_id


def test_offline_skips_live_rules(violating: Federation) -> None:
    report = violating.report(live=False)
    found = severities(report)

    assert "orphaned_keys:provider/disk/stray" not in found
    assert "target_drift:target/out/trust.pem" not in found
    assert "orphaned_keys" not in report.policy.rules_run
    assert found["key_size:authority/issuing"] == "high"
    assert found["expiry_window:authority/issuing"] == "high"


def test_drift_reports_digests(violating: Federation) -> None:
    report = violating.report(live=True)
    bundle = report.inventory.bundles[0]
    states = {target.name: target.state for target in bundle.targets}
    out = next(target for target in bundle.targets if target.name == "out")

    assert states == {"out": "drifted", "mirror": "in-sync"}
    assert out.source == "live"
    assert out.observed_sha256 != out.sha256
    assert out.sha256 == out.expected_sha256


def test_fail_on_high_gates(violating: Federation) -> None:
    result = violating.cli("--live", "--fail-on", "high", "--format", "json")

    assert result.exit_code == 3
    assert "unwaived findings at or above high" in result.output


def test_fail_on_passes_when_waived(violating: Federation) -> None:
    until = violating.now.date() + datetime.timedelta(days=30)
    for finding_id, severity in PLANTED.items():
        if severity == "high":
            rule, subject = finding_id.split(":", 1)
            violating.waive(rule, subject, until)

    result = violating.cli("--live", "--fail-on", "high")
    report = violating.report(live=True)
    waived = {f.id for f in report.policy.findings if f.waived}

    assert result.exit_code == 0, result.output
    assert waived == {i for i, s in PLANTED.items() if s == "high"}
    assert not report.policy.fails(Severity.HIGH)
    assert report.policy.fails(Severity.MEDIUM)


def test_fail_on_critical_passes(violating: Federation) -> None:
    result = violating.cli("--live", "--fail-on", "critical")

    assert result.exit_code == 0, result.output


def test_expired_waiver_stops_applying(violating: Federation) -> None:
    yesterday = violating.now.date() - datetime.timedelta(days=1)
    violating.waive("hsm_protection", "root", yesterday)

    report = violating.report()
    findings = {f.id: f for f in report.policy.findings}
    expired = findings["expired_waiver:waiver/hsm_protection/authority/root"]

    assert findings["hsm_protection:authority/root"].waived is False
    assert expired.severity == "low"
    assert yesterday.isoformat() in expired.message
    assert "pki-team" in expired.message


def test_waiver_valid_through_expiry_day(violating: Federation) -> None:
    violating.waive("hsm_protection", "root", violating.now.date())

    report = violating.report()
    finding = next(
        f for f in report.policy.findings if f.id == "hsm_protection:authority/root"
    )

    assert finding.waived is True
    assert finding.waiver is not None
    assert finding.waiver.owner == "pki-team"


def test_unused_waiver_reported(federation: Federation) -> None:
    federation.apply()
    until = federation.now.date() + datetime.timedelta(days=5)
    federation.waive("key_size", "issuing", until)

    found = severities(federation.report())

    assert found["unused_waiver:waiver/key_size/authority/issuing"] == "info"


def test_rule_disabled_and_rerated(violating: Federation) -> None:
    violating.rules()["hsm_protection"] = {"enabled": False}
    violating.rules()["expiry_window"] = {"severity": "critical", "window": "10d"}
    violating.rules()["key_size"]["severity"] = "low"

    found = severities(violating.report())

    assert "hsm_protection:authority/root" not in found
    assert "expiry_window:authority/issuing" not in found
    assert found["key_size:authority/issuing"] == "low"


def test_expiry_window_severity_override(violating: Federation) -> None:
    violating.rules()["expiry_window"] = {"severity": "critical"}

    result = violating.cli("--fail-on", "critical")

    assert result.exit_code == 3


def test_expired_certificate_critical(federation: Federation) -> None:
    federation.apply()
    federation.now += datetime.timedelta(days=5 * 365 + 2)

    found = severities(federation.report())

    assert found["expired:authority/issuing"] == "critical"
    assert "expiry_window:authority/issuing" not in found


def test_issuing_constraints_missing(federation: Federation) -> None:
    issuing = federation.document["authorities"]["issuing"]
    del issuing["name_constraints"]
    del federation.document["authorities"]["root"]["path_length"]
    del issuing["path_length"]
    federation.apply()

    found = severities(federation.report())

    assert found["issuing_path_length:authority/issuing"] == "medium"
    assert found["issuing_name_constraints:authority/issuing"] == "medium"


def test_max_validity_per_level(federation: Federation) -> None:
    federation.rules()["max_validity"] = {"root": "10y", "issuing": "4y"}
    federation.apply()

    report = federation.report()
    found = severities(report)
    messages = {f.id: f.message for f in report.policy.findings}

    assert found["max_validity:authority/root"] == "medium"
    assert found["max_validity:authority/issuing"] == "medium"
    assert "maximum of 3650 days" in messages["max_validity:authority/root"]


def test_allowed_algorithms_rule(federation: Federation) -> None:
    federation.rules()["allowed_algorithms"] = {"algorithms": ["ec-p384"]}

    found = severities(federation.report())

    assert found == {
        "allowed_algorithms:authority/issuing": "high",
        "not_issued:authority/issuing": "medium",
        "not_issued:authority/root": "medium",
        "pq_readiness:authority/issuing": "info",
        "pq_readiness:authority/root": "info",
    }


def test_hsm_required_per_level(federation: Federation) -> None:
    federation.rules()["hsm_protection"] = {"levels": ["issuing"]}
    federation.apply()

    found = severities(federation.report())

    assert "hsm_protection:authority/root" not in found
    assert found["hsm_protection:authority/issuing"] == "high"


def test_key_state_disabled(federation: Federation) -> None:
    federation.apply()
    key_file = federation.directory / "keys" / "audit" / "issuing.pem"
    Path(f"{key_file}.disabled").touch()

    report = federation.report(live=True)

    assert severities(report)["key_state:authority/issuing"] == "high"
    assert report.inventory.authority("issuing").key_state == "disabled"


def test_pq_readiness_names_offer(federation: Federation) -> None:
    report = federation.report()
    finding = next(
        f for f in report.policy.findings if f.id == "pq_readiness:authority/root"
    )

    assert finding.severity == "info"
    assert "provider disk offers ml-dsa-44, ml-dsa-65, ml-dsa-87" in finding.message


def test_crl_hook_reports_missing(federation: Federation) -> None:
    federation.apply()
    report = federation.report()
    root = report.inventory.authority("root")
    # No authority setting requests CRLs yet, so the test marks the inventory
    # entry the way the CRL feature will.
    wanting = AuthorityEntry(
        **{**root.__dict__, "crl": CrlEntry(required=True, state="none")}
    )
    inventory = report.inventory
    patched = type(inventory)(
        inventory.federation,
        inventory.generated_at,
        [wanting, *inventory.authorities[1:]],
        inventory.bundles,
        inventory.providers,
        inventory.live,
    )
    config = load_config(federation.path)

    result = evaluate(patched, config.model, federation.now)

    assert root.crl.state == "none"
    assert root.crl.required is False
    assert {f.id: f.severity for f in result.findings}[
        "crl_freshness:authority/root"
    ] == "high"


def test_waiver_rejects_unknown_rule(federation: Federation) -> None:
    federation.policy()["waivers"] = [
        {
            "rule": "no_such_rule",
            "authority": "root",
            "owner": "pki-team",
            "reason": "typo",
            "expires": "2030-01-01",
        }
    ]

    federation.save()

    with pytest.raises(ConfigError, match="unknown rule 'no_such_rule'"):
        load_config(federation.path)

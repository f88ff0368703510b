"""Revoking a CA and publishing CRLs across a federation, checked with openssl.

The federation has a local root and two issuing CAs, one local and one in the
Cloud KMS fake. The root signs a CRL that goes to two file targets in DER and
PEM. Time is injected into the reconciler, never slept.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from sqlalchemy import select

from pkifed.config.loader import load_config
from pkifed.federation.inventory import build_inventory
from pkifed.federation.policy import evaluate
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import CrlRecord, KeyRecord, Store
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from pkifed.sync.plan import ActionKind, Plan
from pkifed.sync.reconcile import ApplyResult, Reconciler, utc_now

PASSPHRASE = "revoke-test-passphrase"
PASSPHRASE_VARIABLE = "PKIFED_REVOKE_PASSPHRASE"
TARGETS = ("out", "mirror")
CRL_VALIDITY = datetime.timedelta(days=7)


def federation_document(gcp_endpoint: str) -> dict[str, Any]:
    return {
        "version": 1,
        "name": "revoke",
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": f"${{env:{PASSPHRASE_VARIABLE}}}",
            },
            "gcp": {
                "type": "gcp-kms",
                "project": "pkifed-test",
                "location": "global",
                "endpoint": gcp_endpoint,
                "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.02},
            },
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p384",
                "subject": "CN=Revoke Root,O=Example",
                "validity": "20y",
                "path_length": 1,
                "publish": ["out"],
                "crl": {
                    "validity": "7d",
                    "targets": list(TARGETS),
                    "pem": True,
                    "distribution_points": ["http://pki.example.com/root.crl"],
                },
            },
            "issuing-disk": {
                "provider": "disk",
                "parent": "root",
                "key": "ec-p256",
                "subject": "CN=Revoke Issuing Disk,O=Example",
                "validity": "5y",
                "path_length": 0,
                "publish": ["out"],
            },
            "issuing-gcp": {
                "provider": "gcp",
                "parent": "root",
                "key": "ec-p256",
                "subject": "CN=Revoke Issuing GCP,O=Example",
                "validity": "5y",
                "path_length": 0,
                "publish": ["out"],
            },
        },
        "targets": {name: {"type": "file", "path": name} for name in TARGETS},
        "bundles": {
            "trust": {"authorities": ["root"], "targets": list(TARGETS)},
            "issuers": {
                "authorities": ["issuing-disk", "issuing-gcp"],
                "targets": list(TARGETS),
            },
        },
    }


@dataclass
class Federation:
    """A federation file in a temporary directory with an injectable clock."""

    directory: Path
    document: dict[str, Any]
    now: datetime.datetime
    clock: Callable[[], datetime.datetime] | None = None
    results: list[ApplyResult] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.directory / "federation.yaml"

    def save(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document), encoding="utf-8")

    def reconciler(self, store: Store, runtime: Runtime) -> Reconciler:
        config = load_config(self.path)
        clock = self.clock or (lambda: self.now)
        return Reconciler(config, store, runtime, clock=clock)

    @contextlib.contextmanager
    def opened(self) -> Iterator[tuple[Store, Runtime]]:
        self.save()
        config = load_config(self.path)
        store = Store(config.state_url)
        store.initialise()
        try:
            with Runtime(config) as runtime:
                yield store, runtime
        finally:
            store.close()

    def converge(self) -> list[ApplyResult]:
        with self.opened() as (store, runtime):
            self.results = self.reconciler(store, runtime).converge()
        return self.results

    def plan(self) -> Plan:
        with self.opened() as (store, runtime):
            return self.reconciler(store, runtime).plan()

    def pkifed(
        self, *arguments: str, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        self.save()
        env = {**os.environ, PASSPHRASE_VARIABLE: PASSPHRASE}
        return subprocess.run(
            [sys.executable, "-m", "pkifed", *arguments, "-c", str(self.path)],
            capture_output=True,
            text=True,
            input=stdin,
            env=env,
            cwd=self.directory,
            check=False,
            timeout=120,
        )

    def certificate(self, name: str, target: str = "out") -> x509.Certificate:
        path = self.directory / target / f"{name}.pem"
        return x509.load_pem_x509_certificate(path.read_bytes())

    def pem_file(self, target: str, object_name: str) -> list[x509.Certificate]:
        path = self.directory / target / object_name
        return x509.load_pem_x509_certificates(path.read_bytes())

    def crl(self, target: str = "out") -> x509.CertificateRevocationList:
        return x509.load_der_x509_crl(
            (self.directory / target / "root.crl").read_bytes()
        )


def unique_name() -> str:
    import uuid

    return f"revoke-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[FakeCloudKms]:
    with FakeCloudKms() as service:
        yield service


@pytest.fixture
def federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cloud_kms: FakeCloudKms
) -> Federation:
    monkeypatch.setenv(PASSPHRASE_VARIABLE, PASSPHRASE)
    document = federation_document(cloud_kms.endpoint)
    # Each test gets a key ring of its own in the shared Cloud KMS fake.
    document["name"] = unique_name()
    return Federation(tmp_path, document, utc_now())


def openssl(*arguments: str, cwd: Path) -> str:
    result = subprocess.run(
        ["openssl", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def applied(results: list[ApplyResult]) -> list[tuple[ActionKind, str]]:
    return [
        (outcome.action.kind, outcome.action.object)
        for result in results
        for outcome in result.outcomes
    ]


def failures(results: list[ApplyResult]) -> list[str]:
    return [outcome.message for result in results for outcome in result.failed]


def crl_numbers(federation: Federation) -> list[int]:
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with store.transaction() as session:
            return list(
                session.scalars(select(CrlRecord.number).order_by(CrlRecord.id))
            )
    finally:
        store.close()


def crl_number_of(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# --- CRLs -------------------------------------------------------------------------


def test_first_apply_publishes_crl(federation: Federation) -> None:
    results = federation.converge()
    root = federation.certificate("root")
    issuing = federation.certificate("issuing-gcp")
    crl = federation.crl("mirror")
    pem = x509.load_pem_x509_crl(
        (federation.directory / "out" / "root.crl.pem").read_bytes()
    )
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    key_identifier = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    points = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    assert failures(results) == []
    assert (ActionKind.SIGN_CRL, "crl root") in applied(results)
    assert federation.plan().empty
    assert pem == federation.crl("out")
    assert crl == federation.crl("out")
    assert len(crl) == 0
    assert number.value.crl_number == 1
    assert not number.critical
    assert key_identifier.value.key_identifier == root_ski.value.digest
    assert not key_identifier.critical
    assert crl.next_update_utc - crl.last_update_utc == CRL_VALIDITY
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert not points.critical
    assert points.value[0].full_name == [
        x509.UniformResourceIdentifier("http://pki.example.com/root.crl")
    ]
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert "verify OK" in openssl(
        "crl",
        "-verify",
        "-noout",
        "-inform",
        "DER",
        "-in",
        "mirror/root.crl",
        "-CAfile",
        "out/root.pem",
        cwd=federation.directory,
    )


def test_crl_resigned_after_two_thirds(federation: Federation) -> None:
    federation.converge()
    start = federation.now
    federation.now = start + datetime.timedelta(days=4)
    early = federation.plan()
    federation.now = start + datetime.timedelta(days=5)
    late = federation.plan()
    results = federation.converge()
    crl = federation.crl("out")

    assert early.empty
    assert [a.kind for a in late.actions][:1] == [ActionKind.SIGN_CRL]
    assert late.actions[0].reason.startswith("two thirds of its validity passed")
    assert failures(results) == []
    assert crl_number_of(crl) == 2
    assert crl.last_update_utc == federation.now
    assert federation.plan().empty


def test_expired_crl_resigned(federation: Federation) -> None:
    federation.converge()
    federation.now += datetime.timedelta(days=8)

    plan = federation.plan()

    assert plan.actions[0].kind is ActionKind.SIGN_CRL
    assert plan.actions[0].reason.startswith("expired at")


def test_crl_next_update_capped(federation: Federation) -> None:
    authority = federation.document["authorities"]["root"]
    authority["validity"] = "30d"
    authority["renew_before"] = "1d"
    authority["crl"]["validity"] = "20d"
    for name in ("issuing-disk", "issuing-gcp"):
        federation.document["authorities"][name]["validity"] = "10d"
    federation.converge()
    root = federation.certificate("root")
    # 25 of the root's 30 days in, a 20-day CRL would outlive the root.
    federation.now += datetime.timedelta(days=25)
    federation.converge()
    crl = federation.crl("out")

    assert crl_number_of(crl) >= 2
    assert crl.next_update_utc == root.not_valid_after_utc


def test_crl_drift_repaired(federation: Federation) -> None:
    federation.converge()
    first = (federation.directory / "mirror" / "root.crl").read_bytes()
    federation.now += datetime.timedelta(days=5)
    federation.converge()
    current = (federation.directory / "mirror" / "root.crl").read_bytes()
    (federation.directory / "mirror" / "root.crl").write_bytes(first)

    plan = federation.plan()
    federation.converge()

    assert [(a.kind, a.object_name, a.reason) for a in plan.actions] == [
        (
            ActionKind.PUBLISH,
            "root.crl",
            "drifted: target serves CRL number 1, current is 2",
        )
    ]
    assert (federation.directory / "mirror" / "root.crl").read_bytes() == current


def test_distribution_points_change_reissues(federation: Federation) -> None:
    federation.converge()
    crl = federation.document["authorities"]["root"]["crl"]
    crl["distribution_points"] = ["http://pki.example.org/root.crl"]

    plan = federation.plan()
    results = federation.converge()
    issuing = federation.certificate("issuing-disk")
    points = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints)

    assert sorted(
        a.authority for a in plan.actions if a.kind is ActionKind.ISSUE_CERTIFICATE
    ) == ["issuing-disk", "issuing-gcp"]
    assert all(
        a.reason == "profile changed: CRL distribution points differ"
        for a in plan.actions
        if a.kind is ActionKind.ISSUE_CERTIFICATE
    )
    assert failures(results) == []
    assert points.value[0].full_name == [
        x509.UniformResourceIdentifier("http://pki.example.org/root.crl")
    ]


# --- revocation -------------------------------------------------------------------


def key_records(federation: Federation, authority: str) -> list[KeyRecord]:
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with store.transaction() as session:
            query = (
                select(KeyRecord)
                .where(KeyRecord.authority == authority)
                .order_by(KeyRecord.generation)
            )
            return list(session.scalars(query))
    finally:
        store.close()


def test_revoke_replaces_issuing_ca(federation: Federation) -> None:
    federation.converge()
    old = federation.certificate("issuing-gcp")
    untouched = federation.certificate("issuing-disk")

    revoked = federation.pkifed(
        "revoke", "issuing-gcp", "--reason", "keyCompromise", "--yes"
    )
    results = federation.converge()
    root = federation.certificate("root")
    new = federation.certificate("issuing-gcp")
    keys = key_records(federation, "issuing-gcp")

    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert f"{old.serial_number:x}" in revoked.stdout
    assert failures(results) == []
    assert results[-1].plan.empty
    # The root's CRL on every target lists the serial with its reason, and
    # openssl verifies it against the published root.
    for target in TARGETS:
        crl = federation.crl(target)
        entry = crl.get_revoked_certificate_by_serial_number(old.serial_number)
        assert entry is not None
        reason = entry.extensions.get_extension_for_class(x509.CRLReason)
        assert reason.value.reason is x509.ReasonFlags.key_compromise
        assert crl_number_of(crl) == 2
        assert len(crl) == 1
        text = openssl(
            "crl",
            "-verify",
            "-text",
            "-noout",
            "-inform",
            "DER",
            "-in",
            f"{target}/root.crl",
            "-CAfile",
            "out/root.pem",
            cwd=federation.directory,
        )
        assert "verify OK" in text
        assert f"{old.serial_number:X}" in text.replace(":", "")
        assert "Key Compromise" in text
    # The replacement certifies a new key, in a new key generation.
    assert new.serial_number != old.serial_number
    assert new.public_key() != old.public_key()
    assert [k.generation for k in keys] == [1, 2]
    assert keys[0].uri != keys[1].uri
    assert keys[0].retired_at is not None
    new.verify_directly_issued_by(root)
    assert federation.certificate("issuing-disk") == untouched
    # The revoked certificate is gone from every bundle and chain.
    for target in TARGETS:
        issuers = federation.pem_file(target, "issuers.pem")
        assert old not in issuers
        assert new in issuers
        assert untouched in issuers
    assert federation.pem_file("out", "issuing-gcp-chain.pem") == [new, root]
    assert "verify OK" in openssl(
        "crl",
        "-verify",
        "-noout",
        "-in",
        "out/root.crl.pem",
        "-CAfile",
        "out/root.pem",
        cwd=federation.directory,
    )


def test_revoke_plan_reasons(federation: Federation) -> None:
    federation.converge()
    federation.pkifed("revoke", "issuing-disk", "--reason", "superseded", "--yes")

    plan = federation.plan()
    by_kind = {(a.kind, a.authority): a.reason for a in plan.actions}

    assert by_kind[(ActionKind.CREATE_KEY, "issuing-disk")].startswith("certificate ")
    assert (
        "a revoked authority gets a new key"
        in by_kind[(ActionKind.CREATE_KEY, "issuing-disk")]
    )
    assert by_kind[(ActionKind.ISSUE_CERTIFICATE, "issuing-disk")].endswith(
        "revoked (superseded)"
    )
    assert by_kind[(ActionKind.SIGN_CRL, "root")].startswith("revocation of ")


def test_revoke_descendants_reissued(federation: Federation) -> None:
    authorities = federation.document["authorities"]
    authorities["root"]["path_length"] = 2
    authorities["issuing-gcp"]["path_length"] = 1
    authorities["issuing-gcp"]["crl"] = {"validity": "2d", "targets": ["out"]}
    authorities["issuing-disk"]["parent"] = "issuing-gcp"
    authorities["issuing-disk"]["validity"] = "2y"
    federation.converge()
    old_disk = federation.certificate("issuing-disk")

    revoked = federation.pkifed(
        "revoke", "issuing-gcp", "--reason", "cACompromise", "--yes"
    )
    results = federation.converge()
    root = federation.certificate("root")
    gcp = federation.certificate("issuing-gcp")
    disk = federation.certificate("issuing-disk")
    gcp_crl = x509.load_der_x509_crl(
        (federation.directory / "out" / "issuing-gcp.crl").read_bytes()
    )

    assert "descendants re-issued because their chains break: issuing-disk" in (
        revoked.stdout
    )
    assert failures(results) == []
    assert results[-1].plan.empty
    assert disk.serial_number != old_disk.serial_number
    assert disk.public_key() == old_disk.public_key()
    disk.verify_directly_issued_by(gcp)
    assert federation.pem_file("out", "issuing-disk-chain.pem") == [disk, gcp, root]
    # The replacement signs its own CRL under its new key.
    assert gcp_crl.is_signature_valid(gcp.public_key())  # type: ignore[arg-type]
    assert len(federation.crl("out")) == 1


def test_revoke_root_rejected(federation: Federation) -> None:
    federation.converge()

    result = federation.pkifed("revoke", "root", "--reason", "keyCompromise", "--yes")

    assert result.returncode == 1
    assert "authority root is a root" in result.stderr
    assert "Rotate it instead" in result.stderr
    assert federation.plan().empty


def test_revoke_asks_confirmation(federation: Federation) -> None:
    federation.converge()
    serial = f"{federation.certificate('issuing-disk').serial_number:x}"

    declined = federation.pkifed(
        "revoke", "issuing-disk", "--reason", "affiliationChanged", stdin="n\n"
    )

    assert declined.returncode == 130
    assert f"certificate serial: {serial}" in declined.stdout
    assert "listed on the CRL of: root" in declined.stdout
    assert "descendants re-issued because their chains break: none" in (declined.stdout)
    assert federation.plan().empty


def test_revoke_twice_reports_once(federation: Federation) -> None:
    federation.converge()

    first = federation.pkifed(
        "revoke", "issuing-disk", "--reason", "KEYCOMPROMISE", "--yes"
    )
    second = federation.pkifed(
        "revoke", "issuing-disk", "--reason", "superseded", "--yes"
    )

    assert first.returncode == 0, first.stderr
    assert "(keyCompromise)" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "already revoked (keyCompromise)" in second.stdout


def test_revoke_unknown_reason_rejected(federation: Federation) -> None:
    result = federation.pkifed(
        "revoke", "issuing-disk", "--reason", "certificateHold", "--yes"
    )

    assert result.returncode == 2
    assert "certificateHold" in result.stderr


def test_revoked_adopted_key_blocked(federation: Federation) -> None:
    federation.converge()
    keys = key_records(federation, "issuing-disk")
    federation.document["authorities"]["issuing-disk"]["key"] = {
        "algorithm": "ec-p256",
        "uri": keys[0].uri,
    }
    federation.converge()
    federation.pkifed("revoke", "issuing-disk", "--reason", "keyCompromise", "--yes")

    plan = federation.plan()
    problems = {p.object: p.message for p in plan.problems}

    assert not any(a.authority == "issuing-disk" for a in plan.actions)
    assert "is never certified again" in problems["authority issuing-disk"]
    assert "issuers.pem" in " ".join(problems)


def test_revoked_disabled_key_replaced(federation: Federation) -> None:
    federation.converge()
    key_file = federation.directory / "keys" / federation.document["name"]
    Path(f"{key_file / 'issuing-disk.pem'}.disabled").touch()
    federation.pkifed("revoke", "issuing-disk", "--reason", "keyCompromise", "--yes")

    results = federation.converge()

    assert failures(results) == []
    assert results[-1].plan.empty
    assert [k.generation for k in key_records(federation, "issuing-disk")] == [1, 2]


# --- CRL numbers ------------------------------------------------------------------


def test_clock_step_back(federation: Federation) -> None:
    federation.converge()
    federation.now += datetime.timedelta(days=5)
    federation.converge()
    before = federation.crl("out")
    # The clock steps back an hour, and a revocation forces a new CRL at once.
    federation.now -= datetime.timedelta(hours=1)
    federation.pkifed("revoke", "issuing-disk", "--reason", "keyCompromise", "--yes")
    results = federation.converge()
    after = federation.crl("out")

    assert failures(results) == []
    assert crl_number_of(before) == 2
    assert crl_number_of(after) == 3
    assert after.last_update_utc == before.last_update_utc
    assert after.next_update_utc == before.last_update_utc + CRL_VALIDITY
    assert len(after) == 1
    assert crl_numbers(federation) == [1, 2, 3]


def test_clock_going_back_every_call(federation: Federation) -> None:
    federation.converge()
    start = federation.now + datetime.timedelta(days=5)
    calls = iter(range(1000))
    # Every reading of the clock is an hour earlier than the one before.
    federation.clock = lambda: start - datetime.timedelta(hours=next(calls))
    for _ in range(3):
        federation.pkifed(
            "revoke", "issuing-disk", "--reason", "keyCompromise", "--yes"
        )
        federation.converge()
    crls = [x509.load_der_x509_crl(record) for record in _crl_ders(federation)]
    numbers = [crl_number_of(crl) for crl in crls]
    this_updates = [crl.last_update_utc for crl in crls]

    assert numbers == sorted(set(numbers))
    assert len(numbers) >= 4
    assert this_updates == sorted(this_updates)
    assert crl_number_of(federation.crl("out")) == numbers[-1]


def _crl_ders(federation: Federation) -> list[bytes]:
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with store.transaction() as session:
            return list(session.scalars(select(CrlRecord.der).order_by(CrlRecord.id)))
    finally:
        store.close()


def test_replicas_never_repeat_numbers(federation: Federation, store_url: str) -> None:
    federation.document["state"] = store_url
    federation.converge()
    federation.now += datetime.timedelta(days=5)
    federation.save()
    config = load_config(federation.path)
    stores = [Store(store_url), Store(store_url)]
    try:
        with Runtime(config) as first, Runtime(config) as second:
            replicas = [
                Reconciler(config, store, runtime, clock=lambda: federation.now)
                for store, runtime in zip(stores, (first, second), strict=True)
            ]
            # Both replicas see the stale CRL before either signs, then sign
            # at the same time on their own connections.
            plans = [replica.plan() for replica in replicas]
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = list(
                    pool.map(
                        lambda pair: pair[0].apply(pair[1]),
                        zip(replicas, plans, strict=True),
                    )
                )
    finally:
        for store in stores:
            store.close()
    signed = [
        outcome
        for result in results
        for outcome in result.outcomes
        if outcome.action.kind is ActionKind.SIGN_CRL
    ]
    numbers = crl_numbers(federation)
    crls = [x509.load_der_x509_crl(der) for der in _crl_ders(federation)]
    federation.converge()

    assert [o.outcome for o in signed] == ["done", "done"]
    assert sorted(numbers) == [1, 2, 3]
    assert [crl_number_of(crl) for crl in crls] == numbers
    assert crl_number_of(federation.crl("out")) == 3
    assert crl_number_of(federation.crl("mirror")) == 3


# --- reports ----------------------------------------------------------------------


def test_inventory_reports_crl_and_revocation(federation: Federation) -> None:
    federation.converge()
    old = federation.certificate("issuing-gcp")
    federation.pkifed("revoke", "issuing-gcp", "--reason", "keyCompromise", "--yes")
    config = load_config(federation.path)

    def inventory_at(now: datetime.datetime) -> Any:
        store = Store(config.state_url)
        try:
            return build_inventory(config, store, now)
        finally:
            store.close()

    pending = inventory_at(federation.now).authority("issuing-gcp")
    federation.converge()
    current = inventory_at(federation.now)
    root = current.authority("root")
    stale = inventory_at(federation.now + datetime.timedelta(days=5))
    expired = inventory_at(federation.now + datetime.timedelta(days=8))
    findings = {
        label: [
            f.message
            for f in evaluate(inventory, config.model, moment).findings
            if f.rule == "crl_freshness"
        ]
        for label, inventory, moment in (
            ("current", current, federation.now),
            ("stale", stale, federation.now + datetime.timedelta(days=5)),
            ("expired", expired, federation.now + datetime.timedelta(days=8)),
        )
    }

    assert [r.replaced for r in pending.revocations] == [False]
    assert pending.revocations[0].serial == f"{old.serial_number:x}"
    assert pending.revocations[0].reason == "keyCompromise"
    assert pending.revocations[0].issuer == "root"
    assert [r.replaced for r in current.authority("issuing-gcp").revocations] == [True]
    assert root.crl.required
    assert root.crl.state == "current"
    assert root.crl.number == 2
    assert root.crl.entries == 1
    assert sorted(root.crl.targets) == ["mirror", "out"]
    assert root.crl.location.endswith("root.crl")
    assert not current.authority("issuing-gcp").crl.required
    assert stale.authority("root").crl.state == "stale"
    assert expired.authority("root").crl.state == "expired"
    assert findings["current"] == []
    assert len(findings["stale"]) == 1
    assert "past two thirds" in findings["stale"][0]
    assert len(findings["expired"]) == 1
    assert "expired" in findings["expired"][0]


def test_revoke_audited(federation: Federation) -> None:
    from pkifed.federation.audit import AuditLog

    federation.converge()
    federation.pkifed("revoke", "issuing-disk", "--reason", "superseded", "--yes")
    with federation.opened() as (store, _):
        entries = [e for e in AuditLog(store).entries() if e.kind == "revoke"]
        verified = AuditLog(store).verify()

    assert len(entries) == 1
    assert entries[0].subject == "authority issuing-disk"
    assert entries[0].reason == "superseded"
    assert entries[0].actor.startswith("cli:")
    assert verified.ok

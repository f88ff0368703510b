"""The reconciler on real files: convergence, idempotence, drift and key faults.

These tests use the local keystore and the file target, so they run anywhere;
the SoftHSM2 path is covered end to end in test_cli.py. Each test runs with its
state store on SQLite and on PostgreSQL. The PostgreSQL case is skipped when
the server is unreachable.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from pkifed.config.loader import load_config
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.algorithms import KeyAlgorithm
from pkifed.sync.observe import read_snapshot
from pkifed.sync.plan import ActionKind, Plan
from pkifed.sync.reconcile import Reconciler, utc_now

PASSPHRASE = "reconcile-test-passphrase"


def federation_document() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "recon",
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_RECONCILE_PASSPHRASE}",
            }
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p384",
                "subject": "CN=Reconcile Root,O=Example",
                "validity": "20y",
                "path_length": 1,
            },
            "issuing": {
                "provider": "disk",
                "parent": "root",
                "key": "ec-p256",
                "subject": "CN=Reconcile Issuing,O=Example",
                "validity": "5y",
                "renew_before": "1y",
                "path_length": 0,
                "name_constraints": {"permitted": ["dns:example.com"]},
                "publish": ["out"],
            },
        },
        "targets": {"out": {"type": "file", "path": "out"}},
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out"]}},
    }


@dataclass
class Federation:
    """A federation file in a temporary directory, reloaded for every pass."""

    directory: Path
    document: dict[str, Any]
    now: datetime.datetime

    @property
    def path(self) -> Path:
        return self.directory / "federation.yaml"

    def save(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document), encoding="utf-8")

    def run(self, apply: bool) -> tuple[Plan, list[str]]:
        """Plan, and apply when asked; return the plan and each action's outcome."""
        self.save()
        config = load_config(self.path)
        store = Store(config.state_url)
        store.initialise()
        outcomes: list[str] = []
        try:
            with Runtime(config) as runtime:
                reconciler = Reconciler(config, store, runtime, clock=lambda: self.now)
                plan = reconciler.plan()
                if apply:
                    result = reconciler.apply(plan)
                    outcomes = [o.outcome for o in result.outcomes]
        finally:
            store.close()
        return plan, outcomes

    def counts(self) -> dict[str, int]:
        config = load_config(self.path)
        store = Store(config.state_url)
        try:
            return store.count_rows()
        finally:
            store.close()


@pytest.fixture
def federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str
) -> Federation:
    """The federation with its state on SQLite, then on PostgreSQL."""
    monkeypatch.setenv("PKIFED_RECONCILE_PASSPHRASE", PASSPHRASE)
    document = federation_document()
    document["state"] = store_url
    return Federation(tmp_path, document, utc_now())


def kinds(plan: Plan) -> list[str]:
    return [str(action.kind) for action in plan.actions]


def test_apply_converges(federation: Federation) -> None:
    plan, outcomes = federation.run(apply=True)
    second, _ = federation.run(apply=False)

    assert kinds(plan).count("create-key") == 2
    assert kinds(plan).count("issue-certificate") == 2
    assert kinds(plan).count("publish") == 3
    assert set(outcomes) == {"done"}
    assert second.empty
    assert second.problems == ()


def test_second_apply_writes_nothing(federation: Federation) -> None:
    federation.run(apply=True)
    before = federation.counts()
    published = {
        p: p.stat().st_mtime_ns for p in (federation.directory / "out").iterdir()
    }
    keys = {p: p.stat().st_mtime_ns for p in (federation.directory / "keys").rglob("*")}

    plan, outcomes = federation.run(apply=True)

    assert plan.empty
    assert outcomes == []
    assert federation.counts() == before
    assert {
        p: p.stat().st_mtime_ns for p in (federation.directory / "out").iterdir()
    } == (published)
    assert {
        p: p.stat().st_mtime_ns for p in (federation.directory / "keys").rglob("*")
    } == (keys)


def load_pem_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_chain_verifies_with_pyca(federation: Federation) -> None:
    federation.run(apply=True)
    out = federation.directory / "out"
    roots = load_pem_chain(out / "trust.pem")
    chain = load_pem_chain(out / "issuing-chain.pem")
    issuing = chain[0]

    # A leaf signed with the issuing CA's key in the keystore, verified by
    # pyca's path builder against the published bundle, name constraints included.
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        provider = runtime.provider("disk")
        key_info = provider.find_key("issuing")
        assert key_info is not None
        signer = provider.private_key(key_info.uri)
        leaf = _leaf(issuing, signer, federation.now, "www.example.com")

    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(federation.now)
        .build_server_verifier(x509.DNSName("www.example.com"))
    )
    built = verifier.verify(leaf, [issuing])

    assert built[-1] == roots[0]
    assert [c.subject for c in chain] == [issuing.subject, roots[0].subject]


def _leaf(
    issuer: x509.Certificate, signer: Any, now: datetime.datetime, dns_name: str
) -> x509.Certificate:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.extensions.get_extension_for_class(
                    x509.SubjectKeyIdentifier
                ).value
            ),
            False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
        .sign(signer, hashes.SHA256())
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_chain_verifies_with_openssl(federation: Federation) -> None:
    federation.run(apply=True)
    out = federation.directory / "out"
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(out / "trust.pem"),
            str(out / "issuing.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_record_key_after_crash(federation: Federation) -> None:
    # An earlier run created the root's key and died before recording it.
    federation.save()
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        created = runtime.provider("disk").find_or_create_key(
            "root", KeyAlgorithm.EC_P384
        )

    plan, _ = federation.run(apply=True)
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        keys = runtime.provider("disk").list_keys()

    assert kinds(plan)[0] == "record-key"
    assert [k.uri for k in keys if k.name == "root"] == [created.uri]
    assert len(keys) == 2


def test_drift_repaired(federation: Federation) -> None:
    federation.run(apply=True)
    bundle = federation.directory / "out" / "trust.pem"
    original = bundle.read_bytes()
    bundle.write_bytes(original + b"tampered\n")

    plan, outcomes = federation.run(apply=True)

    assert [(a.kind, a.object_name) for a in plan.actions] == [
        (ActionKind.PUBLISH, "trust.pem")
    ]
    assert plan.actions[0].reason.startswith("drifted")
    assert outcomes == ["done"]
    assert bundle.read_bytes() == original


def test_missing_object_republished(federation: Federation) -> None:
    federation.run(apply=True)
    (federation.directory / "out" / "issuing-chain.pem").unlink()

    plan, _ = federation.run(apply=True)

    assert [a.reason for a in plan.actions] == ["missing"]
    assert (federation.directory / "out" / "issuing-chain.pem").exists()


def test_disabled_key_reported_not_replaced(federation: Federation) -> None:
    federation.run(apply=True)
    key_file = federation.directory / "keys" / "recon" / "issuing.pem"
    Path(f"{key_file}.disabled").touch()

    plan, outcomes = federation.run(apply=True)

    assert plan.actions == ()
    assert outcomes == []
    assert len(plan.problems) == 1
    assert "disabled" in plan.problems[0].message
    assert plan.problems[0].object == "authority issuing"


def test_deleted_key_reported_not_replaced(federation: Federation) -> None:
    federation.run(apply=True)
    (federation.directory / "keys" / "recon" / "root.pem").unlink()

    plan, _ = federation.run(apply=True)

    assert plan.actions == ()
    assert "no longer exists" in plan.problems[0].message
    assert not (federation.directory / "keys" / "recon" / "root.pem").exists()


def test_profile_change_reissues(federation: Federation) -> None:
    federation.run(apply=True)
    federation.document["authorities"]["issuing"]["subject"] = "CN=Renamed,O=Example"

    plan, outcomes = federation.run(apply=True)

    assert kinds(plan) == ["issue-certificate", "publish", "publish"]
    assert plan.actions[0].reason.startswith("profile changed: subject is")
    assert set(outcomes) == {"done"}


def test_renewal_window_reissues(federation: Federation) -> None:
    federation.run(apply=True)
    federation.now += datetime.timedelta(days=365 * 4 + 10)

    plan, _ = federation.run(apply=True)
    third, _ = federation.run(apply=False)

    assert plan.actions[0].authority == "issuing"
    assert "within renew_before" in plan.actions[0].reason
    assert third.empty


def test_algorithm_change_rekeys(federation: Federation) -> None:
    federation.run(apply=True)
    federation.document["authorities"]["issuing"]["key"] = "ec-p384"

    plan, outcomes = federation.run(apply=True)
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        names = sorted(k.name or "" for k in runtime.provider("disk").list_keys())

    assert kinds(plan)[:2] == ["create-key", "issue-certificate"]
    assert "algorithm ec-p256 -> ec-p384" in plan.actions[0].reason
    assert set(outcomes) == {"done"}
    assert names == ["issuing", "issuing-g2", "root"]


def test_root_rotation_ordered(federation: Federation) -> None:
    federation.run(apply=True)
    old_root = x509.load_pem_x509_certificate(
        (federation.directory / "out" / "trust.pem").read_bytes()
    )
    federation.document["authorities"]["root"]["key"] = "ec-p521"

    # Pass 1 issues the new root and publishes it beside the old one. The
    # issuing CA waits, because relying parties do not trust the new root yet.
    first, outcomes = federation.run(apply=True)
    bundle = load_pem_chain(federation.directory / "out" / "trust.pem")
    issued_first = [
        a.authority for a in first.actions if a.kind is ActionKind.ISSUE_CERTIFICATE
    ]

    assert issued_first == ["root"]
    assert [w.object for w in first.waiting] == ["authority issuing"]
    assert set(outcomes) == {"done"}
    assert old_root in bundle
    assert len(bundle) == 2

    # Pass 2: every bundle serves the new root, so the issuing CA moves.
    second, outcomes = federation.run(apply=True)
    issued_second = [
        a.authority for a in second.actions if a.kind is ActionKind.ISSUE_CERTIFICATE
    ]
    chain = load_pem_chain(federation.directory / "out" / "issuing-chain.pem")

    assert issued_second == ["issuing"]
    assert set(outcomes) == {"done"}
    assert chain[1] != old_root
    chain[0].verify_directly_issued_by(chain[1])

    # The old root stays while the issuing CA's earlier certificate, which it
    # signed, is unexpired.
    third, _ = federation.run(apply=False)
    bundle = load_pem_chain(federation.directory / "out" / "trust.pem")

    assert third.empty
    assert old_root in bundle


def test_old_root_dropped_after_expiry(federation: Federation) -> None:
    federation.run(apply=True)
    old_root = x509.load_pem_x509_certificate(
        (federation.directory / "out" / "trust.pem").read_bytes()
    )
    federation.document["authorities"]["root"]["key"] = "ec-p521"
    federation.run(apply=True)
    federation.run(apply=True)
    # Past the old issuing certificate's expiry, nothing chains to the old root.
    federation.now += datetime.timedelta(days=365 * 5 + 30)

    plan, _ = federation.run(apply=True)
    bundle = load_pem_chain(federation.directory / "out" / "trust.pem")

    assert any(a.object_name == "trust.pem" for a in plan.actions)
    assert old_root not in bundle
    assert len(bundle) == 1


def test_converge_runs_rotation_passes(federation: Federation) -> None:
    federation.run(apply=True)
    federation.document["authorities"]["root"]["key"] = "ec-p521"
    federation.save()
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with Runtime(config) as runtime:
            reconciler = Reconciler(
                config, store, runtime, clock=lambda: federation.now
            )
            results = reconciler.converge()
    finally:
        store.close()

    assert [bool(r.outcomes) for r in results] == [True, True, False]
    assert results[-1].plan.empty


def test_rekey_on_renewal(federation: Federation) -> None:
    federation.document["authorities"]["issuing"]["rekey"] = True
    federation.run(apply=True)
    federation.now += datetime.timedelta(days=365 * 4 + 10)

    plan, outcomes = federation.run(apply=True)
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        names = sorted(k.name or "" for k in runtime.provider("disk").list_keys())

    assert kinds(plan)[:2] == ["create-key", "issue-certificate"]
    assert plan.actions[0].reason.startswith("rekey on renewal")
    assert set(outcomes) == {"done"}
    assert names == ["issuing", "issuing-g2", "root"]


def test_foreign_certificate_removed(federation: Federation) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    federation.run(apply=True)
    bundle = federation.directory / "out" / "trust.pem"
    original = bundle.read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intruder Root")])
    intruder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(federation.now)
        .not_valid_after(federation.now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    bundle.write_bytes(original + intruder.public_bytes(serialization.Encoding.PEM))

    plan, outcomes = federation.run(apply=True)

    assert len(plan.actions) == 1
    assert plan.actions[0].reason.startswith("foreign certificate present")
    assert "CN=Intruder Root" in plan.actions[0].reason
    assert outcomes == ["done"]
    assert bundle.read_bytes() == original


def test_undeclared_object_retired(federation: Federation) -> None:
    federation.run(apply=True)
    federation.document["authorities"]["issuing"]["publish"] = []

    plan, outcomes = federation.run(apply=True)
    again, _ = federation.run(apply=False)

    assert kinds(plan) == ["retire", "retire"]
    assert set(outcomes) == {"done"}
    assert not (federation.directory / "out" / "issuing.pem").exists()
    assert (federation.directory / "out" / "trust.pem").exists()
    assert again.empty


def test_plan_json_format(federation: Federation) -> None:
    import json

    plan, _ = federation.run(apply=False)
    document = json.loads(plan.to_json())

    assert document["format_version"] == 1
    assert document["federation"] == "recon"
    assert document["generated_at"].endswith("Z")
    assert document["actions"][0] == {
        "kind": "create-key",
        "object": "authority root",
        "reason": "missing; creating an ec-p384 key in provider disk",
        "authority": "root",
        "target": None,
        "object_name": None,
    }


def test_bundle_identical_on_every_target(federation: Federation) -> None:
    federation.document["targets"]["mirror"] = {"type": "file", "path": "mirror"}
    federation.document["bundles"]["trust"]["targets"] = ["out", "mirror"]
    federation.document["bundles"]["trust"]["authorities"] = ["root", "issuing"]
    federation.run(apply=True)
    first = (federation.directory / "out" / "trust.pem").read_bytes()
    second = (federation.directory / "mirror" / "trust.pem").read_bytes()

    assert first == second
    assert len(x509.load_pem_x509_certificates(first)) == 2


def test_missing_adopted_key_blocked(federation: Federation) -> None:
    missing = federation.directory / "keys" / "elsewhere.pem"
    federation.document["authorities"]["root"]["key"] = {
        "algorithm": "ec-p384",
        "uri": f"file:{missing}",
    }

    plan, outcomes = federation.run(apply=True)

    assert [p.object for p in plan.problems][:1] == ["authority root"]
    assert "not found" in plan.problems[0].message or "No such file" in (
        plan.problems[0].message
    )
    assert not any(a.authority == "root" for a in plan.actions)
    assert outcomes == []


def test_swapped_key_detected(federation: Federation) -> None:
    federation.run(apply=True)
    keys = federation.directory / "keys" / "recon"
    # Another key of the same algorithm, under the same passphrase, replaces
    # the root's key file out of band.
    config = load_config(federation.path)
    with Runtime(config) as runtime:
        runtime.provider("disk").find_or_create_key("impostor", KeyAlgorithm.EC_P384)
    (keys / "impostor.pem").replace(keys / "root.pem")
    federation.document["authorities"]["issuing"]["subject"] = "CN=Changed,O=Example"

    before = (federation.directory / "out" / "issuing.pem").read_bytes()
    plan, outcomes = federation.run(apply=True)
    again, _ = federation.run(apply=False)

    assert kinds(plan)[0] == "issue-certificate"
    assert outcomes[0] == "failed"
    assert kinds(again) == kinds(plan)
    assert (federation.directory / "out" / "issuing.pem").read_bytes() == before


def test_bundle_formats_published(federation: Federation) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs7

    from pkifed.federation.formats import decode_spiffe_bundle

    federation.document["bundles"] = {
        "trust-pem": {"authorities": ["root"], "targets": ["out"]},
        "trust-der": {"authorities": ["root"], "targets": ["out"], "format": "der"},
        "trust-p7": {
            "authorities": ["root", "issuing"],
            "targets": ["out"],
            "format": "pkcs7",
        },
        "trust-spiffe": {
            "authorities": ["root"],
            "targets": ["out"],
            "format": "spiffe",
            "refresh_hint": "1h",
        },
    }
    federation.run(apply=True)
    out = federation.directory / "out"
    root = load_pem_chain(out / "trust-pem.pem")[0]
    spiffe = (out / "trust-spiffe.json").read_bytes()
    again, _ = federation.run(apply=False)

    assert x509.load_der_x509_certificate((out / "trust-der.der").read_bytes()) == root
    assert (
        len(pkcs7.load_der_pkcs7_certificates((out / "trust-p7.p7b").read_bytes())) == 2
    )
    assert decode_spiffe_bundle(spiffe) == [root]
    assert b'"spiffe_refresh_hint":3600' in spiffe.replace(b" ", b"")
    assert again.empty


def test_spiffe_sequence_grows_on_rotation(federation: Federation) -> None:
    import json

    federation.document["bundles"]["trust"]["format"] = "spiffe"
    federation.run(apply=True)
    path = federation.directory / "out" / "trust.json"
    first = json.loads(path.read_bytes())["spiffe_sequence"]
    federation.document["authorities"]["root"]["key"] = "ec-p521"
    federation.now += datetime.timedelta(seconds=30)
    federation.run(apply=True)
    second = json.loads(path.read_bytes())["spiffe_sequence"]

    assert second > first
    assert len(json.loads(path.read_bytes())["keys"]) == 2


def test_object_status_recorded(federation: Federation) -> None:
    federation.run(apply=True)
    (federation.directory / "keys" / "recon" / "issuing.pem.disabled").touch()
    federation.document["authorities"]["issuing"]["subject"] = "CN=Blocked,O=Example"
    federation.run(apply=True)
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with store.transaction() as session:
            statuses = {s.object: s for s in store.statuses(session)}
    finally:
        store.close()

    assert statuses["authority/root"].outcome == "ok"
    assert statuses["target/out/trust.pem"].outcome == "ok"
    assert statuses["authority/issuing"].outcome == "blocked"
    assert "disabled" in statuses["authority/issuing"].message
    assert statuses["authority/root"].last_attempt_at.tzinfo is not None


def test_cross_signed_rotation(federation: Federation) -> None:
    federation.document["authorities"]["root"]["cross_sign"] = True
    federation.document["authorities"]["root"]["publish"] = ["out"]
    federation.run(apply=True)
    out = federation.directory / "out"
    old_root = (out / "root.pem").read_bytes()
    (federation.directory / "old-root.pem").write_bytes(old_root)
    federation.document["authorities"]["root"]["key"] = "ec-p521"

    for _ in range(3):
        federation.run(apply=True)
    final, _ = federation.run(apply=False)
    cross = x509.load_pem_x509_certificates((out / "root-cross.pem").read_bytes())
    new_root = x509.load_pem_x509_certificate((out / "root.pem").read_bytes())
    # A relying party that trusts only the old root accepts the issuing CA
    # issued under the new key, through the cross certificate.
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            "old-root.pem",
            "-untrusted",
            "out/root-cross.pem",
            "out/issuing.pem",
        ],
        capture_output=True,
        text=True,
        cwd=federation.directory,
        check=False,
    )

    assert final.empty
    assert len(cross) == 1
    assert cross[0].subject == new_root.subject
    assert cross[0].public_key() == new_root.public_key()
    assert cross[0].issuer == x509.load_pem_x509_certificate(old_root).subject
    assert result.returncode == 0, result.stdout + result.stderr


def test_cross_sign_roots_only(federation: Federation) -> None:
    from pkifed.errors import ConfigError

    federation.document["authorities"]["issuing"]["cross_sign"] = True
    federation.save()

    with pytest.raises(ConfigError, match=r"issuing\.cross_sign: applies to roots"):
        load_config(federation.path)


def test_child_validity_nested_after_rotation(federation: Federation) -> None:
    authorities = federation.document["authorities"]
    authorities["root"]["path_length"] = 2
    authorities["issuing"]["path_length"] = 1
    authorities["leaf-ca"] = {
        "provider": "disk",
        "parent": "issuing",
        "key": "ec-p256",
        "subject": "CN=Reconcile Leaf CA",
        "validity": "2y",
        "path_length": 0,
    }
    federation.run(apply=True)
    federation.now += datetime.timedelta(hours=1)
    authorities["root"]["key"] = "ec-p521"

    for _ in range(4):
        federation.run(apply=True)
    final, _ = federation.run(apply=False)
    config = load_config(federation.path)
    store = Store(config.state_url)
    try:
        with store.transaction() as session:
            snapshot = read_snapshot(session)
    finally:
        store.close()
    issuing = snapshot.current_certificate("issuing")
    leaf = snapshot.current_certificate("leaf-ca")

    assert final.empty
    assert issuing is not None
    assert leaf is not None
    assert leaf.certificate.not_valid_before_utc >= (
        issuing.certificate.not_valid_before_utc
    )
    assert leaf.authority_key_id == issuing.subject_key_id

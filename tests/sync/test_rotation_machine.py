"""A state machine over config changes, failures and clock steps.

Invariant: every published bundle contains the root certificate that anchors
each unexpired certificate the federation issued below that root, so no live
certificate is ever stranded by a rotation, a failed pass or time passing.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pkifed.config.loader import load_config
from pkifed.errors import ProviderTemporaryError
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.targets.base import PublishTarget, StoredObject
from pkifed.sync.observe import read_snapshot
from pkifed.sync.reconcile import Reconciler

PASSPHRASE = "state-machine-passphrase"
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
FAST_RETRY = {"attempts": 2, "base_delay": 0.001, "max_delay": 0.002}


class FailingTarget(PublishTarget):
    """Wraps a real target and fails every write, as an outage would."""

    type_name = "failing"

    def __init__(self, inner: PublishTarget) -> None:
        super().__init__(inner.name, inner.settings, inner.config_dir)
        self.inner = inner

    def read(self, object_name: str) -> StoredObject | None:
        return self.inner.read(object_name)

    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        raise ProviderTemporaryError(f"target {self.name}: injected outage")

    def delete(self, object_name: str, expected_version: str) -> None:
        raise ProviderTemporaryError(f"target {self.name}: injected outage")

    def list_objects(self) -> list[str]:
        return self.inner.list_objects()

    def location(self, object_name: str) -> str:
        return self.inner.location(object_name)


def document() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "machine",
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_MACHINE_PASSPHRASE}",
            }
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p384",
                "subject": "CN=Machine Root",
                "validity": "20y",
                "path_length": 1,
                "cross_sign": True,
            },
            "issuing": {
                "provider": "disk",
                "parent": "root",
                "key": "ec-p256",
                "subject": "CN=Machine Issuing",
                "validity": "2y",
                "renew_before": "180d",
                "path_length": 0,
                "publish": ["out", "mirror"],
            },
        },
        "targets": {
            "out": {"type": "file", "path": "out", "retry": FAST_RETRY},
            "mirror": {"type": "file", "path": "mirror", "retry": FAST_RETRY},
        },
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out", "mirror"]}},
    }


class RotationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="pkifed-machine-"))
        self.document = document()
        self.now = START
        self.published_once = False

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)

    def _run_pass(self, failing: str | None) -> None:
        path = self.directory / "federation.yaml"
        path.write_text(yaml.safe_dump(self.document), encoding="utf-8")
        config = load_config(path)
        store = Store(config.state_url)
        store.initialise()
        try:
            with Runtime(config) as runtime:
                if failing is not None:
                    real = runtime.target(failing)
                    runtime._targets[failing] = FailingTarget(real)
                reconciler = Reconciler(config, store, runtime, clock=lambda: self.now)
                reconciler.apply(reconciler.plan())
        finally:
            store.close()
        self.published_once = True

    @rule(failing=st.sampled_from([None, None, "out", "mirror"]))
    def apply_pass(self, failing: str | None) -> None:
        self._run_pass(failing)

    @rule()
    def rotate_root(self) -> None:
        root = self.document["authorities"]["root"]
        root["key"] = "ec-p521" if root["key"] == "ec-p384" else "ec-p384"

    @rule()
    def rotate_issuing(self) -> None:
        issuing = self.document["authorities"]["issuing"]
        issuing["key"] = "ec-p384" if issuing["key"] == "ec-p256" else "ec-p256"

    @rule(days=st.integers(min_value=0, max_value=400))
    def step_clock(self, days: int) -> None:
        self.now += datetime.timedelta(days=days)

    @invariant()
    def anchors_published(self) -> None:
        if not self.published_once:
            return
        path = self.directory / "federation.yaml"
        config = load_config(path)
        store = Store(config.state_url)
        try:
            with store.transaction() as session:
                snapshot = read_snapshot(session)
        finally:
            store.close()
        roots = {
            issued.subject_key_id: issued.certificate
            for issued in snapshot.history
            if issued.record.authority == "root"
        }
        live = [
            issued
            for issued in snapshot.history
            if issued.record.authority != "root" and issued.valid_at(self.now)
        ]
        for target in ("out", "mirror"):
            bundle_path = self.directory / target / "trust.pem"
            if not bundle_path.exists():
                continue
            bundle = x509.load_pem_x509_certificates(bundle_path.read_bytes())
            served = {
                _subject_key_id(certificate)
                for certificate in bundle
                if certificate.not_valid_after_utc > self.now
            }
            for issued in live:
                anchor = roots[issued.authority_key_id]
                if anchor.not_valid_after_utc <= self.now:
                    continue
                assert issued.authority_key_id in served, (
                    f"{target}/trust.pem lacks the anchor of "
                    f"{issued.certificate.subject.rfc4514_string()}"
                )


def _subject_key_id(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest


RotationMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("PKIFED_MACHINE_EXAMPLES", "20")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestRotationMachine(RotationMachine.TestCase):
    def setUp(self) -> None:
        os.environ.setdefault("PKIFED_MACHINE_PASSPHRASE", PASSPHRASE)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known bug: two root rotations while the target out fails leave an "
        "unexpired certificate whose root is missing from out/trust.pem"
    ),
)
def test_two_root_rotations_failing_target(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sequence the state machine above found; every step checks the
    # invariant, as the machine does.
    monkeypatch.setenv("PKIFED_MACHINE_PASSPHRASE", PASSPHRASE)
    machine = RotationMachine()
    steps = [
        lambda: machine.apply_pass(failing=None),
        lambda: machine.step_clock(days=314),
        machine.rotate_issuing,
        lambda: machine.apply_pass(failing=None),
        machine.rotate_issuing,
        machine.rotate_root,
        lambda: machine.apply_pass(failing="out"),
        lambda: machine.step_clock(days=0),
        machine.rotate_root,
        lambda: machine.apply_pass(failing="out"),
    ]
    try:
        machine.anchors_published()
        for step in steps:
            step()
            machine.anchors_published()
    finally:
        machine.teardown()

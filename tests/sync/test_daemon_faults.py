"""The daemon keeps a multi-provider federation converged while a KMS misbehaves.

A root on a local keystore certifies an intermediate whose key is in the Cloud
KMS fake, which in turn certifies an issuing CA on the keystore; everything is
published to two directories. The daemon runs on its scheduler (1 s interval)
while the test moves its clock forward so the issuing CA needs renewal, which
needs a signature from the KMS, and injects faults there: throttling that the
retries absorb, then an outage that fails a pass, then nothing. At the end the
federation must be converged, /metrics must agree with the audit log and with
the requests the fake received, and ``pkifed audit verify`` must catch an
entry changed behind its back.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from pkifed.config.loader import load_config
from pkifed.federation.audit import AuditLog
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from pkifed.sync.daemon import Daemon
from pkifed.sync.reconcile import Reconciler
from tests.harness.daemon import PASSPHRASE, environment, get, scrape, wait_for

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
SIGN_ATTEMPTS = 4
THROTTLED = 2
PASS_TIMEOUT = 15


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


def document(state_url: str, endpoint: str) -> dict[str, Any]:
    def authority(provider: str, parent: str | None, **fields: Any) -> dict[str, Any]:
        entry = {"provider": provider, "key": "ec-p256", **fields}
        if parent is not None:
            entry["parent"] = parent
        return entry

    return {
        "version": 1,
        "name": "faults",
        "state": state_url,
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_DAEMON_PASSPHRASE}",
            },
            "cloud": {
                "type": "gcp-kms",
                "project": "pkifed-test",
                "location": "global",
                "endpoint": endpoint,
                "retry": {
                    "attempts": SIGN_ATTEMPTS,
                    "base_delay": 0.01,
                    "max_delay": 0.02,
                },
            },
        },
        "authorities": {
            "root": authority("disk", None, subject="CN=Faults Root", validity="10y"),
            "intermediate": authority(
                "cloud",
                "root",
                subject="CN=Faults Intermediate",
                validity="5y",
                publish=["out"],
            ),
            "issuing": authority(
                "disk",
                "intermediate",
                subject="CN=Faults Issuing",
                validity="60d",
                renew_before="20d",
                publish=["out", "mirror"],
            ),
        },
        "targets": {
            "out": {"type": "file", "path": "out"},
            "mirror": {"type": "file", "path": "mirror"},
        },
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out", "mirror"]}},
        "schedule": {"interval": "1s"},
        "daemon": {"listen": "127.0.0.1:0", "lease_ttl": "10s"},
        "events": {
            "expiring_within": "25d",
            "sinks": {"log": {"type": "file", "path": "events.jsonl"}},
        },
    }


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[FakeCloudKms]:
    with FakeCloudKms() as service:
        yield service


def sign_requests(service: FakeCloudKms) -> int:
    return sum(1 for _, path in service.requests if path.endswith(":asymmetricSign"))


class Driver:
    """Changes the world between scheduled passes and waits for the next one."""

    def __init__(self, daemon: Daemon, clock: FakeClock) -> None:
        self.daemon = daemon
        self.clock = clock
        assert daemon.http is not None
        self.url = daemon.http.url

    def passes(self) -> float:
        samples = scrape(self.url)
        return sum(v for k, v in samples.items() if k.startswith("pkifed_passes_total"))

    def between_passes(self, days: float = 0, action: Any = None) -> None:
        """Move the clock and act while no pass runs, then wait for a new pass."""
        # Holding the pass lock keeps the scheduled pass from starting, so the
        # next pass to finish sees every change made here.
        with self.daemon._pass_lock:
            self.clock.now += datetime.timedelta(days=days)
            # The lease expires by the same clock, so a jump of days would
            # make the next pass a follower's until the lease thread renews.
            self.daemon.elector.tick()
            if action is not None:
                action()
            seen = self.passes()
        assert wait_for(lambda: self.passes() > seen, PASS_TIMEOUT)

    def last_pass_ok(self) -> bool:
        return get(f"{self.url}/readyz")[0] == 200


def test_daemon_survives_kms_faults(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cloud_kms: FakeCloudKms,
    store_url: str,
) -> None:
    monkeypatch.setenv("PKIFED_DAEMON_PASSPHRASE", PASSPHRASE)
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(
        yaml.safe_dump(document(store_url, cloud_kms.endpoint)), encoding="utf-8"
    )
    clock = FakeClock()
    # The fake serves the whole module, so only this test's requests count.
    signs_before = sign_requests(cloud_kms)
    daemon = Daemon(load_config(config_path), clock=clock, replica_id="replica-a")
    daemon.start()
    try:
        driver = Driver(daemon, clock)
        assert wait_for(driver.last_pass_ok, PASS_TIMEOUT)
        converged_at_start = driver.last_pass_ok()

        # Throttling: the retries absorb it and the renewal goes through.
        driver.between_passes(days=45, action=lambda: cloud_kms.throttle(THROTTLED))
        ready_after_throttling = driver.last_pass_ok()

        # An outage: every attempt of one renewal fails, so the pass fails.
        driver.between_passes(days=45, action=lambda: cloud_kms.fail(SIGN_ATTEMPTS))
        ready_during_outage = driver.last_pass_ok()

        # A changed file in one target is repaired on the way.
        mirror_trust = tmp_path / "mirror" / "trust.pem"
        driver.between_passes(action=lambda: mirror_trust.write_text("changed"))
        driver.between_passes(action=cloud_kms.clear)
        ready_after_clear = driver.last_pass_ok()

        samples = scrape(driver.url)
        assert daemon.flush_events()
    finally:
        daemon.stop()

    assert converged_at_start
    assert ready_after_throttling
    assert not ready_during_outage
    assert ready_after_clear

    # The federation is converged: a fresh plan at the final time is empty.
    config = load_config(config_path)
    store = Store(config.state_url)
    try:
        with Runtime(config) as runtime:
            plan = Reconciler(config, store, runtime, clock=clock).plan()
        entries = list(AuditLog(store).entries())
        with store.transaction() as session:
            issuing = store.current_certificate(session, "issuing")
    finally:
        store.close()
    assert plan.actions == ()
    assert plan.problems == ()
    assert issuing is not None

    # Action counters equal the audit log, entry for entry.
    audited = Counter((entry.kind, entry.outcome) for entry in entries)
    counted = {
        key: value
        for key, value in samples.items()
        if key.startswith("pkifed_actions_total")
    }
    assert counted == {
        f'pkifed_actions_total{{kind="{kind}",outcome="{outcome}"}}': float(n)
        for (kind, outcome), n in audited.items()
    }
    assert audited[("issue-certificate", "failed")] == 1
    assert audited[("issue-certificate", "done")] == 3 + 2
    drifted = sum(1 for e in entries if e.reason.startswith("drifted"))
    assert drifted == 1
    assert samples['pkifed_drift_found_total{cause="drifted",target="mirror"}'] == 1

    # Provider metrics equal what the KMS saw: every signing attempt is
    # timed, and exactly the injected faults are counted as errors.
    signs = sign_requests(cloud_kms) - signs_before
    sign_key = 'operation="sign",provider="cloud"'
    timed = samples[f"pkifed_provider_call_duration_seconds_count{{{sign_key}}}"]
    assert timed == signs
    errors = f'pkifed_provider_call_errors_total{{error="temporary",{sign_key}}}'
    assert samples[errors] == THROTTLED + SIGN_ATTEMPTS

    # The expiry gauge is the renewed certificate's, at the final time.
    expected_days = (issuing.not_after - clock.now).total_seconds() / 86400
    expiry = samples['pkifed_authority_expiry_days{authority="issuing"}']
    assert expiry == pytest.approx(expected_days, abs=0.01)
    assert samples['pkifed_passes_total{result="failed",role="leader"}'] >= 1

    # Events: three issued, two renewals, the outage, the drift, the warning.
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    kinds = Counter(json.loads(line)["type"] for line in lines)
    assert kinds["issued"] == 3
    assert kinds["renewed"] == 2
    assert kinds["failed"] == audited[("issue-certificate", "failed")]
    assert kinds["drift-repaired"] == 1
    assert kinds["expiring-soon"] == 1

    # The audit chain is intact, and the command line catches a changed entry.
    verified = run_pkifed(tmp_path, "audit", "verify", "-c", "federation.yaml")
    target = len(entries) // 2
    tamper_store = Store(config.state_url)
    with tamper_store.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_log SET outcome = 'tampered' WHERE seq = :seq"),
            {"seq": target},
        )
    tamper_store.close()
    tampered = run_pkifed(tmp_path, "audit", "verify", "-c", "federation.yaml")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(entries)} entries intact" in verified.stdout
    assert tampered.returncode == 1
    assert f"entry {target} is invalid" in tampered.stderr


def run_pkifed(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkifed", *arguments],
        capture_output=True,
        text=True,
        cwd=directory,
        env=environment(),
        check=False,
        timeout=60,
    )

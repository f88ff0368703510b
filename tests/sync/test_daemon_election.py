"""Leader election between real daemon processes sharing one state store.

Each case starts ``pkifed daemon`` subprocesses with a 2 s lease and a 1 s
interval, then kills or suspends the leader: SIGKILL must hand the lease to
another replica within the TTL, and a leader suspended with SIGSTOP past its
TTL must, once continued, record nothing with its stale fencing token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGSTOP
from typing import Any

import pytest
import yaml

from pkifed.federation.audit import AuditLog
from pkifed.federation.store import Store
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from tests.harness.daemon import DaemonProcess, federation_document, wait_for

TTL = 2.0
# The lease is renewed every third of the TTL, and the test sees the new leader
# by polling /metrics. A takeover may therefore take the TTL plus one renewal
# period plus a poll interval. Process start-up is not part of it.
TAKEOVER_LIMIT = TTL + TTL / 3 + 1.0


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def write_config(directory: Path, document: dict[str, Any]) -> None:
    (directory / "federation.yaml").write_text(
        yaml.safe_dump(document), encoding="utf-8"
    )


def leaders(daemons: list[DaemonProcess]) -> list[DaemonProcess]:
    return [d for d in daemons if d.process.poll() is None and d.is_leader()]


def test_leader_killed_taken_over(
    store_url: str, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    write_config(tmp_path, federation_document(store_url))
    for name in ("replica-a", "replica-b", "replica-c"):
        daemons.append(DaemonProcess(tmp_path, name))
    assert wait_for(lambda: len(leaders(daemons)) == 1, 30), [d.log for d in daemons]
    first = leaders(daemons)[0]
    first_token = first.metrics()["pkifed_lease_token"]
    assert wait_for(lambda: (tmp_path / "out" / "trust.pem").exists(), 30)

    first.process.send_signal(SIGKILL)
    killed_at = time.monotonic()
    taken = wait_for(lambda: len(leaders(daemons)) == 1, 10, interval=0.05)
    elapsed = time.monotonic() - killed_at

    assert taken
    successor = leaders(daemons)[0]
    assert successor is not first
    assert elapsed <= TAKEOVER_LIMIT
    assert successor.metrics()["pkifed_lease_token"] == first_token + 1
    leader_passes = 'pkifed_passes_total{result="ok",role="leader"}'
    assert wait_for(lambda: successor.metrics().get(leader_passes, 0) >= 1, 5)


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[FakeCloudKms]:
    with FakeCloudKms() as service:
        yield service


def test_stalled_leader_fenced(
    store_url: str,
    tmp_path: Path,
    daemons: list[DaemonProcess],
    cloud_kms: FakeCloudKms,
) -> None:
    """A leader stopped while signing wakes after a takeover and records nothing."""
    document = federation_document(store_url)
    # The fake is shared by the module, so each case gets its own key names.
    document["name"] = f"stall-{uuid.uuid4().hex[:12]}"
    document["providers"]["cloud"] = {
        "type": "gcp-kms",
        "project": "pkifed-test",
        "location": "global",
        "endpoint": cloud_kms.endpoint,
        "timeout": 30,
        "retry": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1},
    }
    document["authorities"]["root"]["provider"] = "cloud"
    write_config(tmp_path, document)
    # The root's self-signature waits in the fake, so the leader is stopped
    # in the middle of a pass, holding the run lock and an unrecorded result.
    cloud_kms.delay(4.0)
    signed_before = sum(1 for _, path in cloud_kms.requests if path.endswith("Sign"))
    stalled = DaemonProcess(tmp_path, "replica-a")
    daemons.append(stalled)
    signing = wait_for(
        lambda: (
            sum(1 for _, p in cloud_kms.requests if p.endswith("Sign")) > signed_before
        ),
        45,
    )
    assert signing, stalled.log
    stalled.process.send_signal(SIGSTOP)
    cloud_kms.delay(0)

    successor = DaemonProcess(tmp_path, "replica-b")
    daemons.append(successor)
    assert wait_for(successor.is_leader, 30), successor.log
    stalled.process.send_signal(SIGCONT)
    assert wait_for(lambda: "is stale" in stalled.log, 30), stalled.log
    issued = wait_for(lambda: (tmp_path / "out" / "trust.pem").exists(), 30)

    store = Store(store_url)
    try:
        entries = list(AuditLog(store).entries())
        verified = AuditLog(store).verify()
        with store.engine.connect() as connection:
            root_certificates = connection.exec_driver_sql(
                "SELECT count(*) FROM certificates WHERE authority = 'root'"
            ).scalar()
    finally:
        store.close()
    stalled_entries = [e for e in entries if e.actor == "replica-a"]
    successor_entries = [e for e in entries if e.actor == "replica-b"]
    assert issued, successor.log
    assert verified.ok
    assert successor_entries
    successor_token = successor_entries[0].fencing_token
    assert successor_token is not None
    assert all(e.fencing_token < successor_token for e in stalled_entries)  # type: ignore[operator]
    first_successor_seq = successor_entries[0].seq
    assert all(e.seq < first_successor_seq for e in stalled_entries)
    assert "issue-certificate" not in {e.kind for e in stalled_entries}
    assert "issue-certificate failed" in stalled.log
    assert root_certificates == 1
    assert stalled.is_leader() is False

"""pkifed daemon in this process with a fake clock, and its command line.

The in-process cases call :meth:`Daemon.run_pass` directly instead of waiting
for the scheduler, and move a fake clock to test readiness and leases. The
command-line cases run the daemon as a subprocess to check signals, --once and
JSON logs.
"""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pkifed.config.daemon import DaemonConfig, ScheduleConfig, cron_trigger
from pkifed.config.loader import load_config
from pkifed.federation.audit import AuditLog
from pkifed.federation.store import Store
from pkifed.sync.daemon import Daemon, _overdue_after
from tests.harness.daemon import (
    PASSPHRASE,
    DaemonProcess,
    environment,
    federation_document,
    get,
    scrape,
    wait_for,
)

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


class FakeClock:
    def __init__(self, now: datetime.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


def write_config(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "federation.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str
) -> Path:
    monkeypatch.setenv("PKIFED_DAEMON_PASSPHRASE", PASSPHRASE)
    document = federation_document(
        store_url,
        events={"sinks": {"log": {"type": "file", "path": "events.jsonl"}}},
    )
    return write_config(tmp_path, document)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def daemon(config_path: Path, clock: FakeClock) -> Iterator[Daemon]:
    runner = Daemon(load_config(config_path), clock=clock, replica_id="replica-a")
    runner.start(schedule=False)
    yield runner
    runner.stop()


def audit_entries(daemon: Daemon) -> list[Any]:
    return list(AuditLog(daemon.store).entries())


# --- configuration ------------------------------------------------------------------


def test_cron_weekdays_from_sunday() -> None:
    trigger = cron_trigger("0 9 * * 1-5")
    sunday = cron_trigger("0 0 * * 0")
    monday_morning = datetime.datetime(2026, 3, 2, 8, 0, tzinfo=datetime.UTC)

    fire = trigger.get_next_fire_time(None, monday_morning)
    assert fire == datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)
    assert sunday.get_next_fire_time(None, monday_morning).weekday() == 6


def test_cron_field_count_checked() -> None:
    with pytest.raises(ValidationError, match="expected 5 fields"):
        ScheduleConfig(cron="0 9 * *")


def test_schedule_interval_or_cron() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ScheduleConfig.model_validate({"interval": "5m", "cron": "*/5 * * * *"})


def test_schedule_defaults_every_15m() -> None:
    assert ScheduleConfig().every == datetime.timedelta(minutes=15)


@pytest.mark.parametrize("listen", ["9469", "localhost", "127.0.0.1:70000"])
def test_listen_invalid(listen: str) -> None:
    with pytest.raises(ValidationError, match="listen address"):
        DaemonConfig(listen=listen)


def test_lease_ttl_minimum() -> None:
    with pytest.raises(ValidationError, match="at least 2s"):
        DaemonConfig.model_validate({"lease_ttl": "1s"})


# --- passes, readiness and metrics --------------------------------------------------


def test_leader_pass_converges(daemon: Daemon, config_path: Path) -> None:
    report = daemon.run_pass()

    out = config_path.parent / "out"
    assert report.role == "leader"
    assert report.succeeded, report.message
    assert sorted(p.name for p in out.glob("*.pem")) == [
        "issuing-chain.pem",
        "issuing.pem",
        "trust.pem",
    ]


def test_audit_matches_action_counter(daemon: Daemon) -> None:
    daemon.run_pass()
    (Path(daemon.config.base_dir) / "out" / "trust.pem").write_text("changed")
    daemon.run_pass()

    entries = audit_entries(daemon)
    samples = scrape(daemon.http.url) if daemon.http else {}
    counted = {
        key: value
        for key, value in samples.items()
        if key.startswith("pkifed_actions_total")
    }
    expected: dict[str, float] = {}
    for entry in entries:
        key = f'pkifed_actions_total{{kind="{entry.kind}",outcome="{entry.outcome}"}}'
        expected[key] = expected.get(key, 0) + 1
    assert counted == expected
    assert len(entries) == 8
    assert {entry.actor for entry in entries} == {"replica-a"}
    assert AuditLog(daemon.store).verify().ok


def test_drift_counted_and_evented(daemon: Daemon) -> None:
    daemon.run_pass()
    (Path(daemon.config.base_dir) / "out" / "trust.pem").write_text("changed")
    daemon.run_pass()
    assert daemon.flush_events()

    samples = scrape(daemon.http.url) if daemon.http else {}
    lines = (Path(daemon.config.base_dir) / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert samples['pkifed_drift_found_total{cause="drifted",target="out"}'] == 1
    assert [e["type"] for e in events].count("issued") == 2
    assert [e["type"] for e in events].count("drift-repaired") == 1
    assert all(e["at"].endswith("Z") for e in events)


def test_readiness_before_first_pass(daemon: Daemon) -> None:
    assert daemon.http is not None
    status, body = get(f"{daemon.http.url}/readyz")

    assert status == 503
    assert json.loads(body)["reason"] == "no pass has finished yet"


def test_readiness_after_pass(daemon: Daemon) -> None:
    daemon.run_pass()
    assert daemon.http is not None

    status, body = get(f"{daemon.http.url}/readyz")

    assert status == 200
    assert json.loads(body)["role"] == "leader"


def test_readiness_overdue(daemon: Daemon, clock: FakeClock) -> None:
    daemon.run_pass()
    clock.advance(seconds=1.5)
    ready_while_recent = daemon.readiness().ready
    clock.advance(seconds=1)

    readiness = daemon.readiness()

    assert ready_while_recent
    assert not readiness.ready
    assert "expected two passes since" in readiness.reason


def test_overdue_cron_skips_weekend() -> None:
    weekdays = ScheduleConfig(cron="0 9 * * 1-5", jitter="1m")
    friday_pass = datetime.datetime(2026, 3, 6, 9, 0, 5, tzinfo=datetime.UTC)

    deadline = _overdue_after(weekdays, friday_pass)

    assert deadline == datetime.datetime(2026, 3, 10, 9, 1, tzinfo=datetime.UTC)


def test_overdue_interval_twice() -> None:
    every = ScheduleConfig(interval="15m")

    assert _overdue_after(every, T0) == T0 + datetime.timedelta(minutes=30)


def test_readiness_after_failed_pass(daemon: Daemon) -> None:
    out = Path(daemon.config.base_dir) / "out"
    out.write_text("a file where the target's directory belongs")

    report = daemon.run_pass()

    assert not report.succeeded
    assert not daemon.readiness().ready
    assert daemon.readiness().reason.startswith("the last pass failed")


def test_healthz_and_metrics(daemon: Daemon) -> None:
    daemon.run_pass()
    assert daemon.http is not None

    status, body = get(f"{daemon.http.url}/healthz")
    samples = scrape(daemon.http.url)

    assert status == 200
    assert body == b"ok\n"
    assert samples["pkifed_leader"] == 1
    assert samples['pkifed_passes_total{result="ok",role="leader"}'] == 1
    assert samples["pkifed_last_success_timestamp_seconds"] == T0.timestamp()
    assert 364 < samples['pkifed_authority_expiry_days{authority="issuing"}'] <= 365
    assert samples['pkifed_pass_duration_seconds_count{role="leader"}'] == 1
    provider_calls = [k for k in samples if "pkifed_provider_call_duration" in k]
    assert any('operation="find_or_create_key"' in k for k in provider_calls)


def test_unknown_path_404(daemon: Daemon) -> None:
    assert daemon.http is not None

    status, _ = get(f"{daemon.http.url}/other")

    assert status == 404


# --- leader election ------------------------------------------------------------------


def test_follower_plans_only(daemon: Daemon, config_path: Path) -> None:
    daemon.run_pass()
    (config_path.parent / "out" / "trust.pem").unlink()
    follower = Daemon(
        load_config(config_path), clock=daemon.clock, replica_id="replica-b"
    )
    follower.start(serve_http=False, schedule=False)
    try:
        report = follower.run_pass()
        readiness = follower.readiness()
    finally:
        follower.stop()

    assert report.role == "follower"
    assert report.succeeded
    assert readiness.ready
    assert not (config_path.parent / "out" / "trust.pem").exists()
    assert {entry.actor for entry in audit_entries(daemon)} == {"replica-a"}


def test_takeover_after_ttl(daemon: Daemon, config_path: Path) -> None:
    clock_b = FakeClock(T0)
    follower = Daemon(load_config(config_path), clock=clock_b, replica_id="replica-b")
    follower.start(serve_http=False, schedule=False)
    try:
        leader_at_start = follower.elector.current()
        clock_b.advance(seconds=3)
        taken = follower.elector.tick()
    finally:
        follower.stop()

    assert leader_at_start is None
    assert taken is not None
    assert taken.token == 2


def test_stale_leader_fenced(
    daemon: Daemon, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader whose clock stalled believes it leads; its token stops it."""
    daemon.run_pass()
    # A stalled leader does not renew either. Its renewal thread wakes every
    # third of the TTL in real time, which a loaded machine can reach during
    # this test, and would then learn of the takeover before the pass does.
    monkeypatch.setattr(daemon.elector, "tick", daemon.elector.current)
    clock_b = FakeClock(T0 + datetime.timedelta(seconds=3))
    other = Daemon(load_config(config_path), clock=clock_b, replica_id="replica-b")
    other.start(serve_http=False, schedule=False)
    try:
        assert other.elector.current() is not None
        (config_path.parent / "out" / "trust.pem").unlink()
        entries_before = len(audit_entries(daemon))

        report = daemon.run_pass()
    finally:
        other.stop()

    assert not report.succeeded
    assert "fencing token 1 is stale" in report.message
    assert daemon.elector.current() is None
    assert len(audit_entries(daemon)) == entries_before
    assert not (config_path.parent / "out" / "trust.pem").exists()


# --- reloading ----------------------------------------------------------------------


def test_reload_invalid_keeps_config(
    daemon: Daemon, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path.write_text("version: 1\nname: daemon\nbogus: true\n")

    reloaded = daemon.reload()

    assert not reloaded
    assert daemon.config.model.schedule.every == datetime.timedelta(seconds=1)
    assert "keeping the running configuration" in caplog.text
    assert "bogus" in caplog.text


def test_reload_valid_applies(daemon: Daemon, config_path: Path) -> None:
    document = yaml.safe_load(config_path.read_text())
    document["schedule"] = {"interval": "5m"}
    config_path.write_text(yaml.safe_dump(document))

    reloaded = daemon.reload()

    assert reloaded
    assert daemon.config.model.schedule.every == datetime.timedelta(minutes=5)


def test_reload_state_change_rejected(daemon: Daemon, config_path: Path) -> None:
    document = yaml.safe_load(config_path.read_text())
    document["state"] = f"sqlite:///{config_path.parent / 'other.db'}"
    config_path.write_text(yaml.safe_dump(document))

    assert not daemon.reload()
    assert daemon.config.state_url != document["state"]


# --- the command line ---------------------------------------------------------------


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


@pytest.fixture
def sqlite_directory(tmp_path: Path) -> Path:
    document = federation_document(
        f"sqlite:///{tmp_path / 'state.db'}", logging={"format": "json"}
    )
    write_config(tmp_path, document)
    return tmp_path


def test_once_exit_zero_and_json(sqlite_directory: Path) -> None:
    result = run_pkifed(sqlite_directory, "daemon", "-c", "federation.yaml", "--once")

    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 0, result.stderr
    assert all(line["time"].endswith("Z") for line in lines)
    assert any("leader pass finished" in line["message"] for line in lines)
    assert PASSPHRASE not in result.stderr


def test_once_exit_one_on_failure(sqlite_directory: Path) -> None:
    (sqlite_directory / "out").write_text("a file where a directory belongs")

    result = run_pkifed(sqlite_directory, "daemon", "-c", "federation.yaml", "--once")

    assert result.returncode == 1


def test_audit_verify_cli(sqlite_directory: Path) -> None:
    run_pkifed(sqlite_directory, "daemon", "-c", "federation.yaml", "--once")
    intact = run_pkifed(sqlite_directory, "audit", "verify", "-c", "federation.yaml")
    store = Store(f"sqlite:///{sqlite_directory / 'state.db'}")
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE audit_log SET outcome = 'x' WHERE seq = 3")
    store.close()

    tampered = run_pkifed(sqlite_directory, "audit", "verify", "-c", "federation.yaml")

    assert intact.returncode == 0, intact.stderr
    assert "7 entries intact" in intact.stdout
    assert tampered.returncode == 1
    assert "entry 3 is invalid" in tampered.stderr


def test_audit_export_cli(sqlite_directory: Path) -> None:
    run_pkifed(sqlite_directory, "daemon", "-c", "federation.yaml", "--once")

    result = run_pkifed(
        sqlite_directory, "audit", "export", "-c", "federation.yaml", "-o", "a.jsonl"
    )

    lines = (sqlite_directory / "a.jsonl").read_text().splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 7
    assert json.loads(lines[0])["seq"] == 1


def test_signals_reload_and_stop(sqlite_directory: Path) -> None:
    daemon = DaemonProcess(sqlite_directory, "replica-a")
    try:
        assert daemon.url is not None
        ready = wait_for(lambda: get(f"{daemon.url}/readyz")[0] == 200, 15)
        config = sqlite_directory / "federation.yaml"
        valid = config.read_text()
        config.write_text(valid + "bogus: true\n")
        daemon.signal(signal.SIGHUP)
        rejected = wait_for(lambda: "keeping the running" in daemon.log, 10)
        config.write_text(valid)
        daemon.signal(signal.SIGHUP)
        reloaded = wait_for(lambda: "daemon: reloaded" in daemon.log, 10)
        still_ready = get(f"{daemon.url}/readyz")[0] == 200
    finally:
        status = daemon.stop()

    assert ready, daemon.log
    assert rejected, daemon.log
    assert reloaded, daemon.log
    assert still_ready
    assert status == 0, daemon.log
    assert "released the lease" in daemon.log


def test_listen_address_in_use() -> None:
    import socket

    from pkifed.errors import PermanentError
    from pkifed.sync.http import HealthServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(PermanentError, match=f"cannot listen on 127.0.0.1:{port}"):
            HealthServer("127.0.0.1", port, lambda: None, lambda: b"")  # type: ignore[arg-type,return-value]


def test_health_server_on_ipv6_loopback() -> None:
    import socket
    import urllib.request

    from pkifed.sync.http import HealthServer, Readiness

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"this machine has no IPv6 loopback: {error}")
    server = HealthServer(
        "::1",
        0,
        lambda: Readiness(True, "ready", {}),
        lambda: b"pkifed_up 1\n",
    )
    server.start()
    try:
        host, port = server.address
        assert host == "::1"
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as reply:
            body = reply.read()
    finally:
        server.stop()
    assert body == b"pkifed_up 1\n"

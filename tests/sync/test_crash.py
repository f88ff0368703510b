"""apply killed with SIGKILL after each step it reports, then run again.

Each case starts from an empty federation, kills ``pkifed apply`` right after
its N-th progress line, and then lets a second apply finish. The federation
must converge with one key per authority (none orphaned, none duplicated),
every published certificate known to the state store, and no serial reused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pkifed.config.loader import load_config
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.sync.observe import read_snapshot
from pkifed.sync.reconcile import Reconciler

PASSPHRASE = "crash-test-passphrase"
AUTHORITIES = ("root", "intermediate", "issuing-a", "issuing-b")


def document() -> dict[str, Any]:
    def authority(parent: str | None, path_length: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "provider": "disk",
            "key": "ec-p256",
            "validity": "5y" if parent else "10y",
            "path_length": path_length,
        }
        if parent is not None:
            entry["parent"] = parent
        return entry

    authorities = {
        "root": authority(None, 2),
        "intermediate": authority("root", 1),
        "issuing-a": {**authority("intermediate", 0), "publish": ["out"]},
        "issuing-b": {**authority("intermediate", 0), "publish": ["out"]},
    }
    for name, entry in authorities.items():
        entry["subject"] = f"CN=Crash {name}"
    return {
        "version": 1,
        "name": "crash",
        # One action at a time, so each progress line is a step boundary.
        "reconcile": {"concurrency": 1},
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_CRASH_PASSPHRASE}",
            }
        },
        "authorities": authorities,
        "targets": {"out": {"type": "file", "path": "out"}},
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out"]}},
    }


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PKIFED_CRASH_PASSPHRASE": PASSPHRASE,
        "PYTHONUNBUFFERED": "1",
    }


def apply_killed_after(directory: Path, steps: int) -> int:
    """Run apply and SIGKILL it after ``steps`` progress lines; return lines seen."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pkifed", "apply", "-c", "federation.yaml"],
        cwd=directory,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    seen = 0
    for line in process.stdout:
        if line.lstrip().startswith("[ok]"):
            seen += 1
            if seen == steps:
                process.send_signal(signal.SIGKILL)
                break
    process.stdout.close()
    process.wait(timeout=60)
    return seen


def run(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkifed", *arguments, "-c", "federation.yaml"],
        cwd=directory,
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# Four keys, four certificates, the bundle and two files per issuing CA.
STEPS = 13


def test_step_count(tmp_path: Path) -> None:
    (tmp_path / "federation.yaml").write_text(yaml.safe_dump(document()))
    result = run(tmp_path, "apply")

    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(1 for line in result.stdout.splitlines() if "[ok]" in line) == STEPS


@pytest.mark.parametrize("step", range(1, STEPS))
def test_crash_after_step(
    tmp_path: Path, step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_CRASH_PASSPHRASE", PASSPHRASE)
    (tmp_path / "federation.yaml").write_text(yaml.safe_dump(document()))

    seen = apply_killed_after(tmp_path, step)
    resumed = run(tmp_path, "apply")

    assert seen == step
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    check_converged(tmp_path, step)


def check_converged(directory: Path, step: int) -> None:
    key_files = sorted(p.name for p in (directory / "keys" / "crash").glob("*.pem"))
    config = load_config(directory / "federation.yaml")
    store = Store(config.state_url)
    try:
        with Runtime(config) as runtime:
            plan = Reconciler(config, store, runtime).plan()
        with store.transaction() as session:
            snapshot = read_snapshot(session)
    finally:
        store.close()

    assert plan.empty, (step, [str(a) for a in plan.actions])

    # One key per authority, each recorded: nothing orphaned or duplicated.
    assert key_files == sorted(f"{name}.pem" for name in AUTHORITIES), step
    recorded = sorted(
        Path(record.uri.removeprefix("file:")).name
        for record in (snapshot.keys.values())
    )
    assert recorded == key_files, step

    # Serials are unique, and every published certificate is in the store.
    serials = [issued.record.serial for issued in snapshot.history]
    assert len(serials) == len(set(serials)), step
    known = snapshot.known_fingerprints()
    for published in (directory / "out").glob("*.pem"):
        for certificate in x509.load_pem_x509_certificates(published.read_bytes()):
            fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":")
            assert fingerprint in known, (step, published.name)
    current = {i.record.authority for i in snapshot.history if i.current}
    assert current == set(AUTHORITIES), step

    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            "out/trust.pem",
            "-untrusted",
            "out/issuing-a-chain.pem",
            "out/issuing-a.pem",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (step, result.stdout, result.stderr)

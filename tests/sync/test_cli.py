"""The command line as a user runs it: separate processes, SoftHSM2 and real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness.softhsm import SOFTHSM_MODULE, SoftHsm, require_softhsm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
HSM_PIN = "quickstart-test-pin-4711"
PASSPHRASE = "quickstart-test-passphrase-0815"
SECRETS = (HSM_PIN, PASSPHRASE)


def run_pkifed(
    *arguments: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkifed.sync", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=120,
    )


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr


@pytest.fixture(scope="module")
def quickstart(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, str]]:
    """The bundled example in a temporary directory, with a fresh SoftHSM2 token."""
    require_softhsm()
    directory = tmp_path_factory.mktemp("quickstart")
    softhsm = SoftHsm(directory / "softhsm")
    softhsm.add_token("pkifed-quickstart", pin=HSM_PIN)
    shutil.copy(EXAMPLE, directory / "quickstart.yaml")
    secrets = directory / ".pkifed"
    secrets.mkdir(mode=0o700)
    (secrets / "hsm-pin").write_text(HSM_PIN + "\n", encoding="utf-8")
    (secrets / "keystore-passphrase").write_text(PASSPHRASE, encoding="utf-8")
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm.config)}
    applied = run_pkifed("apply", "-c", "quickstart.yaml", env=env, cwd=directory)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert_no_secret(applied)
    return directory, env


@pytest.mark.softhsm
def test_quickstart_openssl_verify(quickstart: tuple[Path, dict[str, str]]) -> None:
    directory, _ = quickstart
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            "out/trust.pem",
            "out/issuing.pem",
        ],
        capture_output=True,
        text=True,
        cwd=directory,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.softhsm
def test_quickstart_plan_empty(quickstart: tuple[Path, dict[str, str]]) -> None:
    directory, env = quickstart
    result = run_pkifed(
        "plan", "-c", "quickstart.yaml", "--detailed-exitcode", env=env, cwd=directory
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes" in result.stdout
    assert_no_secret(result)


@pytest.mark.softhsm
def test_quickstart_second_apply(quickstart: tuple[Path, dict[str, str]]) -> None:
    directory, env = quickstart
    result = run_pkifed("apply", "-c", "quickstart.yaml", env=env, cwd=directory)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes: federation quickstart is up to date" in result.stdout


@pytest.mark.softhsm
def test_root_key_in_softhsm(quickstart: tuple[Path, dict[str, str]]) -> None:
    _, env = quickstart
    # Read the token in a separate process, so this test process never
    # initialises SoftHSM2 with another module's configuration.
    script = (
        "import json, sys, pkcs11\n"
        "from pkcs11 import Attribute, ObjectClass\n"
        "lib = pkcs11.lib(sys.argv[1])\n"
        "token = lib.get_token(token_label='pkifed-quickstart')\n"
        "with token.open(user_pin=sys.argv[2]) as session:\n"
        "    keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,"
        " Attribute.LABEL: 'quickstart/root'}))\n"
        "    print(json.dumps([{'sensitive': k[Attribute.SENSITIVE],"
        " 'extractable': k[Attribute.EXTRACTABLE],"
        " 'never_extractable': k[Attribute.NEVER_EXTRACTABLE]} for k in keys]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(SOFTHSM_MODULE), HSM_PIN],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    keys = json.loads(result.stdout)

    assert keys == [
        {"sensitive": True, "extractable": False, "never_extractable": True}
    ]


@pytest.mark.softhsm
def test_report_json(quickstart: tuple[Path, dict[str, str]]) -> None:
    directory, env = quickstart
    result = run_pkifed(
        "report", "-c", "quickstart.yaml", "--format", "json", env=env, cwd=directory
    )
    report = json.loads(result.stdout)
    root = next(a for a in report["authorities"] if a["name"] == "root")
    issuing = next(a for a in report["authorities"] if a["name"] == "issuing")

    assert result.returncode == 0
    assert root["key_uri"].startswith("pkcs11:")
    assert root["protection_level"] == "hsm"
    assert issuing["key_uri"].startswith("file:")
    assert issuing["protection_level"] == "software"
    assert issuing["parent"] == "root"
    assert issuing["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    for field in ("subject", "serial", "not_before", "not_after", "fingerprint_sha256"):
        assert root[field], field
    assert report["bundles"][0]["targets"][0]["sha256"]
    assert_no_secret(result)


@pytest.mark.softhsm
def test_providers_check(quickstart: tuple[Path, dict[str, str]]) -> None:
    directory, env = quickstart
    result = run_pkifed(
        "providers", "check", "-c", "quickstart.yaml", env=env, cwd=directory
    )
    lines = result.stdout.splitlines()

    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0].startswith("hsm: ok;")
    assert lines[1].startswith("keystore: ok;")
    assert_no_secret(result)


@pytest.mark.softhsm
def test_wrong_pin_no_secret(
    quickstart: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    directory, env = quickstart
    document = yaml.safe_load((directory / "quickstart.yaml").read_text())
    document["providers"]["hsm"]["pin"] = "${env:PKIFED_WRONG_PIN}"
    document["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    shutil.copytree(directory / ".pkifed", tmp_path / ".pkifed", dirs_exist_ok=True)
    wrong = "not-the-pin-" + PASSPHRASE
    env = {**env, "PKIFED_WRONG_PIN": wrong}

    for verbose in ([], ["--verbose"]):
        result = run_pkifed(
            *verbose, "apply", "-c", "wrong.yaml", env=env, cwd=tmp_path
        )

        assert result.returncode == 1
        assert "Traceback" not in result.stderr or verbose
        assert wrong not in result.stdout + result.stderr
        assert_no_secret(result)


def test_validate_reports_problems(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["authorities"]["issuing"]["parent"] = "roott"
    document["authorities"]["issuing"]["validity"] = "25y"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    secrets = tmp_path / ".pkifed"
    secrets.mkdir()
    (secrets / "hsm-pin").write_text(HSM_PIN)
    (secrets / "keystore-passphrase").write_text(PASSPHRASE)

    result = run_pkifed(
        "validate", "-c", "bad.yaml", env=dict(os.environ), cwd=tmp_path
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "authorities.issuing.parent: unknown authority 'roott' (known: root)" in (
        result.stderr
    )
    assert "bad.yaml: 1 problem" in result.stderr
    assert_no_secret(result)


def test_missing_config_one_line(tmp_path: Path) -> None:
    result = run_pkifed("plan", "-c", "absent.yaml", env=dict(os.environ), cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "absent.yaml: 1 problem" in result.stderr
    assert "file not found" in result.stderr


def test_help_lists_commands(tmp_path: Path) -> None:
    result = run_pkifed("--help", env=dict(os.environ), cwd=tmp_path)

    assert result.returncode == 0
    for command in ("validate", "plan", "apply", "report", "providers"):
        assert command in result.stdout


def test_concurrent_apply_rejected(tmp_path: Path) -> None:
    from pkifed.federation.locking import exclusive_run

    document = {
        "version": 1,
        "name": "locked",
        "providers": {
            "disk": {"type": "local", "path": "keys", "passphrase": "${file:pass}"}
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p256",
                "subject": "CN=Locked Root",
                "validity": "1y",
            }
        },
    }
    (tmp_path / "pass").write_text(PASSPHRASE)
    (tmp_path / "locked.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    state = tmp_path / ".pkifed" / "locked.db"

    with exclusive_run(f"sqlite:///{state}"):
        blocked = run_pkifed(
            "apply", "-c", "locked.yaml", env=dict(os.environ), cwd=tmp_path
        )
    keys_created = (tmp_path / "keys").exists()
    after = run_pkifed("apply", "-c", "locked.yaml", env=dict(os.environ), cwd=tmp_path)

    assert blocked.returncode == 1
    assert "another pkifed apply is running" in blocked.stderr
    assert not keys_created
    assert after.returncode == 0, after.stdout + after.stderr


def test_plan_creates_no_state(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["providers"] = {
        "keystore": {"type": "local", "path": "keys", "passphrase": "${file:pass}"}
    }
    for authority in document["authorities"].values():
        authority["provider"] = "keystore"
    (tmp_path / "pass").write_text(PASSPHRASE)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")

    planned = run_pkifed("plan", "-c", "f.yaml", env=dict(os.environ), cwd=tmp_path)
    reported = run_pkifed("report", "-c", "f.yaml", env=dict(os.environ), cwd=tmp_path)

    assert planned.returncode == 0, planned.stderr
    assert reported.returncode == 0, reported.stderr
    assert not (tmp_path / ".pkifed").exists()


def test_apply_writes_audit_log(tmp_path: Path) -> None:
    document = {
        "version": 1,
        "name": "audited",
        "providers": {
            "disk": {"type": "local", "path": "keys", "passphrase": "${file:pass}"}
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p256",
                "subject": "CN=Audited Root",
                "validity": "1y",
            }
        },
    }
    (tmp_path / "pass").write_text(PASSPHRASE)
    (tmp_path / "audited.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    env = dict(os.environ)

    applied = run_pkifed("apply", "-c", "audited.yaml", env=env, cwd=tmp_path)
    exported = run_pkifed(
        "audit",
        "export",
        "-c",
        "audited.yaml",
        "-o",
        "audit.jsonl",
        env=env,
        cwd=tmp_path,
    )
    verified = run_pkifed(
        "audit", "verify", "-c", "audited.yaml", env=env, cwd=tmp_path
    )
    entries = [
        json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]

    assert applied.returncode == 0, applied.stderr
    assert exported.returncode == 0, exported.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [e["kind"] for e in entries] == ["create-key", "issue-certificate"]
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert all(e["outcome"] == "done" for e in entries)

    anchor = verified.stdout.split("--anchor ")[1].split()[0]
    anchored = run_pkifed(
        "audit",
        "verify",
        "-c",
        "audited.yaml",
        "--anchor",
        anchor,
        env=env,
        cwd=tmp_path,
    )
    assert anchored.returncode == 0, anchored.stdout + anchored.stderr
    beyond = run_pkifed(
        "audit",
        "verify",
        "-c",
        "audited.yaml",
        "--anchor",
        f"9:{'a' * 64}",
        env=env,
        cwd=tmp_path,
    )
    assert beyond.returncode == 1
    assert "the log ends at entry 2" in beyond.stderr
    malformed = run_pkifed(
        "audit",
        "verify",
        "-c",
        "audited.yaml",
        "--anchor",
        "head",
        env=env,
        cwd=tmp_path,
    )
    assert malformed.returncode == 2
    assert "is not SEQ:HASH" in malformed.stderr
    assert "Traceback" not in malformed.stderr


def test_help_choices_match_modules() -> None:
    from pkifed.config.policy import Severity
    from pkifed.federation import crl, reports
    from pkifed.sync import cli

    assert tuple(reports.FORMATS) == cli.REPORT_FORMATS
    assert tuple(str(severity) for severity in Severity) == cli.SEVERITIES
    assert tuple(crl.REASONS) == cli.REVOCATION_REASONS


def test_help_imports_no_heavy_modules() -> None:
    # `pkifed --help` must not import SQLAlchemy, the cloud SDKs or pyca's
    # X.509 stack, which make up most of pkifed's start time.
    script = (
        "import sys\n"
        "from pkifed.sync.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'boto3', 'google.cloud.kms', "
        "'azure.keyvault.keys', 'cryptography.x509') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy="

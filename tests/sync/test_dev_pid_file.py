"""pkifed dev status and down with a pid file that names no dev process.

These tests start no local service. They check that a pid file left by a
crash, edited by hand or naming a process that is not pkifed's, is reported
as stale and that no process it names is signalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkifed.sync.dev import NOT_RUNNING_EXIT, DevPaths, down, read_pid, status

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multicloud.yaml"


@pytest.fixture
def paths(tmp_path: Path) -> DevPaths:
    shutil.copy(EXAMPLE, tmp_path / "multicloud.yaml")
    dev_paths = DevPaths.beside(tmp_path / "multicloud.yaml")
    dev_paths.root.mkdir(parents=True)
    return dev_paths


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not pkifed, whose id a stale pid file may name."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    "content",
    # The fifth is 123 in fullwidth digits, which str.isdigit accepts.
    [
        b"99999999999",
        b"0",
        b"-1",
        b"+5",
        "\uff11\uff12\uff13".encode(),
        b"12 34",
        b"",
        b"\xff1",
    ],
)
def test_invalid_pid_ignored(paths: DevPaths, content: bytes) -> None:
    paths.pid_file.write_bytes(content + b"\n")

    assert read_pid(paths) is None


def test_status_with_huge_pid(paths: DevPaths) -> None:
    paths.pid_file.write_text("99999999999\n", encoding="utf-8")
    lines: list[str] = []

    result = status(paths.config, lines.append)

    assert result == NOT_RUNNING_EXIT
    assert lines == [f"Local services for {paths.config}: not running."]


def test_down_spares_unrelated_process(
    paths: DevPaths, unrelated: subprocess.Popen[bytes]
) -> None:
    paths.pid_file.write_text(f"{unrelated.pid}\n", encoding="utf-8")
    lines: list[str] = []

    down(paths.config, lines.append)

    assert unrelated.poll() is None
    assert f"process {unrelated.pid}" in lines[0]
    assert not paths.root.exists()


def test_status_with_unrelated_process(
    paths: DevPaths, unrelated: subprocess.Popen[bytes]
) -> None:
    paths.pid_file.write_text(f"{unrelated.pid}\n", encoding="utf-8")
    lines: list[str] = []

    result = status(paths.config, lines.append)

    assert result == NOT_RUNNING_EXIT
    assert unrelated.poll() is None
    assert "not running" in lines[0]


def test_cli_status_with_huge_pid(paths: DevPaths) -> None:
    paths.pid_file.write_text("99999999999\n", encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "pkifed", "dev", "status", "-c", "multicloud.yaml"],
        cwd=paths.config.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == NOT_RUNNING_EXIT, result.stderr
    assert result.stderr == ""


def test_serve_unnamed_starts_nothing(paths: DevPaths, tmp_path: Path) -> None:
    # The pid file names another process, as after a dev up that was killed
    # before writing this process's id and a later dev up that started its
    # own. That process's endpoint files must survive.
    paths.pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
    paths.endpoints.mkdir()
    paths.endpoint("aws-kms").write_text("http://127.0.0.1:1\n", encoding="utf-8")
    # Should a service start anyway, Azurite fails at once and stops the rest.
    failing = tmp_path / "azurite-blob"
    failing.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    failing.chmod(0o755)
    environment = {
        **os.environ,
        "PKIFED_AZURITE": str(failing),
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    result = subprocess.run(
        [sys.executable, "-m", "pkifed", "dev", "serve", "-c", str(paths.config)],
        cwd=paths.root,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "does not name process" in result.stderr
    assert "listening" not in result.stderr
    assert paths.endpoint("aws-kms").exists()
    assert read_pid(paths) == os.getpid()

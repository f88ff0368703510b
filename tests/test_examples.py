"""The helper scripts that the examples run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.softhsm import SOFTHSM_MODULE, require_softhsm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.softhsm
def test_softhsm_token_pin_from_file(tmp_path: Path) -> None:
    require_softhsm()
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    config = tmp_path / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
        "log.level = ERROR\n",
        encoding="utf-8",
    )
    pin = "example-token-pin-5821"
    pin_file = tmp_path / "pin"
    pin_file.write_text(f"{pin}\n", encoding="utf-8")
    environment = {**os.environ, "SOFTHSM2_CONF": str(config)}

    created = subprocess.run(
        [sys.executable, str(EXAMPLES / "softhsm_token.py"), "example", str(pin_file)],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert created.returncode == 0, created.stderr
    assert pin not in created.stdout + created.stderr
    # A child process reads the token directory as it is on disk now.
    check = (
        "import pkcs11, sys\n"
        f"library = pkcs11.lib({str(SOFTHSM_MODULE)!r})\n"
        "token = library.get_token(token_label='example')\n"
        "with token.open(user_pin=sys.argv[1]):\n"
        "    pass\n"
    )
    login = subprocess.run(
        [sys.executable, "-c", check, pin],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    wrong = subprocess.run(
        [sys.executable, "-c", check, "not-the-pin-1234"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert wrong.returncode != 0
    assert "PinIncorrect" in wrong.stderr


def test_softhsm_token_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "softhsm_token.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Usage: python examples/softhsm_token.py LABEL PIN_FILE" in result.stderr

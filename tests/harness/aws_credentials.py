"""A trap for boto3's credential chain, to prove that a client never consults it.

:func:`install_credential_trap` points the chain's every source at something a
test can detect: environment variables with a distinctive access key ID, or,
with ``source="credential_process"``, a shared config file whose
``credential_process`` writes a marker file before returning credentials. The
instance metadata service stays disabled either way.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Literal

import pytest

TRAP_ACCESS_KEY_ID = "AKIAPKIFEDCHAINTRAP1"
TRAP_SECRET_ACCESS_KEY = "pkifed-chain-trap-secret"

_PROCESS = """\
import json, pathlib, sys
pathlib.Path(sys.argv[1]).write_text("ran", encoding="utf-8")
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[2],
                  "SecretAccessKey": sys.argv[3]}))
"""

_CLEARED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ENDPOINT_URL_S3",
)


def install_credential_trap(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: Literal["environment", "credential_process"],
) -> Path:
    """Make the credential chain return trap credentials from ``source``.

    Returns the marker file that the credential process writes when it runs.
    """
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    marker = directory / "credential-process-ran"
    script = directory / "credential_process.py"
    script.write_text(_PROCESS, encoding="utf-8")
    command = shlex.join(
        [
            sys.executable,
            str(script),
            str(marker),
            TRAP_ACCESS_KEY_ID,
            TRAP_SECRET_ACCESS_KEY,
        ]
    )
    config = directory / "aws-config"
    config.write_text(f"[default]\ncredential_process = {command}\n", encoding="utf-8")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    if source == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", TRAP_ACCESS_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TRAP_SECRET_ACCESS_KEY)
    return marker

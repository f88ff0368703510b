"""References in plain plugin settings: ``${env:NAME}`` and ``${file:PATH}``."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from pkifed.config.loader import load_config
from pkifed.config.references import (
    MAX_REFERENCED_FILE,
    expand_references,
    secret_fields,
)
from pkifed.errors import ConfigError
from pkifed.providers.local import LocalSettings
from pkifed.providers.targets.s3 import S3TargetSettings
from pkifed.secrets import SecretRef
from tests.config.test_validate import base_config, passphrase, write

__all__ = ["passphrase"]  # The autouse fixture that sets the keystore passphrase.


def problems_of(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return {problem.path: problem.message for problem in caught.value.problems}


def with_s3(bucket: Any, endpoint: Any = "http://127.0.0.1:9000") -> dict[str, Any]:
    document = base_config()
    document["targets"]["bucket"] = {
        "type": "s3",
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint_url": endpoint,
    }
    return document


def test_secret_fields_found_by_annotation() -> None:
    assert secret_fields(LocalSettings) == {"passphrase"}
    assert secret_fields(S3TargetSettings) == frozenset()


def test_env_reference_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_TEST_BUCKET", "trust-bundles")
    config = load_config(write(tmp_path, with_s3("${env:PKIFED_TEST_BUCKET}")))
    settings = config.targets["bucket"].settings
    assert isinstance(settings, S3TargetSettings)
    assert settings.bucket == "trust-bundles"


def test_file_reference_relative_to_config(tmp_path: Path) -> None:
    endpoints = tmp_path / ".pkifed" / "dev"
    endpoints.mkdir(parents=True)
    (endpoints / "s3").write_text("http://127.0.0.1:45123\n", encoding="utf-8")
    document = with_s3("trust", "${file:.pkifed/dev/s3}")
    config = load_config(write(tmp_path, document))
    settings = config.targets["bucket"].settings
    assert isinstance(settings, S3TargetSettings)
    assert settings.endpoint_url == "http://127.0.0.1:45123"


def test_replaced_value_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_TEST_BUCKET", "Not A Bucket")
    problems = problems_of(write(tmp_path, with_s3("${env:PKIFED_TEST_BUCKET}")))
    assert "targets.bucket.bucket" in problems


def test_unset_variable_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PKIFED_TEST_MISSING", raising=False)
    problems = problems_of(write(tmp_path, with_s3("${env:PKIFED_TEST_MISSING}")))
    assert problems == {
        "targets.bucket.bucket": (
            "${env:PKIFED_TEST_MISSING}: environment variable PKIFED_TEST_MISSING "
            "is not set"
        )
    }


def test_missing_file_named(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, with_s3("trust", "${file:nowhere}")))
    message = problems["targets.bucket.endpoint_url"]
    assert message.startswith("${file:nowhere}: cannot read ")
    assert str(tmp_path / "nowhere") in message


def test_empty_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "endpoint").write_text("\n", encoding="utf-8")
    problems = problems_of(write(tmp_path, with_s3("trust", "${file:endpoint}")))
    assert problems["targets.bucket.endpoint_url"].endswith("is empty")


def test_large_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "endpoint").write_bytes(b"x" * (MAX_REFERENCED_FILE + 1))
    problems = problems_of(write(tmp_path, with_s3("trust", "${file:endpoint}")))
    assert "is larger than" in problems["targets.bucket.endpoint_url"]


def test_secret_setting_keeps_reference(tmp_path: Path, passphrase: str) -> None:
    config = load_config(write(tmp_path, base_config()))
    settings = config.providers["disk"].settings
    assert isinstance(settings, LocalSettings)
    assert settings.passphrase.reference == "${env:PKIFED_TEST_PASSPHRASE}"
    assert passphrase not in repr(settings)


def test_plain_text_left_alone(tmp_path: Path) -> None:
    document = with_s3("trust", "http://127.0.0.1:9000")
    document["targets"]["bucket"]["prefix"] = "pki/${not-a-reference}"
    config = load_config(write(tmp_path, document))
    settings = config.targets["bucket"].settings
    assert isinstance(settings, S3TargetSettings)
    assert settings.prefix == "pki/${not-a-reference}"


def test_file_unchanged_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_TEST_BUCKET", "trust-bundles")
    path = write(tmp_path, with_s3("${env:PKIFED_TEST_BUCKET}"))
    before = path.read_bytes()
    load_config(path)
    assert path.read_bytes() == before
    assert yaml.safe_load(before)["targets"]["bucket"]["bucket"].startswith("${env:")


# --- files that are not plain text files ----------------------------------------------


def load_in_thread(path: Path, fifo: Path | None = None) -> dict[str, str]:
    """Return load_config's problems, or fail if it blocks for 10 seconds.

    A load that blocks on ``fifo`` is released by opening the FIFO for
    writing, so the test fails instead of hanging.
    """
    found: dict[str, str] = {}

    def load() -> None:
        found.update(problems_of(path))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    blocked = worker.is_alive()
    if blocked and fifo is not None:
        with fifo.open("w"):
            pass
        worker.join(timeout=10)
    assert not blocked, f"load_config blocked on {fifo}"
    return found


def test_fifo_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "endpoint"
    os.mkfifo(fifo)

    problems = load_in_thread(
        write(tmp_path, with_s3("trust", "${file:endpoint}")), fifo
    )

    message = problems["targets.bucket.endpoint_url"]
    assert message == f"${{file:endpoint}}: {fifo} is a FIFO, not a regular file"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_device_rejected(tmp_path: Path, device: str) -> None:
    problems = problems_of(write(tmp_path, with_s3("trust", f"${{file:{device}}}")))

    message = problems["targets.bucket.endpoint_url"]
    assert message == f"${{file:{device}}}: {device} is a device, not a regular file"


def test_directory_rejected(tmp_path: Path) -> None:
    (tmp_path / "endpoints").mkdir()

    problems = problems_of(write(tmp_path, with_s3("trust", "${file:endpoints}")))

    message = problems["targets.bucket.endpoint_url"]
    assert message.endswith(
        f"{tmp_path / 'endpoints'} is a directory, not a regular file"
    )


def test_symlink_loop_named(tmp_path: Path) -> None:
    (tmp_path / "first").symlink_to("second")
    (tmp_path / "second").symlink_to("first")

    problems = problems_of(write(tmp_path, with_s3("trust", "${file:first}")))

    message = problems["targets.bucket.endpoint_url"]
    assert message == (
        f"${{file:first}}: cannot read {tmp_path / 'first'}: Too many levels of "
        "symbolic links"
    )


def test_non_utf8_file_named(tmp_path: Path) -> None:
    (tmp_path / "endpoint").write_bytes(b"http://127.0.0.1:\xff\n")

    problems = problems_of(write(tmp_path, with_s3("trust", "${file:endpoint}")))

    message = problems["targets.bucket.endpoint_url"]
    assert message == f"${{file:endpoint}}: {tmp_path / 'endpoint'} is not UTF-8 text"


# --- references in secret settings ----------------------------------------------------


def test_secret_fifo_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "passphrase"
    os.mkfifo(fifo)
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "${file:passphrase}"

    problems = load_in_thread(write(tmp_path, document), fifo)

    assert problems == {
        "providers.disk.passphrase": (
            f"secret ${{file:passphrase}}: {fifo} is a FIFO, not a regular file"
        )
    }


def test_secret_device_rejected(tmp_path: Path) -> None:
    # /dev/null stands for every device: it is rejected before any read, so
    # an endless one such as /dev/zero cannot exhaust memory.
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "${file:/dev/null}"

    problems = problems_of(write(tmp_path, document))

    assert problems == {
        "providers.disk.passphrase": (
            "secret ${file:/dev/null}: /dev/null is a device, not a regular file"
        )
    }


def test_secret_large_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "passphrase").write_bytes(b"x" * (MAX_REFERENCED_FILE + 1))
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "${file:passphrase}"

    problems = problems_of(write(tmp_path, document))

    message = problems["providers.disk.passphrase"]
    assert message.startswith("secret ${file:passphrase}: ")
    assert f"is larger than {MAX_REFERENCED_FILE} bytes" in message


def test_secret_non_utf8_file_named(tmp_path: Path) -> None:
    secret = b"\xffnot-shown-passphrase"
    (tmp_path / "passphrase").write_bytes(secret)
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "${file:passphrase}"

    problems = problems_of(write(tmp_path, document))

    message = problems["providers.disk.passphrase"]
    assert message == (
        f"secret ${{file:passphrase}}: {tmp_path / 'passphrase'} is not UTF-8 text"
    )
    assert "not-shown-passphrase" not in message


def test_secret_file_reference_unresolved(tmp_path: Path) -> None:
    (tmp_path / "passphrase").write_text("file-held passphrase\n", encoding="utf-8")
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "${file:passphrase}"

    config = load_config(write(tmp_path, document))

    settings = config.providers["disk"].settings
    assert isinstance(settings, LocalSettings)
    assert settings.passphrase.reference == "${file:passphrase}"
    assert "file-held passphrase" not in repr(settings)
    assert "file-held passphrase" not in settings.model_dump_json()


# --- malformed references -------------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["${env:}", "${file:}", "${env:NAME", "pki/${env:NAME}", "${file:}x"]
)
def test_malformed_reference_rejected(tmp_path: Path, reference: str) -> None:
    document = with_s3("trust")
    document["targets"]["bucket"]["prefix"] = reference

    problems = problems_of(write(tmp_path, document))

    assert problems == {
        "targets.bucket.prefix": (
            f"invalid reference {reference!r}: expected ${{env:NAME}} or "
            "${file:PATH} as the whole value"
        )
    }


@pytest.mark.parametrize("name", [" PKIFED_TEST_BUCKET", "1ST", "A-B", "A=B"])
def test_invalid_variable_name_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("PKIFED_TEST_BUCKET", "trust-bundles")

    problems = problems_of(write(tmp_path, with_s3(f"${{env:{name}}}")))

    assert problems == {
        "targets.bucket.bucket": (
            f"${{env:{name}}}: invalid environment variable name {name!r}: use "
            "letters, digits and underscores, not starting with a digit"
        )
    }


# --- nested settings ------------------------------------------------------------------


def test_reference_in_nested_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_TEST_ATTEMPTS", "7")
    document = with_s3("trust")
    document["targets"]["bucket"]["retry"] = {"attempts": "${env:PKIFED_TEST_ATTEMPTS}"}

    config = load_config(write(tmp_path, document))

    settings = config.targets["bucket"].settings
    assert isinstance(settings, S3TargetSettings)
    assert settings.retry.attempts == 7


def test_nested_reference_problem_named(tmp_path: Path) -> None:
    document = with_s3("trust")
    document["targets"]["bucket"]["retry"] = {"attempts": "${file:attempts}"}

    problems = problems_of(write(tmp_path, document))

    message = problems["targets.bucket.retry.attempts"]
    assert message.startswith("${file:attempts}: cannot read ")


class _Credentials(BaseModel):
    token: SecretRef
    user: str


class _NestedSettings(BaseModel):
    credentials: _Credentials | None = None
    pools: list[_Credentials] = []


def test_nested_secret_left_unresolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKIFED_TEST_USER", "pkifed")
    (tmp_path / "token").write_text("nested-token-value\n", encoding="utf-8")
    credentials = {"token": "${file:token}", "user": "${env:PKIFED_TEST_USER}"}
    raw = {"credentials": credentials, "pools": [credentials]}

    expanded, problems = expand_references(raw, _NestedSettings, "x", tmp_path)

    assert secret_fields(_NestedSettings) == {"credentials", "pools"}
    assert problems == []
    assert expanded == raw


class _AliasedSettings(BaseModel):
    token: SecretRef = Field(alias="api-token")


def test_aliased_secret_left_unresolved(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("aliased-token-value\n", encoding="utf-8")
    raw = {"api-token": "${file:token}"}

    expanded, problems = expand_references(raw, _AliasedSettings, "x", tmp_path)

    assert "api-token" in secret_fields(_AliasedSettings)
    assert problems == []
    assert expanded == raw


def test_invalid_value_not_repeated(tmp_path: Path) -> None:
    token = "vault-token-" + "x" * 100
    (tmp_path / "token").write_text(token, encoding="utf-8")
    problems = problems_of(write(tmp_path, with_s3("trust", "${file:token}")))
    message = problems["targets.bucket.endpoint_url"]
    assert "${file:token}" in message
    assert "vault-token-" not in message


def test_missing_dev_file_says_dev_up(tmp_path: Path) -> None:
    document = with_s3("trust", "${file:.pkifed/dev/endpoints/s3}")
    problems = problems_of(write(tmp_path, document))
    message = problems["targets.bucket.endpoint_url"]
    assert "does not exist; run pkifed dev up with this configuration" in message

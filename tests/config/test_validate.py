"""Loading and validating federation files: every problem, with its path and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pkifed.config.loader import load_config
from pkifed.errors import ConfigError


def base_config() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "test",
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_TEST_PASSPHRASE}",
            }
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p384",
                "subject": "CN=Test Root,O=Example",
                "validity": "20y",
                "path_length": 1,
            },
            "issuing": {
                "provider": "disk",
                "parent": "root",
                "key": "ec-p256",
                "subject": {"common_name": "Test Issuing", "organization": "Example"},
                "validity": "5y",
                "path_length": 0,
                "publish": ["out"],
            },
        },
        "targets": {"out": {"type": "file", "path": "out"}},
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out"]}},
    }


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "correct horse battery staple"
    monkeypatch.setenv("PKIFED_TEST_PASSPHRASE", value)
    return value


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, document: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, document))
    return [str(problem) for problem in raised.value.problems]


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base_config()))

    assert set(config.model.authorities) == {"root", "issuing"}
    assert config.state_url.endswith(".pkifed/test.db")
    assert config.providers["disk"].plugin.type_name == "local"


def test_unknown_parent(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["parent"] = "roott"

    assert "authorities.issuing.parent: unknown authority 'roott' (known: root)" in (
        problems_of(tmp_path, document)
    )


def test_unknown_provider_reference(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["provider"] = "hsm"

    assert (
        "authorities.root.provider: unknown provider 'hsm' (known: disk)"
        in problems_of(tmp_path, document)
    )


def test_unknown_provider_type(tmp_path: Path) -> None:
    document = base_config()
    document["providers"]["disk"]["type"] = "pkcs12"

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("providers.disk.type: unknown type 'pkcs12' (known: ")
        for p in problems
    )


def test_unknown_target_type(tmp_path: Path) -> None:
    document = base_config()
    document["targets"]["out"]["type"] = "ftp"

    problems = problems_of(tmp_path, document)
    assert any(p.startswith("targets.out.type: unknown type 'ftp'") for p in problems)


def test_unknown_target_reference(tmp_path: Path) -> None:
    document = base_config()
    document["bundles"]["trust"]["targets"] = ["out", "web"]

    assert "bundles.trust.targets.1: unknown target 'web' (known: out)" in (
        problems_of(tmp_path, document)
    )


def test_unknown_bundle_authority(tmp_path: Path) -> None:
    document = base_config()
    document["bundles"]["trust"]["authorities"] = ["rot"]

    assert (
        "bundles.trust.authorities.0: unknown authority 'rot' (known: issuing, root)"
        in problems_of(tmp_path, document)
    )


def test_cycle_detected(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["parent"] = "issuing"

    problems = problems_of(tmp_path, document)
    cycles = [p for p in problems if "cycle" in p]
    assert len(cycles) == 1
    assert (
        "root -> issuing -> root" in cycles[0]
        or "issuing -> root -> issuing" in (cycles[0])
    )


def test_child_outlives_parent(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["validity"] = "25y"

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("authorities.issuing.validity: 9125 days outlives parent 'root'")
        for p in problems
    )


def test_path_length_zero_parent(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["path_length"] = 0

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("authorities.issuing.parent: parent 'root' has path_length 0")
        for p in problems
    )


def test_path_length_too_long(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["path_length"] = 3

    assert (
        "authorities.issuing.path_length: got 3, expected at most 0 because parent "
        "'root' has path_length 1" in problems_of(tmp_path, document)
    )


def test_algorithm_provider_cannot_do(tmp_path: Path) -> None:
    document = base_config()
    document["providers"]["cloud"] = {
        "type": "gcp-kms",
        "project": "example",
        "location": "global",
    }
    document["authorities"]["issuing"]["provider"] = "cloud"
    document["authorities"]["issuing"]["key"] = "ec-p521"

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith(
            "authorities.issuing.key: provider 'cloud' (gcp-kms) cannot use ec-p521"
        )
        for p in problems
    )


def test_rsa_padding_on_ec_key(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["signature"] = "pss"

    assert any(
        p.startswith("authorities.root.signature: pss applies to RSA keys only")
        for p in problems_of(tmp_path, document)
    )


def test_hash_not_matching_key(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["hash"] = "sha512"

    assert any(
        p.startswith("authorities.issuing.hash: sha512 does not match key ec-p256")
        for p in problems_of(tmp_path, document)
    )


def test_invalid_algorithm_value(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["key"] = "ec-p255"

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("authorities.root.key") and "ec-p255" in p for p in problems
    )


def test_invalid_duration(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["validity"] = "20 years"

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("authorities.root.validity") and "'20 years'" in p
        for p in problems
    )


def test_invalid_subject(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["subject"] = {"commonname": "x"}

    assert any(
        p.startswith("authorities.root.subject: unknown subject attribute 'commonname'")
        for p in problems_of(tmp_path, document)
    )


def test_unknown_field(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["valdity"] = "1y"

    assert (
        "authorities.root.valdity: unknown field; did you mean 'validity'?"
        in problems_of(tmp_path, document)
    )


def test_unknown_field_lists_known(tmp_path: Path) -> None:
    document = base_config()
    document["bundles"]["trust"]["zzz"] = 1

    assert (
        "bundles.trust.zzz: unknown field (known: authorities, format, "
        "refresh_hint, targets)" in problems_of(tmp_path, document)
    )


def test_hyphenated_names_kept(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing-eu"] = document["authorities"].pop("issuing")
    document["authorities"]["issuing-eu"]["renew_befor"] = "1y"
    del document["authorities"]["issuing-eu"]["subject"]
    document["bundles"]["trust-all"] = document["bundles"].pop("trust")
    document["bundles"]["trust-all"]["format"] = "p7b"

    problems = problems_of(tmp_path, document)

    assert (
        "authorities.issuing-eu.renew_befor: unknown field; did you mean "
        "'renew_before'?" in problems
    )
    assert "authorities.issuing-eu.subject: missing: this field is required" in problems
    assert (
        "bundles.trust-all.format: must be 'pem', 'der', 'pkcs7' or 'spiffe' "
        "(got 'p7b')" in problems
    )


def test_union_member_names_hidden(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["key"] = "ec-p265"

    [problem] = [
        line
        for line in problems_of(tmp_path, document)
        if line.startswith("authorities.root.key")
    ]
    assert problem.startswith("authorities.root.key: must be 'ec-p256'")
    assert "or must be a mapping (got 'ec-p265')" in problem
    assert "KeyAdoption" not in problem
    assert "Input should be" not in problem


def test_plugin_problems_listed_with_others(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["valdity"] = "1y"
    document["providers"]["disk"]["pth"] = "keys"

    problems = problems_of(tmp_path, document)

    assert any(line.startswith("authorities.root.valdity:") for line in problems)
    assert "providers.disk.pth: unknown field; did you mean 'path'?" in problems


def test_pattern_message_not_name_rule(tmp_path: Path) -> None:
    document = base_config()
    document["targets"]["bucket"] = {
        "type": "s3",
        "bucket": "Not A Bucket",
        "region": "us-east-1",
    }

    [problem] = [
        line for line in problems_of(tmp_path, document) if "bucket.bucket" in line
    ]
    assert "invalid name: use 1 to 48" not in problem
    assert "must match the pattern" in problem


def test_invalid_name_constraint(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["name_constraints"] = {"permitted": ["ftp:x"]}

    assert any(
        p.startswith(
            "authorities.issuing.name_constraints.permitted.0: unknown name constraint"
        )
        for p in problems_of(tmp_path, document)
    )


def test_all_problems_reported(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["parent"] = "roott"
    document["authorities"]["root"]["provider"] = "hsm"
    document["bundles"]["trust"]["targets"] = ["web"]

    assert len(problems_of(tmp_path, document)) == 3


def test_literal_secret_rejected(tmp_path: Path) -> None:
    document = base_config()
    document["providers"]["disk"]["passphrase"] = "hunter2-literal"

    problems = problems_of(tmp_path, document)
    assert any(p.startswith("providers.disk.passphrase") for p in problems)
    assert not any("hunter2-literal" in p for p in problems)


def test_unset_secret_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PKIFED_TEST_PASSPHRASE")

    assert any(
        "environment variable PKIFED_TEST_PASSPHRASE is not set" in p
        for p in problems_of(tmp_path, base_config())
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("version: 1\nname: a\nname: b\n", encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "duplicate key 'name'" in str(raised.value)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("version: 1\nname: [unclosed\n", encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "invalid YAML: line" in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "absent.yaml")
    assert "file not found" in str(raised.value)


def test_renew_before_not_shorter(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["renew_before"] = "6y"

    assert any(
        p.startswith("authorities.issuing.renew_before: must be shorter")
        for p in problems_of(tmp_path, document)
    )


def test_invalid_name(tmp_path: Path) -> None:
    document = base_config()
    document["targets"]["Out_Dir"] = document["targets"].pop("out")

    assert any("invalid name 'Out_Dir'" in p for p in problems_of(tmp_path, document))


@pytest.mark.parametrize(
    "entry",
    ["dns:exa mple..com", "email:@x.com", "dns:-bad.example", "dns:bücher.example"],
)
def test_malformed_name_constraint(tmp_path: Path, entry: str) -> None:
    document = base_config()
    document["authorities"]["issuing"]["name_constraints"] = {"permitted": [entry]}

    problems = problems_of(tmp_path, document)
    assert any(
        p.startswith("authorities.issuing.name_constraints.permitted.0: invalid")
        for p in problems
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("validity", "99999999y"), ("validity", "1000000000mo"), ("path_length", 10**30)],
)
def test_huge_values_rejected(tmp_path: Path, field: str, value: object) -> None:
    document = base_config()
    document["authorities"]["root"][field] = value

    problems = problems_of(tmp_path, document)
    assert any(p.startswith(f"authorities.root.{field}") for p in problems)


def test_empty_secret_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKIFED_TEST_PASSPHRASE", "")

    assert any(
        "secret ${env:PKIFED_TEST_PASSPHRASE} is empty" in p
        for p in problems_of(tmp_path, base_config())
    )


def test_ml_dsa_rejected_for_now(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["issuing"]["key"] = "ml-dsa-65"

    assert any(
        p.startswith("authorities.issuing.key: ml-dsa-65 keys cannot sign")
        for p in problems_of(tmp_path, document)
    )


def test_relative_state_url_beside_config(tmp_path: Path) -> None:
    document = base_config()
    document["state"] = "sqlite:///state/pkifed.db"

    config = load_config(write(tmp_path, document))

    assert config.state_url == f"sqlite:///{tmp_path / 'state' / 'pkifed.db'}"


def test_union_errors_joined(tmp_path: Path) -> None:
    document = base_config()
    document["authorities"]["root"]["subject"] = ["CN=x"]

    problems = [p for p in problems_of(tmp_path, document) if "subject" in p]
    assert len(problems) == 1
    assert "Value error" not in problems[0]

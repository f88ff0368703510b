"""The configuration reference: generated from the models, complete and current."""

from __future__ import annotations

import ast
import datetime
import inspect
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, Field

from pkifed.config import reference
from pkifed.config.schema import FederationConfig, KeyAdoption
from pkifed.providers.algorithms import KeyAlgorithm
from pkifed.providers.registry import (
    PROVIDER_GROUP,
    TARGET_GROUP,
    available_types,
    load_plugin,
)
from pkifed.secrets import SecretRef
from tests.test_layers import imported_modules

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "docs" / "configuration.md"
MODULE = ROOT / "pkifed" / "config" / "reference.py"


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Yield every model class inside an annotation, through unions and generics."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = get_origin(annotation)
    if origin is Literal:
        return
    if origin is not None or isinstance(annotation, types.UnionType):
        for argument in get_args(annotation):
            yield from _nested_models(argument)


def reachable_models() -> list[type[BaseModel]]:
    """Return FederationConfig, every model it nests and every plugin's settings."""
    pending: list[type[BaseModel]] = [FederationConfig]
    for group in (PROVIDER_GROUP, TARGET_GROUP):
        pending += [
            load_plugin(group, name).settings_model for name in available_types(group)
        ]
    seen: list[type[BaseModel]] = []
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            pending.extend(_nested_models(info.annotation))
    return seen


def undocumented_fields(models: list[type[BaseModel]]) -> list[str]:
    """Return ``Model.field`` for each field without a description."""
    return [
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in models
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]


def test_checked_in_reference_current() -> None:
    generated = reference.generate()
    checked_in = CHECKED_IN.read_text(encoding="utf-8")

    assert generated == checked_in, (
        "docs/configuration.md is out of date with the models; regenerate it "
        f"with: {reference.REGENERATE_COMMAND}"
    )


def test_every_field_has_description() -> None:
    assert undocumented_fields(reachable_models()) == []


def test_missing_description_detected() -> None:
    class Undocumented(BaseModel):
        documented: int = Field(description="A field with a description.")
        bare: int = 0

    assert undocumented_fields([Undocumented]) == [
        f"{__name__}.test_missing_description_detected.<locals>.Undocumented.bare"
    ]


def test_every_field_has_row() -> None:
    rows = [row for section in reference.build_sections() for row in section.all_rows()]
    documented = {(row.model, row.field_name) for row in rows}
    missing = [
        f"{model.__qualname__}.{name}"
        for model in reachable_models()
        for name in model.model_fields
        if (model, name) not in documented
    ]

    assert missing == []


def test_rows_carry_descriptions() -> None:
    rows = [row for section in reference.build_sections() for row in section.all_rows()]

    for row in rows:
        assert row.description == row.model.model_fields[row.field_name].description


def test_every_plugin_type_has_section() -> None:
    text = reference.generate()

    for field_name, group in reference.PLUGIN_FIELDS.items():
        for type_name in available_types(group):
            assert f"### `{field_name}.<name>` with type: {type_name}\n" in text


def test_nested_paths_dotted() -> None:
    paths = {
        row.path for section in reference.build_sections() for row in section.all_rows()
    }

    assert "authorities.<name>.crl.validity" in paths
    assert "authorities.<name>.key.uri" in paths
    assert "policy.waivers[].expires" in paths
    assert "events.sinks.<name>.url" in paths
    assert "providers.<name>.retry.attempts" in paths


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (datetime.timedelta, "duration such as 90d"),
        (SecretRef | None, "secret reference: ${env:NAME} or ${file:PATH}"),
        (list[str], "list of strings"),
        (dict[str, int], "mapping of names to integers"),
        (Literal["text", "json"], "one of `text`, `json`"),
        (Literal["aws-kms"], "`aws-kms`"),
        # typing.Union builds another object than X | Y, and pydantic keeps it
        # for fields such as Optional[Duration].
        (Union[int, None], "integer"),  # noqa: UP007
        (
            list[KeyAlgorithm],
            "list, each one of " + ", ".join(f"`{a.value}`" for a in KeyAlgorithm),
        ),
        (
            KeyAlgorithm | KeyAdoption,
            "one of "
            + ", ".join(f"`{a.value}`" for a in KeyAlgorithm)
            + ", or mapping",
        ),
    ],
)
def test_type_described(annotation: Any, expected: str) -> None:
    assert reference.describe_type(annotation) == expected


def test_constraints_described() -> None:
    info = FederationConfig.model_fields["reconcile"]
    concurrency = info.annotation.model_fields["concurrency"]  # type: ignore[union-attr]

    assert reference.describe_field(concurrency) == "integer, 1 to 256"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime.timedelta(days=90), "90d"),
        (datetime.timedelta(days=7300), "20y"),
        (datetime.timedelta(minutes=5), "5m"),
        (True, "true"),
        ([], "[]"),
        ({}, "{}"),
        ("", '""'),
        (KeyAlgorithm.EC_P256, "ec-p256"),
    ],
)
def test_default_formatted(value: Any, expected: str) -> None:
    assert reference.format_value(value) == expected


def test_markdown_escapes_outside_code() -> None:
    escaped = reference._escape("publish <name>.pem as `<name>.pem` | done")

    assert escaped == r"publish &lt;name&gt;.pem as `<name>.pem` \| done"


@pytest.mark.parametrize("seed", ["0", "1"])
def test_cli_output_deterministic(tmp_path: Path, seed: str) -> None:
    # Separate processes with different hash seeds catch output that depends
    # on set or dict ordering of strings.
    output = tmp_path / "configuration.md"
    environment = {**os.environ, "PYTHONHASHSEED": seed}
    result = subprocess.run(
        [sys.executable, "-m", "pkifed.config.reference", "-o", str(output)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert output.read_text(encoding="utf-8") == reference.generate()


def test_cli_writes_stdout() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pkifed.config.reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == reference.generate()


def test_cli_unwritable_output_error(tmp_path: Path) -> None:
    output = tmp_path / "missing-directory" / "configuration.md"
    result = subprocess.run(
        [sys.executable, "-m", "pkifed.config.reference", "-o", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot write {output}: ")
    assert "Traceback" not in result.stderr


def test_module_in_config_layer() -> None:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    imported = imported_modules(tree, "pkifed.config.reference", is_package=False)
    allowed = ("pkifed.config", "pkifed.providers", "pkifed.errors", "pkifed.secrets")
    outside = [name for name in imported if not name.startswith(allowed)]

    assert MODULE.parent.name == "config"
    assert imported, "expected pkifed imports in the reference module"
    assert outside == []

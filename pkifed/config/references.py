"""``${env:NAME}`` and ``${file:PATH}`` in the plain settings of plugins.

A provider's or target's setting that is not a secret, such as an endpoint URL
or a bucket name, may be written as a reference. The loader replaces it with the
variable's value or the file's content before validating the settings, so the
value appears in messages and plans like any other setting. Secret settings keep
their references unresolved (:class:`pkifed.secrets.SecretRef`) and are skipped
here, so this expansion never reads a secret. A setting whose model contains a
secret at any depth is skipped as a whole.

A reference is the whole value. A value that starts like one but is not, such
as ``${env:}`` or ``pki/${env:NAME}``, is reported as invalid instead of being
used as written.

A relative PATH is relative to the configuration file. Trailing line breaks are
removed, because editors and ``echo`` add them.
"""

from __future__ import annotations

import itertools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pkifed.config.problems import MAX_SHOWN
from pkifed.errors import Problem
from pkifed.secrets import (
    MAX_REFERENCED_FILE,
    SecretRef,
    parse_reference,
    read_referenced_file,
)

__all__ = ["MAX_REFERENCED_FILE", "expand_references", "secret_fields"]

# The start of a reference, to catch a value that looks like one but is not.
_REFERENCE_START = re.compile(r"\$\{(?:env|file):")

# A variable name that a POSIX shell can export: letters, digits and
# underscores, not starting with a digit.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """Return the keys of ``model``'s fields that are or contain a secret reference.

    A field's alias counts as a key too, because the mapping is keyed as
    written in the file.
    """
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if _mentions_secret(field.annotation, frozenset()):
            keys.add(name)
            keys.update(
                alias
                for alias in (field.alias, field.validation_alias)
                if isinstance(alias, str)
            )
    return frozenset(keys)


def _mentions_secret(annotation: Any, seen: frozenset[type]) -> bool:
    if annotation is SecretRef:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        inner = seen | {annotation}
        return any(
            _mentions_secret(field.annotation, inner)
            for field in annotation.model_fields.values()
        )
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return False
    return any(
        _mentions_secret(argument, seen) for argument in typing.get_args(annotation)
    )


def expand_references(
    raw: dict[str, Any], model: type[BaseModel], path: str, base_dir: Path
) -> tuple[dict[str, Any], list[Problem]]:
    """Replace references in the non-secret settings of one plugin's mapping.

    Returns the expanded mapping and a problem for each reference that could
    not be read or is invalid. ``raw`` itself is left unchanged.
    """
    skipped = secret_fields(model)
    expanded: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in raw.items():
        if key in skipped:
            expanded[key] = value
        else:
            expanded[key] = _expand(value, f"{path}.{key}", base_dir, problems)
    return expanded, problems


def _expand(value: Any, path: str, base_dir: Path, problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {
            key: _expand(item, f"{path}.{key}", base_dir, problems)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _expand(item, f"{path}.{index}", base_dir, problems)
            for index, item in enumerate(value)
        ]
    if not isinstance(value, str):
        return value
    reference = parse_reference(value)
    if reference is None:
        if _REFERENCE_START.search(value):
            problems.append(
                Problem(
                    path,
                    f"invalid reference {value!r}: expected ${{env:NAME}} or "
                    "${file:PATH} as the whole value",
                )
            )
        return value
    kind, target = reference
    try:
        if kind == "env":
            return _read_variable(target)
        return _read_file(target, base_dir)
    except ValueError as error:
        problems.append(Problem(path, f"{value.strip()}: {error}"))
        return value


def _read_variable(name: str) -> str:
    value = os.environ.get(name)
    if value is None and _VARIABLE_NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid environment variable name {name!r}: use letters, digits and "
            "underscores, not starting with a digit"
        )
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    if not value.strip():
        raise ValueError(f"environment variable {name} is empty")
    return value.rstrip("\r\n")


def _read_file(target: str, base_dir: Path) -> str:
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists() and _in_dev_directory(path):
        # pkifed dev up writes the files under .pkifed/dev that a federation
        # file refers to, and pkifed dev down removes them.
        raise ValueError(
            f"{path} does not exist; run pkifed dev up with this configuration "
            "file, which writes it when it starts the local services"
        )
    text = read_referenced_file(path)
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def _in_dev_directory(path: Path) -> bool:
    parts = path.parts
    return any(
        (first, second) == (".pkifed", "dev")
        for first, second in itertools.pairwise(parts)
    )


def conceal_expanded(problems: list[Problem], raw: Any, expanded: Any) -> list[Problem]:
    """Show each reference instead of its value in ``problems``' messages.

    A setting that fails validation after expansion may have read the wrong
    file, such as a token file named where a URL belongs, so its content is
    never repeated, whole or cut short, in a message.
    """
    replacements = sorted(
        _replacements(raw, expanded), key=lambda pair: len(pair[1]), reverse=True
    )
    concealed = []
    for problem in problems:
        message = problem.message
        for reference, value in replacements:
            if not value:
                # Expansion rejects empty values, and "" would match everywhere.
                continue
            value_text = repr(value)
            message = message.replace(value_text, reference)
            cut = value_text[: MAX_SHOWN - 3] + "..."
            message = message.replace(cut, reference)
            message = message.replace(value, reference)
        concealed.append(Problem(problem.path, message))
    return concealed


def _replacements(raw: Any, expanded: Any) -> typing.Iterator[tuple[str, str]]:
    if isinstance(raw, dict) and isinstance(expanded, dict):
        for key, value in raw.items():
            yield from _replacements(value, expanded.get(key))
    elif isinstance(raw, list) and isinstance(expanded, list):
        for before, after in zip(raw, expanded, strict=False):
            yield from _replacements(before, after)
    elif isinstance(raw, str) and isinstance(expanded, str) and raw != expanded:
        yield raw.strip(), expanded

"""Turning pydantic's validation errors into problems a user can act on.

Each problem is located by the dotted path of the value in the file, such as
``authorities.issuing-aws.renew_before``, and states what is wrong in plain words:
which values are accepted, which field name was probably meant.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from pkifed.config.schema import NAME_PATTERN
from pkifed.errors import Problem
from pkifed.secrets import SECRET_ERROR_TYPE

_NAME_RULE = (
    "use 1 to 48 lowercase letters, digits and hyphens, starting and ending with "
    "a letter or digit"
)

# Errors whose input is never shown: a missing value has none, and the input of
# an invalid secret reference may be a secret typed in by mistake.
_QUIET = {"missing", SECRET_ERROR_TYPE}

# How many characters of a value a message shows at most.
MAX_SHOWN = 80


def validation_problems(
    error: ValidationError,
    document: Any,
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> list[Problem]:
    """List one problem per invalid value in ``document``.

    ``model`` is the model ``document`` was validated against; it supplies the
    field names that an unknown field is compared with.
    """
    # A union reports one error per member for the same value, so they are
    # joined into one problem per path, listing every accepted form once.
    by_path: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        location = input_location(document, item["loc"])
        path = ".".join(filter(None, [prefix, *location]))
        message = _message(item, document, location, model)
        messages = by_path.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    return [Problem(path, "; or ".join(messages)) for path, messages in by_path.items()]


def input_location(document: Any, location: tuple[Any, ...]) -> list[str]:
    """Return the parts of pydantic's ``location`` that are keys of ``document``.

    pydantic adds parts that name types, such as ``str-enum[KeyAlgorithm]`` or
    ``KeyAdoption`` for a union member. They are distinguished from the file's
    own keys by walking ``document``: a part is kept when it is a key or index of
    the value reached so far, or a field name that a mapping lacks.
    """
    parts: list[str] = []
    node = document
    for part in location:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, dict) and _is_field_name(part):
            # A required field that the mapping lacks.
            parts.append(str(part))
            node = None
    return parts


def _is_field_name(part: Any) -> bool:
    return isinstance(part, str) and part.isidentifier() and part.islower()


def _message(
    item: Any, document: Any, location: list[str], model: type[BaseModel] | None
) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return _unknown_field(location, model)
    if kind == "missing":
        return "missing: this field is required"
    message = str(item["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = item.get("ctx", {}).get("pattern")
        if pattern == NAME_PATTERN:
            message = f"invalid name: {_NAME_RULE}"
        else:
            message = f"invalid value: it must match the pattern {pattern}"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = "must be a mapping"
    elif message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    if kind not in _QUIET and "input" in item:
        value = item["input"]
        value_text = repr(value)
        if not isinstance(value, dict | list) and value_text not in message:
            if len(value_text) > MAX_SHOWN:
                value_text = value_text[: MAX_SHOWN - 3] + "..."
            message = f"{message} (got {value_text})"
    return message


def _unknown_field(location: list[str], model: type[BaseModel] | None) -> str:
    known = _fields_at(model, location[:-1]) if location else None
    if not known:
        return "unknown field"
    close = difflib.get_close_matches(location[-1], known, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field (known: {', '.join(sorted(known))})"


def _fields_at(model: type[BaseModel] | None, location: list[str]) -> list[str]:
    """Return the field names of the model that the value at ``location`` has."""
    annotation: Any = model
    for part in location:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    found = _model_of(annotation)
    return list(found.model_fields) if found is not None else []


def _step(annotation: Any, part: str) -> Any:
    found = _model_of(annotation)
    if found is not None:
        field = found.model_fields.get(part)
        return field.annotation if field is not None else None
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is dict and len(arguments) == 2:
        return arguments[1]
    if origin is list and arguments:
        return arguments[0]
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """Return the model class in ``annotation``, looking inside unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is typing.Union or isinstance(
        annotation, types.UnionType
    ):
        for argument in typing.get_args(annotation):
            found = _model_of(argument)
            if found is not None:
                return found
    return None

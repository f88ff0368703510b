"""Generate the configuration reference, docs/configuration.md, from the models.

Every row comes from a pydantic field: its annotation, constraints, default and
description. Provider and target types come from the ``pkifed.providers`` and
``pkifed.targets`` entry points, so an installed third-party plugin is listed
too. Nothing is written per field here, so the reference changes only when a
model does, and the same models always give the same bytes.

Run ``python -m pkifed.config.reference -o docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import inspect
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pkifed.config.durations import format_duration
from pkifed.config.schema import FederationConfig
from pkifed.errors import PluginError
from pkifed.providers.registry import (
    PROVIDER_GROUP,
    TARGET_GROUP,
    available_types,
    load_plugin,
)
from pkifed.secrets import SecretRef

REGENERATE_COMMAND = "python -m pkifed.config.reference -o docs/configuration.md"

# Top-level fields whose entries are validated by the plugin named in their
# ``type:``, so their settings come from the plugins' models.
PLUGIN_FIELDS = {"providers": PROVIDER_GROUP, "targets": TARGET_GROUP}

# Readable names of plain types, singular and plural.
_TYPE_NAMES: dict[Any, tuple[str, str]] = {
    str: ("string", "strings"),
    int: ("integer", "integers"),
    float: ("number", "numbers"),
    bool: ("boolean", "booleans"),
    datetime.timedelta: ("duration such as 90d", "durations such as 90d"),
    datetime.date: ("date as YYYY-MM-DD", "dates as YYYY-MM-DD"),
    SecretRef: (
        "secret reference: ${env:NAME} or ${file:PATH}",
        "secret references",
    ),
    Path: ("path", "paths"),
}

_INTRODUCTION = f"""\
# Configuration reference

This page lists every field of the federation file, of each provider type and
of each target type. It is generated from pkifed's pydantic models, so change a
field's description in its model, not here, and then run:

```sh
{REGENERATE_COMMAND}
```

- Paths are dotted. `<name>` stands for a name you choose, such as an
  authority's, and `[]` for each item of a list.
- A duration is a whole number and a unit: `y` (365 days), `mo` (30 days),
  `w`, `d`, `h`, `m` or `s`, such as `90d` or `20y`.
- A secret reference is `${{env:NAME}}` (an environment variable) or
  `${{file:PATH}}` (a file, relative to the configuration file). Secrets
  themselves are never accepted in the file.
- The other settings of providers and targets may be written as such a
  reference too. The loader replaces it with the value before checking it.
- Unknown fields are rejected everywhere.
"""


@dataclass(frozen=True)
class Row:
    """One field in the reference: where it is, and what it accepts."""

    path: str
    type_description: str
    default: str
    description: str
    model: type[BaseModel]
    field_name: str


@dataclass
class Section:
    """A heading with an introduction, a table of fields and nested sections."""

    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def all_rows(self) -> Iterator[Row]:
        """Yield the rows of this section, then those of every subsection."""
        yield from self.rows
        for subsection in self.subsections:
            yield from subsection.all_rows()


# --- types ---------------------------------------------------------------------


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _union_members(annotation: Any) -> list[Any]:
    """Return the members of a union without None, or the annotation alone."""
    annotation = _strip_annotated(annotation)
    if not _is_union(annotation):
        return [annotation]
    members = [_strip_annotated(a) for a in get_args(annotation)]
    return [member for member in members if member is not type(None)]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _choices(values: Sequence[Any]) -> str:
    quoted = [f"`{value}`" for value in values]
    if len(quoted) == 1:
        return quoted[0]
    return "one of " + ", ".join(quoted)


def describe_type(annotation: Any, *, plural: bool = False) -> str:
    """Describe an annotation in words, such as ``list of strings``."""
    members = _union_members(annotation)
    if len(members) > 1:
        # Several models read the same ("mapping"), so each wording appears once.
        words = dict.fromkeys(describe_type(m, plural=plural) for m in members)
        return ", or ".join(words)
    annotation = members[0]
    origin = get_origin(annotation)
    if origin is Literal:
        return _choices(get_args(annotation))
    if origin is list:
        return _describe_list(get_args(annotation)[0])
    if origin is dict:
        value = get_args(annotation)[1]
        if value is Any:
            return "mappings" if plural else "mapping"
        return "mapping of names to " + describe_type(value, plural=True)
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return _choices([member.value for member in annotation])
    if _is_model(annotation):
        return "mappings" if plural else "mapping"
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation][1 if plural else 0]
    return getattr(annotation, "__name__", str(annotation))


def _describe_list(item: Any) -> str:
    item = _strip_annotated(item)
    if inspect.isclass(item) and issubclass(item, enum.Enum):
        return "list, each " + _choices([member.value for member in item])
    if get_origin(item) is Literal:
        return "list, each " + _choices(get_args(item))
    return "list of " + describe_type(item, plural=True)


def _describe_constraints(info: FieldInfo) -> list[str]:
    base = _union_members(info.annotation)[0]
    unit = "items" if get_origin(base) in (list, dict) else "characters"
    bounds: dict[str, Any] = {}
    parts: list[str] = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            bounds["ge"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"greater than {item.gt}")
        elif isinstance(item, annotated_types.Le):
            bounds["le"] = item.le
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"less than {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            count = item.min_length
            parts.append("not empty" if count == 1 else f"at least {count} {unit}")
        elif isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length} {unit}")
        elif getattr(item, "pattern", None) is not None:
            parts.append(f"matching `{item.pattern}`")
    if "ge" in bounds and "le" in bounds:
        parts.insert(0, f"{bounds['ge']} to {bounds['le']}")
    elif "ge" in bounds:
        parts.insert(0, f"at least {bounds['ge']}")
    elif "le" in bounds:
        parts.insert(0, f"at most {bounds['le']}")
    return parts


def describe_field(info: FieldInfo) -> str:
    """Describe a field's type with its constraints, such as ``integer, 1 to 256``."""
    return ", ".join([describe_type(info.annotation), *_describe_constraints(info)])


# --- defaults ------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Write a default value as it would appear in the YAML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.timedelta):
        return _format_duration(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{key}: {format_value(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def _format_duration(value: datetime.timedelta) -> str:
    # Whole years or days read best in a reference (90d rather than 3mo), and
    # the rest falls back to the units the loader writes.
    for unit, days in (("y", 365), ("d", 1)):
        if value % datetime.timedelta(days=days) == datetime.timedelta(0):
            return f"{value // datetime.timedelta(days=days)}{unit}"
    return format_duration(value)


def describe_default(info: FieldInfo) -> str:
    """Return ``required``, ``optional`` or the default value in backticks."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True, validated_data={})
    # A nested section's fields carry their own defaults in the rows below.
    if value is None or isinstance(value, BaseModel):
        return "optional"
    return f"`{format_value(value)}`"


# --- sections ------------------------------------------------------------------


def _docstring(model: type[BaseModel]) -> str:
    # The class's own docstring only: inspect.getdoc would fall back to a base
    # class's, which describes the base, not this model.
    text = model.__dict__.get("__doc__") or ""
    return inspect.cleandoc(text).replace("``", "`")


def _type_label(model: type[BaseModel]) -> str:
    type_field = model.model_fields.get("type")
    if type_field is not None and get_origin(type_field.annotation) is Literal:
        return "type: " + ", ".join(str(v) for v in get_args(type_field.annotation))
    return model.__name__


def _child_path(path: str, annotation: Any) -> tuple[str, list[Any]]:
    """Return the path of a field's nested values and the models found there."""
    members = _union_members(annotation)
    models = [member for member in members if _is_model(member)]
    if models:
        return path, models
    for member in members:
        origin = get_origin(member)
        if origin is dict:
            return _child_path(f"{path}.<name>", get_args(member)[1])
        if origin is list:
            return _child_path(f"{path}[]", get_args(member)[0])
    return path, []


def model_section(title: str, model: type[BaseModel], prefix: str) -> Section:
    """Build a section with a row for each field of ``model`` under ``prefix``."""
    section = Section(title, _docstring(model))
    _add_rows(section, model, prefix)
    return section


def _add_rows(section: Section, model: type[BaseModel], prefix: str) -> None:
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        section.rows.append(
            Row(
                path=path,
                type_description=describe_field(info),
                default=describe_default(info),
                description=info.description or "",
                model=model,
                field_name=name,
            )
        )
        child_path, models = _child_path(path, info.annotation)
        if len(models) == 1:
            _add_rows(section, models[0], child_path)
            continue
        # Several models, such as the event sink types, each get a subsection.
        for member in models:
            title = f"`{child_path}` with {_type_label(member)}"
            section.subsections.append(model_section(title, member, child_path))


def plugin_section(field_name: str, group: str) -> Section:
    """Build the section of a plugin field, with a subsection per registered type."""
    info = FederationConfig.model_fields[field_name]
    intro = (
        f"{info.description} The `type` selects one of the types below, which "
        f"are registered under the `{group}` entry points."
    )
    section = Section(f"`{field_name}`", intro)
    for type_name in available_types(group):
        plugin = load_plugin(group, type_name)
        settings_model: type[BaseModel] = plugin.settings_model
        subsection = model_section(
            f"`{field_name}.<name>` with type: {type_name}",
            settings_model,
            f"{field_name}.<name>",
        )
        implementation = f"Implemented by `{plugin.__module__}.{plugin.__qualname__}`."
        subsection.intro = f"{subsection.intro}\n\n{implementation}".strip()
        section.subsections.append(subsection)
    return section


def build_sections() -> list[Section]:
    """Build the reference: the top level, then one section per nested field.

    Raises:
        PluginError: a registered provider or target type cannot be imported.
    """
    top = Section("Top level", _docstring(FederationConfig))
    sections = [top]
    for name, info in FederationConfig.model_fields.items():
        top.rows.append(
            Row(
                path=name,
                type_description=describe_field(info),
                default=describe_default(info),
                description=info.description or "",
                model=FederationConfig,
                field_name=name,
            )
        )
        if name in PLUGIN_FIELDS:
            sections.append(plugin_section(name, PLUGIN_FIELDS[name]))
            continue
        child_path, models = _child_path(name, info.annotation)
        if len(models) == 1:
            sections.append(model_section(f"`{child_path}`", models[0], child_path))
    return sections


# --- Markdown ------------------------------------------------------------------


def _escape(text: str) -> str:
    """Escape Markdown table and HTML characters outside code spans."""
    parts = text.replace("\n", " ").split("`")
    for index in range(0, len(parts), 2):
        parts[index] = (
            parts[index].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
        )
    return "`".join(parts).replace("|", r"\|")


def _render_section(section: Section, level: int) -> list[str]:
    lines = [f"{'#' * level} {section.title}", ""]
    for paragraph in section.intro.split("\n\n") if section.intro else []:
        lines += [_escape(paragraph), ""]
    if section.rows:
        lines += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
        for row in section.rows:
            cells = (
                f"`{row.path}`",
                row.type_description,
                row.default,
                row.description,
            )
            lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
        lines.append("")
    for subsection in section.subsections:
        lines += _render_section(subsection, level + 1)
    return lines


def render_markdown(sections: Sequence[Section]) -> str:
    """Render the sections as one Markdown document ending in a newline."""
    lines = [*_INTRODUCTION.splitlines(), ""]
    for section in sections:
        lines += _render_section(section, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def generate() -> str:
    """Return the whole reference as Markdown."""
    return render_markdown(build_sections())


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference to standard output or to the file given with -o."""
    parser = argparse.ArgumentParser(
        prog="python -m pkifed.config.reference",
        description="Write the configuration reference as Markdown.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="File to write, such as docs/configuration.md; standard output if unset.",
    )
    arguments = parser.parse_args(argv)
    try:
        text = generate()
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if arguments.output is None:
        sys.stdout.write(text)
        return 0
    try:
        arguments.output.write_text(text, encoding="utf-8")
    except OSError as error:
        print(
            f"error: cannot write {arguments.output}: {error.strerror}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

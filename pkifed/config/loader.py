"""Loading and validating a federation file, reporting every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url

from pkifed.config.names import parse_general_name, parse_subject
from pkifed.config.problems import validation_problems
from pkifed.config.references import conceal_expanded, expand_references
from pkifed.config.schema import AuthorityConfig, FederationConfig
from pkifed.errors import ConfigError, PluginError, Problem
from pkifed.providers.base import KeyProvider
from pkifed.providers.registry import PROVIDER_GROUP, TARGET_GROUP, load_plugin
from pkifed.providers.targets.base import PublishTarget
from pkifed.secrets import SecretRef


@dataclass(frozen=True)
class PluginConfig:
    """A provider's or target's class with its validated settings."""

    plugin: type[Any]
    settings: BaseModel


@dataclass(frozen=True)
class LoadedConfig:
    """A validated federation file and the plugin settings it declares."""

    path: Path
    model: FederationConfig
    providers: dict[str, PluginConfig]
    targets: dict[str, PluginConfig]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_url(self) -> str:
        """The state store's URL, defaulting to SQLite beside the config file.

        A relative SQLite path is resolved against the config file's directory,
        like every other path in the file.
        """
        if not self.model.state:
            return f"sqlite:///{self.base_dir / '.pkifed' / (self.model.name + '.db')}"
        url = make_url(self.model.state)
        database = url.database
        if url.get_backend_name() == "sqlite" and database and database != ":memory:":
            path = Path(database).expanduser()
            if not path.is_absolute():
                url = url.set(database=str(self.base_dir / path))
                return url.render_as_string(hide_password=False)
        return self.model.state


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode
) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} on line {line}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), [Problem("", f"cannot read: {error}")]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader.
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(
            str(path), [Problem("", f"invalid YAML: {where}{problem}")]
        ) from None


def _validate_plugin(
    group: str,
    base: type[Any],
    path: str,
    raw: Any,
    base_dir: Path,
    check_secrets: bool = True,
) -> tuple[PluginConfig | None, list[Problem]]:
    if not isinstance(raw, dict):
        return None, [Problem(path, "must be a mapping with a type")]
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        return None, [Problem(f"{path}.type", "missing")]
    try:
        plugin = load_plugin(group, type_name)
    except PluginError as error:
        return None, [Problem(f"{path}.type", str(error))]
    if not (isinstance(plugin, type) and issubclass(plugin, base)):
        return None, [
            Problem(f"{path}.type", f"plugin {type_name!r} is not a {base.__name__}")
        ]
    settings_model: type[BaseModel] = getattr(plugin, "settings_model", BaseModel)
    expanded, problems = expand_references(raw, settings_model, path, base_dir)
    if problems:
        return None, problems
    try:
        settings = settings_model.model_validate(
            expanded, context={"base_dir": base_dir}
        )
    except ValidationError as error:
        problems = validation_problems(error, expanded, settings_model, path)
        return None, conceal_expanded(problems, raw, expanded)
    for field, value in settings:
        if check_secrets and isinstance(value, SecretRef):
            message = value.check()
            if message is not None:
                problems.append(Problem(f"{path}.{field}", message))
    return PluginConfig(plugin, settings), problems


def load_config(path: str | Path, *, check_secrets: bool = True) -> LoadedConfig:
    """Read, parse and validate a federation file.

    Raises:
        ConfigError: with every problem found, each located by its dotted path.
    """
    path = Path(path).resolve()
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [Problem("", "the file must contain a mapping")])
    problems: list[Problem] = []
    model: FederationConfig | None = None
    try:
        model = FederationConfig.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as error:
        problems.extend(validation_problems(error, raw, FederationConfig))

    # Plugin settings are checked even when the rest of the file is invalid, so
    # one run lists every problem instead of revealing them stage by stage.
    sections = (
        ("providers", PROVIDER_GROUP, KeyProvider),
        ("targets", TARGET_GROUP, PublishTarget),
    )
    plugins: dict[str, dict[str, PluginConfig]] = {"providers": {}, "targets": {}}
    for section, group, base in sections:
        declared = raw.get(section)
        if not isinstance(declared, dict):
            continue
        for name, settings in declared.items():
            plugin, found = _validate_plugin(
                group,
                base,
                f"{section}.{name}",
                settings,
                path.parent,
                check_secrets,
            )
            problems.extend(found)
            if plugin is not None:
                plugins[section][name] = plugin
    providers = plugins["providers"]
    targets = plugins["targets"]
    if model is None:
        raise ConfigError(str(path), problems)

    problems.extend(check_federation(model, providers))
    if problems:
        raise ConfigError(str(path), problems)
    return LoadedConfig(path, model, providers, targets)


def check_federation(
    model: FederationConfig, providers: dict[str, PluginConfig]
) -> list[Problem]:
    """Check references, the hierarchy's shape and each authority's profile."""
    problems: list[Problem] = []
    problems.extend(_check_references(model))
    problems.extend(_check_cycles(model))
    for name, authority in model.authorities.items():
        problems.extend(_check_authority(model, name, authority, providers))
        problems.extend(_check_crl(model, name, authority))
    problems.extend(_check_state_url(model))
    return problems


def _check_crl(
    model: FederationConfig, name: str, authority: AuthorityConfig
) -> list[Problem]:
    if authority.crl is None:
        return []
    base = f"authorities.{name}.crl"
    problems = []
    for index, target in enumerate(authority.crl.targets):
        if target not in model.targets:
            problems.append(
                Problem(
                    f"{base}.targets.{index}",
                    f"unknown target {target!r} (known: {_known(model.targets)})",
                )
            )
    for index, url in enumerate(authority.crl.distribution_points):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ldap", "ldaps") or not (
            parts.netloc or parts.scheme.startswith("ldap")
        ):
            problems.append(
                Problem(
                    f"{base}.distribution_points.{index}",
                    f"invalid URL {url!r}; expected an http, https, ldap or ldaps "
                    "URL such as http://pki.example.com/issuing.crl",
                )
            )
    if authority.crl.validity >= authority.validity:
        problems.append(
            Problem(
                f"{base}.validity",
                "must be shorter than the authority's validity, or every CRL would "
                "be cut short at the certificate's expiry",
            )
        )
    return problems


def _known(names: Any) -> str:
    return ", ".join(sorted(names)) or "none"


def _check_references(model: FederationConfig) -> list[Problem]:
    problems = []
    for name, authority in model.authorities.items():
        base = f"authorities.{name}"
        if authority.provider not in model.providers:
            problems.append(
                Problem(
                    f"{base}.provider",
                    f"unknown provider {authority.provider!r} "
                    f"(known: {_known(model.providers)})",
                )
            )
        if authority.parent is not None and authority.parent not in model.authorities:
            problems.append(
                Problem(
                    f"{base}.parent",
                    f"unknown authority {authority.parent!r} "
                    f"(known: {_known(set(model.authorities) - {name})})",
                )
            )
        for index, target in enumerate(authority.publish):
            if target not in model.targets:
                problems.append(
                    Problem(
                        f"{base}.publish.{index}",
                        f"unknown target {target!r} (known: {_known(model.targets)})",
                    )
                )
    for name, bundle in model.bundles.items():
        if bundle.format == "der" and len(set(bundle.authorities)) != 1:
            problems.append(
                Problem(
                    f"bundles.{name}.format",
                    "der holds exactly one certificate, but the bundle lists "
                    f"{len(set(bundle.authorities))} authorities; use pem, pkcs7 or "
                    "spiffe",
                )
            )
        if bundle.refresh_hint is not None and bundle.format != "spiffe":
            problems.append(
                Problem(
                    f"bundles.{name}.refresh_hint", "applies to the spiffe format only"
                )
            )
        for index, authority_name in enumerate(bundle.authorities):
            if authority_name not in model.authorities:
                problems.append(
                    Problem(
                        f"bundles.{name}.authorities.{index}",
                        f"unknown authority {authority_name!r} "
                        f"(known: {_known(model.authorities)})",
                    )
                )
        for index, target in enumerate(bundle.targets):
            if target not in model.targets:
                problems.append(
                    Problem(
                        f"bundles.{name}.targets.{index}",
                        f"unknown target {target!r} (known: {_known(model.targets)})",
                    )
                )
    return problems


def _check_cycles(model: FederationConfig) -> list[Problem]:
    problems = []
    reported: set[str] = set()
    for start in model.authorities:
        chain = [start]
        current = model.authorities[start].parent
        while current is not None and current in model.authorities:
            if current == start:
                if not reported & set(chain):
                    cycle = " -> ".join([*chain, start])
                    problems.append(
                        Problem(
                            f"authorities.{start}.parent",
                            f"parent chain forms a cycle: {cycle}",
                        )
                    )
                reported.update(chain)
                break
            if current in chain:
                break
            chain.append(current)
            current = model.authorities[current].parent
    return problems


def _check_authority(
    model: FederationConfig,
    name: str,
    authority: AuthorityConfig,
    providers: dict[str, PluginConfig],
) -> list[Problem]:
    base = f"authorities.{name}"
    problems = []
    try:
        parse_subject(authority.subject)
    except ValueError as error:
        problems.append(Problem(f"{base}.subject", str(error)))
    if authority.name_constraints is not None:
        constraints = authority.name_constraints
        for field_name in ("permitted", "excluded"):
            for index, entry in enumerate(getattr(constraints, field_name)):
                try:
                    parse_general_name(entry)
                except ValueError as error:
                    path = f"{base}.name_constraints.{field_name}.{index}"
                    problems.append(Problem(path, str(error)))
        if not constraints.permitted and not constraints.excluded:
            problems.append(
                Problem(
                    f"{base}.name_constraints",
                    "needs at least one permitted or excluded name",
                )
            )

    if authority.cross_sign and authority.parent is not None:
        problems.append(
            Problem(f"{base}.cross_sign", "applies to roots only (no parent)")
        )
    algorithm = authority.algorithm
    if authority.signature is not None and not algorithm.is_rsa:
        problems.append(
            Problem(
                f"{base}.signature",
                f"{authority.signature} applies to RSA keys only, but the key is "
                f"{algorithm}",
            )
        )
    if authority.hash is not None and authority.hash not in algorithm.allowed_hashes():
        expected = (
            ", ".join(sorted(algorithm.allowed_hashes())) or "none (it signs messages)"
        )
        problems.append(
            Problem(
                f"{base}.hash",
                f"{authority.hash} does not match key {algorithm}; expected {expected}",
            )
        )
    if authority.renewal_window >= authority.validity:
        problems.append(
            Problem(
                f"{base}.renew_before",
                "must be shorter than the validity, or the certificate would be "
                "re-issued at every run",
            )
        )

    if algorithm.family == "ml-dsa":
        problems.append(
            Problem(
                f"{base}.key",
                f"{algorithm} keys cannot sign CA certificates through a provider yet; "
                "use an EC or RSA algorithm",
            )
        )
    plugin = providers.get(authority.provider)
    if plugin is not None:
        offered = plugin.plugin.offered_algorithms(plugin.settings)
        if algorithm not in offered:
            problems.append(
                Problem(
                    f"{base}.key",
                    f"provider {authority.provider!r} ({plugin.plugin.type_name}) "
                    f"cannot use {algorithm} (offered: {_known(offered)})",
                )
            )

    parent = model.authorities.get(authority.parent) if authority.parent else None
    if parent is not None:
        problems.extend(_check_against_parent(name, authority, parent))
    return problems


def _check_against_parent(
    name: str, authority: AuthorityConfig, parent: AuthorityConfig
) -> list[Problem]:
    base = f"authorities.{name}"
    problems = []
    if authority.validity > parent.validity:
        problems.append(
            Problem(
                f"{base}.validity",
                f"{_days(authority.validity)} outlives parent {authority.parent!r} "
                f"({_days(parent.validity)}); the certificate would be cut short "
                "at the parent's expiry",
            )
        )
    if parent.path_length == 0:
        problems.append(
            Problem(
                f"{base}.parent",
                f"parent {authority.parent!r} has path_length 0 and cannot have a "
                "CA below it",
            )
        )
    elif parent.path_length is not None:
        limit = parent.path_length - 1
        if authority.path_length is None or authority.path_length > limit:
            shown = (
                "no limit" if authority.path_length is None else authority.path_length
            )
            problems.append(
                Problem(
                    f"{base}.path_length",
                    f"got {shown}, expected at most {limit} because parent "
                    f"{authority.parent!r} has path_length {parent.path_length}",
                )
            )
    return problems


def _days(value: Any) -> str:
    return f"{value.days} days"


def _check_state_url(model: FederationConfig) -> list[Problem]:
    if model.state is None:
        return []
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(model.state)
    except ArgumentError:
        # The URL may hold a password, so it is not repeated.
        return [Problem("state", "invalid SQLAlchemy URL")]
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        return [
            Problem(
                "state",
                f"unsupported database {url.get_backend_name()!r} "
                "(known: postgresql, sqlite)",
            )
        ]
    return []

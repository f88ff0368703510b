"""Discovery of provider and publish-target plugins through entry points.

Key providers register under the ``pkifed.providers`` group and publish targets
under ``pkifed.targets``; the entry point's name is the ``type:`` used in
configuration files. Plugins are imported only when a configuration uses them,
so a cloud SDK that is not installed costs nothing until it is needed.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pkifed.errors import PluginError

PROVIDER_GROUP = "pkifed.providers"
TARGET_GROUP = "pkifed.targets"

# Extras that install each built-in plugin's SDK, named in load errors.
_EXTRAS = {
    "aws-kms": "pkifed[aws]",
    "s3": "pkifed[aws]",
    "gcp-kms": "pkifed[gcp]",
    "gcs": "pkifed[gcp]",
    "azure-keyvault": "pkifed[azure]",
    "azure-blob": "pkifed[azure]",
    "pkcs11": "pkifed[pkcs11]",
}


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        if point.name in found and found[point.name].value != point.value:
            raise PluginError(
                f"plugin type {point.name!r} in group {group} is registered twice: "
                f"{found[point.name].value} and {point.value}"
            )
        found[point.name] = point
    return dict(sorted(found.items()))


def available_types(group: str) -> list[str]:
    """Sorted names of the plugins registered in ``group``."""
    return list(_entry_points(group))


@cache
def load_plugin(group: str, type_name: str) -> Any:
    """Import and return the class registered as ``type_name`` in ``group``.

    Raises:
        PluginError: no plugin has that name, or importing it failed.
    """
    points = _entry_points(group)
    if type_name not in points:
        known = ", ".join(points) or "none"
        raise PluginError(f"unknown type {type_name!r} (known: {known})")
    try:
        return points[type_name].load()
    except ImportError as error:
        extra = _EXTRAS.get(type_name)
        hint = f"; install it with: pip install '{extra}'" if extra else ""
        raise PluginError(
            f"plugin {type_name!r} could not be loaded: {error}{hint}"
        ) from error

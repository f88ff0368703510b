"""Provider and target instances built from a loaded configuration, on demand."""

from __future__ import annotations

import threading
from typing import Any

from pkifed.config.loader import LoadedConfig
from pkifed.providers.base import KeyProvider, ProviderContext
from pkifed.providers.targets.base import PublishTarget


class Runtime:
    """Creates each provider and target once, when first used, and closes them all."""

    def __init__(self, config: LoadedConfig) -> None:
        self.config = config
        self._providers: dict[str, KeyProvider] = {}
        self._targets: dict[str, PublishTarget] = {}
        self._lock = threading.Lock()

    def provider(self, name: str) -> KeyProvider:
        with self._lock:
            if name not in self._providers:
                entry = self.config.providers[name]
                context = ProviderContext(
                    provider_name=name,
                    federation=self.config.model.name,
                    config_dir=self.config.base_dir,
                )
                self._providers[name] = entry.plugin(entry.settings, context)
            return self._providers[name]

    def target(self, name: str) -> PublishTarget:
        with self._lock:
            if name not in self._targets:
                entry = self.config.targets[name]
                self._targets[name] = entry.plugin(
                    name, entry.settings, self.config.base_dir
                )
            return self._targets[name]

    def close(self) -> None:
        with self._lock:
            instances: list[Any] = [*self._providers.values(), *self._targets.values()]
            self._providers.clear()
            self._targets.clear()
        for instance in instances:
            instance.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

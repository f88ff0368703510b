"""Federations of any size on real files, and the wrappers the benchmarks measure with.

A benchmark federation spreads its authorities over four ``local`` keystores
and publishes to one ``file`` target, so every benchmark runs anywhere with
nothing but the real local provider and file target.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from pkifed.config.loader import LoadedConfig, load_config
from pkifed.federation.hierarchy import ancestors
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.algorithms import KeyAlgorithm, PublicKey, SignatureScheme
from pkifed.providers.base import KeyInfo, ProviderContext
from pkifed.providers.local import LocalProvider
from pkifed.providers.targets.file import FileTarget
from pkifed.sync.plan import Action, ActionKind
from pkifed.sync.reconcile import ActionOutcome, Reconciler

PASSPHRASE_VARIABLE = "PKIFED_BENCH_PASSPHRASE"  # noqa: S105 - a variable name.
# The keystores hold throwaway benchmark keys only.
PASSPHRASE = "benchmark-passphrase"  # noqa: S105
PROVIDERS = ("kms-a", "kms-b", "kms-c", "kms-d")
TARGET = "out"


def layout(count: int) -> list[tuple[str, str | None]]:
    """Name ``count`` authorities in three levels, each with its parent.

    Four roots, one per provider, then one intermediate per 25 authorities
    (at least four), then issuing CAs spread over the intermediates.
    """
    if count < 4:
        raise ValueError(
            f"a benchmark federation needs at least 4 authorities, got {count}"
        )
    roots = [f"root-{i}" for i in range(4)]
    intermediate_count = min(count - 4, max(4, count // 25))
    intermediates = [f"int-{i}" for i in range(intermediate_count)]
    issuing_count = count - 4 - intermediate_count
    pairs: list[tuple[str, str | None]] = [(name, None) for name in roots]
    pairs += [(name, roots[i % 4]) for i, name in enumerate(intermediates)]
    pairs += [
        (f"issuing-{i}", intermediates[i % intermediate_count])
        for i in range(issuing_count)
    ]
    return pairs


def depth(count: int) -> int:
    """Levels in the hierarchy that :func:`layout` builds."""
    parents = dict(layout(count))
    deepest = 0
    for name in parents:
        level = 1
        parent = parents[name]
        while parent is not None:
            level += 1
            parent = parents[parent]
        deepest = max(deepest, level)
    return deepest


def federation_document(
    count: int, concurrency: int, publish_all: bool = False
) -> dict[str, Any]:
    """A federation file with ``count`` authorities and a bundle of the roots.

    Intermediates publish their certificate and chain. Issuing CAs publish
    theirs only with ``publish_all``, because each publish action reloads the
    whole state store, which makes the first apply quadratic in the number of
    published objects.
    """
    authorities: dict[str, Any] = {}
    for index, (name, parent) in enumerate(layout(count)):
        authority: dict[str, Any] = {
            "provider": PROVIDERS[index % len(PROVIDERS)],
            "key": "ec-p256",
            "subject": f"CN=Bench {name},O=Example",
            "validity": "10y" if parent is None else "3y",
        }
        if parent is not None:
            authority["parent"] = parent
        if name.startswith("int-") or publish_all:
            authority["publish"] = [TARGET]
        authorities[name] = authority
    return {
        "version": 1,
        "name": "bench",
        "reconcile": {"concurrency": concurrency, "max_passes": 5},
        "providers": {
            name: {
                "type": "local",
                "path": f"keys/{name}",
                "passphrase": "${env:" + PASSPHRASE_VARIABLE + "}",
            }
            for name in PROVIDERS
        },
        "authorities": authorities,
        "targets": {TARGET: {"type": "file", "path": "out"}},
        "bundles": {
            "roots": {
                "authorities": [name for name, parent in layout(count) if not parent],
                "targets": [TARGET],
            }
        },
    }


def write_federation(
    directory: Path, count: int, concurrency: int = 16, publish_all: bool = False
) -> Path:
    """Write a federation file into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "federation.yaml"
    document = federation_document(count, concurrency, publish_all)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def set_concurrency(path: Path, concurrency: int) -> None:
    """Rewrite ``reconcile.concurrency`` in the federation file at ``path``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["reconcile"]["concurrency"] = concurrency
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@contextmanager
def passphrase_in_environment() -> Iterator[None]:
    """Set the keystores' passphrase variable for the block, then restore it.

    The benchmark runs as its own process, so the variable is visible only to
    it and to the child processes it starts.
    """
    previous = os.environ.get(PASSPHRASE_VARIABLE)
    os.environ[PASSPHRASE_VARIABLE] = PASSPHRASE
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PASSPHRASE_VARIABLE, None)
        else:
            os.environ[PASSPHRASE_VARIABLE] = previous


@contextmanager
def opened(path: Path) -> Iterator[tuple[LoadedConfig, Store, Runtime]]:
    """Load the federation at ``path`` with its state store and runtime."""
    config = load_config(path)
    store = Store(config.state_url)
    store.initialise()
    try:
        with Runtime(config) as runtime:
            yield config, store, runtime
    finally:
        store.close()


# --- wrappers of the real classes ---------------------------------------------------


class DelayedLocalProvider(LocalProvider):
    """A local keystore that behaves like a cloud KMS: each remote call waits first.

    Signing, key creation, describing, finding and exporting the public key
    are the calls a cloud KMS makes over the network (AWS KMS Sign, CreateKey,
    DescribeKey and GetPublicKey), so each of them sleeps ``delay`` seconds.
    """

    delay = 0.025

    def __init__(self, settings: Any, context: ProviderContext) -> None:
        super().__init__(settings, context)
        self.calls = Counter[str]()
        self._count_lock = threading.Lock()

    def _wait(self, operation: str) -> None:
        with self._count_lock:
            self.calls[operation] += 1
        time.sleep(self.delay)

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        self._wait("sign")
        return super()._sign_digest(uri, scheme, digest)

    def _create(
        self, key_name: str, algorithm: KeyAlgorithm, exist_ok: bool
    ) -> KeyInfo:
        self._wait("create")
        return super()._create(key_name, algorithm, exist_ok)

    def describe_key(self, uri: str) -> KeyInfo:
        self._wait("describe")
        return super().describe_key(uri)

    def find_key(self, key_name: str) -> KeyInfo | None:
        self._wait("find")
        return super().find_key(key_name)

    def public_key(self, uri: str) -> PublicKey:
        self._wait("public-key")
        return super().public_key(uri)


_PROVIDER_READS = ("find_key", "describe_key", "list_keys", "public_key")
_PROVIDER_WRITES = ("create_key", "find_or_create_key", "adopt_key", "sign_digest")
_TARGET_READS = ("read", "list_objects")
_TARGET_WRITES = ("write", "delete", "publish")


@dataclass
class CallLog:
    """Calls made to providers and targets, counted by kind and method."""

    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, method: str) -> None:
        with self.lock:
            (self.reads if kind == "read" else self.writes)[method] += 1


def _counted(base: type, method: str, kind: str) -> Callable[..., Any]:
    original = getattr(base, method)

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.log.count(kind, f"{base.__name__}.{method}")
        return original(self, *args, **kwargs)

    call.__name__ = method
    return call


class CountingLocalProvider(LocalProvider):
    """A local keystore that counts each public read and write call."""

    log: CallLog


class CountingFileTarget(FileTarget):
    """A file target that counts each public read and write call."""

    log: CallLog


for _method in _PROVIDER_READS:
    setattr(CountingLocalProvider, _method, _counted(LocalProvider, _method, "read"))
for _method in _PROVIDER_WRITES:
    setattr(CountingLocalProvider, _method, _counted(LocalProvider, _method, "write"))
for _method in _TARGET_READS:
    setattr(CountingFileTarget, _method, _counted(FileTarget, _method, "read"))
for _method in _TARGET_WRITES:
    setattr(CountingFileTarget, _method, _counted(FileTarget, _method, "write"))


def install_delayed_providers(runtime: Runtime) -> dict[str, DelayedLocalProvider]:
    """Replace each provider of ``runtime`` with a delayed one on the same keystore."""
    installed = {}
    for name in PROVIDERS:
        original = runtime.provider(name)
        delayed = DelayedLocalProvider(original.settings, original.context)
        runtime._providers[name] = delayed
        installed[name] = delayed
    return installed


def install_counters(runtime: Runtime, log: CallLog) -> None:
    """Replace every provider and target of ``runtime`` with counting ones."""
    for name in PROVIDERS:
        original = runtime.provider(name)
        counting = CountingLocalProvider(original.settings, original.context)
        counting.log = log
        runtime._providers[name] = counting
    target = runtime.target(TARGET)
    counted_target = CountingFileTarget(TARGET, target.settings, target.config_dir)
    counted_target.log = log
    runtime._targets[TARGET] = counted_target


class TimedReconciler(Reconciler):
    """The real reconciler, timing observation and each phase of apply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings: list[tuple[str, float]] = []

    def _timed(self, label: str, function: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return function()
        finally:
            self.timings.append((label, time.perf_counter() - start))

    def _observe_keys(self, snapshot: Any) -> Any:
        return self._timed("observe keys", partial(super()._observe_keys, snapshot))

    def _observe_objects(self) -> Any:
        return self._timed("observe objects", super()._observe_objects)

    def plan(self) -> Any:
        return self._timed("plan (total)", super().plan)

    def _run_phase(self, phase: list[Action], failed: set[str]) -> list[ActionOutcome]:
        label = _phase_label(self, phase)
        return self._timed(label, partial(super()._run_phase, phase, failed))  # type: ignore[no-any-return]


def _phase_label(reconciler: Reconciler, phase: list[Action]) -> str:
    first = phase[0]
    if first.kind is ActionKind.ISSUE_CERTIFICATE and first.authority is not None:
        level = len(ancestors(reconciler.model, first.authority)) + 1
        return f"apply: certificates, level {level} ({len(phase)} actions)"
    if first.kind in (ActionKind.PUBLISH, ActionKind.RETIRE):
        return f"apply: publish ({len(phase)} actions)"
    return f"apply: keys ({len(phase)} actions)"

"""Prometheus metrics of the daemon, and a provider wrapper that times each call.

Every metric lives in a private :class:`CollectorRegistry`, so two daemons in one
process (as in tests) never share counters, and nothing from the process-wide
default registry leaks into ``/metrics``.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from pkifed.errors import PkifedError, TemporaryError
from pkifed.federation.runtime import Runtime
from pkifed.providers.algorithms import KeyAlgorithm, PublicKey, SignatureScheme
from pkifed.providers.base import KeyInfo, KeyProvider, ProviderStatus
from pkifed.sync.plan import ActionKind
from pkifed.sync.reconcile import ActionOutcome

_Result = TypeVar("_Result")

# Reconcile passes take from milliseconds (nothing to do) to minutes (HSM key
# generation, slow cloud APIs).
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Provider calls: local keys respond in microseconds, cloud KMS calls in tens of
# milliseconds, retried calls in seconds.
CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DRIFT_PREFIXES = {"drifted": "drifted", "foreign": "foreign"}


class Metrics:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.pass_duration = Histogram(
            "pkifed_pass_duration_seconds",
            "Duration of one reconcile pass: converge on the leader, plan elsewhere.",
            ["role"],
            buckets=PASS_BUCKETS,
            registry=registry,
        )
        self.passes = Counter(
            "pkifed_passes",
            "Reconcile passes by role and result (ok, failed).",
            ["role", "result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "pkifed_last_success_timestamp_seconds",
            "Unix time at which the last successful pass ended.",
            registry=registry,
        )
        self.actions = Counter(
            "pkifed_actions",
            "Applied actions by kind and outcome (done, failed, skipped).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.drift = Counter(
            "pkifed_drift_found",
            "Published objects found changed (drifted) or with certificates the "
            "federation never issued (foreign).",
            ["target", "cause"],
            registry=registry,
        )
        self.provider_calls = Histogram(
            "pkifed_provider_call_duration_seconds",
            "Duration of each provider call; signing is timed per attempt.",
            ["provider", "operation"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.provider_errors = Counter(
            "pkifed_provider_call_errors",
            "Failed provider calls by error class (temporary, permanent).",
            ["provider", "operation", "error"],
            registry=registry,
        )
        self.expiry_days = Gauge(
            "pkifed_authority_expiry_days",
            "Days until the current certificate of each authority expires.",
            ["authority"],
            registry=registry,
        )
        self.leader = Gauge(
            "pkifed_leader",
            "1 while this replica holds the lease and applies, 0 otherwise.",
            registry=registry,
        )
        self.lease_token = Gauge(
            "pkifed_lease_token",
            "Fencing token of the lease this replica holds; 0 when it holds none.",
            registry=registry,
        )
        self.events = Counter(
            "pkifed_events_sent",
            "Lifecycle events delivered, by sink and event type.",
            ["sink", "event"],
            registry=registry,
        )
        self.sink_failures = Counter(
            "pkifed_event_sink_failures",
            "Event batches a sink failed to deliver after its retries.",
            ["sink"],
            registry=registry,
        )
        self.audit_failures = Counter(
            "pkifed_audit_append_failures",
            "Actions whose audit log entry could not be appended.",
            registry=registry,
        )

    def render(self) -> bytes:
        """Render the registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def count_outcome(self, outcome: ActionOutcome) -> None:
        """Count one action's outcome, and the drift its reason reports."""
        action = outcome.action
        self.actions.labels(str(action.kind), outcome.outcome).inc()
        cause = drift_cause(outcome)
        if cause is not None:
            self.drift.labels(action.target or "", cause).inc()

    def set_expiry(
        self, expiries: dict[str, datetime.datetime], now: datetime.datetime
    ) -> None:
        """Set the days left per authority, dropping authorities no longer listed."""
        self.expiry_days.clear()
        for authority, not_after in expiries.items():
            days = (not_after - now).total_seconds() / 86400
            self.expiry_days.labels(authority).set(days)


def drift_cause(outcome: ActionOutcome) -> str | None:
    """``drifted`` or ``foreign`` for a publish that repairs drift, else None."""
    action = outcome.action
    if action.kind is not ActionKind.PUBLISH:
        return None
    for prefix, cause in DRIFT_PREFIXES.items():
        if action.reason.startswith(prefix):
            return cause
    return None


class ObservedProvider(KeyProvider):
    """A provider that times each call of the provider it wraps.

    Signing goes through this class's inherited :meth:`KeyProvider.sign_digest`,
    which retries :meth:`_sign_digest`, so each signing attempt is timed and a
    throttled attempt counts as an error even when a retry then succeeds. Other
    calls are timed as a whole, retries included, because providers retry them
    inside.
    """

    def __init__(self, inner: KeyProvider, metrics: Metrics) -> None:
        super().__init__(inner.settings, inner.context)
        self.inner = inner
        self.metrics = metrics

    @property
    def type_name(self) -> str:  # type: ignore[override]  # Mirrors the wrapped class.
        return self.inner.type_name

    @property
    def uri_scheme(self) -> str:  # type: ignore[override]  # Mirrors the wrapped class.
        return self.inner.uri_scheme

    def _timed(self, operation: str, call: Callable[[], _Result]) -> _Result:
        started = time.perf_counter()
        try:
            return call()
        except PkifedError as error:
            kind = "temporary" if isinstance(error, TemporaryError) else "permanent"
            self.metrics.provider_errors.labels(self.name, operation, kind).inc()
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.provider_calls.labels(self.name, operation).observe(elapsed)

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        return self.inner.supported_algorithms()

    def find_key(self, key_name: str) -> KeyInfo | None:
        return self._timed("find_key", lambda: self.inner.find_key(key_name))

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        return self._timed(
            "create_key", lambda: self.inner.create_key(key_name, algorithm)
        )

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        return self._timed(
            "find_or_create_key",
            lambda: self.inner.find_or_create_key(key_name, algorithm),
        )

    def adopt_key(self, uri: str, algorithm: KeyAlgorithm) -> KeyInfo:
        return self._timed("adopt_key", lambda: self.inner.adopt_key(uri, algorithm))

    def describe_key(self, uri: str) -> KeyInfo:
        return self._timed("describe_key", lambda: self.inner.describe_key(uri))

    def list_keys(self) -> list[KeyInfo]:
        return self._timed("list_keys", self.inner.list_keys)

    def public_key(self, uri: str) -> PublicKey:
        return self._timed("public_key", lambda: self.inner.public_key(uri))

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        return self._timed("sign", lambda: self.inner._sign_digest(uri, scheme, digest))

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        return self._timed(
            "sign", lambda: self.inner._sign_message(uri, scheme, message)
        )

    def check(self) -> ProviderStatus:
        return self._timed("check", self.inner.check)

    def close(self) -> None:
        self.inner.close()


class ObservedRuntime(Runtime):
    """A runtime whose providers are wrapped in :class:`ObservedProvider`."""

    def __init__(self, config: Any, metrics: Metrics) -> None:
        super().__init__(config)
        self.metrics = metrics
        self._observed: dict[str, ObservedProvider] = {}
        self._observed_lock = threading.Lock()

    def provider(self, name: str) -> KeyProvider:
        inner = super().provider(name)
        with self._observed_lock:
            observed = self._observed.get(name)
            if observed is None or observed.inner is not inner:
                observed = ObservedProvider(inner, self.metrics)
                self._observed[name] = observed
            return observed

    def close(self) -> None:
        with self._observed_lock:
            self._observed.clear()
        super().close()

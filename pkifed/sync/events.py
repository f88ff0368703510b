"""Lifecycle events and the sinks that receive them.

Events are derived from action outcomes (issued, renewed, rotated,
drift-repaired, failed) and from the state store (expiring-soon). A background
thread delivers them to every configured sink, so a slow or failing sink never
delays a reconcile pass: its failure is logged and counted in
``pkifed_event_sink_failures_total``.

Each event is one JSON object (see :meth:`Event.to_dict`):

.. code-block:: text

    {"id": "<32 hex>", "type": "issued|renewed|rotated|drift-repaired|
     expiring-soon|failed", "federation": "<name>", "object": "<what>",
     "authority": "<name or null>", "message": "<detail>",
     "at": "<ISO-8601 UTC>", "actor": "<replica id>"}

Webhooks receive one POST per event with the headers ``X-Pkifed-Event``,
``X-Pkifed-Timestamp`` (Unix seconds) and ``X-Pkifed-Signature``:
``sha256=`` and the hex HMAC-SHA256 of ``<timestamp>.<body>`` keyed with the
configured secret. The receiver recomputes it, compares in constant time, and
rejects stale timestamps to stop replays.
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from pkifed.config.daemon import (
    EventsConfig,
    FileSinkConfig,
    NatsSinkConfig,
    RetryConfig,
    WebhookSinkConfig,
)
from pkifed.errors import PermanentError, PkifedError, PluginError, TemporaryError
from pkifed.sync.metrics import Metrics, drift_cause
from pkifed.sync.plan import ActionKind
from pkifed.sync.reconcile import ActionOutcome

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pkifed-Signature"
TIMESTAMP_HEADER = "X-Pkifed-Timestamp"
EVENT_HEADER = "X-Pkifed-Event"


class EventSinkError(PkifedError):
    """A sink could not deliver an event."""


class TemporarySinkError(EventSinkError, TemporaryError):
    """A delivery that may succeed when retried: a connection error, 429 or 5xx."""


class PermanentSinkError(EventSinkError, PermanentError):
    """A delivery that a retry will not fix, such as a 4xx response."""


@dataclass(frozen=True)
class Event:
    """One lifecycle event."""

    type: str
    federation: str
    object: str
    message: str
    at: datetime.datetime
    actor: str
    authority: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "federation": self.federation,
            "object": self.object,
            "authority": self.authority,
            "message": self.message,
            "at": self.at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "actor": self.actor,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")


def event_type(outcome: ActionOutcome) -> str | None:
    """Return the lifecycle event type of an action's outcome, or None."""
    action = outcome.action
    if outcome.outcome == "failed":
        return "failed"
    if outcome.outcome != "done":
        return None
    if action.kind is ActionKind.ISSUE_CERTIFICATE:
        if action.reason == "missing":
            return "issued"
        if action.reason == "the key changes" or action.reason.startswith("parent "):
            return "rotated"
        return "renewed"
    if drift_cause(outcome) is not None:
        return "drift-repaired"
    return None


def event_of(
    outcome: ActionOutcome, federation: str, actor: str, at: datetime.datetime
) -> Event | None:
    """Build the lifecycle event of an action's outcome, or return None."""
    kind = event_type(outcome)
    if kind is None:
        return None
    action = outcome.action
    message = outcome.message or action.reason
    if kind != "failed":
        message = f"{action.reason}: {outcome.message}" if outcome.message else message
    return Event(
        type=kind,
        federation=federation,
        object=action.object,
        message=message,
        at=at,
        actor=actor,
        authority=action.authority,
    )


# --- sinks ---------------------------------------------------------------------------


class EventSink(abc.ABC):
    """A destination for events."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    def send(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` in order.

        Raises:
            EventSinkError: an event could not be delivered after the retries.
        """

    def close(self) -> None:  # noqa: B027 - most sinks hold nothing open.
        """Release connections."""


def _retry(
    operation: Callable[[], None],
    settings: RetryConfig,
    description: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run ``operation``, retrying TemporarySinkError with exponential backoff."""
    delay = settings.base_delay
    for attempt in range(1, settings.attempts + 1):
        try:
            operation()
            return
        except TemporarySinkError as error:
            if attempt == settings.attempts:
                raise
            wait = min(max(delay, error.retry_after or 0.0), settings.max_delay)
            logger.warning(
                "%s failed (attempt %d of %d): %s; will retry in %.2f s",
                description,
                attempt,
                settings.attempts,
                error,
                wait,
            )
            sleep(wait)
            delay = min(delay * 2, settings.max_delay)


class FileSink(EventSink):
    """Appends each event as one JSON line."""

    def __init__(self, name: str, config: FileSinkConfig, base_dir: Path) -> None:
        super().__init__(name)
        path = Path(config.path).expanduser()
        self.path = path if path.is_absolute() else base_dir / path

    def send(self, events: Sequence[Event]) -> None:
        lines = b"".join(event.to_json() + b"\n" for event in events)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as output:
                output.write(lines)
        except OSError as error:
            raise PermanentSinkError(
                f"event sink {self.name}: cannot append to {self.path}: "
                f"{error.strerror}"
            ) from error


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    """Compute the X-Pkifed-Signature value: HMAC-SHA256 of ``<timestamp>.<body>``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _retry_after(response_headers: Any) -> float | None:
    """Seconds from a Retry-After header (RFC 9110, section 10.2.3), if any."""
    value = response_headers.get("Retry-After") if response_headers else None
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((moment - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0)


class WebhookSink(EventSink):
    """POSTs each event as JSON with an HMAC-SHA256 signature."""

    def __init__(
        self,
        name: str,
        config: WebhookSinkConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name)
        self.config = config
        self.clock = clock
        # Resolved at start, so a missing secret stops the daemon from starting.
        self._secret = config.secret.resolve().encode("utf-8")

    def send(self, events: Sequence[Event]) -> None:
        for event in events:
            _retry(
                lambda event=event: self._post(event),  # type: ignore[misc]
                self.config.retry,
                f"event sink {self.name}: POST {event.type} to {self.config.url}",
            )

    def _post(self, event: Event) -> None:
        body = event.to_json()
        timestamp = str(int(self.clock()))
        request = urllib.request.Request(  # noqa: S310 - the URL is http(s) only.
            self.config.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "pkifed",
                EVENT_HEADER: event.type,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign_webhook(self._secret, timestamp, body),
            },
        )
        where = f"event sink {self.name}: {self.config.url}"
        try:
            with urllib.request.urlopen(  # noqa: S310 - the URL is http(s) only.
                request, timeout=self.config.timeout
            ) as response:
                response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            if status == 429 or status >= 500:
                raise TemporarySinkError(
                    f"{where} responded with HTTP {status}",
                    retry_after=_retry_after(error.headers),
                ) from error
            raise PermanentSinkError(f"{where} responded with HTTP {status}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TemporarySinkError(f"{where} is unreachable: {reason}") from error


class NatsSink(EventSink):
    """Publishes each event to a JetStream subject and waits for its ack.

    Each message carries the event id as ``Nats-Msg-Id``, so JetStream drops
    the duplicate when a retry resends a message whose ack was lost.
    """

    def __init__(self, name: str, config: NatsSinkConfig) -> None:
        super().__init__(name)
        self.config = config
        self._token = config.token.resolve() if config.token is not None else None

    def send(self, events: Sequence[Event]) -> None:
        _retry(
            lambda: asyncio.run(self._publish(events)),
            self.config.retry,
            f"event sink {self.name}: publishing to {self.config.subject}",
        )

    async def _publish(self, events: Sequence[Event]) -> None:
        import nats
        import nats.errors

        async def ignore_error(error: Exception) -> None:
            # Connection errors surface as the exceptions handled below;
            # without a callback nats-py logs each one a second time.
            return None

        where = f"event sink {self.name}: NATS {', '.join(self.config.servers)}"
        try:
            # nats-py reads max_reconnect_attempts=0 as "no limit", so 1 makes
            # it give up after one more attempt per server; the sink's own
            # retry settings decide what happens next.
            connection = await asyncio.wait_for(
                nats.connect(
                    servers=self.config.servers,
                    token=self._token,
                    connect_timeout=max(1, int(self.config.timeout)),
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=ignore_error,
                ),
                timeout=2 * self.config.timeout,
            )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            raise TemporarySinkError(
                f"{where} is unreachable: {type(error).__name__}: {error}"
            ) from error
        try:
            stream = connection.jetstream(timeout=self.config.timeout)
            for event in events:
                await stream.publish(
                    self.config.subject,
                    event.to_json(),
                    stream=self.config.stream,
                    headers={"Nats-Msg-Id": event.id},
                )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            raise TemporarySinkError(
                f"{where}: publishing to {self.config.subject} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        finally:
            await connection.close()


def build_sinks(config: EventsConfig, base_dir: Path) -> list[EventSink]:
    """Create the configured sinks, resolving their secrets.

    Raises:
        SecretError: a sink's secret cannot be resolved.
        PluginError: the nats sink is configured but nats-py is not installed.
    """
    sinks: list[EventSink] = []
    for name, sink in config.sinks.items():
        if isinstance(sink, FileSinkConfig):
            sinks.append(FileSink(name, sink, base_dir))
        elif isinstance(sink, WebhookSinkConfig):
            sinks.append(WebhookSink(name, sink))
        else:
            try:
                import nats  # noqa: F401
            except ImportError:
                raise PluginError(
                    f"events.sinks.{name}: the nats sink needs nats-py; install "
                    "pkifed[nats]"
                ) from None
            sinks.append(NatsSink(name, sink))
    return sinks


class EventDispatcher:
    """Delivers events to every sink on a background thread."""

    def __init__(self, sinks: Sequence[EventSink], metrics: Metrics) -> None:
        self.sinks = list(sinks)
        self.metrics = metrics
        self._queue: queue.Queue[list[Event] | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name="event-dispatcher", daemon=True
        )
        self._thread.start()

    def submit(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for every sink; returns at once."""
        if events and self.sinks:
            self._queue.put(list(events))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event was handled; return False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued, then stop the thread and close the sinks."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "event dispatcher: events still queued after %.0f s are dropped",
                timeout,
            )
        for sink in self.sinks:
            sink.close()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                for sink in self.sinks:
                    self._deliver(sink, batch)
            finally:
                self._queue.task_done()

    def _deliver(self, sink: EventSink, batch: list[Event]) -> None:
        try:
            sink.send(batch)
        except EventSinkError as error:
            self.metrics.sink_failures.labels(sink.name).inc()
            logger.error(
                "event sink %s: %d events not delivered and dropped: %s",
                sink.name,
                len(batch),
                error,
            )
            return
        for event in batch:
            self.metrics.events.labels(sink.name, event.type).inc()

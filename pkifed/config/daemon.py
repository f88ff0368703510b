"""The daemon's sections of the federation file: schedule, daemon, events, logging.

``pkifed daemon`` reads them; the other commands ignore them. Each section has
defaults, so a federation file without them runs a daemon that reconciles every
15 minutes and serves health and metrics on ``127.0.0.1:9469``.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import Annotated, Literal

# APScheduler 3.x ships no type information.
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pkifed.config.durations import Duration
from pkifed.secrets import SecretRef

DEFAULT_LISTEN = "127.0.0.1:9469"

# Cron numbers weekdays from Sunday (0 or 7), but APScheduler 3.x numbers them
# from Monday, so numeric weekdays are translated to names before APScheduler
# parses them (APScheduler 3.x CronTrigger.from_crontab warns about this).
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_PART = re.compile(r"^(?P<range>\*|\d+(?:-\d+)?)(?:/(?P<step>\d+))?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cron_weekdays(field: str) -> str:
    """Translate a cron day-of-week field into APScheduler's weekday names."""
    names: list[str] = []
    for part in field.split(","):
        match = _WEEKDAY_PART.match(part)
        if match is None:
            # Names such as mon-fri mean the same in both, so they pass through.
            names.append(part)
            continue
        text = match["range"]
        first, _, last = text.partition("-")
        start, end = (0, 6) if text == "*" else (int(first), int(last or first))
        step = int(match["step"] or 1)
        if end > 7 or start > end or step < 1:
            raise ValueError(f"invalid day of week {part!r}: use 0-7, Sunday is 0 or 7")
        if text == "*" and step == 1:
            return "*"
        names.extend(_CRON_WEEKDAYS[day] for day in range(start, end + 1, step))
    return ",".join(dict.fromkeys(names))


def cron_trigger(expression: str, jitter: timedelta | None = None) -> CronTrigger:
    """Build an APScheduler trigger from a 5-field cron expression, in UTC.

    Raises:
        ValueError: the expression does not have 5 fields or a field is invalid.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron expression {expression!r}: expected 5 fields (minute, "
            f"hour, day of month, month, day of week), got {len(fields)}"
        )
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_cron_weekdays(day_of_week),
        timezone=UTC,
        jitter=int(jitter.total_seconds()) if jitter else None,
    )


class ScheduleConfig(_Model):
    """When the daemon runs a reconcile pass: every interval, or on a cron schedule."""

    interval: Duration | None = Field(
        default=None,
        description=(
            "Time between passes, such as 15m or 1h. Defaults to 15m when cron is "
            "not set."
        ),
    )
    cron: str | None = Field(
        default=None,
        description=(
            "A 5-field cron expression in UTC (minute hour day month weekday, "
            "Sunday is 0 or 7), instead of interval."
        ),
    )
    jitter: Duration | None = Field(
        default=None,
        description=(
            "Maximum random delay added to each pass, so replicas and federations "
            "do not all call the providers at the same moment. Absent: none."
        ),
    )
    coalesce: bool = Field(
        default=True,
        description=(
            "Run missed passes as one instead of one per missed time, such as "
            "after the process was suspended."
        ),
    )
    misfire_grace_time: Duration = Field(
        default=timedelta(minutes=5),
        description=(
            "How late a pass may still start; a pass later than this is skipped "
            "and the next one runs on schedule."
        ),
    )

    @model_validator(mode="after")
    def _check_one_schedule(self) -> ScheduleConfig:
        if self.interval is not None and self.cron is not None:
            raise ValueError("set interval or cron, not both")
        if self.cron is not None:
            cron_trigger(self.cron, self.jitter)
        return self

    @property
    def every(self) -> timedelta | None:
        """The interval between passes, or None on a cron schedule."""
        if self.cron is not None:
            return None
        return self.interval if self.interval is not None else timedelta(minutes=15)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT`` for IPv6) into host and port.

    Raises:
        ValueError: the value has no port, or the port is out of range.
    """
    host, separator, port_text = value.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(
            f"invalid listen address {value!r}: expected HOST:PORT, such as "
            f"{DEFAULT_LISTEN}"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid port {port} in listen address {value!r}: 0-65535")
    return host.removeprefix("[").removesuffix("]"), port


class DaemonConfig(_Model):
    """The daemon's HTTP endpoint and leader election."""

    listen: str = Field(
        default=DEFAULT_LISTEN,
        description=(
            "HOST:PORT of the HTTP server for /healthz, /readyz and /metrics. Port "
            "0 picks a free port. An address that is not loopback logs a warning "
            "at start, because the endpoints have no authentication."
        ),
    )
    lease_ttl: Duration = Field(
        default=timedelta(seconds=60),
        description=(
            "How long the leader's lease lasts without renewal; another replica "
            "takes over at most this long after the leader stops. Renewed every "
            "third of it."
        ),
    )
    replica_id: str | None = Field(
        default=None,
        max_length=255,
        description=(
            "This replica's name in the lease and the audit log. Defaults to "
            "HOSTNAME:PID."
        ),
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _check_ttl(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=2):
            raise ValueError(
                "lease_ttl must be at least 2s, since leases have 1s ticks"
            )
        return value


class RetryConfig(_Model):
    """Bounded retries with exponential backoff for one event sink."""

    attempts: int = Field(
        default=4, ge=1, le=10, description="Total attempts, the first one included."
    )
    base_delay: float = Field(
        default=0.5, gt=0, description="Delay before the second attempt, in seconds."
    )
    max_delay: float = Field(
        default=10.0, gt=0, description="Maximum delay between attempts, in seconds."
    )


class FileSinkConfig(_Model):
    """Append each event as one JSON line to a file."""

    type: Literal["file"] = Field(description="Sink type: file.")
    path: str = Field(
        min_length=1,
        description=(
            "File to append to; a relative path starts at the config's directory."
        ),
    )


class WebhookSinkConfig(_Model):
    """POST each event as JSON, signed with HMAC-SHA256."""

    type: Literal["webhook"] = Field(description="Sink type: webhook.")
    url: str = Field(
        pattern=r"^https?://",
        description="http:// or https:// URL that receives one POST per event.",
    )
    secret: SecretRef = Field(
        description=(
            "Key of the HMAC-SHA256 signature in X-Pkifed-Signature, as "
            "${env:NAME} or ${file:PATH}."
        )
    )
    timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to wait for each response."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description=(
            "Retries of a POST that failed with a connection error, 429 or 5xx."
        ),
    )


class NatsSinkConfig(_Model):
    """Publish each event to a NATS JetStream subject."""

    type: Literal["nats"] = Field(description="Sink type: nats.")
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs.",
    )
    subject: str = Field(
        min_length=1,
        description="Subject the events are published to; a stream must capture it.",
    )
    stream: str | None = Field(
        default=None,
        description="Expected stream; a publish acknowledged by another one fails.",
    )
    token: SecretRef | None = Field(
        default=None,
        description="Authentication token, as ${env:NAME} or ${file:PATH}.",
    )
    timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to wait to connect and for acks."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Retries of a publish that was not acknowledged.",
    )


SinkConfig = Annotated[
    FileSinkConfig | WebhookSinkConfig | NatsSinkConfig, Field(discriminator="type")
]


class EventsConfig(_Model):
    """Lifecycle events and where they are sent."""

    sinks: dict[str, SinkConfig] = Field(
        default_factory=dict,
        description="Event sinks by name; each has a type: file, webhook or nats.",
    )
    expiring_within: Duration = Field(
        default=timedelta(days=30),
        description=(
            "Send an expiring-soon event for a certificate that expires within "
            "this time, once per certificate and daemon process."
        ),
    )


class LoggingConfig(_Model):
    """Format and level of the daemon's log lines on standard error."""

    format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "text for a terminal, json for one JSON object per line. The "
            "--log-format option overrides it."
        ),
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged; --verbose sets debug."
    )

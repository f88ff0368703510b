"""Lifecycle events: derivation from outcomes, and the file, webhook and NATS sinks.

The webhook sink posts to an http.server on 127.0.0.1 that checks each
signature. The NATS cases use the JetStream server at 127.0.0.1:4222, create a
stream with a unique name and delete it afterwards; they are skipped when no
server answers there.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pkifed.config.daemon import (
    FileSinkConfig,
    NatsSinkConfig,
    WebhookSinkConfig,
)
from pkifed.sync.events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Event,
    EventDispatcher,
    EventSinkError,
    FileSink,
    NatsSink,
    PermanentSinkError,
    WebhookSink,
    event_of,
    event_type,
)
from pkifed.sync.metrics import Metrics
from pkifed.sync.plan import Action, ActionKind
from pkifed.sync.reconcile import ActionOutcome

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
SECRET = "webhook-test-secret-5772"
NATS_HOST, NATS_PORT = "127.0.0.1", 4222
FAST_RETRY = {"attempts": 3, "base_delay": 0.01, "max_delay": 0.02}


def event(kind: str = "issued", **fields: Any) -> Event:
    values: dict[str, Any] = {
        "type": kind,
        "federation": "events",
        "object": "authority root",
        "message": "missing: serial 1f",
        "at": T0,
        "actor": "replica-a",
        "authority": "root",
    }
    values.update(fields)
    return Event(**values)


def outcome(kind: ActionKind, reason: str, result: str = "done") -> ActionOutcome:
    action = Action(kind, "authority root", reason, authority="root")
    if kind is ActionKind.PUBLISH:
        action = Action(
            kind, "target out: trust.pem", reason, target="out", object_name="trust.pem"
        )
    return ActionOutcome(action, result, "detail")


# --- derivation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason", "result", "expected"),
    [
        (ActionKind.ISSUE_CERTIFICATE, "missing", "done", "issued"),
        (ActionKind.ISSUE_CERTIFICATE, "expires in 3 days, within", "done", "renewed"),
        (ActionKind.ISSUE_CERTIFICATE, "profile changed: x", "done", "renewed"),
        (ActionKind.ISSUE_CERTIFICATE, "the key changes", "done", "rotated"),
        (ActionKind.ISSUE_CERTIFICATE, "parent root gets a new key", "done", "rotated"),
        (ActionKind.PUBLISH, "drifted: content differs", "done", "drift-repaired"),
        (ActionKind.PUBLISH, "foreign certificate present", "done", "drift-repaired"),
        (ActionKind.PUBLISH, "missing", "done", None),
        (ActionKind.CREATE_KEY, "missing", "done", None),
        (ActionKind.CREATE_KEY, "missing", "failed", "failed"),
        (ActionKind.ISSUE_CERTIFICATE, "missing", "skipped", None),
    ],
)
def test_event_type_of_outcome(
    kind: ActionKind, reason: str, result: str, expected: str | None
) -> None:
    assert event_type(outcome(kind, reason, result)) == expected


def test_event_of_names_object() -> None:
    derived = event_of(
        outcome(ActionKind.ISSUE_CERTIFICATE, "missing"), "events", "replica-a", T0
    )

    assert derived is not None
    document = derived.to_dict()
    assert document["object"] == "authority root"
    assert document["authority"] == "root"
    assert document["at"] == "2026-03-01T12:00:00Z"
    assert document["message"] == "missing: detail"
    assert len(document["id"]) == 32


# --- file sink ----------------------------------------------------------------------


def test_file_sink_appends_lines(tmp_path: Path) -> None:
    sink = FileSink("log", FileSinkConfig(type="file", path="events.jsonl"), tmp_path)

    sink.send([event(), event("renewed")])
    sink.send([event("failed")])

    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "issued",
        "renewed",
        "failed",
    ]


def test_file_sink_unwritable(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a directory belongs")
    config = FileSinkConfig(type="file", path="blocked/events.jsonl")

    with pytest.raises(PermanentSinkError, match="cannot append"):
        FileSink("log", config, tmp_path).send([event()])


# --- webhook sink -------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records posts and returns scripted statuses."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def webhook(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> WebhookSink:
    monkeypatch.setenv("PKIFED_WEBHOOK_SECRET", SECRET)
    config = WebhookSinkConfig.model_validate(
        {
            "type": "webhook",
            "url": receiver.url,
            "secret": "${env:PKIFED_WEBHOOK_SECRET}",
            "timeout": 2,
            "retry": FAST_RETRY,
        }
    )
    return WebhookSink("hook", config, clock=lambda: 1772366400.0)


def test_webhook_signature_verifies(webhook: WebhookSink, receiver: Receiver) -> None:
    webhook.send([event()])

    headers, body = receiver.received[0]
    timestamp = headers[TIMESTAMP_HEADER]
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert timestamp == "1772366400"
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], f"sha256={expected}")
    assert json.loads(body)["type"] == "issued"
    assert headers["X-Pkifed-Event"] == "issued"


def test_webhook_retries_server_errors(
    webhook: WebhookSink, receiver: Receiver
) -> None:
    receiver.statuses = [503, 429]

    webhook.send([event()])

    assert len(receiver.received) == 3
    assert receiver.received[0][1] == receiver.received[2][1]


def test_webhook_gives_up_after_attempts(
    webhook: WebhookSink, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500, 500, 500]

    with pytest.raises(EventSinkError, match="HTTP 500"):
        webhook.send([event()])

    assert len(receiver.received) == 3


def test_webhook_client_error_not_retried(
    webhook: WebhookSink, receiver: Receiver
) -> None:
    receiver.statuses = [400]

    with pytest.raises(PermanentSinkError, match="HTTP 400"):
        webhook.send([event()])

    assert len(receiver.received) == 1


def test_webhook_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKIFED_WEBHOOK_SECRET", SECRET)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = WebhookSinkConfig.model_validate(
        {
            "type": "webhook",
            "url": f"http://127.0.0.1:{port}/hook",
            "secret": "${env:PKIFED_WEBHOOK_SECRET}",
            "retry": FAST_RETRY,
        }
    )

    with pytest.raises(EventSinkError, match="unreachable"):
        WebhookSink("hook", config).send([event()])


def test_webhook_secret_not_in_repr(webhook: WebhookSink) -> None:
    assert SECRET not in repr(webhook.config)
    assert SECRET not in webhook.config.model_dump_json()


# --- dispatcher ---------------------------------------------------------------------


class StallingSink(FileSink):
    """A sink that blocks until released, then fails."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__("stall", FileSinkConfig(type="file", path="x"), tmp_path)
        self.release = threading.Event()

    def send(self, events: Any) -> None:
        self.release.wait(10)
        raise PermanentSinkError("event sink stall: rejected")


def test_failing_sink_does_not_block(tmp_path: Path) -> None:
    metrics = Metrics()
    stalling = StallingSink(tmp_path)
    working = FileSink("log", FileSinkConfig(type="file", path="e.jsonl"), tmp_path)
    dispatcher = EventDispatcher([stalling, working], metrics)

    started = time.monotonic()
    dispatcher.submit([event()])
    submit_seconds = time.monotonic() - started
    stalling.release.set()
    flushed = dispatcher.flush(10)
    dispatcher.close()

    assert submit_seconds < 0.5
    assert flushed
    assert metrics.sink_failures.labels("stall")._value.get() == 1
    assert metrics.events.labels("log", "issued")._value.get() == 1
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 1


# --- NATS JetStream -----------------------------------------------------------------


def nats_unreachable() -> str | None:
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout=1):
            return None
    except OSError as error:
        return f"no NATS server at {NATS_HOST}:{NATS_PORT} ({error.strerror})"


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """A JetStream stream with a unique name and subject, deleted afterwards."""
    reason = nats_unreachable()
    if reason is not None:
        pytest.skip(f"NATS sink tests: {reason}; start nats-server -js to run them")
    import nats

    name = f"PKIFED_TEST_{uuid.uuid4().hex[:12].upper()}"
    subject = f"pkifed.test.{name.lower()}"

    async def manage(create: bool) -> None:
        connection = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
        try:
            manager = connection.jetstream()
            if create:
                await manager.add_stream(name=name, subjects=[subject])
            else:
                await manager.delete_stream(name)
        finally:
            await connection.close()

    asyncio.run(manage(create=True))
    yield name, subject
    asyncio.run(manage(create=False))


async def read_stream(name: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    import nats

    connection = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
    try:
        manager = connection.jetstream()
        info = await manager.stream_info(name)
        messages = []
        for sequence in range(1, info.state.messages + 1):
            message = await manager.get_msg(name, sequence)
            messages.append((json.loads(message.data or b""), message.headers or {}))
        return messages
    finally:
        await connection.close()


def test_nats_publishes_to_stream(stream: tuple[str, str]) -> None:
    name, subject = stream
    config = NatsSinkConfig.model_validate(
        {"type": "nats", "subject": subject, "stream": name, "retry": FAST_RETRY}
    )
    sent = [event(), event("rotated")]

    NatsSink("bus", config).send(sent)

    messages = asyncio.run(read_stream(name))
    assert [document["type"] for document, _ in messages] == ["issued", "rotated"]
    assert messages[0][1]["Nats-Msg-Id"] == sent[0].id


def test_nats_resend_deduplicated(stream: tuple[str, str]) -> None:
    name, subject = stream
    config = NatsSinkConfig.model_validate(
        {"type": "nats", "subject": subject, "retry": FAST_RETRY}
    )
    sent = [event()]
    sink = NatsSink("bus", config)

    sink.send(sent)
    sink.send(sent)

    assert len(asyncio.run(read_stream(name))) == 1


def test_nats_wrong_stream_fails(stream: tuple[str, str]) -> None:
    _, subject = stream
    config = NatsSinkConfig.model_validate(
        {"type": "nats", "subject": subject, "stream": "OTHER", "retry": FAST_RETRY}
    )

    with pytest.raises(EventSinkError, match="publishing"):
        NatsSink("bus", config).send([event()])


def test_nats_unreachable_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = NatsSinkConfig.model_validate(
        {
            "type": "nats",
            "servers": [f"nats://127.0.0.1:{port}"],
            "subject": "pkifed.none",
            "timeout": 1,
            "retry": {"attempts": 1},
        }
    )

    with pytest.raises(EventSinkError, match="unreachable"):
        NatsSink("bus", config).send([event()])

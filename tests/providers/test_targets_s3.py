"""Tests of the s3 target against moto's S3 server behind the harness proxy."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.providers.aws import LOOPBACK_ACCESS_KEY_ID
from pkifed.providers.retry import RetrySettings
from pkifed.providers.targets.base import PreconditionFailedError, PublishTarget
from pkifed.providers.targets.s3 import S3Target, S3TargetSettings, map_error
from tests.harness.aws_credentials import TRAP_ACCESS_KEY_ID, install_credential_trap
from tests.harness.s3 import REGION, MotoS3
from tests.providers.target_conformance import TargetConformance, unique_prefix

RETRY = RetrySettings(attempts=3, base_delay=0.001, max_delay=0.005)


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    service = MotoS3()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def bucket(s3: MotoS3) -> str:
    return s3.create_bucket()


@pytest.fixture(autouse=True)
def _aws_environment(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3.client_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def make_target(s3: MotoS3, bucket: str, prefix: str, **extra: Any) -> S3Target:
    settings = S3TargetSettings(
        type="s3",
        bucket=bucket,
        prefix=prefix,
        region=REGION,
        endpoint_url=s3.endpoint_url,
        retry=RETRY,
        **extra,
    )
    return S3Target("bucket", settings, None)


class TestS3Target(TargetConformance):
    location_pattern = r"s3://pkifed-[0-9a-f]{12}/{prefix}/root\.pem"

    @pytest.fixture(autouse=True)
    def _service(self, s3: MotoS3, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def new_target(self, prefix: str) -> PublishTarget:
        return make_target(self.s3, self.bucket, prefix)

    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        return make_target(self.s3, "pkifed-missing", "x"), ProviderPermanentError


def test_publish_retries_throttling(s3: MotoS3, bucket: str) -> None:
    target = make_target(s3, bucket, unique_prefix())
    s3.fail(2, "SlowDown", 503)
    assert target.publish("root.pem", b"one") is True
    stored = target.read("root.pem")
    assert stored is not None
    assert stored.data == b"one"


def test_publish_reports_lasting_5xx(s3: MotoS3, bucket: str) -> None:
    target = make_target(s3, bucket, unique_prefix())
    assert s3.proxy is not None
    s3.proxy.clear()
    s3.fail(RETRY.attempts, "InternalError", 500)
    with pytest.raises(ProviderTemporaryError, match="InternalError"):
        target.publish("root.pem", b"one")
    assert len(s3.proxy.requests) == RETRY.attempts
    s3.proxy.clear()


def test_conflict_is_precondition(s3: MotoS3, bucket: str) -> None:
    target = make_target(s3, bucket, unique_prefix())
    s3.fail(1, "ConditionalRequestConflict", 409)
    with pytest.raises(PreconditionFailedError, match="ConditionalRequestConflict"):
        target.write("root.pem", b"one", None)


def test_access_denied_is_permanent(s3: MotoS3, bucket: str) -> None:
    target = make_target(s3, bucket, unique_prefix())
    s3.fail(1, "AccessDenied", 403)
    with pytest.raises(AccessDeniedError, match=r"s3://.*/root\.pem"):
        target.read("root.pem")


def test_stopped_service_is_temporary(bucket: str) -> None:
    settings = S3TargetSettings(
        type="s3",
        bucket=bucket,
        region=REGION,
        endpoint_url="http://127.0.0.1:9",
        retry=RETRY,
        connect_timeout=1,
    )
    target = S3Target("bucket", settings, None)
    with pytest.raises(ProviderTemporaryError, match="EndpointConnectionError"):
        target.publish("root.pem", b"one")


def test_moto_honours_conditions(s3: MotoS3, bucket: str) -> None:
    client = s3.client()
    key = unique_prefix() + "/root.pem"
    client.put_object(Bucket=bucket, Key=key, Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        client.put_object(Bucket=bucket, Key=key, Body=b"two", IfNoneMatch="*")
    assert raised.value.response["Error"]["Code"] == "PreconditionFailed"


def test_content_type_by_suffix(s3: MotoS3, bucket: str) -> None:
    prefix = unique_prefix()
    target = make_target(s3, bucket, prefix)
    target.write("bundle.p7b", b"x", None)
    head = s3.client().head_object(Bucket=bucket, Key=f"{prefix}/bundle.p7b")
    assert head["ContentType"] == "application/pkcs7-mime"


def test_empty_prefix_lists_top_level(s3: MotoS3) -> None:
    bucket = s3.create_bucket()
    target = make_target(s3, bucket, "")
    nested = make_target(s3, bucket, "nested")
    target.write("root.pem", b"x", None)
    nested.write("deep.pem", b"x", None)
    assert target.list_objects() == ["root.pem"]
    assert target.location("root.pem") == f"s3://{bucket}/root.pem"


def test_map_error_table() -> None:
    cases = {
        "PreconditionFailed": PreconditionFailedError,
        "SlowDown": ProviderTemporaryError,
        "NoSuchBucket": ProviderPermanentError,
        "AccessDenied": AccessDeniedError,
    }
    for code, expected in cases.items():
        error = ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {}},
            "PutObject",
        )
        mapped = map_error(error, target="t", action="writing", location="s3://b/k")
        assert type(mapped) is expected, code
    transport = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    mapped = map_error(transport, target="t", action="reading", location="s3://b/k")
    assert isinstance(mapped, ProviderTemporaryError)


def test_unknown_5xx_is_temporary() -> None:
    error = ClientError(
        {
            "Error": {"Code": "Weird", "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": 502},
        },
        "GetObject",
    )
    mapped = map_error(error, target="t", action="reading", location="s3://b/k")
    assert isinstance(mapped, ProviderTemporaryError)


def test_settings_reject_remote_http() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        S3TargetSettings(
            type="s3", bucket="pkifed", region=REGION, endpoint_url="http://s3.test"
        )


def test_settings_normalise_prefix() -> None:
    settings = S3TargetSettings(
        type="s3", bucket="pkifed", region=REGION, prefix="/pki/prod/"
    )
    assert settings.prefix == "pki/prod"
    with pytest.raises(ValidationError, match="'\\.\\.'"):
        S3TargetSettings(type="s3", bucket="pkifed", region=REGION, prefix="a/../b")


@pytest.mark.parametrize("source", ["environment", "credential_process"])
def test_loopback_endpoint_placeholder_credentials(
    s3: MotoS3,
    bucket: str,
    source: Literal["environment", "credential_process"],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = install_credential_trap(tmp_path, monkeypatch, source)
    assert s3.proxy is not None
    s3.proxy.clear()
    target = make_target(s3, bucket, unique_prefix())
    try:
        published = target.publish("root.pem", b"placeholder credentials")
        listed = target.list_objects()
    finally:
        target.close()
    sent = set(s3.proxy.access_key_ids)
    s3.proxy.clear()

    assert published is True
    assert listed == ["root.pem"]
    assert sent == {LOOPBACK_ACCESS_KEY_ID}
    assert TRAP_ACCESS_KEY_ID not in sent
    assert not marker.exists()


def test_many_threads_share_pool(
    s3: MotoS3, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = make_target(s3, bucket, f"pool-{uuid.uuid4().hex[:8]}")
    target.publish("trust.pem", b"bundle")
    # The reconciler reads every published object from a pool of up to
    # reconcile.concurrency threads, all sharing this target's client.
    with (
        caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"),
        ThreadPoolExecutor(max_workers=32) as pool,
    ):
        stored = list(pool.map(lambda _: target.read("trust.pem"), range(256)))
    assert all(item is not None and item.data == b"bundle" for item in stored)
    assert "Connection pool is full" not in caplog.text

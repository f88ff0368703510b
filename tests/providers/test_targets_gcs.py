"""Tests of the gcs target against gcp-storage-emulator and the generation fake.

The emulator ignores ifGenerationMatch (see tests/harness/gcs_storage.py), so
the precondition cases run against :class:`GenerationStore` only; every other
case runs against both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api_core import exceptions as api_exceptions
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    IntegrityError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.providers.retry import RetrySettings
from pkifed.providers.targets.base import PreconditionFailedError, PublishTarget
from pkifed.providers.targets.gcs import GcsTarget, GcsTargetSettings, error_type_of
from tests.harness.gcs_storage import PROJECT, GcsEmulator, GenerationStore
from tests.providers.target_conformance import TargetConformance, unique_prefix

RETRY = RetrySettings(attempts=3, base_delay=0.001, max_delay=0.005)


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    service = GcsEmulator()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def fake() -> Iterator[GenerationStore]:
    service = GenerationStore()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def emulator_bucket(emulator: GcsEmulator) -> str:
    return emulator.create_bucket()


@pytest.fixture(scope="module")
def fake_bucket(fake: GenerationStore) -> str:
    return fake.create_bucket()


def make_target(endpoint: str, bucket: str, prefix: str) -> GcsTarget:
    settings = GcsTargetSettings(
        type="gcs",
        bucket=bucket,
        prefix=prefix,
        project=PROJECT,
        endpoint=endpoint,
        retry=RETRY,
        timeout=5,
    )
    return GcsTarget("objects", settings, None)


class TestGcsEmulator(TargetConformance):
    location_pattern = r"gs://pkifed-[0-9a-f]{12}/{prefix}/root\.pem"
    precondition_skip = "gcp-storage-emulator ignores ifGenerationMatch"

    @pytest.fixture(autouse=True)
    def _service(self, emulator: GcsEmulator, emulator_bucket: str) -> None:
        self.endpoint = emulator.endpoint
        self.bucket = emulator_bucket

    def new_target(self, prefix: str) -> PublishTarget:
        return make_target(self.endpoint, self.bucket, prefix)

    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        target = make_target(self.endpoint, "pkifed-missing", "x")
        return target, ProviderPermanentError


class TestGcsGenerations(TargetConformance):
    location_pattern = r"gs://pkifed-[0-9a-f]{12}/{prefix}/root\.pem"

    @pytest.fixture(autouse=True)
    def _service(self, fake: GenerationStore, fake_bucket: str) -> None:
        self.endpoint = fake.endpoint
        self.bucket = fake_bucket

    def new_target(self, prefix: str) -> PublishTarget:
        return make_target(self.endpoint, self.bucket, prefix)

    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        target = make_target(self.endpoint, "pkifed-missing", "x")
        return target, ProviderPermanentError


def test_emulator_ignores_generation(emulator: GcsEmulator) -> None:
    bucket = emulator.create_bucket()
    target = make_target(emulator.endpoint, bucket, unique_prefix())
    target.write("root.pem", b"one", None)
    # Cloud Storage would return 412, but the emulator overwrites.
    target.write("root.pem", b"two", None)
    stored = target.read("root.pem")
    assert stored is not None
    assert stored.data == b"two"


def test_publish_retries_unavailable(fake: GenerationStore) -> None:
    target = make_target(fake.endpoint, fake.create_bucket(), unique_prefix())
    fake.fail(2, 503)
    assert target.publish("root.pem", b"one") is True
    stored = target.read("root.pem")
    assert stored is not None
    assert stored.data == b"one"


def test_publish_reports_lasting_5xx(fake: GenerationStore) -> None:
    target = make_target(fake.endpoint, fake.create_bucket(), unique_prefix())
    fake.fail(RETRY.attempts, 500)
    with pytest.raises(ProviderTemporaryError, match="500"):
        target.publish("root.pem", b"one")


def test_forbidden_is_access_denied(fake: GenerationStore) -> None:
    target = make_target(fake.endpoint, fake.create_bucket(), unique_prefix())
    fake.fail(1, 403)
    with pytest.raises(AccessDeniedError, match=r"gs://.*/root\.pem"):
        target.write("root.pem", b"one", None)


def test_listing_follows_pages(fake: GenerationStore) -> None:
    target = make_target(fake.endpoint, fake.create_bucket(), unique_prefix())
    names = [f"ca-{i}.pem" for i in range(5)]
    for name in names:
        target.write(name, b"x", None)
    assert fake.page_size < len(names)
    assert target.list_objects() == names


def test_stopped_service_is_temporary() -> None:
    target = make_target("http://127.0.0.1:9", "pkifed-bucket", "x")
    with pytest.raises(ProviderTemporaryError, match="ConnectionError"):
        target.publish("root.pem", b"one")


def test_error_type_table() -> None:
    assert error_type_of(api_exceptions.PreconditionFailed("m")) is (
        PreconditionFailedError
    )
    assert error_type_of(api_exceptions.TooManyRequests("m")) is (
        ProviderTemporaryError
    )
    assert error_type_of(api_exceptions.BadGateway("m")) is ProviderTemporaryError
    assert error_type_of(api_exceptions.Forbidden("m")) is AccessDeniedError
    assert error_type_of(api_exceptions.NotFound("m")) is ProviderPermanentError

    class DataCorruption(Exception):
        """Stands in for google-resumable-media's checksum error."""

    assert error_type_of(DataCorruption("m")) is IntegrityError
    assert error_type_of(ValueError("m")) is None


def test_settings_reject_remote_http() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        GcsTargetSettings(
            type="gcs", bucket="pkifed", project=PROJECT, endpoint="http://gcs.test"
        )


def test_invalid_version_is_permanent(fake: GenerationStore) -> None:
    target = make_target(fake.endpoint, fake.create_bucket(), unique_prefix())
    with pytest.raises(ProviderPermanentError, match="generation"):
        target.write("root.pem", b"one", '"etag"')

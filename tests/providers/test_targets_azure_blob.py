"""Tests of the azure-blob target against Azurite behind the harness proxy."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from pydantic import ValidationError

from pkifed.errors import (
    AccessDeniedError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.providers.retry import RetrySettings
from pkifed.providers.targets.azure_blob import (
    AzureBlobTarget,
    AzureBlobTargetSettings,
    account_name_of,
    error_type_of,
)
from pkifed.providers.targets.base import PreconditionFailedError, PublishTarget
from tests.harness.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, azurite_command
from tests.providers.target_conformance import TargetConformance, unique_prefix

RETRY = RetrySettings(attempts=3, base_delay=0.001, max_delay=0.005)
KEY_VARIABLE = "PKIFED_TEST_AZURITE_KEY"

needs_azurite = pytest.mark.skipif(
    azurite_command() is None,
    reason="Azurite needs Node.js and npm; scripts/setup.sh installs Azurite",
)


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    service = Azurite()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.create_container()


@pytest.fixture(autouse=True)
def _account_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARIABLE, ACCOUNT_KEY)


def make_target(account_url: str, container: str, prefix: str) -> AzureBlobTarget:
    settings = AzureBlobTargetSettings.model_validate(
        {
            "type": "azure-blob",
            "account_url": account_url,
            "container": container,
            "prefix": prefix,
            "account_key": f"${{env:{KEY_VARIABLE}}}",
            "retry": RETRY,
            "connect_timeout": 2,
            "read_timeout": 5,
        }
    )
    return AzureBlobTarget("blobs", settings, None)


@needs_azurite
class TestAzureBlobTarget(TargetConformance):
    location_pattern = (
        r"http://127\.0\.0\.1:\d+/devstoreaccount1/pkifed-[0-9a-f]{12}/{prefix}/"
        r"root\.pem"
    )

    @pytest.fixture(autouse=True)
    def _service(self, azurite: Azurite, container: str) -> None:
        self.account_url = azurite.account_url
        self.container = container

    def new_target(self, prefix: str) -> PublishTarget:
        return make_target(self.account_url, self.container, prefix)

    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        target = make_target(self.account_url, "pkifed-missing", "x")
        return target, ProviderPermanentError


@needs_azurite
def test_existing_blob_conflict_is_409(azurite: Azurite, container: str) -> None:
    target = make_target(azurite.account_url, container, unique_prefix())
    target.write("root.pem", b"one", None)
    with pytest.raises(PreconditionFailedError, match="BlobAlreadyExists") as raised:
        target.write("root.pem", b"two", None)
    assert isinstance(raised.value.__cause__, HttpResponseError)
    assert raised.value.__cause__.status_code == 409


@needs_azurite
def test_publish_retries_server_busy(azurite: Azurite, container: str) -> None:
    target = make_target(azurite.account_url, container, unique_prefix())
    azurite.fail(2, "ServerBusy", 503)
    assert target.publish("root.pem", b"one") is True
    stored = target.read("root.pem")
    assert stored is not None
    assert stored.data == b"one"


@needs_azurite
def test_publish_reports_lasting_5xx(azurite: Azurite, container: str) -> None:
    target = make_target(azurite.account_url, container, unique_prefix())
    azurite.fail(RETRY.attempts, "InternalError", 500)
    with pytest.raises(ProviderTemporaryError, match="InternalError"):
        target.publish("root.pem", b"one")


@needs_azurite
def test_wrong_key_is_access_denied(
    azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "d3Jvbmcta2V5LWZvci1henVyaXRlLXRlc3RzLW9ubHktMDAwMDAwMDAwMDAwMA=="
    monkeypatch.setenv(KEY_VARIABLE, wrong)
    target = make_target(azurite.account_url, container, unique_prefix())
    with pytest.raises(AccessDeniedError, match="AuthorizationFailure") as raised:
        target.write("root.pem", b"one", None)
    assert wrong not in str(raised.value)
    assert ACCOUNT_KEY not in str(raised.value)


@needs_azurite
def test_key_never_logged(
    azurite: Azurite, container: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = make_target(azurite.account_url, container, unique_prefix())
    azurite.fail(1, "ServerBusy", 503)
    target.publish("root.pem", b"one")
    target.close()
    assert caplog.records
    assert ACCOUNT_KEY not in caplog.text
    assert "SharedKey" not in caplog.text


def test_stopped_service_is_temporary() -> None:
    target = make_target("http://127.0.0.1:9/devstoreaccount1", "pkifed-x", "x")
    with pytest.raises(ProviderTemporaryError, match="ServiceRequestError"):
        target.publish("root.pem", b"one")


def test_error_type_table() -> None:
    error = HttpResponseError(message="m")
    error.error_code = "ConditionNotMet"
    assert error_type_of(error) is PreconditionFailedError
    error.error_code = "BlobAlreadyExists"
    assert error_type_of(error) is PreconditionFailedError
    error.error_code = "ContainerNotFound"
    assert error_type_of(error) is ProviderPermanentError
    error.error_code = "Unheard"
    error.status_code = 503
    assert error_type_of(error) is ProviderTemporaryError
    assert error_type_of(ServiceRequestError("m")) is ProviderTemporaryError
    assert error_type_of(ClientAuthenticationError("m")) is AccessDeniedError
    assert error_type_of(ValueError("m")) is None


def test_account_name_from_url() -> None:
    assert account_name_of("https://pkifed.blob.core.windows.net") == "pkifed"
    assert account_name_of("http://127.0.0.1:10000/devstoreaccount1") == ACCOUNT_NAME
    assert account_name_of("https://blobs.example.test") is None


def test_settings_need_one_credential() -> None:
    base = {
        "type": "azure-blob",
        "account_url": "https://pkifed.blob.core.windows.net",
        "container": "bundles",
    }
    both = {**base, "account_key": "${env:K}", "sas_token": "${env:S}"}
    with pytest.raises(ValidationError, match="not both"):
        AzureBlobTargetSettings.model_validate(both)
    local = {**base, "account_url": "http://127.0.0.1:10000/devstoreaccount1"}
    with pytest.raises(ValidationError, match="loopback account_url needs"):
        AzureBlobTargetSettings.model_validate(local)
    remote_http = {
        **base,
        "account_url": "http://blobs.test",
        "account_key": "${env:K}",
    }
    with pytest.raises(ValidationError, match="loopback addresses only"):
        AzureBlobTargetSettings.model_validate(remote_http)
    literal = {**base, "account_key": ACCOUNT_KEY}
    with pytest.raises(ValidationError) as raised:
        AzureBlobTargetSettings.model_validate(literal)
    assert ACCOUNT_KEY not in str(raised.value)


def test_location_hides_sas() -> None:
    settings = AzureBlobTargetSettings.model_validate(
        {
            "type": "azure-blob",
            "account_url": "https://pkifed.blob.core.windows.net/",
            "container": "bundles",
            "prefix": "pki",
            "sas_token": "${env:PKIFED_TEST_SAS}",
        }
    )
    target = AzureBlobTarget("blobs", settings, None)
    assert target.location("root ca.pem") == (
        "https://pkifed.blob.core.windows.net/bundles/pki/root%20ca.pem"
    )

"""A whole federation on local services, with pkifed run as a separate process.

:func:`local_services` starts every service in the test process: moto's KMS and
S3, the Cloud KMS and Key Vault fakes, the generation-honouring Cloud Storage
fake and, when Node.js is installed, Azurite. :class:`FederationDirectory`
writes a federation file that points at them and runs ``python -m pkifed`` in
a child process, passing credentials through the child's environment only.
Running pkifed in a child keeps SoftHSM2's process-wide state out of the test
process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pkifed.providers.localservices.azure_keyvault import AzureKeyVaultFake
from pkifed.providers.localservices.gcp_kms import FakeCloudKms
from tests.harness.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, azurite_command
from tests.harness.gcs_storage import PROJECT, GenerationStore, storage_client
from tests.harness.moto_service import MotoKms
from tests.harness.s3 import REGION, MotoS3
from tests.harness.softhsm import SOFTHSM_MODULE, SoftHsm

AZURITE_MISSING = (
    "Node.js or Azurite is not installed (scripts/setup.sh installs Azurite into "
    ".cache/azurite), so the azure-blob target is left out"
)

# Few attempts and millisecond delays keep failing runs short. The values are
# far below production defaults and suit local services only.
FAST_RETRY = {"attempts": 2, "base_delay": 0.01, "max_delay": 0.02}

HSM_PIN = "federation-hsm-pin-5772"
PASSPHRASE = "federation-keystore-passphrase-6931"
VAULT_TOKEN = "federation-vault-token-8128"
SECRETS = (HSM_PIN, PASSPHRASE, VAULT_TOKEN, ACCOUNT_KEY)

# The federation's key URI scheme in each provider type.
URI_SCHEMES = {
    "pkcs11": "pkcs11:",
    "local": "file:",
    "aws-kms": "awskms:",
    "gcp-kms": "cloudkms:",
    "azure-keyvault": "azurekms:",
}


@dataclass
class LocalServices:
    """The running services; ``azurite`` is None when it is not installed."""

    kms: MotoKms
    s3: MotoS3
    cloud_kms: FakeCloudKms
    gcs: GenerationStore
    key_vault: AzureKeyVaultFake
    azurite: Azurite | None


@contextmanager
def local_services() -> Iterator[LocalServices]:
    """Start every service on 127.0.0.1 and stop them all afterwards."""
    with ExitStack() as stack:
        kms = stack.enter_context(MotoKms())
        s3 = stack.enter_context(MotoS3())
        cloud_kms = stack.enter_context(FakeCloudKms())
        gcs = GenerationStore()
        gcs.start()
        stack.callback(gcs.stop)
        key_vault = stack.enter_context(AzureKeyVaultFake(expected_token=VAULT_TOKEN))
        azurite = None
        if azurite_command() is not None:
            azurite = stack.enter_context(Azurite())
        yield LocalServices(kms, s3, cloud_kms, gcs, key_vault, azurite)


@dataclass
class FederationDirectory:
    """A federation file, its secrets and its state in one temporary directory.

    Each instance gets a federation name of its own, so keys and objects of
    several instances never meet in the shared services.
    """

    directory: Path
    services: LocalServices
    name: str = field(default_factory=lambda: f"fed-{uuid.uuid4().hex[:10]}")
    document: dict[str, Any] = field(default_factory=dict)
    softhsm: SoftHsm | None = None
    buckets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        secrets = self.directory / "secrets"
        secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file_name, value in (
            ("hsm-pin", HSM_PIN),
            ("keystore-passphrase", PASSPHRASE),
            ("vault-token", VAULT_TOKEN),
        ):
            (secrets / file_name).write_text(value, encoding="utf-8")
        self.document = {
            "version": 1,
            "name": self.name,
            "providers": {},
            "authorities": {},
            "targets": {},
            "bundles": {},
        }

    @property
    def path(self) -> Path:
        return self.directory / "federation.yaml"

    @property
    def prefix(self) -> str:
        """The object name prefix of this federation in every object store."""
        return f"pki/{self.name}"

    # --- providers ------------------------------------------------------------------

    def add_provider(self, name: str, provider_type: str) -> None:
        """Add a provider of ``provider_type`` backed by the local services."""
        self.document["providers"][name] = self._provider_settings(provider_type)

    def _provider_settings(self, provider_type: str) -> dict[str, Any]:
        secrets = self.directory / "secrets"
        if provider_type == "pkcs11":
            if self.softhsm is None:
                self.softhsm = SoftHsm(self.directory / "softhsm")
                self.softhsm.add_token(self.name, pin=HSM_PIN)
            return {
                "type": "pkcs11",
                "module": str(SOFTHSM_MODULE),
                "token": self.name,
                "pin": f"${{file:{secrets / 'hsm-pin'}}}",
            }
        if provider_type == "local":
            return {
                "type": "local",
                "path": str(self.directory / "keys"),
                "passphrase": f"${{file:{secrets / 'keystore-passphrase'}}}",
            }
        settings: dict[str, Any] = {"type": provider_type, "retry": FAST_RETRY}
        if provider_type == "aws-kms":
            settings.update(region=REGION, endpoint_url=self.services.kms.endpoint_url)
        elif provider_type == "gcp-kms":
            settings.update(
                project=PROJECT,
                location="global",
                endpoint=self.services.cloud_kms.endpoint,
                protection_level="software",
            )
        elif provider_type == "azure-keyvault":
            vault = self.services.key_vault
            settings.update(
                vault_url=vault.url,
                ca_bundle=str(vault.ca_bundle),
                credential="local-static",
                local_token=f"${{file:{secrets / 'vault-token'}}}",
                unsafe_skip_challenge_resource_check=True,
            )
        else:
            raise ValueError(f"no local service for provider type {provider_type}")
        return settings

    # --- targets --------------------------------------------------------------------

    def add_target(self, name: str, target_type: str) -> None:
        """Add a target of ``target_type`` with a new bucket or container."""
        self.document["targets"][name] = self._target_settings(name, target_type)

    def _target_settings(self, name: str, target_type: str) -> dict[str, Any]:
        if target_type == "file":
            return {"type": "file", "path": str(self.directory / name)}
        settings: dict[str, Any] = {
            "type": target_type,
            "prefix": self.prefix,
            "retry": FAST_RETRY,
        }
        if target_type == "s3":
            self.buckets[name] = self.services.s3.create_bucket()
            settings.update(
                bucket=self.buckets[name],
                region=REGION,
                endpoint_url=self.services.s3.endpoint_url,
            )
        elif target_type == "gcs":
            self.buckets[name] = self.services.gcs.create_bucket()
            settings.update(
                bucket=self.buckets[name],
                project=PROJECT,
                endpoint=self.services.gcs.endpoint,
                timeout=5,
            )
        elif target_type == "azure-blob":
            azurite = self.services.azurite
            if azurite is None:
                raise RuntimeError(AZURITE_MISSING)
            self.buckets[name] = azurite.create_container()
            settings.update(
                account_url=azurite.account_url,
                container=self.buckets[name],
                account_name=ACCOUNT_NAME,
                account_key="${env:PKIFED_TEST_BLOB_KEY}",
            )
        else:
            raise ValueError(f"no local service for target type {target_type}")
        return settings

    def read_object(self, target: str, object_name: str) -> bytes:
        """Read a published object back through its service's own client."""
        settings = self.document["targets"][target]
        key = f"{self.prefix}/{object_name}"
        if settings["type"] == "file":
            return (Path(settings["path"]) / object_name).read_bytes()
        if settings["type"] == "s3":
            response = self.services.s3.client().get_object(
                Bucket=self.buckets[target], Key=key
            )
            data: bytes = response["Body"].read()
            return data
        if settings["type"] == "gcs":
            client = storage_client(self.services.gcs.endpoint)
            try:
                blob = client.bucket(self.buckets[target]).blob(key)
                downloaded: bytes = blob.download_as_bytes()
                return downloaded
            finally:
                client.close()
        assert self.services.azurite is not None
        with self.services.azurite.service_client() as client:
            blob_client = client.get_blob_client(self.buckets[target], key)
            content: bytes = blob_client.download_blob().readall()
            return content

    # --- running pkifed -------------------------------------------------------------

    def save(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document), encoding="utf-8")

    def environment(self) -> dict[str, str]:
        """Build the child's environment: this process's, with fake cloud credentials.

        Every AWS credential source is replaced or removed, so no profile or
        token of the host reaches the child.
        """
        environment = dict(os.environ)
        for name, value in self.services.kms.client_environment().items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        environment["PKIFED_TEST_BLOB_KEY"] = ACCOUNT_KEY
        environment["PYTHONUNBUFFERED"] = "1"
        if self.softhsm is not None:
            environment["SOFTHSM2_CONF"] = str(self.softhsm.config)
        return environment

    def command(self, *arguments: str) -> list[str]:
        """The command line of ``pkifed <arguments> -c federation.yaml``."""
        return [sys.executable, "-m", "pkifed", *arguments, "-c", str(self.path)]

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Save the file and run pkifed with ``arguments`` to completion."""
        self.save()
        return subprocess.run(
            self.command(*arguments),
            cwd=self.directory,
            env=self.environment(),
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )

    def report(self, *arguments: str) -> dict[str, Any]:
        """Run ``pkifed report --format json`` and return the parsed document."""
        result = self.run("report", "--format", "json", *arguments)
        if result.returncode != 0:
            raise AssertionError(f"report failed: {result.stdout}{result.stderr}")
        document: dict[str, Any] = json.loads(result.stdout)
        return document


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """Join a run's standard output and error, for assertion messages."""
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"

"""Read one published object back from every target, and check the copies match.

Usage: python examples/multicloud_readback.py CONFIG [OBJECT]

OBJECT defaults to trust.pem. Each copy is read through the storage's own SDK
(boto3, google-cloud-storage, azure-storage-blob) or from the file system, not
through pkifed's targets, so the check does not depend on the code that wrote
the objects. Target settings come from CONFIG, with its ${file:...} references
resolved. Exits 1 when a copy is missing or differs from the others.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from pkifed.config.loader import load_config
from pkifed.loopback import is_loopback_url
from pkifed.providers.aws import placeholder_credentials


def read_file(settings: Any, base_dir: Path, name: str) -> bytes:
    return (base_dir / Path(settings.path).expanduser() / name).read_bytes()


def object_key(settings: Any, name: str) -> str:
    """Return the key of ``name`` in an object store: ``<prefix>/<name>``."""
    return f"{settings.prefix}/{name}" if settings.prefix else name


def read_s3(settings: Any, name: str) -> bytes:
    import boto3

    access_key_id, secret_access_key = placeholder_credentials(settings.endpoint_url)
    client = boto3.client(
        "s3",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
    )
    response = client.get_object(Bucket=settings.bucket, Key=object_key(settings, name))
    return bytes(response["Body"].read())


def read_gcs(settings: Any, name: str) -> bytes:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    options: dict[str, Any] = {"project": settings.project}
    if settings.endpoint is not None:
        options["client_options"] = {"api_endpoint": settings.endpoint}
        if is_loopback_url(settings.endpoint):
            options["credentials"] = AnonymousCredentials()
    client = storage.Client(**options)
    blob = client.bucket(settings.bucket).blob(object_key(settings, name))
    return bytes(blob.download_as_bytes())


def read_azure_blob(settings: Any, name: str) -> bytes:
    from azure.storage.blob import BlobServiceClient

    credential: Any = None
    if settings.account_key is not None:
        credential = {
            "account_name": settings.resolved_account_name,
            "account_key": settings.account_key.resolve(),
        }
    elif settings.sas_token is not None:
        credential = settings.sas_token.resolve()
    with BlobServiceClient(settings.account_url, credential=credential) as client:
        blob = client.get_blob_client(settings.container, object_key(settings, name))
        return bytes(blob.download_blob().readall())


def read_copy(settings: Any, base_dir: Path, name: str) -> bytes:
    """Read ``name`` from one target through the SDK of its storage."""
    if settings.type == "file":
        return read_file(settings, base_dir, name)
    if settings.type == "s3":
        return read_s3(settings, name)
    if settings.type == "gcs":
        return read_gcs(settings, name)
    if settings.type == "azure-blob":
        return read_azure_blob(settings, name)
    raise ValueError(f"no reader for target type {settings.type}")


def main(arguments: list[str]) -> int:
    if not 1 <= len(arguments) <= 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    config = load_config(arguments[0])
    name = arguments[1] if len(arguments) == 2 else "trust.pem"
    digests = set()
    for target, plugin in config.targets.items():
        settings = plugin.settings
        try:
            data = read_copy(settings, config.base_dir, name)
        except Exception as error:
            print(f"{name} on {target}: cannot read: {type(error).__name__}: {error}")
            return 1
        digest = hashlib.sha256(data).hexdigest()
        digests.add(digest)
        size = len(data)
        print(f"{name} on {target} ({settings.type}): {size} bytes, sha256 {digest}")
    if len(digests) != 1:
        print(f"{name} differs between the targets")
        return 1
    print(f"{name} is byte-identical on all {len(config.targets)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

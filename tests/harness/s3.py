"""A local S3 for tests: moto's server behind a fault-injecting proxy.

What was checked in moto 5.2.5 (moto/s3/responses.py, ``put_object`` and
``delete_object``): moto honours ``If-None-Match: *`` and ``If-Match`` on
PutObject and ``If-Match`` on DeleteObject with 412 ``PreconditionFailed``, and
responds to If-Match on a missing key with 404 ``NoSuchKey``. It checks the
precondition and then writes in two steps under no lock. In 30 racing pairs of
``If-None-Match: *`` writes without the proxy's lock, no pair both succeeded,
but nothing in moto guarantees that. S3 makes the check and the write atomic,
so the proxy serialises conditional writes to match.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from tests.harness.fault_proxy import FaultProxy

# Fake credentials for every client of the local service. moto accepts any.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"


class MotoS3:
    """moto's S3 on 127.0.0.1 with a proxy that injects faults."""

    def __init__(self) -> None:
        self._moto: Any = None
        self.proxy: FaultProxy | None = None

    def start(self) -> None:
        """Start moto's server and the proxy, each on 127.0.0.1 and a free port."""
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.proxy = FaultProxy((host, port), serialize_conditional_writes=True)
        self.proxy.start()

    def stop(self) -> None:
        """Stop the proxy and moto's server."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """The proxy's URL, which clients under test use."""
        if self.proxy is None:
            raise RuntimeError("MotoS3 is not started")
        host, port = self.proxy.address
        return f"http://{host}:{port}"

    def client_environment(self) -> dict[str, str | None]:
        """Variables that give boto3 the fake credentials and nothing else.

        A value of None means the variable must be unset. The shared config
        files point at the null device so a developer's profile cannot leak in,
        and the instance metadata service is never asked.
        """
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_SESSION_TOKEN": None,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_PROFILE": None,
            "AWS_DEFAULT_PROFILE": None,
            "AWS_ROLE_ARN": None,
            "AWS_WEB_IDENTITY_TOKEN_FILE": None,
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
            "AWS_ENDPOINT_URL": None,
            "AWS_ENDPOINT_URL_S3": None,
        }

    def client(self) -> Any:
        """A boto3 S3 client with explicit fake credentials, through the proxy."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )

    def create_bucket(self, prefix: str = "pkifed") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def fail(self, count: int, code: str = "SlowDown", status: int = 503) -> None:
        """Fail the next ``count`` requests with an S3 error document."""
        if self.proxy is None:
            raise RuntimeError("MotoS3 is not started")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by the test harness"
            f"</Message><RequestId>{uuid.uuid4()}</RequestId></Error>"
        ).encode()
        self.proxy.fail(count, status, body, [("Content-Type", "application/xml")])

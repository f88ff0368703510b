"""Local Cloud Storage services for tests, each on 127.0.0.1 and a free port.

:class:`GcsEmulator` runs gcp-storage-emulator (2026.7.19) in this process.
Checked against it with google-cloud-storage 3.17: it accepts every upload and
delete whatever the value of ``ifGenerationMatch`` (its handlers never read the
parameter), and its downloads carry no ``x-goog-generation`` header.

:class:`GenerationStore`, the project's own fake that honours
``ifGenerationMatch``, lives in :mod:`pkifed.providers.localservices.gcs`,
which ``pkifed dev up`` runs too.
"""

from __future__ import annotations

import uuid
from typing import Any

from pkifed.providers.localservices.gcs import GenerationStore

__all__ = ["PROJECT", "GcsEmulator", "GenerationStore", "storage_client"]

PROJECT = "pkifed-test"


def storage_client(endpoint: str) -> Any:
    """A google-cloud-storage client with anonymous credentials for ``endpoint``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage  # type: ignore[attr-defined, unused-ignore]

    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )


class GcsEmulator:
    """gcp-storage-emulator, in memory, in a thread of this process."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> None:
        """Start the emulator on 127.0.0.1 and a free port."""
        from gcp_storage_emulator.server import create_server

        self._server = create_server("127.0.0.1", 0, in_memory=True)
        self._server.start()
        # The emulator exposes its port only through its HTTP server object.
        host, port = self._server._api._httpd.server_address[:2]
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop the emulator."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def create_bucket(self, prefix: str = "pkifed") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = storage_client(self.endpoint)
        client.create_bucket(name)
        client.close()
        return name

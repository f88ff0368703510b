"""A local Azure Blob service for tests: Azurite behind a fault-injecting proxy.

Azurite (the npm package, installed by scripts/setup.sh into .cache/azurite)
runs as a child process on 127.0.0.1 and a port the operating system picks.
The harness reads that port from Azurite's startup line. Azurite serves the
development account ``devstoreaccount1``, whose key is published in Azurite's
README and guards nothing.

Checked against Azurite 3.37.0: a Put Blob with ``If-None-Match: *`` on an
existing blob fails with 409 ``BlobAlreadyExists``, and a failed ``If-Match``
with 412 ``ConditionNotMet``. The proxy serialises conditional writes, because
Azurite is not documented to make the check and the write atomic as Azure
Storage does. In 30 racing pairs without the lock, no pair both succeeded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.harness.fault_proxy import FaultProxy

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
    "KBHBeksoGMGw=="
)
AZURITE_VERSION = "3.37.0"

_REPOSITORY = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(rb"successfully listens on http://127\.0\.0\.1:(\d+)")


def azurite_command() -> str | None:
    """Return the azurite-blob executable, or None when it is not installed."""
    if shutil.which("node") is None:
        return None
    local = _REPOSITORY / ".cache" / "azurite" / "node_modules" / ".bin"
    candidate = local / "azurite-blob"
    if candidate.exists():
        return str(candidate)
    return shutil.which("azurite-blob")


class Azurite:
    """Azurite's Blob service with a proxy that injects faults."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.proxy: FaultProxy | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    def start(self) -> None:
        """Start Azurite and the proxy, each on 127.0.0.1 and a free port.

        Raises:
            RuntimeError: Azurite is not installed, exits or does not listen
                within ``startup_timeout`` seconds.
        """
        command = azurite_command()
        if command is None:
            raise RuntimeError("azurite-blob is not installed; run scripts/setup.sh")
        self._directory = tempfile.TemporaryDirectory(prefix="pkifed-azurite-")
        log_path = Path(self._directory.name) / "azurite.log"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop().
        # Without --silent Azurite prints the port it bound, and an access log
        # line per request, which stays in the temporary directory.
        self._process = subprocess.Popen(
            [
                command,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                self._directory.name,
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        port = self._wait_for_port(log_path)
        self.proxy = FaultProxy(("127.0.0.1", port), serialize_conditional_writes=True)
        self.proxy.start()

    def _wait_for_port(self, log_path: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(log_path.read_bytes())
            if match is not None:
                return int(match[1])
            if self._process.poll() is not None:
                output = log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"azurite exited during startup: {output}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite did not listen within {self.startup_timeout} s")

    def stop(self) -> None:
        """Stop the proxy and Azurite, and remove its data."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def kill(self) -> None:
        """Stop Azurite but keep the proxy, so requests fail to connect."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def account_url(self) -> str:
        """The development account's Blob service URL, through the proxy."""
        if self.proxy is None:
            raise RuntimeError("Azurite is not started")
        host, port = self.proxy.address
        return f"http://{host}:{port}/{ACCOUNT_NAME}"

    def service_client(self) -> Any:
        """A BlobServiceClient with the development account key and no retries."""
        from azure.storage.blob import BlobServiceClient

        credential = {"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}
        return BlobServiceClient(self.account_url, credential=credential, retry_total=0)

    def create_container(self, prefix: str = "pkifed") -> str:
        """Create a container with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        with self.service_client() as client:
            client.create_container(name)
        return name

    def fail(self, count: int, code: str = "ServerBusy", status: int = 503) -> None:
        """Fail the next ``count`` requests with an Azure Storage error."""
        if self.proxy is None:
            raise RuntimeError("Azurite is not started")
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{code}</Code><Message>injected by the test harness"
            "</Message></Error>"
        ).encode()
        headers = [
            ("Content-Type", "application/xml"),
            ("x-ms-error-code", code),
            ("x-ms-request-id", str(uuid.uuid4())),
        ]
        self.proxy.fail(count, status, body, headers)

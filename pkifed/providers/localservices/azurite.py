"""The local Azure Blob stand-in: Azurite behind a proxy that serialises writes.

Azurite, Microsoft's Azure Storage emulator, is an npm package. From a checkout,
``scripts/setup.sh`` with ``PKIFED_EXTRAS=dev`` or ``test`` installs it into
``.cache/azurite``. An ``azurite-blob`` on PATH works too, and the environment
variable ``PKIFED_AZURITE`` can name another one. It runs as a child
process on 127.0.0.1 and a port the operating system picks, which is read from
Azurite's startup line.

By default Azurite serves the development account ``devstoreaccount1``, whose
key is published in Azurite's README and guards nothing. Given an account name
and key, it serves that account only (``AZURITE_ACCOUNTS``, Azurite's README,
"Customized storage accounts & keys"), which ``pkifed dev up`` uses so that the
key is a secret of this machine.

Checked against Azurite 3.37.0: a Put Blob with ``If-None-Match: *`` on an
existing blob fails with 409 ``BlobAlreadyExists``, and a failed ``If-Match``
with 412 ``ConditionNotMet``. The proxy serialises conditional writes, because
Azurite is not documented to make the check and the write atomic as Azure
Storage does. In 30 racing pairs without the lock, no pair both succeeded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from pkifed.providers.localservices import LocalServiceError
from pkifed.providers.localservices.proxy import FaultProxy

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
    "KBHBeksoGMGw=="
)
AZURITE_VERSION = "3.37.0"

# How to get Azurite, for error messages.
INSTALL_HINT = (
    "install Node.js and npm (Debian: apt-get install nodejs npm), then run "
    "PKIFED_EXTRAS=dev bash scripts/setup.sh, which installs Azurite into "
    ".cache/azurite"
)

# The checkout that contains this package when it is installed in editable mode,
# as scripts/setup.sh does.
_CHECKOUT = Path(__file__).resolve().parents[3]
_LISTENING = re.compile(rb"successfully listens on http://127\.0\.0\.1:(\d+)")


def azurite_command() -> str | None:
    """Return the azurite-blob executable, or None when it or Node.js is missing.

    ``PKIFED_AZURITE``, when set, names the executable and is used as it is.
    Otherwise Node.js must be on PATH, and the checkout's ``.cache/azurite``
    comes first, then PATH.
    """
    override = os.environ.get("PKIFED_AZURITE")
    if override:
        return override
    if shutil.which("node") is None:
        return None
    candidate = _CHECKOUT / ".cache" / "azurite" / "node_modules" / ".bin"
    candidate = candidate / "azurite-blob"
    if candidate.exists():
        return str(candidate)
    return shutil.which("azurite-blob")


class Azurite:
    """Azurite's Blob service, as a child process, behind a proxy on 127.0.0.1.

    ``account_name`` and ``account_key`` replace the development account;
    ``location`` keeps Azurite's data and log in a directory of the caller's
    instead of a temporary one. Tests can make the proxy fail the next
    requests with :meth:`fail`.
    """

    def __init__(
        self,
        startup_timeout: float = 30.0,
        *,
        account_name: str = ACCOUNT_NAME,
        account_key: str = ACCOUNT_KEY,
        location: Path | None = None,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.account_name = account_name
        self.account_key = account_key
        self.location = location
        self.proxy: FaultProxy | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The Azurite process's id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start Azurite and the proxy, each on 127.0.0.1 and a free port.

        Raises:
            LocalServiceError: Azurite or Node.js is not installed, or Azurite
                exits or does not listen within ``startup_timeout`` seconds.
        """
        command = azurite_command()
        if command is None:
            raise LocalServiceError(
                f"the local Azure Blob stand-in needs Azurite, which was not found; "
                f"{INSTALL_HINT}"
            )
        location = self.location
        if location is None:
            self._directory = tempfile.TemporaryDirectory(prefix="pkifed-azurite-")
            location = Path(self._directory.name)
        location.mkdir(parents=True, exist_ok=True)
        log_path = location / "azurite.log"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop().
        environment = dict(os.environ)
        environment.pop("AZURITE_ACCOUNTS", None)
        if (self.account_name, self.account_key) != (ACCOUNT_NAME, ACCOUNT_KEY):
            # The key travels in the environment, which only this user can
            # read, and never on the command line.
            environment["AZURITE_ACCOUNTS"] = f"{self.account_name}:{self.account_key}"
        # Without --silent Azurite prints the port it bound, and an access log
        # line per request, which stays in the log file.
        self._process = subprocess.Popen(  # noqa: S603 - a fixed argument list.
            [
                command,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                str(location),
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        )
        port = self._wait_for_port(log_path)
        self.proxy = FaultProxy(("127.0.0.1", port), serialize_conditional_writes=True)
        self.proxy.start()

    def _wait_for_port(self, log_path: Path) -> int:
        process = self._process
        if process is None:
            raise RuntimeError("Azurite is not started")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(log_path.read_bytes())
            if match is not None:
                return int(match[1])
            if process.poll() is not None:
                output = log_path.read_text(errors="replace").strip()
                self.stop()
                raise LocalServiceError(f"azurite exited during startup: {output}")
            time.sleep(0.05)
        self.stop()
        raise LocalServiceError(
            f"azurite did not listen within {self.startup_timeout} s; see {log_path}"
        )

    def stop(self) -> None:
        """Stop the proxy and Azurite, and remove its data if it was temporary."""
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
        """The account's Blob service URL, through the proxy."""
        if self.proxy is None:
            raise RuntimeError("Azurite is not started")
        host, port = self.proxy.address
        return f"http://{host}:{port}/{self.account_name}"

    def service_client(self) -> Any:
        """Build a BlobServiceClient with the account key and no retries."""
        from azure.storage.blob import BlobServiceClient

        credential = {
            "account_name": self.account_name,
            "account_key": self.account_key,
        }
        return BlobServiceClient(self.account_url, credential=credential, retry_total=0)

    def create_container(
        self, prefix: str = "pkifed", *, name: str | None = None
    ) -> str:
        """Create a container and return its name: ``name``, or a unique one.

        Creating a container that exists keeps its blobs.
        """
        from azure.core.exceptions import ResourceExistsError

        container = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        # A container left from an earlier start keeps its blobs.
        with self.service_client() as client, contextlib.suppress(ResourceExistsError):
            client.create_container(container)
        return container

    def fail(self, count: int, code: str = "ServerBusy", status: int = 503) -> None:
        """Fail the next ``count`` requests with an Azure Storage error."""
        if self.proxy is None:
            raise RuntimeError("Azurite is not started")
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{code}</Code><Message>injected by a test"
            "</Message></Error>"
        ).encode()
        headers = [
            ("Content-Type", "application/xml"),
            ("x-ms-error-code", code),
            ("x-ms-request-id", str(uuid.uuid4())),
        ]
        self.proxy.fail(count, status, body, headers)

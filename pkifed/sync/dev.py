"""``pkifed dev``: local stand-ins of every cloud service, in one background process.

``pkifed dev up`` starts ``pkifed dev serve`` as a detached process in a session
of its own. That process runs six services, each on 127.0.0.1 and a port the
operating system picks. They are moto's KMS behind the correcting proxy
(aws-kms), moto's S3 (s3), the Cloud KMS fake (gcp-kms), the Cloud Storage fake
(gcs), the Key Vault fake over TLS (azure-keyvault) and Azurite (azure-blob).
The process writes what a federation file needs to reach them into
``.pkifed/dev`` beside the file, so the file can refer to each value as
``${file:...}``:

* ``endpoints/<service>``: each service's URL on one line;
* ``keyvault-tls/ca.pem``: the CA that signed the Key Vault's TLS certificate;
* ``keyvault-token``: the bearer token the Key Vault accepts (a secret);
* ``azurite-account-key``: the key of the Azurite account (a secret);
* ``services.pid`` and ``services.log``: the process's id and its log.

It also creates every S3 and Cloud Storage bucket and every Azure Blob
container that the file's targets name. The stand-ins keep keys and objects in
memory, so ``pkifed dev down`` discards them, and with them everything in
``.pkifed/dev``, including a state store kept there. dev up and dev down lock
``.pkifed/dev.lock`` first, so only one of them at a time changes the directory.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import http.client
import importlib.util
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pkifed.loopback import is_loopback_url
from pkifed.providers.localservices import DEV_EXTRA_HINT, LocalServiceError
from pkifed.providers.localservices.azurite import INSTALL_HINT, azurite_command

logger = logging.getLogger(__name__)

# Every service, in the order the background process starts them.
SERVICES = ("aws-kms", "s3", "gcp-kms", "gcs", "azure-keyvault", "azure-blob")

# The target type and setting that name a bucket or container for each service.
BUCKET_SETTINGS = {"s3": "bucket", "gcs": "bucket", "azure-blob": "container"}

# The Azurite account that pkifed dev serves, in place of the development one.
AZURITE_ACCOUNT = "pkifeddev"

# How long dev up waits for every service to respond, and dev down for the
# process to exit after SIGTERM, in seconds. Azurite is the slowest to start:
# 1 to 4 s in a few runs on a busy 2-core machine.
STARTUP_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 20.0

# How long dev up and dev down wait for another of them on the same directory
# to finish, in seconds: the longest a start that fails or a stop can take.
LOCK_TIMEOUT = STARTUP_TIMEOUT + 2 * SHUTDOWN_TIMEOUT

# How long dev serve waits for dev up to write its id into the pid file, in
# seconds. dev up writes it as soon as the process exists, so the wait is
# longer than a few milliseconds only on a stalled machine.
OWNER_TIMEOUT = 10.0

# The state that dev status and dev up report for an endpoint file whose URL
# is not on a loopback address.
NOT_LOOPBACK = "not a loopback address, so not contacted"

# Exit status of dev status when no services are running (the LSB convention).
NOT_RUNNING_EXIT = 3

# A process id as the pid file contains it: ASCII digits without a sign or a
# leading zero. pid_t is a signed 32-bit integer on Linux and macOS, and a
# larger number makes os.kill raise OverflowError.
_PID = re.compile(r"[1-9][0-9]{0,9}")
_MAX_PID = 2**31 - 1

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DevPaths:
    """The files of one federation file's local services, in ``.pkifed/dev``."""

    config: Path
    root: Path

    @classmethod
    def beside(cls, config: Path) -> DevPaths:
        """Return the paths for the federation file ``config``."""
        resolved = config.resolve()
        return cls(resolved, resolved.parent / ".pkifed" / "dev")

    @property
    def lock_file(self) -> Path:
        """The lock file of dev up and down, beside the directory they remove."""
        return self.root.parent / "dev.lock"

    @property
    def pid_file(self) -> Path:
        return self.root / "services.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "services.log"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints"

    @property
    def startup_error(self) -> Path:
        return self.root / "startup-error"

    @property
    def keyvault_tls(self) -> Path:
        return self.root / "keyvault-tls"

    @property
    def keyvault_ca(self) -> Path:
        return self.keyvault_tls / "ca.pem"

    @property
    def keyvault_token(self) -> Path:
        return self.root / "keyvault-token"

    @property
    def azurite_key(self) -> Path:
        return self.root / "azurite-account-key"

    @property
    def azurite_data(self) -> Path:
        return self.root / "azurite"

    def endpoint(self, service: str) -> Path:
        """Return the file that contains ``service``'s URL."""
        return self.endpoints / service


# --- the federation file's buckets ----------------------------------------------------


def bucket_names(config: Path) -> dict[str, list[str]]:
    """Return the buckets and containers that ``config``'s targets name, by service.

    Only literal names count. A name written as a reference is left out, and
    its bucket must be created by hand.

    Raises:
        LocalServiceError: the file cannot be read or is not a YAML mapping.
    """
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as error:
        raise LocalServiceError(f"{config}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or error
        raise LocalServiceError(f"{config}: invalid YAML: {where}{problem}") from None
    if not isinstance(document, dict):
        raise LocalServiceError(f"{config}: the file must contain a mapping")
    targets = document.get("targets") or {}
    names: dict[str, list[str]] = {service: [] for service in BUCKET_SETTINGS}
    if not isinstance(targets, dict):
        return names
    for settings in targets.values():
        if not isinstance(settings, dict):
            continue
        service = settings.get("type")
        setting = BUCKET_SETTINGS.get(str(service))
        value = settings.get(setting) if setting else None
        literal = isinstance(value, str) and not value.strip().startswith("${")
        if literal and value not in names[str(service)]:
            names[str(service)].append(str(value))
    return names


# --- the background process -----------------------------------------------------------


def serve(config: Path) -> int:
    """Run every local service until SIGTERM or SIGINT; return the exit status.

    A service that fails to start stops the ones started before it, and its
    error goes to the startup-error file for ``dev up`` to show.
    """
    paths = DevPaths.beside(config)
    _configure_service_log()
    stopping = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, frame: stopping.set())
    if not _wait_until_named(paths, stopping):
        logger.error(
            "local services: %s does not name process %d, so no pkifed dev down "
            "could stop it; exiting without starting any service",
            paths.pid_file,
            os.getpid(),
        )
        return 1
    try:
        with contextlib.ExitStack() as stack:
            try:
                _start_all(paths, bucket_names(paths.config), stack)
            except Exception as error:
                # Any failure, whatever its type, must stop the services that
                # did start, and dev up shows the message.
                logger.exception("local services: startup failed")
                _write_text(paths.startup_error, f"{error}\n")
                return 1
            logger.info("local services: all running as process %d", os.getpid())
            while not stopping.wait(1.0):
                pass
            logger.info("local services: stopping on request")
        logger.info("local services: stopped")
        return 0
    finally:
        # The files belong to another dev process once the pid file names it.
        if read_pid(paths) == os.getpid():
            shutil.rmtree(paths.endpoints, ignore_errors=True)
            paths.pid_file.unlink(missing_ok=True)


def _wait_until_named(paths: DevPaths, stopping: threading.Event) -> bool:
    """Wait until the pid file names this process; return whether it does.

    dev up writes the pid file right after starting this process. When dev up
    is killed before that, or a later dev up has started a process of its
    own, no pid file names this one, and it must not start services that
    nothing would stop.
    """
    deadline = time.monotonic() + OWNER_TIMEOUT
    while not stopping.is_set() and time.monotonic() < deadline:
        pid = read_pid(paths)
        if pid == os.getpid():
            return True
        if pid is not None:
            return False
        time.sleep(0.05)
    return False


def _configure_service_log() -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    # moto's server logs every request at INFO.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


class _Starter:
    """Starts services one by one, naming the one that fails."""

    def __init__(self, paths: DevPaths, stack: contextlib.ExitStack) -> None:
        self.paths = paths
        self.stack = stack

    @contextlib.contextmanager
    def service(self, name: str) -> Iterator[None]:
        try:
            yield
        except LocalServiceError as error:
            raise LocalServiceError(f"{name}: {error}") from error
        except ImportError as error:
            raise LocalServiceError(
                f"{name}: a dependency failed to import ({error}); {DEV_EXTRA_HINT}"
            ) from error
        except Exception as error:
            raise LocalServiceError(
                f"{name} failed to start: {type(error).__name__}: {error}"
            ) from error

    def publish(self, name: str, url: str) -> None:
        """Write ``name``'s endpoint file, the sign for dev up that it is running."""
        _write_text(self.paths.endpoint(name), f"{url}\n")
        logger.info("local services: %s listening on %s", name, url)


def _start_all(
    paths: DevPaths, buckets: dict[str, list[str]], stack: contextlib.ExitStack
) -> None:
    starter = _Starter(paths, stack)
    _start_aws(starter, buckets)
    _start_gcp(starter, buckets)
    _start_azure(starter, buckets)


def _start_aws(starter: _Starter, buckets: dict[str, list[str]]) -> None:
    from pkifed.providers.localservices.aws import MotoKms, MotoS3

    with starter.service("aws-kms"):
        kms = MotoKms()
        kms.start()
        starter.stack.callback(kms.stop)
        starter.publish("aws-kms", kms.endpoint_url)
    with starter.service("s3"):
        s3 = MotoS3()
        s3.start()
        starter.stack.callback(s3.stop)
        for bucket in buckets["s3"]:
            s3.create_bucket(name=bucket)
        starter.publish("s3", s3.endpoint_url)


def _start_gcp(starter: _Starter, buckets: dict[str, list[str]]) -> None:
    from pkifed.providers.localservices.gcp_kms import FakeCloudKms
    from pkifed.providers.localservices.gcs import GenerationStore

    with starter.service("gcp-kms"):
        cloud_kms = FakeCloudKms().start()
        starter.stack.callback(cloud_kms.stop)
        starter.publish("gcp-kms", cloud_kms.endpoint)
    with starter.service("gcs"):
        # 1,000 is the JSON API's maximum page size for object listings.
        storage = GenerationStore(page_size=1000)
        storage.start()
        starter.stack.callback(storage.stop)
        for bucket in buckets["gcs"]:
            storage.create_bucket(name=bucket)
        starter.publish("gcs", storage.endpoint)


def _start_azure(starter: _Starter, buckets: dict[str, list[str]]) -> None:
    from pkifed.providers.localservices.azure_keyvault import (
        AzureKeyVaultFake,
        generate_loopback_tls,
    )
    from pkifed.providers.localservices.azurite import Azurite

    paths = starter.paths
    with starter.service("azure-keyvault"):
        paths.keyvault_tls.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls = generate_loopback_tls(paths.keyvault_tls, validity_days=365)
        token = secrets.token_urlsafe(32)
        _write_secret(paths.keyvault_token, token)
        vault = AzureKeyVaultFake(tls=tls, expected_token=token).start()
        starter.stack.callback(vault.stop)
        starter.publish("azure-keyvault", vault.url)
    with starter.service("azure-blob"):
        # Azure account keys are 64 random bytes, base64-encoded.
        key = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
        _write_secret(paths.azurite_key, key)
        azurite = Azurite(
            account_name=AZURITE_ACCOUNT, account_key=key, location=paths.azurite_data
        )
        azurite.start()
        starter.stack.callback(azurite.stop)
        for container in buckets["azure-blob"]:
            azurite.create_container(name=container)
        starter.publish("azure-blob", azurite.account_url)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _write_secret(path: Path, value: str) -> None:
    """Write a secret readable by this user only."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(f"{value}\n")


# --- the process, seen from outside ---------------------------------------------------


def read_pid(paths: DevPaths) -> int | None:
    """Return the process id in the pid file, or None when there is no valid one."""
    try:
        text = paths.pid_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    if _PID.fullmatch(text) is None or int(text) > _MAX_PID:
        return None
    return int(text)


def _serve_command(paths: DevPaths) -> list[str]:
    return [sys.executable, "-m", "pkifed", "dev", "serve", "-c", str(paths.config)]


def serving_config(pid: int, paths: DevPaths) -> Path | None:
    """Return the federation file whose dev process ``pid`` is, or None if gone.

    A zombie counts as gone, and so does a live process that is not a
    ``pkifed dev serve``, because its id was reused. Without ``/proc`` the
    process's command line cannot be read, and a live ``pid`` is taken to be
    the dev process of ``paths``.
    """
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return paths.config
    try:
        status = (proc / "stat").read_text().rpartition(")")[2].split()
        arguments = (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    if status and status[0] in ("Z", "X"):
        return None
    # The interpreter's path may differ through symbolic links, so only the
    # arguments after it are compared.
    parts = arguments.split("\0")[1:]
    command = _serve_command(paths)[1:-1]
    if parts[: len(command)] != command or len(parts) <= len(command):
        return None
    return Path(parts[len(command)])


def is_running(pid: int, paths: DevPaths) -> bool:
    """Return whether ``pid`` is alive and is the dev process of ``paths``."""
    return serving_config(pid, paths) == paths.config


def _check_owner(pid: int | None, paths: DevPaths) -> None:
    """Raise if ``.pkifed/dev`` belongs to the dev process of another file.

    Two federation files in one directory share ``.pkifed/dev``, so the
    services of one must be stopped before the other's start or stop. The
    dev process of a file in another directory uses another ``.pkifed/dev``,
    so it has a reused id and the pid file is stale.
    """
    if pid is None:
        return
    owner = serving_config(pid, paths)
    if owner is None or owner == paths.config:
        return
    if DevPaths.beside(owner).root == paths.root:
        raise LocalServiceError(
            f"{_shown(paths.root)} belongs to the local services of {_shown(owner)} "
            f"(process {pid}); stop them first with {_down_command(owner)}"
        )


def _wait_until_gone(pid: int, paths: DevPaths, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid, paths):
            return True
        time.sleep(0.05)
    return not is_running(pid, paths)


def _kill_group(pid: int) -> None:
    """Kill the dev process and its children, such as Azurite."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def leftover_processes(paths: DevPaths) -> list[int]:
    """Return the live Azurite processes that a killed dev process of ``paths`` left.

    Azurite runs as a child process of dev serve, which stops it on SIGTERM.
    After a SIGKILL, or a crash, Azurite keeps running and keeps its port.
    It is recognised by its ``--location`` argument, the Azurite directory in
    ``.pkifed/dev``, which no other program uses. Call this only while no dev
    process of ``paths`` runs, or it returns that process's Azurite too.
    Without ``/proc`` it returns nothing.
    """
    location = os.fsencode(paths.azurite_data)
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state in ("Z", "X") or b"--location" not in arguments:
            continue
        value = arguments.index(b"--location") + 1
        if value < len(arguments) and arguments[value] == location:
            found.append(int(entry.name))
    return sorted(found)


def _stop_leftovers(paths: DevPaths, echo: Echo) -> None:
    """Kill what a killed dev process left running, so its ports are freed.

    Raises:
        LocalServiceError: a process did not exit within 5 s of SIGKILL.
    """
    leftovers = leftover_processes(paths)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    remaining = leftovers
    deadline = time.monotonic() + 5.0
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [pid for pid in remaining if pid in leftover_processes(paths)]
    if remaining:
        raise LocalServiceError(
            f"Azurite process {remaining[0]}, left by local services that died, "
            "did not exit after SIGKILL"
        )
    for pid in leftovers:
        echo(f"Stopped process {pid} (Azurite), left by local services that died.")


def read_endpoints(paths: DevPaths) -> dict[str, str]:
    """Return the URL of each service whose endpoint file exists."""
    endpoints = {}
    for service in SERVICES:
        with contextlib.suppress(FileNotFoundError):
            endpoints[service] = paths.endpoint(service).read_text("utf-8").strip()
    return endpoints


def probe(url: str, ca_file: Path | None = None, timeout: float = 2.0) -> str | None:
    """Send one GET to ``url``; return None if any HTTP response came, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cafile=None if ca_file is None else str(ca_file)
        )
        connection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return None


def _probe_service(paths: DevPaths, service: str, url: str) -> str | None:
    # The services listen on 127.0.0.1 only, so another address comes from an
    # edited endpoint file, and pkifed sends nothing to it.
    if not is_loopback_url(url):
        return NOT_LOOPBACK
    ca_file = paths.keyvault_ca if service == "azure-keyvault" else None
    return probe(url, ca_file)


def _shown(path: Path) -> str:
    """Return ``path`` relative to the working directory when it is below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _down_command(config: Path) -> str:
    """Return the dev down command for ``config``, quoted for a POSIX shell."""
    return f"pkifed dev down -c {shlex.quote(_shown(config))}"


# --- dev up ---------------------------------------------------------------------------


def up(config: Path, echo: Echo) -> None:
    """Start the local services for ``config`` unless they are running already.

    Raises:
        LocalServiceError: a dependency is missing, or a service failed to
            start or to respond within STARTUP_TIMEOUT. Nothing is left running.
    """
    paths = DevPaths.beside(config)
    if not paths.config.is_file():
        raise LocalServiceError(f"{config}: file not found")
    buckets = bucket_names(paths.config)
    with _exclusive(paths, echo):
        _start_unless_running(paths, buckets, echo)


def _start_unless_running(
    paths: DevPaths, buckets: dict[str, list[str]], echo: Echo
) -> None:
    pid = read_pid(paths)
    if pid is not None and is_running(pid, paths):
        if len(read_endpoints(paths)) < len(SERVICES):
            _wait_for_started(paths, pid, buckets, echo)
        else:
            _check_responding(paths, pid)
            _echo_already_running(paths, pid, echo)
        return
    _check_owner(pid, paths)
    _check_dependencies()
    if pid is not None:
        echo(f"The pid file names process {pid}, which is no longer running.")
    _stop_leftovers(paths, echo)
    removed = remove_directory(paths)
    if removed:
        echo(f"Removed what an earlier run left in {_shown(paths.root)}: {removed}")
    echo(
        f"Starting local services for {_shown(paths.config)} "
        f"(log: {_shown(paths.log_file)})"
    )
    try:
        process = _spawn(paths)
    except OSError as error:
        raise LocalServiceError(
            f"cannot start the local services in {_shown(paths.root)}: {error.strerror}"
        ) from None
    try:
        _wait_for_services(paths, _child_exit(process), buckets, echo)
    except BaseException:
        _stop_failed_start(paths, process)
        raise
    echo(
        f"Local services running as process {process.pid}; endpoint files are in "
        f"{_shown(paths.endpoints)}."
    )
    echo(f"Stop them with: {_down_command(paths.config)}")


@contextlib.contextmanager
def _exclusive(paths: DevPaths, echo: Echo) -> Iterator[None]:
    """Hold the lock file, so one dev up or dev down at a time changes .pkifed/dev.

    Two at once would each find no services running and start a set, or stop
    the services that the other is starting. The kernel releases the lock
    when its holder dies, even from SIGKILL.

    Raises:
        LocalServiceError: the lock file cannot be opened, or another command
            holds the lock for longer than LOCK_TIMEOUT.
    """
    lock_file = paths.lock_file
    try:
        lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise LocalServiceError(
            f"cannot open the lock file {_shown(lock_file)}: {error.strerror}"
        ) from None
    try:
        _lock(descriptor, paths, echo)
        yield
    finally:
        os.close(descriptor)


def _lock(descriptor: int, paths: DevPaths, echo: Echo) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT
    waiting = False
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() > deadline:
            raise LocalServiceError(
                f"another pkifed dev up or down has held {_shown(paths.lock_file)} "
                f"for {LOCK_TIMEOUT:.0f} s; wait for it to finish or stop it"
            )
        if not waiting:
            echo(
                "Waiting for another pkifed dev up or down to release "
                f"{_shown(paths.lock_file)}"
            )
            waiting = True
        time.sleep(0.1)


def _wait_for_started(
    paths: DevPaths, pid: int, buckets: dict[str, list[str]], echo: Echo
) -> None:
    """Wait for the services of an earlier dev up that was killed as they started."""
    echo(
        f"Local services for {_shown(paths.config)} are starting as process {pid}; "
        "waiting for them"
    )
    _wait_for_services(paths, _process_exit(pid, paths), buckets, echo)
    echo(
        f"Local services running as process {pid}; endpoint files are in "
        f"{_shown(paths.endpoints)}."
    )


def _check_responding(paths: DevPaths, pid: int) -> None:
    """Raise when a service of the running process has stopped responding.

    Azurite is a child process that can die on its own while dev serve lives
    on, so a running process does not prove that every service works.
    """
    silent = []
    for service, url in read_endpoints(paths).items():
        problem = _probe_service(paths, service, url)
        if problem is not None:
            silent.append(f"{service} ({problem})")
    if silent:
        config = shlex.quote(_shown(paths.config))
        raise LocalServiceError(
            f"local services for {_shown(paths.config)} run as process {pid}, but "
            f"these do not respond: {'; '.join(silent)}. Restart them with "
            f"pkifed dev down -c {config} and pkifed dev up -c {config}"
        )


def _echo_already_running(paths: DevPaths, pid: int, echo: Echo) -> None:
    echo(f"Local services for {_shown(paths.config)} are already running (pid {pid}):")
    for service, url in read_endpoints(paths).items():
        echo(f"  {service:<15} {url}")
    echo(
        "Buckets and containers are created when the services start; after "
        "adding targets, restart them with pkifed dev down and pkifed dev up."
    )


def _check_dependencies() -> None:
    missing = [
        name
        for name in ("moto", "boto3", "azure.storage.blob")
        if _find_module(name) is None
    ]
    if missing:
        raise LocalServiceError(
            f"pkifed dev needs {', '.join(missing)}, which is not installed; "
            f"{DEV_EXTRA_HINT}"
        )
    if azurite_command() is None:
        raise LocalServiceError(
            f"pkifed dev needs Azurite for azure-blob, but Node.js or Azurite is "
            f"missing; {INSTALL_HINT}"
        )


def _find_module(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def _spawn(paths: DevPaths) -> subprocess.Popen[bytes]:
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    environment = dict(os.environ)
    # The process's own AWS clients use explicit placeholder credentials and
    # a loopback endpoint. This keeps any other boto3 code off the metadata
    # service.
    environment["AWS_EC2_METADATA_DISABLED"] = "true"
    environment["PYTHONUNBUFFERED"] = "1"
    with open(paths.log_file, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - this interpreter and pkifed.
            _serve_command(paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            env=environment,
            start_new_session=True,
        )
    _write_text(paths.pid_file, f"{process.pid}\n")
    return process


# Returns None while the dev process runs, else how it ended, for messages.
ExitCheck = Callable[[], str | None]


def _child_exit(process: subprocess.Popen[bytes]) -> ExitCheck:
    def check() -> str | None:
        status = process.poll()
        return None if status is None else f"the process exited with status {status}"

    return check


def _process_exit(pid: int, paths: DevPaths) -> ExitCheck:
    return lambda: None if is_running(pid, paths) else f"process {pid} exited"


def _wait_for_services(
    paths: DevPaths,
    exited: ExitCheck,
    buckets: dict[str, list[str]],
    echo: Echo,
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for service in SERVICES:
        url = _wait_for_endpoint(paths, exited, service, deadline)
        problem = _probe_service(paths, service, url)
        if problem == NOT_LOOPBACK:
            raise LocalServiceError(
                f"{_shown(paths.endpoint(service))} contains {url}: {problem}"
            )
        while problem is not None and time.monotonic() < deadline:
            # A later service may fail meanwhile, and its failure stops this one.
            ended = exited()
            if ended is not None:
                raise LocalServiceError(_startup_failure(paths, ended))
            time.sleep(0.05)
            problem = _probe_service(paths, service, url)
        if problem is not None:
            raise LocalServiceError(
                f"local service {service} at {url} did not respond within "
                f"{STARTUP_TIMEOUT:.0f} s: {problem}; see {_shown(paths.log_file)}"
            )
        created = buckets.get(service, [])
        kind = "container" if service == "azure-blob" else "bucket"
        suffix = f"  ({kind} {', '.join(created)})" if created else ""
        echo(f"  {service:<15} {url}{suffix}")


def _wait_for_endpoint(
    paths: DevPaths, exited: ExitCheck, service: str, deadline: float
) -> str:
    endpoint = paths.endpoint(service)
    while not endpoint.exists():
        ended = exited()
        if ended is not None:
            raise LocalServiceError(_startup_failure(paths, ended))
        if time.monotonic() > deadline:
            raise LocalServiceError(
                f"local service {service} did not start within "
                f"{STARTUP_TIMEOUT:.0f} s; see {_shown(paths.log_file)}"
            )
        time.sleep(0.05)
    return endpoint.read_text(encoding="utf-8").strip()


def _startup_failure(paths: DevPaths, ended: str) -> str:
    try:
        reason = paths.startup_error.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        reason = ended
    return (
        f"local services failed to start: {reason}. The services that had started "
        f"were stopped; see {_shown(paths.log_file)}"
    )


def _stop_failed_start(paths: DevPaths, process: subprocess.Popen[bytes]) -> None:
    """Stop a start that failed or was interrupted, leaving nothing running."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
    shutil.rmtree(paths.endpoints, ignore_errors=True)
    paths.pid_file.unlink(missing_ok=True)


# --- dev down and dev status ----------------------------------------------------------


def down(config: Path, echo: Echo) -> None:
    """Stop the local services for ``config`` and remove ``.pkifed/dev``.

    Raises:
        LocalServiceError: the process did not exit, even after SIGKILL, or
            ``.pkifed/dev`` belongs to the running services of another file.
    """
    paths = DevPaths.beside(config)
    if not paths.root.parent.is_dir():
        echo(f"No local services are running for {_shown(paths.config)}.")
        echo("Nothing to remove.")
        return
    with _exclusive(paths, echo):
        _stop(paths, echo)


def _stop(paths: DevPaths, echo: Echo) -> None:
    pid = read_pid(paths)
    _check_owner(pid, paths)
    if pid is not None and is_running(pid, paths):
        echo(f"Stopping local services (process {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_until_gone(pid, paths, SHUTDOWN_TIMEOUT):
            echo(f"Process {pid} did not exit within {SHUTDOWN_TIMEOUT:.0f} s; killing")
            _kill_group(pid)
            if not _wait_until_gone(pid, paths, 5.0):
                raise LocalServiceError(f"process {pid} did not exit after SIGKILL")
        echo(f"Stopped process {pid}.")
    elif pid is not None:
        echo(f"No local services are running: process {pid} is gone.")
    else:
        echo(f"No local services are running for {_shown(paths.config)}.")
    _stop_leftovers(paths, echo)
    removed = remove_directory(paths)
    if removed:
        echo(f"Removed {_shown(paths.root)}: {removed}")
    else:
        echo("Nothing to remove.")


def remove_directory(paths: DevPaths) -> str:
    """Remove ``.pkifed/dev`` and return what it contained, or "" if nothing.

    A symbolic link or file in its place is removed, never what a link points
    to.

    Raises:
        LocalServiceError: the directory cannot be removed.
    """
    root = paths.root
    try:
        if root.is_symlink():
            root.unlink()
            return "a symbolic link"
        if root.exists() and not root.is_dir():
            root.unlink()
            return "a file"
        if not root.is_dir():
            return ""
        entries = sorted(
            f"{entry.name}/" if entry.is_dir() else entry.name
            for entry in root.iterdir()
        )
        shutil.rmtree(root)
    except OSError as error:
        raise LocalServiceError(
            f"cannot remove {_shown(root)}: {error.strerror}; remove it by hand"
        ) from None
    return ", ".join(entries)


def status(config: Path, echo: Echo) -> int:
    """Describe the local services for ``config``; return the exit status.

    The status is 0 when every service responds, 1 when one does not, and
    NOT_RUNNING_EXIT when the services are not running.
    """
    paths = DevPaths.beside(config)
    pid = read_pid(paths)
    _check_owner(pid, paths)
    if pid is None or not is_running(pid, paths):
        note = "" if pid is None else f" (the pid file names process {pid}, now gone)"
        echo(f"Local services for {_shown(paths.config)}: not running{note}.")
        for leftover in leftover_processes(paths):
            echo(
                f"  process {leftover} (Azurite), left by local services that died, "
                "is still running; pkifed dev down or up stops it"
            )
        return NOT_RUNNING_EXIT
    started = datetime.datetime.fromtimestamp(
        paths.pid_file.stat().st_mtime, datetime.UTC
    )
    echo(
        f"Local services for {_shown(paths.config)}: running as process {pid} since "
        f"{started.strftime('%Y-%m-%dT%H:%M:%SZ')} (log: {_shown(paths.log_file)})"
    )
    endpoints = read_endpoints(paths)
    silent = 0
    for service in SERVICES:
        url = endpoints.get(service)
        if url is None:
            echo(f"  {service:<15} not started")
            silent += 1
            continue
        problem = _probe_service(paths, service, url)
        silent += problem is not None
        if problem is None:
            state = "responds"
        elif problem == NOT_LOOPBACK:
            state = problem
        else:
            state = f"not responding ({problem})"
        echo(f"  {service:<15} {url}  {state}")
    return 1 if silent else 0

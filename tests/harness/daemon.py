"""``pkifed daemon`` in a subprocess, and helpers that read its endpoints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PASSPHRASE = "daemon-test-passphrase-2718"
_SERVING = re.compile(r"http: serving .* on (?P<url>http://127\.0\.0\.1:\d+)")


def federation_document(state_url: str, **sections: Any) -> dict[str, Any]:
    """A root and an issuing CA on a local keystore, published to a directory."""
    document: dict[str, Any] = {
        "version": 1,
        "name": "daemon",
        "state": state_url,
        "providers": {
            "disk": {
                "type": "local",
                "path": "keys",
                "passphrase": "${env:PKIFED_DAEMON_PASSPHRASE}",
            }
        },
        "authorities": {
            "root": {
                "provider": "disk",
                "key": "ec-p256",
                "subject": "CN=Daemon Root",
                "validity": "10y",
            },
            "issuing": {
                "provider": "disk",
                "key": "ec-p256",
                "subject": "CN=Daemon Issuing",
                "validity": "1y",
                "parent": "root",
                "publish": ["out"],
            },
        },
        "targets": {"out": {"type": "file", "path": "out"}},
        "bundles": {"trust": {"authorities": ["root"], "targets": ["out"]}},
        "schedule": {"interval": "1s"},
        "daemon": {"listen": "127.0.0.1:0", "lease_ttl": "2s"},
    }
    document.update(sections)
    return document


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PKIFED_DAEMON_PASSPHRASE": PASSPHRASE,
        "PYTHONUNBUFFERED": "1",
    }


def scrape(url: str) -> dict[str, float]:
    """Read /metrics into ``{'name{label="value",...}': value}``."""
    # The URL is the daemon's own http://127.0.0.1 address.
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            samples[key] = sample.value
    return samples


def get(url: str) -> tuple[int, bytes]:
    """GET ``url`` and return the status and body, also for 4xx and 5xx."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(
    condition: Callable[[], bool], timeout: float, interval: float = 0.1
) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class DaemonProcess:
    """A ``pkifed daemon`` subprocess whose log lines are collected as they come."""

    def __init__(self, directory: Path, replica: str, *arguments: str) -> None:
        self.replica = replica
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pkifed",
                "daemon",
                "-c",
                "federation.yaml",
                "--replica-id",
                replica,
                *arguments,
            ],
            cwd=directory,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or self.url is None:
            self.kill()
            raise RuntimeError(f"daemon {replica} did not start:\n{self.log}")

    def _read(self) -> None:
        assert self.process.stderr is not None
        try:
            for line in self.process.stderr:
                self.lines.append(line.rstrip("\n"))
                match = _SERVING.search(line)
                if match is not None:
                    self.url = match["url"]
                    self._ready.set()
        finally:
            # A daemon that exits before serving must not keep the caller
            # waiting for the start-up timeout.
            self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def metrics(self) -> dict[str, float]:
        assert self.url is not None
        return scrape(self.url)

    def is_leader(self) -> bool:
        try:
            return self.metrics().get("pkifed_leader") == 1.0
        except OSError:
            return False

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM the daemon, SIGCONT it if stopped, and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close()

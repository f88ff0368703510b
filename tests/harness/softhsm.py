"""Throwaway SoftHSM2 tokens for tests, the CLI tests and the quickstart.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library is initialised, and it
lists only the tokens that existed at that moment (checked with SoftHSM 2.6.1).
python-pkcs11 keeps one initialised library per path for the whole process.
So a test module first creates every token it needs in one configuration and
then calls :meth:`SoftHsm.activate`. That sets ``SOFTHSM2_CONF`` and
re-initialises the library if this process loaded it before. Re-initialising
invalidates every open session, so providers from an earlier module must be
closed by then, which module-scoped fixtures do.

Outside pytest, :func:`init_token` creates a token and returns the
configuration file to export as ``SOFTHSM2_CONF``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
SOFTHSM_UTIL = "softhsm2-util"
MISSING_MESSAGE = (
    "SoftHSM2 is not installed; install the Debian package softhsm2 "
    "(apt-get install softhsm2)"
)


def softhsm_available() -> bool:
    """Whether softhsm2-util and the SoftHSM2 PKCS#11 library are installed."""
    return shutil.which(SOFTHSM_UTIL) is not None and SOFTHSM_MODULE.exists()


def require_softhsm() -> None:
    """Skip the calling test when SoftHSM2 is missing."""
    if not softhsm_available():
        pytest.skip(MISSING_MESSAGE)


def write_config(directory: Path) -> Path:
    """Write a softhsm2.conf keeping its tokens under ``directory``; return it."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    config = directory / "softhsm2.conf"
    if not config.exists():
        config.write_text(
            f"directories.tokendir = {tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n",
            encoding="utf-8",
        )
    return config


def init_token(directory: Path, label: str, pin: str, so_pin: str) -> Path:
    """Create a token labelled ``label`` under ``directory``; return the config.

    The configuration is written on the first call and reused by later calls
    with the same directory, so several tokens can share it.

    Raises:
        RuntimeError: softhsm2-util is missing or failed.
    """
    if shutil.which(SOFTHSM_UTIL) is None:
        raise RuntimeError(MISSING_MESSAGE)
    config = write_config(directory)
    environment = {**os.environ, "SOFTHSM2_CONF": str(config)}
    command = [
        SOFTHSM_UTIL,
        "--init-token",
        "--free",
        "--label",
        label,
        "--pin",
        pin,
        "--so-pin",
        so_pin,
    ]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # softhsm2-util's output does not repeat the PINs, so it is safe to show.
        raise RuntimeError(
            f"softhsm2-util failed to create token {label!r} "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )
    return config


@dataclass(frozen=True)
class SoftHsmToken:
    """One token: what a pkcs11 provider needs to open it."""

    module: Path
    label: str
    pin: str
    so_pin: str
    config: Path


class SoftHsm:
    """A SoftHSM2 configuration in a temporary directory, with its tokens."""

    def __init__(
        self, directory: Path, monkeypatch: pytest.MonkeyPatch | None = None
    ) -> None:
        self.directory = directory
        self.config = write_config(directory)
        self.tokens: dict[str, SoftHsmToken] = {}
        self._monkeypatch = monkeypatch

    def add_token(
        self, label: str, pin: str = "1234-user", so_pin: str = "5678-so"
    ) -> SoftHsmToken:
        """Create a token; call :meth:`activate` afterwards to make it visible."""
        init_token(self.directory, label, pin, so_pin)
        token = SoftHsmToken(SOFTHSM_MODULE, label, pin, so_pin, self.config)
        self.tokens[label] = token
        return token

    def activate(self, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        """Point SoftHSM2 in this process at this configuration.

        Uses ``monkeypatch``, or the one given to the constructor, so the
        variable is restored when the fixture ends. Sessions opened on the
        library before this call become invalid.
        """
        patcher = monkeypatch or self._monkeypatch
        if patcher is None:
            raise RuntimeError(
                "activate needs a pytest MonkeyPatch to set SOFTHSM2_CONF"
            )
        patcher.setenv("SOFTHSM2_CONF", str(self.config))
        import pkcs11

        # python-pkcs11 keeps loaded libraries in a private dict; reading it
        # is the only way to tell whether the library needs re-initialising.
        loaded = pkcs11._loaded.get(str(SOFTHSM_MODULE))
        if loaded is not None:
            loaded.reinitialize()


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A module's SoftHSM2 configuration; add tokens, then call activate."""
    require_softhsm()
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield SoftHsm(tmp_path_factory.mktemp("softhsm"), monkeypatch)

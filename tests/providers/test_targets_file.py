"""The target conformance kit run against the file target."""

from __future__ import annotations

from pathlib import Path

import pytest

from pkifed.errors import ProviderError, ProviderPermanentError
from pkifed.providers.retry import RetrySettings
from pkifed.providers.targets.base import PublishTarget
from pkifed.providers.targets.file import FileTarget, FileTargetSettings
from tests.providers.target_conformance import TargetConformance

RETRY = RetrySettings(attempts=3, base_delay=0.001, max_delay=0.005)


class TestFileTarget(TargetConformance):
    location_pattern = r".*/{prefix}/root\.pem"

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    def new_target(self, prefix: str) -> PublishTarget:
        settings = FileTargetSettings(type="file", path=prefix, retry=RETRY)
        return FileTarget("files", settings, self.directory)

    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        # A regular file where the directory should be: mkdir fails.
        blocker = self.directory / "blocker"
        blocker.write_bytes(b"")
        settings = FileTargetSettings(type="file", path="blocker/sub", retry=RETRY)
        return FileTarget("files", settings, self.directory), ProviderPermanentError

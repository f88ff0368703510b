"""Loopback checks that guard settings safe only on this machine."""

from __future__ import annotations

import pytest

from pkifed.loopback import is_loopback_host, is_loopback_url


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", True),
        ("https://[::1]:443/v1", True),
        ("http://localhost", True),
        ("https://vault.vault.azure.net", False),
        ("http://127.0.0.1.example.com", False),
        ("not a url", False),
    ],
)
def test_loopback_url(url: str, expected: bool) -> None:
    assert is_loopback_url(url) is expected

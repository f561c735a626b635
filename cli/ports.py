"""Is a TCP port free to listen on? Asked before starting a server, so a taken port is one line."""

from __future__ import annotations

import errno
import socket


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port right now (None: it can).

    SO_REUSEADDR as uvicorn and tornado set it: a port with only closing connections is free,
    one with a listener is not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "already in use"
            return exc.strerror or type(exc).__name__
    return None

"""Test helper: networking off. :func:`guard` makes every outgoing connection and name lookup raise (and records
it), so a loader that would ask the Hugging Face Hub (or anything else) fails the test even where a library
would swallow the error and fall back. It also sets ``HF_HUB_OFFLINE=1``, but the guard is what proves it."""

from __future__ import annotations

import contextlib
import socket


class NetworkAccess(OSError):
    pass


@contextlib.contextmanager
def guard(monkeypatch):
    """Within the block, sockets cannot connect; yields the list of attempts (each a short description)."""
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(f"{what} {args[1:2] if what.startswith('socket.') else args[:1]}")
            raise NetworkAccess(f"network access in a test: {attempts[-1]}")
        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield attempts

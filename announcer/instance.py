"""One `announcer serve` per data directory and per port.

A second instance started by mistake (`make run` twice) must not touch what the first relies on: it
would have rewritten `api-token` (every command against the running service then fails with 401) and,
dying on the taken port, deleted the first one's `sandbox.json`. So before anything is opened or written,
`claim` binds the listening socket and locks the data directory; either failing is one line saying which
setting to change, and nothing has been written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from announcer.files import FILE_MODE, private_dir

LOCK_FILE = "serve.lock"


class InstanceError(Exception):
    """Another instance holds the port or the data directory; the message is the line to print."""


@dataclass
class Claim:
    """The listening socket and the data directory's lock, held for the life of the process."""

    sock: socket.socket
    lock_fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)  # closing the descriptor releases the lock


def bind(host: str, port: int) -> socket.socket:
    try:
        # No SO_REUSEPORT: a second process must fail here, not share the port and half the webhooks.
        return socket.create_server((host, port), backlog=1024)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise InstanceError(
                f"port {port} on {host} is in use (another `announcer serve`?): set PORT (or --port) "
                "to a free port"
            ) from None
        raise InstanceError(f"cannot listen on {host}:{port}: {err.strerror}; check HOST and PORT") from None


def lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on `<data dir>/serve.lock`, which holds the owner's pid; the descriptor."""
    private_dir(data_dir)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise InstanceError(
            f"the data directory {data_dir} is in use by another `announcer serve` (pid {owner}): stop it, "
            "or set ANNOUNCER_DATA_DIR to another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def claim(host: str, port: int, data_dir: Path) -> Claim:
    """Bind, then lock: in that order, so the common mistake (the same command twice) names the port."""
    sock = bind(host, port)
    try:
        return Claim(sock, lock_data_dir(data_dir))
    except BaseException:
        sock.close()
        raise

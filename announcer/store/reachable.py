"""Why the database cannot be opened, in one line a person can act on (the start-up of `announcer serve`
and `announcer db upgrade` print it instead of a driver's traceback). Never the URL itself: it may hold a
password."""

from __future__ import annotations

import socket
from pathlib import Path

from sqlalchemy.engine.url import URL
from sqlalchemy.exc import DBAPIError

CONNECT_TIMEOUT_S = 15.0

# PostgreSQL's SQLSTATEs for "no such database" and "no such role / bad password / refused by pg_hba"
_NO_DATABASE = "3D000"
_REFUSED_LOGIN = frozenset({"28000", "28P01"})


class DatabaseUnavailable(Exception):
    """The database of `setting` cannot be opened; the message is one line naming the setting."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


def sqlite_file_problem(path: Path, err: OSError | DBAPIError) -> str:
    why = err.strerror if isinstance(err, OSError) and err.strerror else str(getattr(err, "orig", err))
    if isinstance(err, FileExistsError | NotADirectoryError):
        why = "a file stands where its directory should be"
    return (
        f"cannot open the SQLite database {path} ({why}): its directory must be one this user may create "
        "or write to"
    )


def why_unreachable(url: URL, err: BaseException) -> str:
    """`err`, raised while connecting to `url`, as what is wrong and what to do."""
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        return sqlite_file_problem(path, err if isinstance(err, OSError | DBAPIError) else OSError(str(err)))
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    user = url.username or "postgres"
    if isinstance(err, DBAPIError):
        state = getattr(err.orig, "sqlstate", None)
        message = str(getattr(err.orig, "args", [err])[0] if err.orig is not None else err).strip()
        if state == _NO_DATABASE:
            createdb = f"createdb -h {url.host or 'localhost'} -p {url.port or 5432} -U {user} {url.database}"
            return (
                f"the database {url.database!r} does not exist on the PostgreSQL server at {where}: "
                f"create it with `{createdb}`"
            )
        if state in _REFUSED_LOGIN:
            return (
                f"the PostgreSQL server at {where} refused user {user!r} ({message}): "
                "check the user and password in it"
            )
        return f"the PostgreSQL server at {where} refused the connection: {message}"
    if isinstance(err, socket.gaierror):
        return f"the host {url.host!r} is not known ({err.strerror}): check the host name in it"
    if isinstance(err, ConnectionRefusedError):
        return (
            f"nothing answers at {where} (connection refused): start PostgreSQL there, "
            "or correct the host and port in it"
        )
    if isinstance(err, TimeoutError):
        return f"the PostgreSQL server at {where} did not answer within {CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(err, OSError):
        return f"cannot connect to {where}: {err.strerror or err}"
    return f"cannot connect to {where}: {type(err).__name__}: {err}"

"""Files the service writes are its own: the data directory 0700, every file in it 0600, whatever the
umask and whatever modes were there before (the database holds phone numbers and message texts, the
cache and recordings what was said, `api-token` the key to the API).

A leaf module (like `audio.py`): the store, the speech cache, the app and the sandbox's recordings use it.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """`path` (and its missing parents, which the umask shapes) as a directory only its owner enters."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def make_private(path: Path) -> None:
    """Tighten an existing file to 0600 (nothing when it does not exist)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
            path.chmod(FILE_MODE)
    except FileNotFoundError:
        pass


def create_private(path: Path) -> None:
    """Make sure `path` exists with mode 0600, created so (never 0644 for a moment) or tightened."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (a temporary file of its own, then a rename), mode 0600:
    a reader never sees a torn file, and the old file's mode does not carry over."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tighten_tree(root: Path) -> int:
    """Every directory under `root` 0700 and every file 0600 (what an older version, or another umask,
    left); how many were changed. Run off the event loop: an audio cache holds many files."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name, mode in [(d, DIR_MODE) for d in dirnames] + [(f, FILE_MODE) for f in filenames]:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                    os.chmod(path, mode)
                    changed += 1
            except FileNotFoundError:
                continue  # removed meanwhile (a cache entry replaced, a temporary file renamed)
    return changed

"""Files only their owner can read: 0600 files and 0700 directories for events, tokens, passwords.

Everything under ``CASESTREAM_HOME`` holds something an attacker on the same host wants: outbox
SQLite files hold full events, the chain store every agency's chain heads, ``users.json`` the
endpoint's passwords, Kafka's log dirs every event ever published, chDB's data dir the derived
tables, Prefect's SQLite the flow runs. With the default umask 022 all of it was world-readable
(0644 files, 0755 directories). Three layers close that:

* :data:`UMASK` in every stack child and around the stack manager, so files created by Kafka,
  Apicurio, chDB, Prefect and the worker are private whatever code creates them;
* explicit modes where this code creates a file (:func:`private_file`, :func:`private_dir`), so a
  library caller with a lax umask (an agency's SDK process) still gets private outboxes;
* :func:`repair` on ``stack up``, for homes created before these rules (idempotent).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block with umask 077 (the process-wide umask: use on the main thread only)."""
    previous = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing ``path`` is made 0700 too.

    Existing parents are left alone: they may be the operator's (``/var/lib``, a checkout).
    """
    path = Path(path)
    with private_umask():
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists as a 0600 file before anyone writes to it (no window at 0644)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def private_sqlite(path: Path) -> Path:
    """A SQLite database file at 0600, with its existing ``-wal``/``-shm``/``-journal`` too.

    SQLite creates the WAL and shared-memory files with the database file's own mode, so a
    private database file keeps its companions private.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        # Never open an existing database here: closing *any* descriptor of a file drops every
        # POSIX lock this process holds on it, so another connection of this process (two
        # publishers share the chain store) loses its locks and SQLite corrupts the file. Seen
        # in the suite: "database disk image is malformed" on the chain store and the outboxes.
        # A chmod by path touches no lock (and refuses a planted symlink).
        if path.is_symlink():
            raise PermissionError(f"{path} is a symbolic link; refusing to use it") from None
        os.chmod(path, FILE_MODE)
    else:
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)  # a new file: no connection holds it yet
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, FILE_MODE, follow_symlinks=False)
    return path


def loose(mode: int) -> bool:
    """True when a mode gives group or others any access."""
    return bool(mode & 0o077)


def repair(root: Path, entries: tuple[str, ...] | None = None) -> list[Path]:
    """Take group and other access away from ``root`` and everything under it; returns what changed.

    With ``entries``, only those names under ``root`` are walked (``root`` itself is made 0700
    too): a home pointed at a directory holding other things (``CASESTREAM_HOME=~``) must not
    have all of them changed. Directories become 0700 and files lose their group/other bits (an
    owner's executable bit stays). Symbolic links are not followed: a link out of the home is
    not ours to change. Idempotent: a second call changes nothing.
    """
    root = Path(root)
    changed: list[Path] = []
    if not root.exists():
        return changed

    def fix(path: Path, wanted_dir: bool) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:  # a server removed it meanwhile
            return
        if stat.S_ISLNK(info.st_mode):
            return
        mode = stat.S_IMODE(info.st_mode)
        target = DIR_MODE if wanted_dir else mode & ~0o077
        if mode != target:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, target)
                changed.append(path)

    fix(root, True)
    tops = [root] if entries is None else [root / name for name in entries]
    for top in tops:
        if top != root:
            if top.is_symlink() or not top.exists():
                continue
            fix(top, top.is_dir())
        for directory, dirs, files in os.walk(top):
            base = Path(directory)
            for name in dirs:
                fix(base / name, True)
            for name in files:
                fix(base / name, False)
    return changed

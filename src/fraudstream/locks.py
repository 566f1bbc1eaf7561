"""Local coordination on one machine: an advisory lock file per running detector instance or
`run` (one of each), and the installation's string-hash seed (for local state snapshots).

The operating system releases a lock when its process ends, however it ends (even SIGKILL),
so a crashed detector never blocks its own restart.

    lock = ProcessLock.acquire("detector", "localhost:9092", "fraudstream-detector", "0")
    if lock is None: ...   # another process holds it: ProcessLock.holder(...) says which
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import IO

from fraudstream.errors import ConfigError

__all__ = ["ProcessLock", "hash_seed"]


def _path(kind: str, parts: tuple[str, ...], directory: str | None) -> Path:
    base = Path(directory or os.path.join(tempfile.gettempdir(), "fraudstream-locks"))
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:80]
    digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:10]
    return base / f"{kind}-{readable}-{digest}.lock"


class ProcessLock:
    """Held for the life of this process (or until `release`)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(
        cls, kind: str, *parts: str, directory: str | None = None, info: str = ""
    ) -> ProcessLock | None:
        """The lock, or None when another live process holds it."""
        path = _path(kind, parts, directory)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 (held open for the process's life)
        except OSError as exc:
            raise _unusable(path.parent, exc, "LOCK_DIR") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {info}".strip())
        handle.flush()
        return cls(path, handle)

    @staticmethod
    def holder(kind: str, *parts: str, directory: str | None = None) -> str:
        """What the holding process wrote: its pid and what it said of itself."""
        try:
            return _path(kind, parts, directory).read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def hash_seed(root: Path) -> str:
    """This installation's string-hash seed (kept in `<root>/hashseed`, made once at
    random): detectors run with it, so a snapshot's key index stays valid across restarts,
    and nobody outside knows it (no crafted keys that collide)."""
    path = root / "hashseed"
    try:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            root.mkdir(parents=True, exist_ok=True)
            seed = str(secrets.randbelow(2**32 - 1) + 1)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(seed)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # first writer wins; others read its seed
            tmp.unlink(missing_ok=True)
            return path.read_text().strip()
    except OSError as exc:
        raise _unusable(root, exc, "STATE_DIR") from None


def _unusable(directory: Path, exc: OSError, setting: str) -> ConfigError:
    return ConfigError(
        f"cannot use {directory} ({exc.strerror or exc}): set {setting} to a directory this "
        "user can write"
    )

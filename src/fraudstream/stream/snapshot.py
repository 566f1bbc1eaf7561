"""Local state snapshots: a restart reads only the changelog's tail.

Every `SNAPSHOT_INTERVAL_MS`, right after a commit, each task with state writes its whole state
(`Engine.snapshot`) and its bookkeeping to a local file, with what it covers: the changelog
topic's id, the partition, and the changelog's end offset after that commit (a task is the only
writer of its changelog partition, so everything before that offset is in the snapshot). A
restarted task loads the snapshot and reads the changelog from that offset on.

A snapshot is trusted only when everything matches: the same changelog topic (by its id: a
reset or recreated topic has another), an offset within the partition as it is now, the same
engine layout (rules, tables, columns, string hashing); otherwise it is discarded (and said
so) and the changelog is read whole. Files are written to a temporary name, synced, then
renamed: a process killed while writing leaves the previous snapshot intact.

    store = SnapshotStore(Path(".fraudstream/state"), "fraudstream-detector")
    store.write(Snapshot(topic, partition, topic_id, offset, meta_blob, engine_blob))
    snap = store.read(topic, partition)
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
from pathlib import Path

import msgspec

__all__ = ["Snapshot", "SnapshotStore"]

log = logging.getLogger(__name__)

_MAGIC = b"fraudstream-snapshot-1\n"


class Snapshot(msgspec.Struct, frozen=True):
    changelog: str
    partition: int
    topic_id: str  # the changelog topic's id when written
    offset: int  # the changelog's end offset after the commit it covers
    meta: bytes  # the task's bookkeeping (ordering.Meta, encoded)
    state: bytes  # Engine.snapshot(), or b"" for a task without state


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class SnapshotStore:
    """One file per changelog partition, under `<root>/<group>/`. Writes happen on a
    background thread, one at a time (a newer snapshot of the same task replaces a queued
    older one)."""

    def __init__(self, root: Path, group: str, *, write_delay_s: float = 0.0) -> None:
        self.dir = root / _safe(group)
        self._delay = write_delay_s  # fault tests: a window to be killed in, mid-write
        self._lock = threading.Lock()
        self._queued: dict[tuple[str, int], Snapshot] = {}
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def path(self, changelog: str, partition: int) -> Path:
        return self.dir / f"{_safe(changelog)}-{partition}.snapshot"

    def write(self, snap: Snapshot) -> None:
        """Queue a snapshot to be written (atomically) in the background."""
        with self._lock:
            self._queued[(snap.changelog, snap.partition)] = snap
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._writer, name="snapshot-writer", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def flush(self, timeout: float = 30) -> bool:
        """Wait until every queued snapshot is on disk."""
        return self._idle.wait(timeout)

    def _writer(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                batch, self._queued = self._queued, {}
            for snap in batch.values():
                try:
                    self._write_now(snap)
                except OSError as exc:  # a snapshot is an optimisation: never stop for it
                    log.warning("could not write a state snapshot to %s: %s", self.dir, exc)
            with self._lock:
                if not self._queued:
                    self._idle.set()

    def _write_now(self, snap: Snapshot) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(snap.changelog, snap.partition)
        tmp = final.with_suffix(f".tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            blob = pickle.dumps(snap_fields(snap), protocol=pickle.HIGHEST_PROTOCOL)
            f.write(blob[: len(blob) // 2])
            if self._delay:
                f.flush()
                time.sleep(self._delay)
            f.write(blob[len(blob) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def read(self, changelog: str, partition: int) -> Snapshot | None:
        """The snapshot of this changelog partition, if there is a readable one."""
        path = self.path(changelog, partition)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state snapshot %s unreadable (%s): reading the changelog whole", path, exc)
            return None
        try:
            if not blob.startswith(_MAGIC):
                raise ValueError("not a snapshot file")
            fields = pickle.loads(blob[len(_MAGIC) :])  # written by _write_now above
            snap = Snapshot(**fields)
        except Exception as exc:  # a torn or foreign file: never trusted
            log.warning("state snapshot %s is damaged (%s): discarded", path, exc)
            return None
        if (snap.changelog, snap.partition) != (changelog, partition):
            log.warning("state snapshot %s is of another partition: discarded", path)
            return None
        return snap

    def discard(self, changelog: str, partition: int, why: str) -> None:
        path = self.path(changelog, partition)
        log.warning("state snapshot %s %s: discarded, reading the changelog whole", path, why)
        path.unlink(missing_ok=True)


def snap_fields(snap: Snapshot) -> dict[str, object]:
    return {f: getattr(snap, f) for f in snap.__struct_fields__}

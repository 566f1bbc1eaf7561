"""What the benchmarks share: a broker, the environment of a `fraudstream` subprocess, and the
CPU time and peak memory of a process tree.

    with kafka() as url:                   # BENCH_KAFKA_BROKER_URL, or a fresh local broker
        proc = subprocess.Popen(cmd, env=env_for(settings, RULES_FILE="..."))
        tree = ProcessTree(proc.pid)
        tree.sample()                      # now and then: tree.cpu_s, tree.peak_rss_mb
        tree.stop(proc)                    # SIGTERM, then SIGKILL for what is left
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from fraudstream.broker import LocalBroker, free_port
from fraudstream.config import Settings

__all__ = ["REPO", "Broker", "ProcessTree", "broker", "drop_topics", "env_for", "kafka"]

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Broker:
    """A broker's bootstrap address, and its process when it is ours (None: an external one,
    whose CPU time is not known here)."""

    url: str
    pid: int | None = None

    def cpu_s(self) -> float | None:
        """The broker process's user+system CPU seconds so far (None: not ours)."""
        return _cpu_s(self.pid) if self.pid is not None else None


@contextmanager
def broker() -> Iterator[Broker]:
    """A broker: BENCH_KAFKA_BROKER_URL when set, else one of our own on a free port and a
    fresh data directory, both gone on the way out."""
    url = os.environ.get("BENCH_KAFKA_BROKER_URL")
    if url:
        yield Broker(url)
        return
    data = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    local = LocalBroker(port=free_port(), data_dir=data / "kafka")
    local.start()
    try:
        yield Broker(local.bootstrap, local.pid())
    finally:
        local.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def kafka() -> Iterator[str]:
    """`broker()`'s bootstrap address."""
    with broker() as b:
        yield b.url


def drop_topics(url: str, tag: str) -> int:
    """Delete every topic whose name holds `tag` as a whole part (a contender's outputs,
    internal topics and changelogs): how many. A broker holding the logs of earlier
    contenders slowed the later ones (docs/performance.md, "The broker's own history")."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": url})
    whole = re.compile(re.escape(tag) + r"(?![A-Za-z0-9])")
    doomed = [t for t in admin.list_topics(timeout=10).topics if whole.search(t)]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=60).values():
            future.result()
    return len(doomed)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `fraudstream` subprocess use `settings` (every setting by
    its environment name), plus `extra`."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    env.update(extra)
    return env


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:VAR=VALUE,VAR=VALUE` (a `--variant` argument): the name and the variables."""
    name, _, assignments = text.partition(":")
    if not name or any("=" not in a for a in assignments.split(",") if a):
        raise SystemExit(f"--variant {text!r}: write NAME:VAR=VALUE,VAR=VALUE")
    return name, dict(a.split("=", 1) for a in assignments.split(",") if a)


VARIANT_HELP = (
    "one more fraudstream contender: the default rules plus these environment variables "
    "(e.g. 'old:PYTHONPATH=/path/to/an/old/checkout/src' to compare with an older commit, "
    "'batch5k:BATCH_SIZE=5000'; RULES_FILE=model: the model's rules instead, "
    "RULES_FILE=PATH: that rules file; WORKERS=N: `detect --workers N`; PYTHON=PATH: the "
    "python of another virtualenv with the requirements installed); repeatable"
)


class ProcessTree:
    """A process and its descendants, read from /proc at each `sample()`: their user+system
    CPU seconds now (threads and reaped children included) and the highest peak resident
    memory (VmHWM) of any one of them, and of all of them added up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pids: set[int] = {pid}
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0  # the largest process
        self.peak_rss_sum_mb = 0.0  # every process's own peak, added up
        # the largest anonymous resident memory seen (sampled): what the process itself
        # holds, without the shared libraries' mapped pages (numba's LLVM is ~100 MB of them)
        self.peak_anon_mb = 0.0

    def sample(self) -> None:
        pids = _descendants(self.pid)
        if not pids:
            return  # gone: keep the last figures
        self.pids |= pids
        cpu, peaks = 0.0, []
        for pid in pids:
            cpu += _cpu_s(pid)
            peaks.append(_hwm_mb(pid))
            self.peak_anon_mb = max(self.peak_anon_mb, _status_mb(pid, "RssAnon:"))
        self.cpu_s = cpu
        self.peak_rss_mb = max(self.peak_rss_mb, *peaks)
        self.peak_rss_sum_mb = max(self.peak_rss_sum_mb, sum(peaks))

    def stop(
        self, proc: subprocess.Popen[bytes], timeout: float = 30, sig: int = signal.SIGTERM
    ) -> int:
        """Signal the root (SIGTERM) and wait; after `timeout` SIGKILL every process of the tree
        seen. Returns the root's exit code."""
        self.sample()
        if proc.poll() is None:
            proc.send_signal(sig)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        for pid in self.pids | _descendants(self.pid):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        code = proc.wait()
        time.sleep(0.1)  # let the kernel reap what init adopted
        return code


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _descendants(root: int) -> set[int]:
    """`root` and every process under it that is alive (children listed by each thread)."""
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found or not os.path.exists(f"/proc/{pid}"):
            continue
        found.add(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            todo.extend(int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split())
    return found


def _cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of /proc/<pid>/stat, in seconds."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    if len(fields) < 15:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICK


def _hwm_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0

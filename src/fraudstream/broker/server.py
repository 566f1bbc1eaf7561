"""Run a single-node Apache Kafka broker in KRaft mode (broker + controller in one JVM).

broker = LocalBroker(port=9092, data_dir=Path(".fraudstream/broker"))
broker.start()      # returns once it answers, coordinators ready; a no-op if it runs
broker.status()     # True while it runs
broker.stop()
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudstream.broker.artifacts import KAFKA_VERSION, ensure_kafka, java_executable
from fraudstream.errors import BrokerError

__all__ = ["LocalBroker", "free_port"]

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and this process has not handed out.

    The kernel may offer the same ephemeral port twice before anyone binds it (the broker and
    its controller would then collide), so ports already returned are skipped.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host`:`port`."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@dataclass
class LocalBroker:
    """One Kafka node on 127.0.0.1, its data and log under `data_dir`."""

    port: int = 9092
    data_dir: Path = Path(".fraudstream/broker")
    cache_dir: Path | None = None
    heap: str = "1g"
    version: str = KAFKA_VERSION  # Apache Kafka's, from Maven Central (KRaft: 3.9 or later)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _state_file(self) -> Path:
        return self.data_dir / "broker.json"

    def _state(self) -> dict[str, int]:
        try:
            data: dict[str, int] = json.loads(self._state_file.read_text("utf-8"))
            return data
        except (OSError, ValueError):
            return {}

    def pid(self) -> int | None:
        pid = self._state().get("pid")
        return pid if pid and _alive(pid) else None

    def status(self) -> bool:
        """True when our broker process runs and its port answers."""
        return self.pid() is not None and answers(self.port)

    def start(self, timeout: float = 90.0) -> None:
        """Fetch Kafka if needed, format storage once, start the JVM, wait until it answers."""
        if self.status():
            return
        if self.pid() is None and answers(self.port):
            raise BrokerError(
                f"port {self.port} is taken by another program; stop it, or use --port, or point "
                f"KAFKA_BROKER_URL at it if it is a Kafka broker you want to use"
            )
        lib = ensure_kafka(self.cache_dir, self.version)
        java = java_executable()
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        controller_port = state.get("controller_port") or free_port()
        while controller_port == self.port:
            controller_port = free_port()
        props = self._write_config(controller_port)
        classpath = f"{lib}/*"
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J.format(log=self.log_file), "utf-8")
        jvm = [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                # "--cluster-id=ID" as one argument: an id may begin with "-"
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.data_dir / "broker.out", "ab") as out:
            proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not the JVM's
            )
        self._proc = proc  # kept, so the child is reaped by us and not reported as leaked
        self._state_file.write_text(
            json.dumps({"pid": proc.pid, "port": self.port, "controller_port": controller_port}),
            "utf-8",
        )
        self._wait_ready(proc, timeout)

    def _write_config(self, controller_port: int) -> Path:
        props = self.data_dir / "server.properties"
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            "num.partitions": "6",
            # One node: every internal topic has a single replica, and transactions still work.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Groups of Kafka's new protocol (KAFKA_GROUP_PROTOCOL=consumer) hear of a
            # rebalance at their next heartbeat, which the broker sets: every 500 ms, as the
            # classic groups' consumers send theirs, not 5 s (docs/scaling.md)
            "group.consumer.heartbeat.interval.ms": "500",
            "group.consumer.min.heartbeat.interval.ms": "500",
            "auto.create.topics.enable": "false",
            # Room for oversized bad input (a 1 MB value) to reach the dead-letter topic.
            "message.max.bytes": "4194304",
            "log.retention.hours": "168",
        }
        props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()), "utf-8")
        return props

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        from confluent_kafka.admin import AdminClient  # the broker layer only probes with it

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"Kafka exited with code {proc.returncode} during start; see {self.log_file}"
                    f"\n{self._tail()}"
                )
            if answers(self.port):
                try:
                    md = admin.list_topics(timeout=2)
                    if md.brokers:
                        break
                except Exception:
                    pass
            time.sleep(0.2)
        else:
            self.stop()
            raise BrokerError(f"Kafka did not answer within {timeout:.0f}s; see {self.log_file}")
        problem = self._wait_coordinators(deadline)
        if problem:
            self.stop()
            raise BrokerError(
                f"Kafka answered, but its {problem} within {timeout:.0f}s; see {self.log_file}"
            )

    def _wait_coordinators(self, deadline: float) -> str:
        """Wait until producer ids and the transaction and group coordinators answer; what
        did not, or "".

        A fresh broker creates and loads its internal topics (`__transaction_state`,
        `__consumer_offsets`) at their first use, and until they are loaded its clients hear
        "coordinator load in progress" or "not coordinator": librdkafka retries, printing
        each retry, over the first start of `make run`; a restarted broker loads them again.
        One idempotent producer's id, one transactional producer and one group's offsets
        asked for here make `start` return with all ready (about 2 s on a fresh broker, 1 s
        on a restarted one)."""
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

        quiet = {"bootstrap.servers": self.bootstrap, "log_level": 0}  # (its retries: ours)
        # an idempotent producer's id (the generator's): assigned once the broker's
        # transaction coordinators have loaded, which a restarted broker does for a while
        eos: dict[str, Any] = {}
        idempotent = Producer(
            {
                **quiet,
                "enable.idempotence": True,
                "statistics.interval.ms": 50,
                "stats_cb": lambda stats: eos.update(json.loads(stats).get("eos", {})),
            }
        )
        while eos.get("idemp_state") != "Assigned":
            if time.monotonic() >= deadline:
                return "producer ids could not be had (idempotent producers wait for them)"
            idempotent.poll(0.05)
        producer = Producer({**quiet, "transactional.id": "fraudstream.broker.ready"})
        try:
            producer.init_transactions(max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            return f"transaction coordinator did not get ready ({exc.args[0].str()})"
        consumer = Consumer({**quiet, "group.id": "fraudstream.broker.ready"})
        try:
            while True:
                try:
                    consumer.committed([TopicPartition("fraudstream.broker.ready", 0)], timeout=5)
                    return ""
                except KafkaException as exc:
                    if time.monotonic() >= deadline:
                        return f"group coordinator did not get ready ({exc.args[0].str()})"
                time.sleep(0.1)
        finally:
            consumer.close()

    def _tail(self, lines: int = 30) -> str:
        for f in (self.data_dir / "broker.out", self.log_file):
            try:
                return "\n".join(f.read_text("utf-8", "replace").splitlines()[-lines:])
            except OSError:
                continue
        return ""

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop cleanly (SIGTERM, then SIGKILL after `timeout`). False if nothing ran."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            self._signal(pid, signal.SIGKILL)
        self._reap(pid)
        return True

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (for fault tests)."""
        pid = self.pid()
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
            self._reap(pid)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _reap(self, pid: int) -> None:
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait(10)
            self._proc = None
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: wait until it is gone
                if not _alive(pid):
                    return
                time.sleep(0.05)
                continue
            if done:
                return
            time.sleep(0.05)

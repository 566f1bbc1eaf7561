"""`fraudstream alerts`: read the fraud topic (read_committed, a consumer group of its own),
group fraud by account (`detection/alerting.py`, shared with the dashboard), and hand each
alert to every sink (`sinks.py`).

Delivery is at-least-once. Each sink has its own thread and queue: a sink that fails is
retried with backoff (1 s doubling to 60 s) and holds its alerts, never drops them, while the
others go on. A partition's offset is committed only up to its first record still needed: in
a group not yet closed, or in an alert some sink has not accepted. So a process killed mid-way
re-reads from there and sends those alerts again, with the same `alert_id`. Past
`ALERT_RATE_LIMIT` alerts a minute, a sink gets one summary a minute of what came meanwhile
instead (a token bucket): summarised, never dropped. While more than `MAX_PENDING` alerts
wait on a slow sink, reading pauses (memory stays bounded) and the log says which sink it
waits for.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fraudstream.alerts.sinks import Sink
from fraudstream.config import Settings
from fraudstream.detection.alerting import Alert, Grouper
from fraudstream.errors import FraudstreamError
from fraudstream.stream import consumer_config, consumer_failure, failed_fatally

__all__ = ["AlertService", "SinkWorker"]

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # alerts not yet accepted by every sink, before reading pauses
SUMMARY_MAX = 500  # alerts in one summary at most (the rest wait for the next token)
SUMMARY_EVERY_S = 60.0  # over its rate, a sink gets one summary a minute
COMMIT_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 10.0  # what the sinks get to deliver what they hold at a stop
_decode = msgspec.json.Decoder().decode


def _now_ms() -> int:
    return int(time.time() * 1000)


class SinkWorker:
    """One sink's thread: sends what it is given in order, one alert at a time while within
    its rate, else one summary of everything that waited; retries a failure with backoff."""

    def __init__(
        self,
        sink: Sink,
        done: Callable[[list[str], str], None],
        *,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self._done = done
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._per_minute = per_minute
        self._tokens = float(per_minute)
        self._refilled = clock()
        self._clock = clock
        self._stop = threading.Event()
        self.failing_since: float | None = None
        self.sent = self.failed = self.summaries = 0
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, alert: Alert) -> None:
        self._queue.put(alert)

    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Deliver what is queued, then end (see `join`)."""
        self._queue.put(None)

    def join(self, deadline: float) -> None:
        """Wait until `deadline` (time.monotonic) for the queue to drain, then give up (the
        offsets of what was not delivered stay uncommitted: the next run sends it)."""
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.failing_since is not None:
                break  # its receiver is down: waiting would only delay the stop
            self._thread.join(0.1)
        self._stop.set()
        self._thread.join(2)

    def stop(self, timeout: float) -> None:
        self.close()
        self.join(time.monotonic() + timeout)

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(
            float(self._per_minute),
            self._tokens + (now - self._refilled) * self._per_minute / 60.0,
        )
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _run(self) -> None:
        waiting: list[Alert] = []
        closing = False
        over_rate = False  # out of tokens with alerts waiting: the next send is a summary
        since = 0.0  # when the rate was exceeded, or the last summary went
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.05 if waiting else 0.2)
                while True:  # and whatever else is queued already
                    if item is None:
                        closing = True
                    else:
                        waiting.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if not waiting:
                if closing:
                    return
                continue
            summary = over_rate and len(waiting) > 1
            if summary and not closing and self._clock() - since < SUMMARY_EVERY_S:
                continue  # over the rate: one summary a minute, of all that came meanwhile
            if not self._take_token():
                if not over_rate:
                    over_rate, since = True, self._clock()
                continue
            batch = waiting[:SUMMARY_MAX] if summary else waiting[:1]
            if not self._deliver(batch, summary):
                return  # stopped while retrying
            waiting = waiting[len(batch) :]
            # alerts still waiting and no token left: the rate is exceeded, they are summarised
            exceeded = bool(waiting) and (over_rate or self._tokens < 1.0)
            if summary or (exceeded and not over_rate):
                since = self._clock()
            over_rate = exceeded

    def _deliver(self, batch: list[Alert], summary: bool) -> bool:
        delay = 1.0
        while True:
            try:
                if summary:
                    ids = [a.alert_id for a in batch]
                    summary_id = hashlib.sha256("\x00".join(ids).encode()).hexdigest()[:24]
                    self.sink.send_summary(batch, summary_id)
                    self.summaries += 1
                else:
                    self.sink.send(batch[0])
            except Exception as exc:  # SinkError, or a sink's bug: retried all the same
                self.failed += 1
                if self.failing_since is None:
                    self.failing_since = self._clock()
                log.warning(
                    "alert sink %s failed (%s); %d alert(s) held, retrying in %.0fs",
                    self.name,
                    exc,
                    len(batch) + self.backlog(),
                    delay,
                )
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 60.0)
                continue
            if self.failing_since is not None:
                log.info("alert sink %s delivers again", self.name)
                self.failing_since = None
            self.sent += len(batch)
            self._done([a.alert_id for a in batch], self.name)
            return True


class _AlertMetrics(Collector):
    """Prometheus metrics of an `AlertService`, read when scraped."""

    def __init__(self, service: AlertService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        yield CounterMetricFamily(
            "fraudstream_alert_records", "Fraud records read", value=svc.records
        )
        yield CounterMetricFamily("fraudstream_alerts", "Alerts formed", value=svc.alerts)
        yield GaugeMetricFamily(
            "fraudstream_alerts_pending",
            "Alerts not yet accepted by every sink",
            value=svc.pending(),
        )
        families = {
            "sent": CounterMetricFamily(
                "fraudstream_alert_sink_sent", "Alerts a sink accepted", labels=["sink"]
            ),
            "failed": CounterMetricFamily(
                "fraudstream_alert_sink_failures",
                "Failed deliveries (each retried with backoff)",
                labels=["sink"],
            ),
            "summaries": CounterMetricFamily(
                "fraudstream_alert_sink_summaries",
                "Summaries sent instead of alerts over the rate limit",
                labels=["sink"],
            ),
        }
        backlog = GaugeMetricFamily(
            "fraudstream_alert_sink_backlog", "Alerts queued for a sink", labels=["sink"]
        )
        failing = GaugeMetricFamily(
            "fraudstream_alert_sink_failing",
            "1 while a sink's last delivery failed",
            labels=["sink"],
        )
        for w in svc.workers:
            for attr, family in families.items():
                family.add_metric([w.name], getattr(w, attr))
            backlog.add_metric([w.name], w.backlog())
            failing.add_metric([w.name], 0.0 if w.failing_since is None else 1.0)
        yield from families.values()
        yield backlog
        yield failing


class AlertService:
    """The consumer loop; see the module's doc."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        *,
        group: str | None = None,
        window_ms: int | None = None,
        per_minute: int | None = None,
    ) -> None:
        self.settings = settings
        self.group = group or settings.alerts_group
        self.grouper = Grouper(
            window_ms if window_ms is not None else int(settings.alert_group_window * 1000)
        )
        rate = per_minute if per_minute is not None else settings.alert_rate_limit
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Alert, set[str]]] = {}  # id -> (alert, sinks still due)
        self.left_open = 0  # account groups still open when `run` stopped (read again next run)
        self.workers = [SinkWorker(s, self._accepted, per_minute=rate) for s in sinks]
        self.alerts = 0
        self.records = 0
        self._paused = False
        self._owned: set[int] = set()
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._start: dict[int, int] = {}  # partition -> first offset read since assigned
        # per partition: (first, last) offset of each alert formed whose last record may be
        # at or past the commit point: the commit never cuts one (`committable`)
        self._spans: dict[int, list[tuple[int, int]]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_AlertMetrics(self))

    # --- delivery bookkeeping (sink threads call _accepted) --------------------------------

    def _accepted(self, alert_ids: list[str], sink: str) -> None:
        with self._lock:
            for alert_id in alert_ids:
                entry = self._pending.get(alert_id)
                if entry is None:
                    continue
                entry[1].discard(sink)
                if not entry[1]:
                    del self._pending[alert_id]

    def _dispatch(self, alert: Alert) -> None:
        with self._lock:
            if alert.alert_id in self._pending:  # formed twice (a re-read): one delivery
                return
            self._pending[alert.alert_id] = (alert, {w.name for w in self.workers})
            span = (alert.offsets[0], max(alert.offsets))
            self._spans.setdefault(alert.partition, []).append(span)
        self.alerts += 1
        for w in self.workers:
            w.put(alert)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def committable(self) -> list[TopicPartition]:
        """Per owned partition: the first offset still needed (open group, undelivered
        alert), else the next one to read; moved back to the first record of any alert
        formed across it. (A commit inside a delivered alert's records had a restart read
        only its later ones: they formed another group, sent again under another id.)"""
        with self._lock:
            needed: dict[int, int] = {}
            for alert, _ in self._pending.values():
                p, first = alert.partition, alert.offsets[0]
                if first < self._start.get(p, first):
                    continue  # read while an earlier assignment: its commit is not ours
                needed[p] = min(needed.get(p, first), first)
            out = []
            for p in sorted(self._owned):
                if p not in self._next:
                    continue
                at = self._next[p]
                first_open = self.grouper.first_open_offset(p)
                for candidate in (first_open, needed.get(p)):
                    if candidate is not None:
                        at = min(at, candidate)
                spans = self._spans.get(p, [])
                moved = True
                while moved:  # until no alert's records straddle it
                    moved = False
                    for first, last in spans:
                        if first < at <= last:
                            at, moved = first, True
                # (the commit point never goes back: spans wholly before it are done with)
                self._spans[p] = [(f, last) for f, last in spans if last >= at]
                out.append(TopicPartition(self.settings.fraud_topic, p, at))
        return out

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set; returns the number of alerts formed."""
        s = self.settings
        config = consumer_config(s, "fraudstream-alerts", group_id=self.group)
        consumer = Consumer(config)

        def assigned(c: Consumer, parts: list[TopicPartition]) -> None:
            self._owned |= {tp.partition for tp in parts}
            if self._paused:
                c.pause(parts)
            log.info("alerts: reading %s partitions %s", s.fraud_topic, _ps(parts))

        def forget(gone: set[int]) -> None:
            self.grouper.drop(gone)
            self._owned -= gone
            for p in gone:
                self._next.pop(p, None)
                with self._lock:
                    self._spans.pop(p, None)
                self._start.pop(p, None)

        def revoked(c: Consumer, parts: list[TopicPartition]) -> None:
            gone = {tp.partition for tp in parts}
            self._commit(c, only=gone)
            forget(gone)

        def lost(c: Consumer, parts: list[TopicPartition]) -> None:
            forget({tp.partition for tp in parts})  # another member owns them: no commit

        consumer.subscribe([s.fraud_topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)
        for w in self.workers:
            w.start()
        log.info(
            "alerts: group %s, sinks %s, one alert per account per %.0fs",
            self.group,
            ", ".join(w.name for w in self.workers),
            self.grouper.window_ms / 1000,
        )
        last_commit = started = time.monotonic()
        said = clean = False
        try:
            while not stop.is_set():
                if not self._owned and not said and time.monotonic() - started > 5:
                    log.info(
                        "alerts: waiting for partitions of %s from group %s (a member stopped "
                        "without leaving holds them until its session times out: "
                        "KAFKA_SESSION_TIMEOUT_MS, 45 s by default)",
                        s.fraud_topic,
                        self.group,
                    )
                    said = True
                self._backpressure(consumer)
                # polled while paused too (paused partitions return nothing): a member that
                # stops polling for max.poll.interval.ms is dropped from its group
                msgs = consumer.consume(500, timeout=0.2)
                wall = _now_ms()
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if failed_fatally(err):  # it reads nothing more
                            raise FraudstreamError(f"alerts: {consumer_failure(err, config)}")
                        log.warning("alerts: %s", err)
                        continue
                    self._record(m, wall)
                for group in self.grouper.close_due(wall):
                    self._dispatch(group.alert(wall))
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    self._commit(consumer)
                    last_commit = time.monotonic()
            clean = True
        finally:
            for w in self.workers:  # all drain at once, within one deadline
                w.close()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for w in self.workers:
                w.join(deadline)
            if clean:  # an exception on its way out commits nothing it may have skipped
                self._commit(consumer)
            self.left_open = len(self.grouper.open)  # before close() revokes (and drops) them
            consumer.close()
            held = self.pending()
            if held:
                log.warning(
                    "alerts: stopped with %d alert(s) not accepted by every sink; the next "
                    "run sends them again (same alert_id)",
                    held,
                )
        return self.alerts

    def _record(self, m: Any, wall: int) -> None:
        p, offset = m.partition(), m.offset()
        self._start.setdefault(p, offset)
        self._next[p] = offset + 1
        self.records += 1
        try:
            record = _decode(m.value() or b"")
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (msgspec.DecodeError, ValueError) as exc:
            # not ours to judge: the detector wrote it; still, somebody must hear of it
            record = {"id": f"{p}:{offset}", "source": "?", "undecodable": str(exc)}
        closed = self.grouper.add(p, offset, m.timestamp()[1], record, wall)
        if closed is not None:
            self._dispatch(closed.alert(wall))

    def _commit(self, consumer: Consumer, only: set[int] | None = None) -> None:
        offsets = [tp for tp in self.committable() if only is None or tp.partition in only]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("alerts: committing offsets failed (%s); retried at the next", exc)

    def _backpressure(self, consumer: Consumer) -> None:
        n = self.pending()
        if not self._paused and n > MAX_PENDING:
            slow = max(self.workers, key=lambda w: w.backlog())
            log.warning(
                "alerts: %d alerts wait for sink %s; reading paused until half are accepted",
                n,
                slow.name,
            )
            consumer.pause(consumer.assignment())
            self._paused = True
        elif self._paused and n <= MAX_PENDING // 2:
            consumer.resume(consumer.assignment())
            self._paused = False


def _ps(parts: list[TopicPartition]) -> str:
    return ",".join(str(tp.partition) for tp in sorted(parts, key=lambda t: t.partition))

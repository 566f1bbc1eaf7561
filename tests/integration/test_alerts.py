"""`fraudstream alerts` against the real broker, a real HTTP receiver and a real SMTP server:
grouping by account, every sink, at-least-once with a stable alert_id through a failing sink
and a SIGKILL, and rate limits that summarise instead of dropping."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from fraudstream.alerts.service import SinkWorker
from fraudstream.alerts.sinks import WebhookSink
from fraudstream.config import Settings
from fraudstream.detection.alerting import Alert
from tests.conftest import env_for, free_port, scrape, spawn, wait_for
from tests.receivers import http_receiver, smtp_receiver

T0 = int(time.time() * 1000) - 60_000  # recent: the broker's retention keeps the records


def _fraud(tx_id: str, account: str, score: float = 0.97) -> bytes:
    return json.dumps(
        {
            "id": tx_id,
            "source": account,
            "target": "shop-1",
            "amount": 950.0,
            "currency": "EUR",
            "decision": {
                "outcome": "fraud",
                "score": score,
                "reasons": [{"rule": "burst_1h", "reason": "7 payments in 1h (max 5)"}],
                "rules_version": "test",
            },
        }
    ).encode()


def _produce(settings: Settings, records: list[tuple[str, str, int]]) -> None:
    """(transaction id, account, event time) onto the fraud topic, keyed by account."""
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url, "linger.ms": 5})
    for tx_id, account, ts in records:
        producer.produce(
            settings.fraud_topic, _fraud(tx_id, account), account.encode(), timestamp=ts
        )
    assert producer.flush(30) == 0


def _lag(settings: Settings, group: str) -> int:
    """Records of the fraud topic past the group's committed offsets."""
    c = Consumer({"bootstrap.servers": settings.kafka_broker_url, "group.id": group})
    try:
        parts = c.list_topics(settings.fraud_topic, timeout=10).topics[settings.fraud_topic]
        tps = [TopicPartition(settings.fraud_topic, p) for p in parts.partitions]
        committed = c.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            low, high = c.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        c.close()


def _alerts_env(settings: Settings, group: str, **sinks: str) -> dict[str, str]:
    return env_for(
        settings,
        ALERTS_GROUP=group,
        ALERT_GROUP_WINDOW="1",
        ALERT_EMAIL_FROM="fs@example.org",
        ALERT_EMAIL_TO="analyst@example.org",
        # a SIGKILLed member holds its partitions until its session times out (45 s)
        KAFKA_SESSION_TIMEOUT_MS="6000",
        **sinks,
    )


def test_fraud_is_grouped_by_account_and_reaches_every_sink(
    settings: Settings, tmp_path: Path
) -> None:
    _produce(
        settings,
        [
            ("a1", "acct-A", T0),
            ("b1", "acct-B", T0 + 50),
            ("a2", "acct-A", T0 + 100),
            ("a3", "acct-A", T0 + 200),
            ("a4", "acct-A", T0 + 5_000),  # past A's 1 s window: a second alert
        ],
    )
    group = "alerts-" + settings.fraud_topic
    with http_receiver() as hook, smtp_receiver() as smtp:
        port = free_port()
        env = _alerts_env(
            settings,
            group,
            ALERT_WEBHOOK_URL=hook.url,
            ALERT_SMTP_URL=smtp.url,
            METRICS_PORT=str(port),
        )
        proc = spawn(["alerts"], env, tmp_path / "alerts.log")
        try:
            wait_for(lambda: len(hook.posts) >= 3 and len(smtp.messages) >= 3, 60, "3 alerts")
            wait_for(lambda: _lag(settings, group) == 0, 30, "offsets committed after delivery")
            metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        log = (tmp_path / "alerts.log").read_text()
        assert code == 0, log
        got = sorted(
            (b["account"], b["count"], [t["id"] for t in b["transactions"]]) for b in hook.bodies()
        )
        assert got == [
            ("acct-A", 1, ["a4"]),
            ("acct-A", 3, ["a1", "a2", "a3"]),
            ("acct-B", 1, ["b1"]),
        ], log
        for post in hook.posts:
            body = post.body
            assert post.headers["Idempotency-Key"] == body["alert_id"]
            assert body["score"] == 0.97
            assert body["reasons"] == ["burst_1h: 7 payments in 1h (max 5)"]
            assert all(t["decision"]["outcome"] == "fraud" for t in body["transactions"])
        ids = {b["alert_id"] for b in hook.bodies()}
        assert {m["Message-ID"] for m in smtp.messages} == {f"<alert-{i}@fraudstream>" for i in ids}
        assert log.count("fraud alert ") == 3  # the log sink, always
        assert metrics["fraudstream_alerts_total"] == 3
        assert metrics["fraudstream_alert_records_total"] == 5
        assert metrics["fraudstream_alerts_pending"] == 0
        for sink in ("log", "webhook", "email"):
            assert metrics[f'fraudstream_alert_sink_sent_total{{sink="{sink}"}}'] == 3
            assert metrics[f'fraudstream_alert_sink_failing{{sink="{sink}"}}'] == 0


def test_a_failing_sink_holds_its_alerts_through_a_sigkill_and_resends_the_same_ids(
    settings: Settings, tmp_path: Path
) -> None:
    accounts = [f"acct-{i}" for i in range(4)]
    _produce(settings, [(f"t{i}", a, T0 + i) for i, a in enumerate(accounts)])
    group = "alerts-" + settings.fraud_topic
    with http_receiver() as hook, smtp_receiver() as smtp:
        hook.fail = True
        env = _alerts_env(settings, group, ALERT_WEBHOOK_URL=hook.url, ALERT_SMTP_URL=smtp.url)
        first = spawn(["alerts"], env, tmp_path / "first.log")
        try:
            # the email sink goes on while the webhook fails
            wait_for(lambda: len(smtp.messages) == 4 and hook.refused >= 2, 60, "4 emails")
            assert _lag(settings, group) == 4  # nothing committed the webhook has not taken
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        emailed = {m["X-Idempotency-Key"] for m in smtp.messages}
        assert len(emailed) == 4

        refused = hook.refused
        second = spawn(["alerts"], env, tmp_path / "second.log")
        try:
            wait_for(lambda: hook.refused > refused, 60, "the restarted process to retry")
            hook.fail = False  # the receiver recovers: the retries get through
            wait_for(lambda: len(hook.posts) >= 4, 90, "the webhook to receive the 4 alerts")
            wait_for(lambda: _lag(settings, group) == 0, 30, "offsets committed")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, (tmp_path / "second.log").read_text()
    # the same alerts, with the ids the first process gave them: receivers can de-duplicate
    assert {b["alert_id"] for b in hook.bodies()} == emailed
    assert sorted(b["account"] for b in hook.bodies()) == accounts
    log = (tmp_path / "second.log").read_text()
    assert "alert sink webhook failed" in log and "retrying in" in log


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _alert(i: int) -> Alert:
    return Alert(f"id-{i}", T0, f"acct-{i}", 1, 0.9, ["r: why"], [{"id": f"t{i}"}])


def test_over_its_rate_a_sink_gets_one_summary_and_no_alert_is_dropped() -> None:
    clock = _Clock()
    accepted: list[str] = []
    with http_receiver() as hook:
        worker = SinkWorker(
            WebhookSink(hook.url),
            lambda ids, sink: accepted.extend(ids),
            per_minute=2,
            clock=clock,
        )
        worker.start()
        try:
            for i in range(5):
                worker.put(_alert(i))
            # accepted once the receiver's answer is back (it records the post before answering)
            wait_for(lambda: len(accepted) == 2, 10, "the 2 alerts within the rate")
            assert worker.backlog() == 0 and len(hook.posts) == 2
            clock.now += 30  # a token again, but a summary waits a minute
            worker.put(_alert(5))
            wait_for(lambda: worker.backlog() == 0, 10, "the worker to take the sixth")
            assert len(hook.posts) == 2
            clock.now += 30  # a minute since the rate was exceeded: one summary of the four
            wait_for(lambda: len(hook.posts) == 3, 10, "one summary")
        finally:
            worker.stop(timeout=5)
    summary = hook.posts[2]
    assert summary.body.get("summary") is True, hook.bodies()
    assert [a["alert_id"] for a in summary.body["alerts"]] == ["id-2", "id-3", "id-4", "id-5"]
    assert summary.headers["Idempotency-Key"] == summary.body["alert_id"]
    assert sorted(accepted) == [f"id-{i}" for i in range(6)]


def test_groups_still_open_at_a_stop_are_said_and_the_next_run_sends_them(
    settings: Settings, tmp_path: Path
) -> None:
    """A stop inside an account's group window sends nothing for it: the log says how many
    groups were open (not "0 alerts from 2 fraud records" alone), and the next run sends them."""
    _produce(settings, [("a1", "acct-A", T0), ("b1", "acct-B", T0 + 50)])
    group = "alerts-open-" + settings.fraud_topic
    with http_receiver() as hook:
        port = free_port()
        env = _alerts_env(settings, group, ALERT_WEBHOOK_URL=hook.url, METRICS_PORT=str(port))
        for name in ("ALERT_EMAIL_FROM", "ALERT_EMAIL_TO"):  # no email here
            del env[name]
        first = spawn(["alerts"], dict(env, ALERT_GROUP_WINDOW="600"), tmp_path / "first.log")
        try:
            wait_for(
                lambda: (
                    scrape(f"http://127.0.0.1:{port}/metrics").get(
                        "fraudstream_alert_records_total"
                    )
                    == 2
                ),
                60,
                "both fraud records read",
            )
        finally:
            first.send_signal(signal.SIGTERM)
            code = first.wait(30)
        log = (tmp_path / "first.log").read_text()
        assert code == 0, log
        assert not hook.posts, log
        assert (
            "stopped after 0 alerts from 2 fraud records; 2 account(s) had a group still open"
        ) in log, log
        second = spawn(["alerts"], dict(env, METRICS_PORT=str(free_port())), tmp_path / "2.log")
        try:
            wait_for(lambda: len(hook.posts) >= 2, 60, "the open groups' alerts")
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(30)
        log = (tmp_path / "2.log").read_text()
        assert code == 0, log
        assert sorted(b["account"] for b in hook.bodies()) == ["acct-A", "acct-B"], log
        assert "had a group still open" not in log, log

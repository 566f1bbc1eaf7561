"""The alert sinks against real local servers: an HTTP receiver (webhook, Slack) and an SMTP
server (aiosmtpd), both on 127.0.0.1 ports the OS picks (tests/receivers.py)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from fraudstream.alerts.sinks import (
    EmailSink,
    LogSink,
    SinkError,
    SlackSink,
    WebhookSink,
    build_sinks,
)
from fraudstream.detection.alerting import Alert
from tests.receivers import HttpReceiver, SmtpReceiver, http_receiver, self_signed, smtp_receiver


def FakeAlert(**fields: Any) -> Alert:
    """The real `Alert`, with defaults for what a test does not care about."""
    values: dict[str, Any] = {
        "alert_id": "a1b2c3d4e5f6a7b8c9d0e1f2",
        "created": 1_767_225_600_000,  # 2026-01-01T00:00:00Z
        "account": "ACC-42",
        "count": 3,
        "score": 0.97,
        "reasons": ["burst_1h: 7 payments in 1h (max 5)", "model: score 0.97"],
        "transactions": [
            {"id": f"tx-{i}", "decision": {"fraud": True, "score": 0.9 + i / 100}} for i in range(3)
        ],
    }
    return Alert(**(values | fields))


# --- a local HTTP receiver ----------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


def test_webhook_posts_the_alert_json_with_its_idempotency_key(receiver: HttpReceiver) -> None:
    alert = FakeAlert()
    WebhookSink(receiver.url + "/hooks/fraud").send(alert)
    [req] = receiver.requests
    assert req.path == "/hooks/fraud"
    assert req.headers["Idempotency-Key"] == alert.alert_id
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == alert.to_json()


def test_webhook_error_status_raises_and_a_later_send_succeeds(receiver: HttpReceiver) -> None:
    receiver.fail_first = 1
    sink = WebhookSink(receiver.url + "/secret-token-path")
    with pytest.raises(SinkError, match="HTTP 500") as err:
        sink.send(FakeAlert())
    assert "secret-token-path" not in str(err.value)
    sink.send(FakeAlert())  # the retry
    assert receiver.refused == 1 and len(receiver.posts) == 1
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == [FakeAlert().alert_id] * 2


def test_webhook_network_error_raises_sink_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
        WebhookSink(f"http://127.0.0.1:{port}/x", timeout=2).send(FakeAlert())


def test_webhook_summary_body(receiver: HttpReceiver) -> None:
    alerts = [FakeAlert(alert_id="one"), FakeAlert(alert_id="two", account="ACC-7", count=5)]
    WebhookSink(receiver.url).send_summary(alerts, "sum-1")
    [req] = receiver.requests
    assert req.headers["Idempotency-Key"] == "sum-1"
    body = req.body
    assert body["summary"] is True
    assert body["alert_id"] == "sum-1"
    assert body["count"] == 8
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000_000
    assert body["alerts"] == [a.to_json() for a in alerts]


def test_urls_are_validated_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="ALERT_WEBHOOK_URL"):
        WebhookSink("ftp://example.org/hook")
    with pytest.raises(ValueError, match="ALERT_SLACK_WEBHOOK_URL"):
        SlackSink("hooks.slack.com/services/T/B/secret", None)
    with pytest.raises(ValueError, match="ALERT_SMTP_URL must look like") as err:
        EmailSink("imap://u:hunter2@mail", "a@x", ["b@x"])
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="no host"):
        EmailSink("smtp://", "a@x", ["b@x"])
    with pytest.raises(ValueError, match="port"):
        EmailSink("smtp://u:hunter2@mail:99999", "a@x", ["b@x"])


def test_slack_message_lists_reasons_ids_and_the_dashboard_link(receiver: HttpReceiver) -> None:
    alert = FakeAlert(
        reasons=["burst_1h: 7 payments in 1h (max 5)", "rule <script>& friends"],
        count=12,
        transactions=[{"id": f"tx-{i}", "decision": {}} for i in range(12)],
    )
    SlackSink(receiver.url, "http://dash.local:5000/").send(alert)
    [req] = receiver.requests
    assert req.headers["Idempotency-Key"] == alert.alert_id
    body = req.body
    assert body["text"] == "Fraud alert: account ACC-42, 12 transactions, score 0.97"
    raw = json.dumps(body)
    assert "<script>" not in raw
    texts = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section" and "text" in b]
    reasons = next(t for t in texts if t.startswith("*Reasons*"))
    assert "• burst_1h: 7 payments in 1h (max 5)" in reasons
    assert "• rule &lt;script&gt;&amp; friends" in reasons
    ids = next(t for t in texts if t.startswith("*Transaction ids*"))
    assert "`tx-9`" in ids and "tx-10" not in ids and ids.endswith("and 2 more")
    link = f"<http://dash.local:5000/#alert/{alert.alert_id}|Open in the dashboard>"
    assert link in texts
    fields = next(b["fields"] for b in body["blocks"] if "fields" in b)
    assert {"type": "mrkdwn", "text": "*Account*\nACC-42"} in fields


def test_slack_without_dashboard_has_no_link_and_summary_is_one_message(
    receiver: HttpReceiver,
) -> None:
    sink = SlackSink(receiver.url, None)
    sink.send(FakeAlert())
    assert "Open in the dashboard" not in json.dumps(receiver.requests[0].body)
    alerts = [FakeAlert(alert_id=f"id{i}", account=f"A<{i}>", count=2) for i in range(25)]
    sink.send_summary(alerts, "sum-2")
    req = receiver.requests[1]
    assert req.headers["Idempotency-Key"] == "sum-2"
    assert req.body["text"] == (
        "25 alerts (50 transactions) in the last minute, rate limit reached"
    )
    listing = req.body["blocks"][1]["text"]["text"].splitlines()
    assert listing[0] == "• A&lt;0&gt;: 2 transactions"
    assert len(listing) == 21 and listing[-1] == "• and 5 more accounts"


# --- a real SMTP server -----------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[SmtpReceiver]:
    with smtp_receiver() as server:
        yield server


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpReceiver]:
    with smtp_receiver(user="alerts@bank", password="p@ss:w/rd") as server:
        yield server


def _parts(msg: EmailMessage) -> tuple[str, str]:
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    return str(plain.get_content()), str(rich.get_content())


def test_email_has_text_and_html_parts_subject_and_message_id(smtp_server: SmtpReceiver) -> None:
    alert = FakeAlert(reasons=["rule <b>bold</b> & more", "velocity: 3 countries"])
    sink = EmailSink(
        smtp_server.url,
        "fraud@bank.test",
        ["ops@bank.test", "risk@bank.test"],
        dashboard_url="http://dash.local:5000",
    )
    sink.send(alert)
    [msg] = smtp_server.messages
    assert smtp_server.envelopes == [("fraud@bank.test", ["ops@bank.test", "risk@bank.test"])]
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "Fraud alert: account ACC-42, 3 transactions, score 0.97"
    assert msg["Message-ID"] == f"<alert-{alert.alert_id}@fraudstream>"
    assert msg["X-Idempotency-Key"] == alert.alert_id
    assert msg["To"] == "ops@bank.test, risk@bank.test"
    plain, rich = _parts(msg)
    assert "- rule <b>bold</b> & more" in plain
    assert "<b>" not in rich
    assert "rule &lt;b&gt;bold&lt;/b&gt; &amp; more" in rich
    assert "tx-2 (score 0.92)" in plain
    link = f"http://dash.local:5000/#alert/{alert.alert_id}"
    assert link in plain and f'href="{link}"' in rich


def test_email_summary_is_one_message(smtp_server: SmtpReceiver) -> None:
    sink = EmailSink(smtp_server.url, "f@x.test", ["o@x.test"])
    alerts = [FakeAlert(alert_id="one"), FakeAlert(alert_id="two", account="Z&Co", count=1)]
    sink.send_summary(alerts, "sum-3")
    [msg] = smtp_server.messages
    assert msg["Subject"] == (
        "Fraud alerts: 2 alerts (4 transactions) in the last minute, rate limit reached"
    )
    assert msg["Message-ID"] == "<alert-sum-3@fraudstream>"
    plain, rich = _parts(msg)
    assert "- Z&Co: 1 transaction, score 0.97:" in plain
    assert "Z&amp;Co" in rich and "Z&Co" not in rich


def test_email_logs_in_with_the_url_decoded_user_and_password(
    smtp_auth_server: SmtpReceiver,
) -> None:
    url = f"smtp://alerts%40bank:p%40ss%3Aw%2Frd@127.0.0.1:{smtp_auth_server.port}"
    EmailSink(url, "f@x.test", ["o@x.test"]).send(FakeAlert())
    assert smtp_auth_server.logins == [("alerts@bank", "p@ss:w/rd")]
    assert len(smtp_auth_server.messages) == 1


def test_email_wrong_password_raises_without_the_password(
    smtp_auth_server: SmtpReceiver,
) -> None:
    url = f"smtp://alerts%40bank:wrong-hunter2@127.0.0.1:{smtp_auth_server.port}"
    with pytest.raises(SinkError, match="SMTPAuthenticationError") as err:
        EmailSink(url, "f@x.test", ["o@x.test"]).send(FakeAlert())
    assert "hunter2" not in str(err.value)
    assert smtp_auth_server.logins  # the right user: refused for the password alone
    assert {login for login, _ in smtp_auth_server.logins} == {"alerts@bank"}
    assert smtp_auth_server.messages == []


def test_unreachable_smtp_server_raises_quickly_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sink = EmailSink(f"smtp://me:hunter2@127.0.0.1:{port}", "f@x.test", ["o@x.test"], timeout=2)
    with pytest.raises(SinkError, match=f"127.0.0.1:{port}") as err:
        sink.send(FakeAlert())
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in repr(sink)


def test_smtp_url_defaults() -> None:
    assert EmailSink("smtp://mail.test", "f@x", ["t@x"]).port == 25
    sink = EmailSink("smtps://u:p@mail.test", "f@x", ["t@x"])
    assert (sink.port, sink.implicit_tls) == (465, True)
    assert EmailSink("smtp://mail.test:587", "f@x", ["t@x"]).port == 587


# --- the log and build_sinks --------------------------------------------------------------


def test_log_sink_writes_one_warning_per_alert_and_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.alert_sinks")
    sink = LogSink(logger)
    with caplog.at_level(logging.WARNING, logger="test.alert_sinks"):
        sink.send(FakeAlert())
        sink.send_summary([FakeAlert(), FakeAlert(account="B", count=1)], "sum-4")
    first, second = caplog.records
    assert first.levelno == logging.WARNING
    assert first.getMessage() == (
        f"fraud alert {FakeAlert().alert_id}: account ACC-42, 3 transactions, score 0.97: "
        "burst_1h: 7 payments in 1h (max 5); model: score 0.97"
    )
    assert second.getMessage() == (
        "fraud alert summary sum-4: 2 alerts (4 transactions) in the last minute, "
        "rate limit reached: ACC-42 (3), B (1)"
    )


def _build(**overrides: Any) -> list[Any]:
    settings: dict[str, Any] = {
        "webhook_url": None,
        "slack_webhook_url": None,
        "smtp_url": None,
        "email_from": None,
        "email_to": None,
        "dashboard_url": None,
        "logger": logging.getLogger("test.alert_sinks"),
    }
    return build_sinks(**{**settings, **overrides})


def test_build_sinks_puts_the_log_first_then_each_configured_one() -> None:
    [only] = _build()
    assert isinstance(only, LogSink)
    sinks = _build(
        webhook_url="https://hooks.example/x",
        slack_webhook_url="https://hooks.slack.test/services/T/B/C",
        smtp_url="smtps://u:p@mail.test",
        email_from="fraud@x.test",
        email_to=" ops@x.test, risk@x.test ,",
        dashboard_url="http://dash:5000",
    )
    assert [s.name for s in sinks] == ["log", "webhook", "slack", "email"]
    assert isinstance(sinks[0], LogSink)
    assert sinks[3].recipients == ["ops@x.test", "risk@x.test"]


def test_build_sinks_names_the_missing_email_setting() -> None:
    with pytest.raises(ValueError, match="ALERT_EMAIL_TO") as err:
        _build(smtp_url="smtp://mail.test", email_from="fraud@x.test")
    assert "ALERT_EMAIL_FROM" not in str(err.value)
    with pytest.raises(ValueError, match="ALERT_EMAIL_FROM"):
        _build(smtp_url="smtp://mail.test", email_to="ops@x.test")
    with pytest.raises(ValueError, match="ALERT_SMTP_URL"):
        _build(email_from="fraud@x.test", email_to="ops@x.test")


def test_email_uses_starttls_when_offered_and_logs_in_only_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this certificate
    with smtp_receiver(user="alerts", password="s3cret", tls=context) as server:
        sink = EmailSink(
            f"smtp://alerts:s3cret@127.0.0.1:{server.port}", "fraud@bank", ["team@bank"]
        )
        sink.send(FakeAlert())
        assert len(server.messages) == 1
        assert server.logins == [("alerts", "s3cret")] and server.logins_over_tls == [True]


def test_email_over_smtps_speaks_tls_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with smtp_receiver(user="alerts", password="s3cret", tls=context, implicit_tls=True) as server:
        sink = EmailSink(
            f"smtps://alerts:s3cret@127.0.0.1:{server.port}", "fraud@bank", ["team@bank"]
        )
        sink.send(FakeAlert())
        assert len(server.messages) == 1 and server.logins == [("alerts", "s3cret")]
        plain = EmailSink(
            f"smtp://127.0.0.1:{server.port}", "fraud@bank", ["team@bank"], timeout=1.0
        )
        with pytest.raises(SinkError):  # the server speaks nothing but TLS: no greeting
            plain.send(FakeAlert())
        assert len(server.messages) == 1


def test_email_refuses_a_server_certificate_it_cannot_verify(tmp_path: Path) -> None:
    """An untrusted certificate is an error, never a fallback to plain text."""
    context, _ = self_signed(tmp_path)
    with smtp_receiver(user="alerts", password="s3cret", tls=context) as server:
        sink = EmailSink(
            f"smtp://alerts:s3cret@127.0.0.1:{server.port}", "fraud@bank", ["team@bank"]
        )
        with pytest.raises(SinkError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            sink.send(FakeAlert())
        assert server.messages == [] and server.logins == []
        assert "s3cret" not in str(sink)

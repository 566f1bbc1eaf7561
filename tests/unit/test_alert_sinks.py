"""The alert sinks against real local servers: an HTTP receiver (webhook, Slack) and an SMTP
server (aiosmtpd), both on 127.0.0.1 ports the OS picks."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from fraudstream.alerts.sinks import (
    EmailSink,
    LogSink,
    SinkError,
    SlackSink,
    WebhookSink,
    build_sinks,
)


@dataclass(frozen=True)
class FakeAlert:
    alert_id: str = "a1b2c3d4e5f6a7b8c9d0e1f2"
    created: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    account: str = "ACC-42"
    count: int = 3
    score: float = 0.97
    reasons: list[str] = field(
        default_factory=lambda: ["burst_1h: 7 payments in 1h (max 5)", "model: score 0.97"]
    )
    transactions: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"id": f"tx-{i}", "decision": {"fraud": True, "score": 0.9 + i / 100}} for i in range(3)
        ]
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "created": self.created,
            "account": self.account,
            "count": self.count,
            "score": self.score,
            "reasons": self.reasons,
            "transactions": self.transactions,
        }


# --- a local HTTP receiver ----------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    """Records each POST; answers 500 to the first `fail_first` of them, 200 after."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail_first = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(
                    Received(self.path, dict(self.headers.items()), json.loads(raw))
                )
                failing = len(receiver.requests) <= receiver.fail_first
                reply = b"boom" if failing else b"ok"
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_webhook_posts_the_alert_json_with_its_idempotency_key(receiver: Receiver) -> None:
    alert = FakeAlert()
    WebhookSink(receiver.url + "/hooks/fraud").send(alert)
    [req] = receiver.requests
    assert req.path == "/hooks/fraud"
    assert req.headers["Idempotency-Key"] == alert.alert_id
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == alert.to_json()


def test_webhook_error_status_raises_and_a_later_send_succeeds(receiver: Receiver) -> None:
    receiver.fail_first = 1
    sink = WebhookSink(receiver.url + "/secret-token-path")
    with pytest.raises(SinkError, match="HTTP 500") as err:
        sink.send(FakeAlert())
    assert "secret-token-path" not in str(err.value)
    sink.send(FakeAlert())  # the retry
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == [FakeAlert.alert_id] * 2


def test_webhook_network_error_raises_sink_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
        WebhookSink(f"http://127.0.0.1:{port}/x", timeout=2).send(FakeAlert())


def test_webhook_summary_body(receiver: Receiver) -> None:
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


def test_slack_message_lists_reasons_ids_and_the_dashboard_link(receiver: Receiver) -> None:
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
    receiver: Receiver,
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


class AnyPortController(Controller):
    """aiosmtpd's Controller on port 0: learns the port the OS gave before its start-up
    probe connects (aiosmtpd 1.4 would connect to port 0 otherwise)."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int


def _smtp(password: str | None = None) -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    kwargs: dict[str, Any] = {}
    if password is not None:

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            assert isinstance(data, LoginPassword)
            login, given = data.login.decode(), data.password.decode()
            mailbox.logins.append((login, given))
            return AuthResult(success=given == password, handled=False)

        kwargs = {"authenticator": authenticator, "auth_require_tls": False}
    controller = AnyPortController(mailbox, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield SmtpServer(mailbox, controller.port)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    yield from _smtp()


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpServer]:
    yield from _smtp(password="p@ss:w/rd")


def _parts(msg: EmailMessage) -> tuple[str, str]:
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    return str(plain.get_content()), str(rich.get_content())


def test_email_has_text_and_html_parts_subject_and_message_id(smtp_server: SmtpServer) -> None:
    alert = FakeAlert(reasons=["rule <b>bold</b> & more", "velocity: 3 countries"])
    sink = EmailSink(
        f"smtp://127.0.0.1:{smtp_server.port}",
        "fraud@bank.test",
        ["ops@bank.test", "risk@bank.test"],
        dashboard_url="http://dash.local:5000",
    )
    sink.send(alert)
    [msg] = smtp_server.mailbox.messages
    assert smtp_server.mailbox.envelopes == [
        ("fraud@bank.test", ["ops@bank.test", "risk@bank.test"])
    ]
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


def test_email_summary_is_one_message(smtp_server: SmtpServer) -> None:
    sink = EmailSink(f"smtp://127.0.0.1:{smtp_server.port}", "f@x.test", ["o@x.test"])
    alerts = [FakeAlert(alert_id="one"), FakeAlert(alert_id="two", account="Z&Co", count=1)]
    sink.send_summary(alerts, "sum-3")
    [msg] = smtp_server.mailbox.messages
    assert msg["Subject"] == (
        "Fraud alerts: 2 alerts (4 transactions) in the last minute, rate limit reached"
    )
    assert msg["Message-ID"] == "<alert-sum-3@fraudstream>"
    plain, rich = _parts(msg)
    assert "- Z&Co: 1 transaction, score 0.97:" in plain
    assert "Z&amp;Co" in rich and "Z&Co" not in rich


def test_email_logs_in_with_the_url_decoded_user_and_password(
    smtp_auth_server: SmtpServer,
) -> None:
    url = f"smtp://alerts%40bank:p%40ss%3Aw%2Frd@127.0.0.1:{smtp_auth_server.port}"
    EmailSink(url, "f@x.test", ["o@x.test"]).send(FakeAlert())
    assert smtp_auth_server.mailbox.logins == [("alerts@bank", "p@ss:w/rd")]
    assert len(smtp_auth_server.mailbox.messages) == 1


def test_email_wrong_password_raises_without_the_password(
    smtp_auth_server: SmtpServer,
) -> None:
    url = f"smtp://alerts:wrong-hunter2@127.0.0.1:{smtp_auth_server.port}"
    with pytest.raises(SinkError, match="SMTPAuthenticationError") as err:
        EmailSink(url, "f@x.test", ["o@x.test"]).send(FakeAlert())
    assert "hunter2" not in str(err.value)
    assert smtp_auth_server.mailbox.messages == []


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
        f"fraud alert {FakeAlert.alert_id}: account ACC-42, 3 transactions, score 0.97: "
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

"""Where alerts go: the log (always), a JSON webhook, a Slack incoming webhook, email (SMTP).

Each sink delivers one alert per call, or raises `SinkError` (the caller retries later), and
can send one summary of several alerts instead when its rate limit is reached. Delivery is at
least once, so the same alert may arrive twice: every message carries the alert's stable
`alert_id` as its idempotency key (HTTP `Idempotency-Key`, email `Message-ID` and
`X-Idempotency-Key`) for the receiver to drop the duplicate. Error messages name the host,
never a password or a webhook URL's path (a Slack webhook's path is its credential).

    sinks = build_sinks(webhook_url=..., slack_webhook_url=None, smtp_url=None, email_from=None,
                        email_to=None, dashboard_url=None, logger=log)
    for sink in sinks: sink.send(alert)
"""

from __future__ import annotations

import html
import logging
import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx

__all__ = [
    "AlertLike",
    "EmailSink",
    "LogSink",
    "Sink",
    "SinkError",
    "SlackSink",
    "WebhookSink",
    "build_sinks",
]

SLACK_MAX_IDS = 10  # transaction ids listed in a Slack alert
SUMMARY_MAX_LINES = 20  # accounts listed in a Slack or log summary
_SLACK_TEXT_MAX = 2900  # a section's text may hold 3000 characters
_USER_AGENT = "fraudstream-alerts"


class SinkError(Exception):
    """A delivery failed and may succeed if tried again; the message says what failed."""


class AlertLike(Protocol):
    """What a sink reads of an alert (`fraudstream.detection.alerting.Alert` is one)."""

    @property
    def alert_id(self) -> str: ...
    @property
    def created(self) -> int: ...  # epoch ms
    @property
    def account(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def score(self) -> float: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def transactions(self) -> Sequence[Mapping[str, Any]]: ...
    def to_json(self) -> Mapping[str, Any]: ...


class Sink(Protocol):
    """A destination. `name` is unique among the sinks of one process."""

    name: str

    def send(self, alert: AlertLike) -> None:
        """Deliver one alert, or raise SinkError."""

    def send_summary(self, alerts: Sequence[AlertLike], summary_id: str) -> None:
        """Deliver one message summarising `alerts` (rate limit reached), or raise SinkError."""


# --- shared text helpers ------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed: safe in a log line or a mail header."""
    return " ".join(str(text).split())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _ids(alert: AlertLike) -> list[str]:
    return [str(t.get("id", "?")) for t in alert.transactions]


def _alert_link(dashboard_url: str | None, alert_id: str) -> str | None:
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/#alert/{quote(alert_id, safe='')}"


def _transactions_total(alerts: Sequence[AlertLike]) -> int:
    return sum(a.count for a in alerts)


def _by_account(alerts: Sequence[AlertLike]) -> list[tuple[str, int]]:
    """(account, transactions) over the alerts, most transactions first."""
    totals: Counter[str] = Counter()
    for a in alerts:
        totals[a.account] += a.count
    return totals.most_common()


def _summary_title(alerts: Sequence[AlertLike]) -> str:
    return (
        f"{_plural(len(alerts), 'alert')} ({_plural(_transactions_total(alerts), 'transaction')})"
        " in the last minute, rate limit reached"
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- HTTP: webhook and Slack --------------------------------------------------------------


def _http_origin(url: str, setting: str) -> str:
    """scheme://host[:port] of an http(s) URL, for messages; ValueError if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{setting} is not a valid URL (bad port?)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting} must look like https://host/path (http:// or https://)")
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")


def _post_json(url: str, origin: str, what: str, body: Any, key: str, timeout: float) -> None:
    headers = {"Idempotency-Key": key, "User-Agent": _USER_AGENT}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        detail = str(exc).replace(url, origin) or type(exc).__name__
        raise SinkError(f"{what} POST to {origin} failed: {detail}") from None
    if not response.is_success:
        text = _one_line(response.text)[:200]
        raise SinkError(
            f"{what} POST to {origin} answered HTTP {response.status_code}"
            + (f": {text}" if text else "")
        )


class WebhookSink:
    """POSTs `alert.to_json()`; a summary is
    `{"summary": true, "alert_id", "created", "count", "alerts": [...]}` (count: transactions)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._origin = _http_origin(url, "ALERT_WEBHOOK_URL")
        self._url = url
        self.timeout = timeout

    def send(self, alert: AlertLike) -> None:
        body = dict(alert.to_json())
        _post_json(self._url, self._origin, "webhook", body, alert.alert_id, self.timeout)

    def send_summary(self, alerts: Sequence[AlertLike], summary_id: str) -> None:
        body = {
            "summary": True,
            "alert_id": summary_id,
            "created": _now_ms(),
            "count": _transactions_total(alerts),
            "alerts": [dict(a.to_json()) for a in alerts],
        }
        _post_json(self._url, self._origin, "webhook", body, summary_id, self.timeout)


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters; everything user-provided goes through this."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _bounded_lines(lines: list[str], more: str, limit: int = _SLACK_TEXT_MAX) -> str:
    """Lines joined while they fit in `limit` characters; `more` (given the count of the rest)
    ends a list that did not fit."""
    kept: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > limit - 40:
            kept.append(more.format(len(lines) - i))
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


class SlackSink:
    """Posts to a Slack incoming webhook: a fallback `text` plus Block Kit `blocks`."""

    name = "slack"

    def __init__(self, url: str, dashboard_url: str | None, timeout: float = 10.0) -> None:
        self._origin = _http_origin(url, "ALERT_SLACK_WEBHOOK_URL")
        self._url = url
        self.dashboard_url = dashboard_url.rstrip("/") if dashboard_url else None
        self.timeout = timeout

    def message(self, alert: AlertLike) -> dict[str, Any]:
        """The webhook body for one alert."""
        account = _slack_escape(alert.account)
        txs = _plural(alert.count, "transaction")
        text = f"Fraud alert: account {account}, {txs}, score {alert.score:.2f}"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": "Fraud alert"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Account*\n{account}"},
                    {"type": "mrkdwn", "text": f"*Transactions*\n{alert.count}"},
                    {"type": "mrkdwn", "text": f"*Highest score*\n{alert.score:.2f}"},
                    {"type": "mrkdwn", "text": f"*Since*\n{_iso(alert.created)}"},
                ],
            },
        ]
        if alert.reasons:
            lines = [f"• {_slack_escape(_one_line(r))}" for r in alert.reasons]
            blocks.append(_section("*Reasons*\n" + _bounded_lines(lines, "• and {} more")))
        ids = _ids(alert)
        if ids:
            shown = ", ".join(f"`{_slack_escape(i)}`" for i in ids[:SLACK_MAX_IDS])
            rest = max(alert.count, len(ids)) - min(len(ids), SLACK_MAX_IDS)
            if rest > 0:
                shown += f" and {rest} more"
            blocks.append(_section("*Transaction ids*\n" + shown[:_SLACK_TEXT_MAX]))
        link = _alert_link(self.dashboard_url, alert.alert_id)
        if link:
            blocks.append(_section(f"<{link}|Open in the dashboard>"))
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"alert {_slack_escape(alert.alert_id)}"}],
            }
        )
        return {"text": text, "blocks": blocks}

    def summary_message(self, alerts: Sequence[AlertLike]) -> dict[str, Any]:
        """The webhook body for a summary of several alerts."""
        title = _summary_title(alerts)
        accounts = _by_account(alerts)
        lines = [
            f"• {_slack_escape(_one_line(acct))}: {_plural(n, 'transaction')}"
            for acct, n in accounts[:SUMMARY_MAX_LINES]
        ]
        if len(accounts) > SUMMARY_MAX_LINES:
            lines.append(f"• and {len(accounts) - SUMMARY_MAX_LINES} more accounts")
        blocks = [_section(f"*{title}*"), _section(_bounded_lines(lines, "• and {} more"))]
        if self.dashboard_url:
            blocks.append(_section(f"<{self.dashboard_url}/|Open the dashboard>"))
        return {"text": title, "blocks": blocks}

    def send(self, alert: AlertLike) -> None:
        body = self.message(alert)
        _post_json(self._url, self._origin, "Slack", body, alert.alert_id, self.timeout)

    def send_summary(self, alerts: Sequence[AlertLike], summary_id: str) -> None:
        body = self.summary_message(alerts)
        _post_json(self._url, self._origin, "Slack", body, summary_id, self.timeout)


# --- email --------------------------------------------------------------------------------

_SMTP_URL_HINT = (
    "ALERT_SMTP_URL must look like smtp://user:pass@host:port or smtps://user:pass@host"
)


def _msgid_token(text: str) -> str:
    """`text` with every character outside [A-Za-z0-9_-] percent-encoded: a valid msg-id
    part that keeps distinct ids distinct."""
    return quote(text, safe="").replace(".", "%2E").replace("~", "%7E")


def _tx_line(tx: Mapping[str, Any]) -> str:
    """One transaction: its id, and its score when its decision carries one."""
    decision = tx.get("decision")
    score = decision.get("score") if isinstance(decision, Mapping) else None
    tail = f" (score {score:.2f})" if isinstance(score, int | float) else ""
    return f"{tx.get('id', '?')}{tail}"


class EmailSink:
    """One email per alert (plain text and HTML) over SMTP; see the module's doc."""

    name = "email"
    max_transactions = 50  # listed in one email; the rest are counted

    def __init__(
        self,
        smtp_url: str,
        sender: str,
        recipients: list[str],
        timeout: float = 10.0,
        dashboard_url: str | None = None,
    ) -> None:
        try:
            parts = urlsplit(smtp_url.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"{_SMTP_URL_HINT} (its port is not a number 1-65535)") from None
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"{_SMTP_URL_HINT} (the scheme is not smtp or smtps)")
        if not parts.hostname:
            raise ValueError(f"{_SMTP_URL_HINT} (it names no host)")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = port or (465 if self.implicit_tls else 25)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else ""
        self._raw_password = parts.password or ""
        if not sender.strip():
            raise ValueError("ALERT_EMAIL_FROM must be an email address")
        recipients = [r.strip() for r in recipients if r.strip()]
        if not recipients:
            raise ValueError("ALERT_EMAIL_TO must name at least one email address")
        self.sender = sender.strip()
        self.recipients = recipients
        self.timeout = timeout
        self.dashboard_url = dashboard_url.rstrip("/") if dashboard_url else None

    def __repr__(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"EmailSink({scheme}://{self.host}:{self.port} -> {', '.join(self.recipients)})"

    # messages

    def _envelope(self, subject: str, key: str, created_ms: int) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = _one_line(subject)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(created_ms / 1000, usegmt=True)
        msg["Message-ID"] = f"<alert-{_msgid_token(key)}@fraudstream>"
        msg["X-Idempotency-Key"] = _one_line(key)
        return msg

    def message(self, alert: AlertLike) -> EmailMessage:
        """The email for one alert."""
        account = _one_line(alert.account)
        txs = _plural(alert.count, "transaction")
        subject = f"Fraud alert: account {account}, {txs}, score {alert.score:.2f}"
        link = _alert_link(self.dashboard_url, alert.alert_id)
        shown = list(alert.transactions)[: self.max_transactions]
        rest = max(alert.count, len(alert.transactions)) - len(shown)

        text = [
            f"Fraud alert {alert.alert_id}",
            "",
            f"Account:       {account}",
            f"Transactions:  {alert.count}",
            f"Highest score: {alert.score:.2f}",
            f"Formed:        {_iso(alert.created)}",
            "",
            "Reasons:",
            *(f"- {_one_line(r)}" for r in alert.reasons),
            "",
            "Transactions:",
            *(f"- {_one_line(_tx_line(t))}" for t in shown),
        ]
        if rest > 0:
            text.append(f"- and {rest} more")
        if link:
            text += ["", f"Open in the dashboard: {link}"]

        e = html.escape
        items = "".join(f"<li>{e(r)}</li>" for r in alert.reasons)
        tx_items = "".join(f"<li><code>{e(_tx_line(t))}</code></li>" for t in shown)
        if rest > 0:
            tx_items += f"<li>and {rest} more</li>"
        page = [
            "<!DOCTYPE html><html><body>",
            f"<h2>Fraud alert: account {e(account)}</h2>",
            "<table>",
            f"<tr><th align='left'>Transactions</th><td>{alert.count}</td></tr>",
            f"<tr><th align='left'>Highest score</th><td>{alert.score:.2f}</td></tr>",
            f"<tr><th align='left'>Formed</th><td>{_iso(alert.created)}</td></tr>",
            f"<tr><th align='left'>Alert</th><td><code>{e(alert.alert_id)}</code></td></tr>",
            "</table>",
            f"<h3>Reasons</h3><ul>{items}</ul>",
            f"<h3>Transactions</h3><ul>{tx_items}</ul>",
        ]
        if link:
            page.append(f'<p><a href="{e(link, quote=True)}">Open in the dashboard</a></p>')
        page.append("</body></html>")

        msg = self._envelope(subject, alert.alert_id, alert.created)
        msg.set_content("\n".join(text) + "\n")
        msg.add_alternative("\n".join(page) + "\n", subtype="html")
        return msg

    def summary_message(self, alerts: Sequence[AlertLike], summary_id: str) -> EmailMessage:
        """The email summarising several alerts."""
        title = _summary_title(alerts)
        rows = [
            (
                _one_line(a.account),
                _plural(a.count, "transaction"),
                f"{a.score:.2f}",
                "; ".join(_one_line(r) for r in a.reasons),
                _alert_link(self.dashboard_url, a.alert_id),
            )
            for a in alerts
        ]
        text = [f"Fraud alerts: {title}.", ""]
        text += [f"- {acct}: {n}, score {s}: {why}" for acct, n, s, why, _ in rows]
        if self.dashboard_url:
            text += ["", f"Open the dashboard: {self.dashboard_url}/"]
        e = html.escape
        page = ["<!DOCTYPE html><html><body>", f"<h2>Fraud alerts: {e(title)}</h2>", "<ul>"]
        for acct, n, s, why, link in rows:
            name = f'<a href="{e(link, quote=True)}">{e(acct)}</a>' if link else e(acct)
            page.append(f"<li>{name}: {n}, score {s}: {e(why)}</li>")
        page += ["</ul>", "</body></html>"]

        msg = self._envelope(f"Fraud alerts: {title}", summary_id, _now_ms())
        msg.set_content("\n".join(text) + "\n")
        msg.add_alternative("\n".join(page) + "\n", subtype="html")
        return msg

    # delivery

    def _scrub(self, text: str) -> str:
        for secret in (self._password, self._raw_password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _deliver(self, msg: EmailMessage) -> None:
        where = f"{self.host}:{self.port}"
        try:
            context = ssl.create_default_context()
            smtp: smtplib.SMTP
            if self.implicit_tls:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if not self.implicit_tls and smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self._user:
                    smtp.login(self._user, self._password)
                smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
        except (smtplib.SMTPException, OSError) as exc:
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise SinkError(f"email via {where} failed: {type(exc).__name__}: {detail}") from None

    def send(self, alert: AlertLike) -> None:
        self._deliver(self.message(alert))

    def send_summary(self, alerts: Sequence[AlertLike], summary_id: str) -> None:
        self._deliver(self.summary_message(alerts, summary_id))


# --- the log ------------------------------------------------------------------------------


class LogSink:
    """One WARNING line per alert or summary; never fails."""

    name = "log"

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def send(self, alert: AlertLike) -> None:
        self.logger.warning(
            "fraud alert %s: account %s, %s, score %.2f: %s",
            alert.alert_id,
            _one_line(alert.account),
            _plural(alert.count, "transaction"),
            alert.score,
            "; ".join(_one_line(r) for r in alert.reasons) or "no reason given",
        )

    def send_summary(self, alerts: Sequence[AlertLike], summary_id: str) -> None:
        accounts = _by_account(alerts)
        listed = ", ".join(f"{_one_line(a)} ({n})" for a, n in accounts[:SUMMARY_MAX_LINES])
        if len(accounts) > SUMMARY_MAX_LINES:
            listed += f" and {len(accounts) - SUMMARY_MAX_LINES} more accounts"
        self.logger.warning(
            "fraud alert summary %s: %s: %s", summary_id, _summary_title(alerts), listed
        )


# --- from the settings ----------------------------------------------------------------------


def build_sinks(
    *,
    webhook_url: str | None,
    slack_webhook_url: str | None,
    smtp_url: str | None,
    email_from: str | None,
    email_to: str | Sequence[str] | None,
    dashboard_url: str | None,
    logger: logging.Logger,
) -> list[Sink]:
    """The log sink, then each configured one (webhook, Slack, email). Blank counts as unset.
    ValueError, naming the setting, for one that is invalid or incomplete."""
    sinks: list[Sink] = [LogSink(logger)]
    if webhook_url and webhook_url.strip():
        sinks.append(WebhookSink(webhook_url.strip()))
    if slack_webhook_url and slack_webhook_url.strip():
        sinks.append(SlackSink(slack_webhook_url.strip(), dashboard_url))
    if isinstance(email_to, str):
        recipients = [r.strip() for r in email_to.split(",") if r.strip()]
    else:
        recipients = [r.strip() for r in email_to or [] if r.strip()]
    if smtp_url and smtp_url.strip():
        missing = [
            name
            for name, value in (("ALERT_EMAIL_FROM", email_from), ("ALERT_EMAIL_TO", recipients))
            if not value or (isinstance(value, str) and not value.strip())
        ]
        if missing:
            verb = "are" if len(missing) > 1 else "is"
            raise ValueError(f"ALERT_SMTP_URL is set but {' and '.join(missing)} {verb} not")
        assert email_from is not None
        sinks.append(
            EmailSink(smtp_url.strip(), email_from, recipients, dashboard_url=dashboard_url)
        )
    elif recipients:
        raise ValueError("ALERT_EMAIL_TO is set but ALERT_SMTP_URL is not: email needs a server")
    return sinks

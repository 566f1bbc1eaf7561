"""`fraudstream alerts`: notify people of fraud (log, webhook, Slack, email)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from fraudstream.cli._common import Exit, StopOnSignal, command, load, settings_flags
from fraudstream.errors import ConfigError

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers

log = logging.getLogger("fraudstream")


def add_parser(sub: Subparsers) -> None:
    al = command(
        sub,
        "alerts",
        help="notify people of fraud (log, webhook, Slack, email), until Ctrl-C",
        handler=run,
        clean_stop=True,
        parents=[settings_flags(("fraud",))],
        description="Read the fraud topic and send one alert per account per "
        "ALERT_GROUP_WINDOW seconds to the log and every sink configured: ALERT_WEBHOOK_URL, "
        "ALERT_SLACK_WEBHOOK_URL, ALERT_SMTP_URL with ALERT_EMAIL_FROM and ALERT_EMAIL_TO. "
        "At least once, with a stable alert_id receivers de-duplicate on.",
        examples=[
            ("to the log only", "fraudstream alerts"),
            (
                "to a webhook too",
                "ALERT_WEBHOOK_URL=https://example.org/hook fraudstream alerts",
            ),
        ],
    )
    al.add_argument(
        "--group", dest="alerts_group", metavar="NAME", help="its consumer group (ALERTS_GROUP)"
    )


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    from fraudstream.alerts.service import AlertService
    from fraudstream.alerts.sinks import build_sinks
    from fraudstream.stream import ensure_topics
    from fraudstream.stream.clients import wait_for_broker
    from fraudstream.stream.metrics import serve as serve_metrics

    dashboard = settings.alert_dashboard_url or (
        f"http://{settings.dashboard_host}:{settings.dashboard_port}"
    )
    try:
        sinks = build_sinks(
            webhook_url=settings.alert_webhook_url,
            slack_webhook_url=_secret(settings.alert_slack_webhook_url),
            smtp_url=_secret(settings.alert_smtp_url),
            email_from=settings.alert_email_from,
            email_to=settings.alert_email_to,
            dashboard_url=dashboard.rstrip("/"),
            logger=logging.getLogger("fraudstream.alerts"),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    wait_for_broker(settings, settings.startup_timeout_ms / 1000)
    ensure_topics(settings)
    stop = StopOnSignal().install()
    service = AlertService(settings, sinks)
    serve_metrics(service.registry, settings)
    n = service.run(stop)
    waiting = service.left_open
    if waiting:  # else "0 alerts from 125 fraud records" reads as if nothing was alerted on
        log.info(
            "alerts: stopped after %d alerts from %d fraud records; %d account(s) had a group "
            "still open (ALERT_GROUP_WINDOW, %g s): not lost, the next run reads them again "
            "and sends them",
            n,
            service.records,
            waiting,
            settings.alert_group_window,
        )
    else:
        log.info("alerts: stopped after %d alerts from %d fraud records", n, service.records)
    return Exit.OK

"""Secrets never logged: "`KAFKA_<NAME>` … any librdkafka setting … (never logged)" (README).

Every command a user runs, and the detector and dashboard processes, run with
KAFKA_SASL_PASSWORD set; no line of any of their logs (stdout and stderr, with LOG_LEVEL=DEBUG)
holds the password, plain or URL-encoded; nor does the alerts process's, with the password
in its SMTP URL and in its webhooks' paths, while the email and webhook sinks fail and are
retried and the Slack sink delivers. (librdkafka's own `debug` output cannot be switched on
from the environment: KAFKA_DEBUG is one of Kafka's script variables, never passed on.) The
broker here speaks PLAINTEXT, which librdkafka accepts with SASL settings it then does not use
(it warns that they do not apply); the error paths run too: a SASL connection the broker
refuses, a misspelt secret variable, and an invalid setting beside the password.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx

from fraudstream.config import Settings
from tests.conftest import REPO, env_for, read_to_end, running_dashboard, spawn, wait_for
from tests.receivers import http_receiver

PASSWORD = "s3cr3t-p@ss"
FORMS = {PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD)}  # s3cr3t-p%40ss
SASL = {
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "fraud-user",
    "KAFKA_SASL_PASSWORD": PASSWORD,
    "LOG_LEVEL": "DEBUG",
}
TUTORIAL_RULES = str(REPO / "rules" / "tutorial.yaml")


def _run(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> int:
    with open(log, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "fraudstream", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            timeout=120,
        )
    return done.returncode


def test_the_sasl_password_is_in_no_log(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, RULES_FILE=TUTORIAL_RULES, **SASL)
    logs = tmp_path / "logs"
    logs.mkdir()
    codes: dict[str, int] = {}

    codes["topics"] = _run(["topics"], env, logs / "topics.log")
    codes["generate"] = _run(
        ["generate", "--count", "300", "--rate", "max", "--seed", "5"], env, logs / "generate.log"
    )
    detect = spawn(["detect"], env, logs / "detect.log")
    try:
        wait_for(
            lambda: (
                len(read_to_end(settings, settings.legit_topic))
                + len(read_to_end(settings, settings.fraud_topic))
                >= 300
            ),
            timeout=90,
            what="the detector to decide the 300 records",
        )
    finally:
        detect.send_signal(signal.SIGTERM)
        codes["detect"] = detect.wait(60)
    # alerts, with the password also in its SMTP URL (a server that refuses the connection,
    # so every delivery fails and is logged), in the path of a webhook that refuses it too,
    # and in the path of a Slack webhook that takes every alert (the HTTP client logged
    # each request's URL: a Slack URL in full, once per alert)
    smtp = f"smtp://alerts:{quote(PASSWORD, safe='')}@127.0.0.1:1"
    with http_receiver() as slack:
        alerts_env = env | {
            "ALERT_SMTP_URL": smtp,
            "ALERT_EMAIL_FROM": "fs@example.org",
            "ALERT_EMAIL_TO": "analyst@example.org",
            "ALERT_WEBHOOK_URL": f"http://127.0.0.1:1/hooks/{PASSWORD}",
            "ALERT_SLACK_WEBHOOK_URL": f"{slack.url}/services/{PASSWORD}",
            "ALERT_GROUP_WINDOW": "0",
        }
        alerts = spawn(["alerts"], alerts_env, logs / "alerts.log")
        try:
            wait_for(
                lambda: (
                    "alert sink email failed" in (logs / "alerts.log").read_text()
                    and "alert sink webhook failed" in (logs / "alerts.log").read_text()
                    and len(slack.posts) > 0
                ),
                timeout=60,
                what="the alerts process to try its sinks",
            )
        finally:
            alerts.send_signal(signal.SIGTERM)
            codes["alerts"] = alerts.wait(60)
    assert slack.posts[0].path == f"/services/{PASSWORD}"
    with running_dashboard(settings, logs / "dashboard.log", **SASL) as url:
        assert httpx.get(url + "/", timeout=10).status_code == 200
    # the password in a .env file rather than the environment
    dotenv = tmp_path / "dotenv"
    dotenv.mkdir()
    (dotenv / ".env").write_text(f"KAFKA_SASL_PASSWORD={PASSWORD}\n")
    without = {k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD"}
    # error paths: SASL the broker does not speak, a misspelt secret, a bad setting beside it
    sasl = env | {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    typo = {k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD"}
    typo["KAFKA_SASL_PASWORD"] = PASSWORD
    runs: dict[str, tuple[list[str], dict[str, str], str, Path]] = {
        "status": (["status"], env, "status.log", REPO),
        "status --json": (["status", "--json"], env, "status-json.log", REPO),
        "evaluate": (["evaluate"], env, "evaluate.log", REPO),
        "topics (.env)": (["topics"], without, "topics-dotenv.log", dotenv),
        "topics over SASL": (["topics"], sasl, "topics-sasl.log", REPO),
        "misspelt": (["topics"], typo, "misspelt.log", REPO),
        "bad setting": (["detect"], env | {"BATCH_SIZE": "0"}, "bad-setting.log", REPO),
    }
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # independent: at once
        futures = {
            name: pool.submit(_run, args, e, logs / log, cwd)
            for name, (args, e, log, cwd) in runs.items()
        }
        codes |= {name: f.result() for name, f in futures.items()}

    assert codes == {
        "topics": 0,
        "generate": 0,
        "detect": 0,
        "status": 0,
        "status --json": 0,
        "evaluate": 0,
        "alerts": 0,
        "topics (.env)": 0,
        "topics over SASL": 2,
        "misspelt": 2,
        "bad setting": 2,
    }, codes
    texts = {log.name: log.read_text(errors="replace") for log in sorted(logs.iterdir())}
    assert "stopped after 300" in texts["detect.log"]
    assert "KAFKA_SASL_PASWORD" in texts["misspelt.log"]
    assert "BATCH_SIZE" in texts["bad-setting.log"]
    for name, text in texts.items():
        for form in FORMS:
            assert form not in text, f"{name} holds the password ({form!r}):\n{text[-3000:]}"

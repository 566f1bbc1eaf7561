"""A user's mistakes, through the real command: a message that names the problem (and what to
do), a non-zero exit code, and never a traceback.

Each case runs `python -m fraudstream ...` as its own process. Almost all are refused before
any Kafka connection; the few that need a broker say which (a dead address, or the test one).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fraudstream.broker import LocalBroker
from fraudstream.config import Settings
from fraudstream.generator.app import write_files
from tests.conftest import REPO, env_for

DEAD = "127.0.0.1:1"  # nothing listens there: a client gets 'connection refused'
RULES = str(REPO / "rules" / "default.yaml")


@dataclass
class Files:
    dir: Path
    tx: str  # 120 valid transactions (too few to train on)
    labels: str
    junk: str  # JSON lines that are neither transactions nor labels
    bad_yaml: str
    bad_parquet: str
    empty_yaml: str

    @property
    def history(self) -> list[str]:
        return ["--input", self.tx, "--labels", self.labels]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("cli-errors")
    write_files(d / "tx.jsonl", d / "labels.jsonl", count=120, seed=1, profile="sim")
    (d / "junk.jsonl").write_text('{"hello": "world"}\n')
    (d / "bad.yaml").write_text("rules: [\n")
    (d / "bad.parquet").write_text("not parquet")
    (d / "empty.yaml").write_text("# nothing yet\n")
    return Files(
        d,
        str(d / "tx.jsonl"),
        str(d / "labels.jsonl"),
        str(d / "junk.jsonl"),
        str(d / "bad.yaml"),
        str(d / "bad.parquet"),
        str(d / "empty.yaml"),
    )


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def fraudstream(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Run:
    if env is None:  # none of the caller's KAFKA_* settings, and no broker to reach
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        env["KAFKA_BROKER_URL"] = DEAD
    proc = subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        env=env | (extra_env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_refused(run: Run, *expected: str, code: int | None = None) -> None:
    assert "Traceback" not in run.text, run.text
    assert run.code != 0, run.text
    if code is not None:
        assert run.code == code, run.text
    for text in expected:
        assert text in run.text, f"{text!r} not in:\n{run.text}"


@dataclass
class Case:
    args: list[str]
    expected: list[str]
    env: dict[str, str] = field(default_factory=dict)


def cases(f: Files) -> Iterator[tuple[str, Case]]:
    """(id, case): bad arguments refused before any connection to Kafka."""
    # generate
    yield (
        "rate-word",
        Case(
            ["generate", "--rate", "fast"],
            ["--rate: 'fast' is not a number; give tx/s like 500, or 'max'"],
        ),
    )
    yield "rate-negative", Case(["generate", "--rate", "-5"], ["--rate: '-5' is not above 0"])
    yield (
        "labels-output-alone",
        Case(
            ["generate", "--count", "5", "--labels-output", str(f.dir / "l.jsonl")],
            ["--labels-output goes with --output"],
        ),
    )
    yield "rate-run", Case(["run", "--rate", "nan"], ["--rate: 'nan' is not above 0"])
    yield (
        "fraud-rate",
        Case(
            ["generate", "--fraud-rate", "2"], ["--fraud-rate: '2' is not a share", "from 0 to 1"]
        ),
    )
    yield (
        "count-negative",
        Case(["generate", "--count", "-1"], ["--count: '-1' is not a count", "whole number"]),
    )
    yield "count-word", Case(["generate", "--count", "many"], ["--count: 'many' is not a count"])
    yield "partitions", Case(["generate", "--partitions", "0"], ["TOPIC_PARTITIONS", "got 0"])
    yield (
        "label-delay",
        Case(["generate", "--label-delay", "soon"], ["--label-delay: 'soon' is not a duration"]),
    )
    yield (
        "output-without-count",
        Case(["generate", "--output", str(f.dir / "o.jsonl")], ["--output needs --count"]),
    )
    yield (
        "output-unwritable",
        Case(
            ["generate", "--count", "3", "--output", "/proc/no/such/dir/o.jsonl"],
            ["cannot write /proc/no", "give another --output"],
        ),
    )
    # detect
    yield (
        "detect-rules-missing",
        Case(
            ["detect", "--rules", "missing.yaml"],
            ["rules file missing.yaml does not exist — pass --rules FILE (RULES_FILE)"],
        ),
    )
    yield "detect-rules-bad-yaml", Case(["detect", "--rules", f.bad_yaml], [f.bad_yaml])
    yield "detect-batch-size", Case(["detect", "--batch-size", "0"], ["BATCH_SIZE", "got 0"])
    # backtest
    yield (
        "since",
        Case(
            ["backtest", "--rules", RULES, *f.history, "--since", "notadate"],
            ["--since: 'notadate' is not a date; give YYYY-MM-DD"],
        ),
    )
    yield (
        "columns-pair",
        Case(
            ["backtest", "--rules", RULES, *f.history, "--columns", "id=tx_id,oops"],
            ["--columns: 'oops' is not field=column"],
        ),
    )
    yield (
        "columns-field",
        Case(
            ["backtest", "--rules", RULES, *f.history, "--columns", "nope=x"],
            ["--columns: 'nope' is not a transaction field", "source"],
        ),
    )
    yield (
        "backtest-rules-missing",
        Case(
            ["backtest", "--rules", "missing.yaml", *f.history],
            ["rules file missing.yaml does not exist"],
        ),
    )
    yield (
        "input-missing",
        Case(
            ["backtest", "--rules", RULES, "--input", "missing.jsonl", "--labels", f.labels],
            ["missing.jsonl: no such file"],
        ),
    )
    yield (
        "input-directory",
        Case(
            ["backtest", "--rules", RULES, "--input", str(f.dir), "--labels", f.labels],
            [f"cannot read {f.dir}: Is a directory"],
        ),
    )
    yield (
        "input-not-parquet",
        Case(
            ["backtest", "--rules", RULES, "--input", f.bad_parquet, "--labels", f.labels],
            ["is not a readable Parquet file"],
        ),
    )
    yield (
        "labels-missing",
        Case(
            ["backtest", "--rules", RULES, "--input", f.tx, "--labels", "missing.csv"],
            ["missing.csv: no such file"],
        ),
    )
    yield (
        "labels-not-labels",
        Case(
            ["backtest", "--rules", RULES, "--input", f.tx, "--labels", f.junk],
            [f"{f.junk}, line 1 is not a label", "is_fraud"],
        ),
    )
    # train
    for share in ("1.5", "-0.5", "0", "1", "lots"):
        yield (
            f"test-share-{share}",
            Case(["train", "--test-share", share], [f"--test-share: '{share}' is not"]),
        )
    yield "gap-days", Case(["train", "--gap-days", "-1"], ["--gap-days: '-1' is negative"])
    yield (
        "train-out-directory",
        Case(
            ["train", "--rules", RULES, *f.history, "--out", str(f.dir)],
            [f"--out: {f.dir} is a directory"],
        ),
    )
    yield (
        "train-nothing-valid",
        Case(
            ["train", "--rules", RULES, "--input", f.junk, "--labels", f.labels],
            ["skipped 1 invalid records", "no valid transactions to train on"],
        ),
    )
    yield (
        "train-too-little",
        Case(
            ["train", "--rules", RULES, *f.history, "--out", str(f.dir / "m.model")],
            ["the history runs from", "too short to fit on", "--delay-days"],
        ),
    )
    yield (
        "backtest-output-a-directory",
        Case(
            ["backtest", "--rules", RULES, *f.history, "--output", str(f.dir)],
            ["--output", "is a directory", "decisions.jsonl"],
        ),
    )
    yield (
        "train-target-out-of-range",
        Case(
            ["train", "--rules", RULES, *f.history, "--target-precision", "1.5"],
            ["--target-precision", "not between 0 and 1", "0.9"],
        ),
    )
    yield (
        "train-test-too-soon",
        Case(
            [
                "train",
                "--rules",
                RULES,
                *f.history,
                "--train-until",
                "2026-02-01",
                "--test-from",
                "2026-02-03",
            ],
            ["--test-from 2026-02-03 is less than 7 days", "--train-until 2026-02-01"],
        ),
    )
    yield (
        "train-share-and-until",
        Case(
            [
                "train",
                "--rules",
                RULES,
                *f.history,
                "--test-share",
                "0.3",
                "--train-until",
                "2026-02-01",
            ],
            ["--test-share or --train-until, not both"],
        ),
    )
    yield (
        "train-until-not-a-date",
        Case(
            ["train", "--rules", RULES, *f.history, "--train-until", "soon"],
            ["--train-until: 'soon' is not a date"],
        ),
    )
    yield (
        "train-folds",
        Case(
            ["train", "--rules", RULES, *f.history, "--folds", "0"],
            ["'0' is not a number of folds", "1 to 20"],
        ),
    )
    yield (
        "train-two-targets",
        Case(
            [
                "train",
                "--rules",
                RULES,
                *f.history,
                "--target-precision",
                "0.9",
                "--alert-rate",
                "0.01",
            ],
            ["--alert-rate", "not allowed with argument --target-precision"],
        ),
    )
    # evaluate
    yield (
        "decisions-missing",
        Case(
            ["evaluate", "--decisions", "missing.jsonl", "--labels", f.labels],
            ["missing.jsonl: no such file"],
        ),
    )
    yield (
        "decisions-not-json",
        Case(
            ["evaluate", "--decisions", f.bad_yaml, "--labels", f.labels],
            [f"{f.bad_yaml}, line 1 is not JSON"],
        ),
    )
    # rules check (exit 1: it reports problems, it does not fail)
    yield (
        "rules-check-missing",
        Case(["rules", "check", "missing.yaml"], ["missing.yaml: 1 problem", "No such file"]),
    )
    yield "rules-check-bad-yaml", Case(["rules", "check", f.bad_yaml], [f"{f.bad_yaml}: 1 problem"])
    yield (
        "rules-check-empty",
        Case(["rules", "check", f.empty_yaml], ["the file is empty: give at least version and"]),
    )
    # dashboard
    yield (
        "dashboard-host",
        Case(
            ["dashboard", "--host", "192.0.2.1"],  # TEST-NET: an address of no machine of ours
            ["cannot listen on 192.0.2.1:", "pass --host"],
        ),
    )
    # directories and addresses a detector cannot use
    under_a_file = str(Path(f.bad_yaml) / "state")
    yield (
        "state-dir-under-a-file",
        Case(
            ["detect", "--rules", RULES],
            [f"cannot use {under_a_file} (Not a directory): set STATE_DIR to a directory"],
            {"STATE_DIR": under_a_file},
        ),
    )
    yield (
        "lock-dir-unmakeable",
        Case(
            ["detect", "--rules", RULES],
            ["cannot use /proc/fraudstream-locks", "set LOCK_DIR to a directory"],
            {"LOCK_DIR": "/proc/fraudstream-locks"},
        ),
    )
    yield (
        "broker-port-out-of-range",
        Case(
            ["detect"],
            ["KAFKA_BROKER_URL", "'localhost:99999': Port out of range 0-65535"],
            {"KAFKA_BROKER_URL": "localhost:99999"},
        ),
    )
    # KAFKA_* variables
    yield (
        "kafka-typo",
        Case(
            ["topics"],
            ["KAFKA_BROKER_ULR", "did you mean KAFKA_BROKER_URL?"],
            {"KAFKA_BROKER_ULR": "localhost:9092"},
        ),
    )
    yield (
        "kafka-typo-other-command",
        Case(
            ["generate", "--count", "1", "--output", str(f.dir / "o.jsonl")],
            ["KAFKA_BROKER_ULR", "did you mean KAFKA_BROKER_URL?"],
            {"KAFKA_BROKER_ULR": "localhost:9092"},
        ),
    )
    yield (
        "kafka-unknown",
        Case(
            ["detect"],
            ["KAFKA_SECURITY_PROTOCL", "has no setting 'security.protocl'"],
            {"KAFKA_SECURITY_PROTOCL": "SASL_SSL"},
        ),
    )
    yield (
        "kafka-bad-value",
        Case(
            ["detect"],
            ["KAFKA_SECURITY_PROTOCOL", "refuses this value"],
            {"KAFKA_SECURITY_PROTOCOL": "plaintext-please"},
        ),
    )
    # what conflicts with the detector's transaction timeout (librdkafka names only its
    # properties, and only once the broker answers)
    yield (
        "message-timeout-past-the-transaction-timeout",
        Case(
            ["detect"],
            ["KAFKA_MESSAGE_TIMEOUT_MS", "at most 20,000 ms", "KAFKA_TRANSACTION_TIMEOUT_MS"],
            {"KAFKA_MESSAGE_TIMEOUT_MS": "30000"},
        ),
    )
    yield (
        "commit-interval-near-the-transaction-timeout",
        Case(
            ["detect"],
            ["COMMIT_INTERVAL_BACKLOG_MS", "at most 15,000 ms"],
            {"COMMIT_INTERVAL_BACKLOG_MS": "16000", "KAFKA_TRANSACTION_TIMEOUT_MS": "30000"},
        ),
    )


def test_every_bad_argument_is_refused_with_a_message_and_no_traceback(
    files: Files, tmp_path: Path
) -> None:
    failures = []
    todo = list(cases(files))
    # each case is its own short process: run as many at once as there are cores
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs = list(
            pool.map(lambda c: fraudstream(*c[1].args, cwd=tmp_path, extra_env=c[1].env), todo)
        )
    for (name, case), run in zip(todo, runs, strict=True):
        try:
            assert_refused(run, *case.expected)
        except AssertionError as exc:
            failures.append(f"[{name}] {' '.join(case.args)}\n{exc}")
    assert not failures, "\n\n".join(failures)


def test_argument_errors_exit_2_and_rules_check_problems_exit_1(
    files: Files, tmp_path: Path
) -> None:
    assert_refused(fraudstream("generate", "--rate", "fast", cwd=tmp_path), code=2)
    assert_refused(fraudstream("backtest", "--since", "x", cwd=tmp_path), code=2)
    assert_refused(fraudstream("rules", "check", "missing.yaml", cwd=tmp_path), code=1)


def test_a_busy_dashboard_port_is_named_before_any_url_is_announced(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = fraudstream("dashboard", "--port", str(port), cwd=tmp_path)
    assert_refused(run, f"port {port} is in use — stop what uses it or pass --port N", code=2)
    assert "dashboard on" not in run.text


def test_commands_that_need_a_broker_say_when_none_answers(files: Files, tmp_path: Path) -> None:
    """These connect first; with nothing listening they fail within seconds, saying so."""
    no_broker = "no Kafka broker answers at 127.0.0.1:1"
    with ThreadPoolExecutor(max_workers=2) as pool:  # both wait out the timeout: side by side
        dashboard = pool.submit(fraudstream, "dashboard", "--port", "0", cwd=tmp_path)
        evaluate = pool.submit(fraudstream, "evaluate", "--labels", files.labels, cwd=tmp_path)
        run = dashboard.result()
        assert_refused(evaluate.result(), no_broker)
    assert_refused(run, no_broker, code=2)
    assert "dashboard on" not in run.text


def test_a_broker_that_never_answers_a_group_request_is_named_in_bounded_time() -> None:
    """The detector's first group request (is this instance running elsewhere?) to a broker
    that takes the connection and never answers: within its start timeout it says which
    broker and what to do, not a TimeoutError traceback (CI, 2026-12-07: a fresh broker's
    group coordinator did not answer a request within the 30 s it was awaited)."""
    from fraudstream.config import load_settings
    from fraudstream.errors import FraudstreamError
    from fraudstream.stream.layout import group_members

    with socket.socket() as silent:  # the kernel completes each connection; nobody reads
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = load_settings(_env_file=None, kafka_broker_url=url, startup_timeout_ms=1000)
        started = time.monotonic()
        with pytest.raises(FraudstreamError, match=f"is the broker {url} healthy"):
            group_members(settings, "fraudstream-silent")
        assert time.monotonic() - started < 10


def test_a_topic_that_does_not_exist_is_named(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings)
    run = fraudstream(
        "backtest", "--rules", RULES, "--input", "no-such-topic", cwd=tmp_path, env=env
    )
    assert_refused(run, "no-such-topic is neither a file nor an existing topic", code=2)
    run = fraudstream("evaluate", "--decisions", "no-such-topic", cwd=tmp_path, env=env)
    assert_refused(run, "no-such-topic is neither a file nor an existing topic", code=2)


def test_reset_without_a_group_refuses_while_a_broker_answers_and_names_what_it_deletes(
    kafka: LocalBroker, tmp_path: Path
) -> None:
    """(Found by an operator's review: with the broker started on another --data-dir, reset
    saw no broker of its own, deleted the running detectors' snapshots, and said the next run
    starts on an empty broker.)"""
    state = tmp_path / "state"
    (state / "g").mkdir(parents=True)
    running = fraudstream(
        "reset", "--yes", cwd=tmp_path,
        extra_env={"KAFKA_BROKER_URL": kafka.bootstrap, "STATE_DIR": str(state)},
    )  # fmt: skip
    assert_refused(running, f"a broker is running at {kafka.bootstrap}; stop it first", code=2)
    assert (state / "g").exists()
    stopped = fraudstream(
        "reset", "--yes", cwd=tmp_path, extra_env={"STATE_DIR": str(state)}
    )  # (DEAD: nothing answers there)
    assert stopped.code == 0, stopped.text
    assert stopped.out.strip() == f"deleted {state}", stopped.text  # no broker data was there
    assert not state.exists()

from __future__ import annotations

from pathlib import Path

import pytest

from fraudstream.config import load_settings
from fraudstream.errors import ConfigError


def test_defaults_are_the_tutorials_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BROKER_URL", "TRANSACTIONS_TOPIC", "TRANSACTIONS_PER_SECOND"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(_env_file=None)
    assert s.kafka_broker_url == "localhost:9092"
    assert s.transactions_topic == "queueing.transactions"
    assert s.legit_topic == "streaming.transactions.legit"
    assert s.fraud_topic == "streaming.transactions.fraud"
    assert s.dlq_topic == "streaming.transactions.dlq"
    assert s.transactions_per_second == 1000
    assert s.topic_partitions == 6


def test_environment_then_env_file_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env_file = tmp_path / ".env"
    env_file.write_text("LEGIT_TOPIC=from.file\nFRAUD_TOPIC=from.file\n")
    monkeypatch.setenv("FRAUD_TOPIC", "from.env")
    s = load_settings(_env_file=env_file, dlq_topic="from.flag")
    assert (s.legit_topic, s.fraud_topic, s.dlq_topic) == ("from.file", "from.env", "from.flag")


def test_an_env_file_that_cannot_be_read_as_it_is_meant_is_refused(tmp_path: Path) -> None:
    """A .env saved as Latin-1 stopped every command with a traceback; a line that is not
    NAME=value was skipped (python-dotenv warned, six times), so its setting was ignored.
    The lines are named by number, not shown: one may hold a secret."""
    latin = tmp_path / "latin.env"
    latin.write_bytes("LEGIT_TOPIC=caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 15\)"):
        load_settings(_env_file=latin)
    typo = tmp_path / "typo.env"
    typo.write_text("LEGIT_TOPIC=ok\nKAFKA_SASL_PASSWORD hunter2\n# a comment\nexport X=1\n")
    with pytest.raises(ConfigError, match=r"line 2: not NAME=value") as refused:
        load_settings(_env_file=typo)
    assert "hunter2" not in str(refused.value)


def test_a_bad_setting_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSACTIONS_PER_SECOND", "fast")
    with pytest.raises(ConfigError, match="TRANSACTIONS_PER_SECOND"):
        load_settings(_env_file=None)
    monkeypatch.delenv("TRANSACTIONS_PER_SECOND")
    with pytest.raises(ConfigError, match="TOPIC_PARTITIONS"):
        load_settings(_env_file=None, topic_partitions=0)


def test_any_kafka_client_setting_passes_through_from_kafka_variables() -> None:
    from fraudstream.stream.clients import passthrough

    env = {
        "KAFKA_BROKER_URL": "b:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "OTHER": "x",
    }
    assert passthrough(env) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": "s3cret",
    }


def test_the_dashboard_token_is_a_secret_that_does_not_print(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHBOARD_TOKEN", "t0ken-value")
    s = load_settings(_env_file=None)
    assert s.dashboard_token is not None and s.dashboard_token.get_secret_value() == "t0ken-value"
    assert "t0ken-value" not in repr(s) and "t0ken-value" not in str(s)


def test_kafka_settings_in_the_env_file_pass_through_too(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from fraudstream.stream.clients import passthrough

    (tmp_path / ".env").write_text("KAFKA_SSL_CA_LOCATION=/etc/ca.pem\nKAFKA_ACKS=1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_ACKS", "all")  # the environment wins over the file
    got = passthrough()
    assert got["ssl.ca.location"] == "/etc/ca.pem" and got["acks"] == "all"


@pytest.fixture
def no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Only the KAFKA_* variables a test sets (none from the caller's shell)."""
    import os

    for name in list(os.environ):
        if name.startswith("KAFKA_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_a_typo_of_a_setting_in_a_kafka_variable_names_the_nearest_setting(
    no_kafka_env: pytest.MonkeyPatch,
) -> None:
    no_kafka_env.setenv("KAFKA_BROKER_ULR", "b:9092")
    with pytest.raises(ConfigError, match=r"KAFKA_BROKER_ULR: .*did you mean KAFKA_BROKER_URL\?"):
        load_settings(_env_file=None)
    no_kafka_env.delenv("KAFKA_BROKER_ULR")
    no_kafka_env.setenv("KAFKA_TRANSACTIONS_TOPIC", "t")  # a setting that has no KAFKA_ prefix
    with pytest.raises(ConfigError, match="did you mean TRANSACTIONS_TOPIC"):
        load_settings(_env_file=None)


def test_a_kafka_variable_librdkafka_does_not_know_is_named(
    no_kafka_env: pytest.MonkeyPatch,
) -> None:
    no_kafka_env.setenv("KAFKA_FETCH_SOMETHING", "1")  # not a client setting, not a typo of ours
    with pytest.raises(ConfigError, match=r"KAFKA_FETCH_SOMETHING: librdkafka has no setting"):
        load_settings(_env_file=None)


def test_kafka_s_own_script_variables_are_left_alone(no_kafka_env: pytest.MonkeyPatch) -> None:
    from fraudstream.stream.clients import passthrough

    for name in ("KAFKA_HOME", "KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS"):
        no_kafka_env.setenv(name, "-Xmx1G")
    load_settings(_env_file=None)  # no error
    assert passthrough({"KAFKA_HOME": "/opt/kafka", "KAFKA_HEAP_OPTS": "-Xmx1G"}) == {}


def test_producer_tuning_is_a_default_a_kafka_variable_overrides(
    no_kafka_env: pytest.MonkeyPatch,
) -> None:
    from fraudstream.stream.clients import producer_config

    s = load_settings(_env_file=None)
    detector = producer_config(s, "d", transactional_id="d")
    plain = producer_config(s, "g")
    # the detector's producer compresses (its repartition topics carry each input record twice)
    assert detector["compression.type"] == "lz4" and "compression.type" not in plain
    assert detector["linger.ms"] == plain["linger.ms"] == 5
    no_kafka_env.setenv("KAFKA_COMPRESSION_TYPE", "none")
    no_kafka_env.setenv("KAFKA_LINGER_MS", "50")
    no_kafka_env.setenv("KAFKA_ENABLE_IDEMPOTENCE", "false")  # the guarantees are not tuning
    detector = producer_config(s, "d", transactional_id="d")
    assert detector["compression.type"] == "none" and detector["linger.ms"] == "50"
    assert detector["enable.idempotence"] is True and detector["acks"] == "all"


def test_consumers_heartbeat_twice_a_second_unless_a_kafka_variable_says_otherwise(
    no_kafka_env: pytest.MonkeyPatch,
) -> None:
    """A rebalance is heard of at the next heartbeat: 500 ms, not librdkafka's 3 s; the
    prefetch bounds are defaults alike, and the read guarantees are not."""
    from fraudstream.stream.clients import base_config, consumer_config, producer_config

    s = load_settings(_env_file=None)
    c = consumer_config(s, "d", group_id="g")
    assert c["heartbeat.interval.ms"] == 500 and c["isolation.level"] == "read_committed"
    no_kafka_env.setenv("KAFKA_HEARTBEAT_INTERVAL_MS", "3000")
    no_kafka_env.setenv("KAFKA_ISOLATION_LEVEL", "read_uncommitted")
    c = consumer_config(s, "d", group_id="g")
    assert c["heartbeat.interval.ms"] == "3000" and c["isolation.level"] == "read_committed"
    # a group member's settings are not given to the other clients (librdkafka warns)
    assert "heartbeat.interval.ms" not in producer_config(s, "p", transactional_id="t")
    assert "heartbeat.interval.ms" not in base_config(s, "a")
    assert base_config(s, "c", consumer=True)["heartbeat.interval.ms"] == "3000"


def test_kafkas_new_group_protocol_takes_the_range_assignor_and_none_of_the_classic_settings(
    no_kafka_env: pytest.MonkeyPatch,
) -> None:
    """KAFKA_GROUP_PROTOCOL=consumer (KIP-848): the broker's `range` assignor unless
    KAFKA_GROUP_REMOTE_ASSIGNOR says otherwise, and none of what librdkafka refuses under that
    protocol; a classic-only variable set with it stops the start, naming it."""
    from fraudstream.stream.clients import consumer_config

    no_kafka_env.setenv("KAFKA_GROUP_PROTOCOL", "consumer")
    s = load_settings(_env_file=None)
    c = consumer_config(s, "d", group_id="g")
    assert c["group.remote.assignor"] == "range" and c["isolation.level"] == "read_committed"
    assert not {"heartbeat.interval.ms", "partition.assignment.strategy"} & c.keys()
    no_kafka_env.setenv("KAFKA_GROUP_REMOTE_ASSIGNOR", "uniform")
    assert consumer_config(s, "d", group_id="g")["group.remote.assignor"] == "uniform"
    no_kafka_env.setenv("KAFKA_SESSION_TIMEOUT_MS", "6000")
    with pytest.raises(ConfigError, match=r"^KAFKA_SESSION_TIMEOUT_MS: not used with "):
        consumer_config(s, "d", group_id="g")
    with pytest.raises(ConfigError, match="KAFKA_SESSION_TIMEOUT_MS: not used with "):
        load_settings(_env_file=None)
    no_kafka_env.delenv("KAFKA_SESSION_TIMEOUT_MS")
    no_kafka_env.setenv("KAFKA_GROUP_PROTOCOL_TYPE", "consumer")  # librdkafka refuses it too
    with pytest.raises(ConfigError, match="KAFKA_GROUP_PROTOCOL_TYPE: not used with "):
        load_settings(_env_file=None)


def test_a_refused_value_is_named_without_showing_it(no_kafka_env: pytest.MonkeyPatch) -> None:
    no_kafka_env.setenv("KAFKA_SECURITY_PROTOCOL", "s3cret-looking")
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL") as caught:
        load_settings(_env_file=None)
    assert "s3cret-looking" not in str(caught.value)


def test_librdkafka_settings_still_pass_through(no_kafka_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "KAFKA_BROKER_URL": "b:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "p",
        "KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",  # a consumer setting
        "KAFKA_ACKS": "all",  # a producer (topic-level) setting
        "KAFKA_UNUSED": "",  # empty: ignored, as passthrough ignores it
    }.items():
        no_kafka_env.setenv(name, value)
    assert load_settings(_env_file=None).kafka_broker_url == "b:9092"


def test_kafka_variables_in_the_env_file_are_checked_too(
    no_kafka_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("KAFKA_BROKR_URL=b:9092\n")
    no_kafka_env.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"KAFKA_BROKR_URL: .*did you mean KAFKA_BROKER_URL"):
        load_settings()
    load_settings(_env_file=None)  # no env file: nothing read from it


def test_every_flag_of_every_command_says_what_it_does() -> None:
    """`--help` explains each flag; a command lists only the topic flags it uses."""
    import argparse

    from fraudstream.cli import _parser

    def flags(parser: argparse.ArgumentParser, path: str) -> dict[str, list[argparse.Action]]:
        out = {path: [a for a in parser._actions if a.option_strings]}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out |= flags(sub, f"{path} {name}")
        return out

    commands = flags(_parser(), "fraudstream")
    silent = [
        f"{path} {a.option_strings[0]}"
        for path, actions in commands.items()
        for a in actions
        if not a.help and "-h" not in a.option_strings
    ]
    assert silent == []

    def opts(path: str) -> set[str]:
        return {o for a in commands[path] for o in a.option_strings}

    assert not {"--fraud-topic", "--dlq-topic"} & opts("fraudstream broker start")
    assert "--dlq-topic" not in opts("fraudstream dashboard")
    assert opts("fraudstream alerts") & {"--fraud-topic", "--legit-topic"} == {"--fraud-topic"}

"""The Docker Compose files parse (`docker compose config` needs no engine) and fit together."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from tests.conftest import REPO


def config(*files: str, profile: str | None = None) -> dict[str, Any]:
    docker = shutil.which("docker")
    assert docker, "the docker CLI is needed; `make setup-test` installs the compose plugin"
    args = [docker, "compose"] + (["--profile", profile] if profile else [])
    for f in files:
        args += ["-f", str(REPO / f)]
    out = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def test_kafka_composition_is_one_kraft_broker_on_the_external_network() -> None:
    c = config("docker-compose.kafka.yml")
    assert list(c["services"]) == ["broker"]
    broker = c["services"]["broker"]
    assert broker["image"].startswith("apache/kafka:4.")
    env = broker["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert c["networks"]["default"] == {"name": "kafka-network", "external": True, "ipam": {}}


def test_app_composition_runs_generator_detector_alerts_dashboard_from_one_dockerfile() -> None:
    c = config("docker-compose.yml")
    services = c["services"]
    assert sorted(services) == ["alerts", "dashboard", "detector", "generator"]
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "Dockerfile", name
        env = svc["environment"]
        assert env["KAFKA_BROKER_URL"] == "broker:29092"
        assert env["TRANSACTIONS_TOPIC"] == "queueing.transactions"
        assert env["LEGIT_TOPIC"] == "streaming.transactions.legit"
        assert env["FRAUD_TOPIC"] == "streaming.transactions.fraud"
    assert services["generator"]["environment"]["TRANSACTIONS_PER_SECOND"] == "1000"
    assert services["generator"]["command"] == ["generate", "--profile", "sim"]
    assert services["detector"]["command"] == ["detect"]
    assert services["alerts"]["command"] == ["alerts"]
    assert services["detector"]["environment"]["METRICS_PORT"] == "9100"
    assert services["alerts"]["environment"]["METRICS_PORT"] == "9101"
    # the detector's health is its readiness (a 503 fails urlopen)
    assert "http://127.0.0.1:9100/readyz" in " ".join(services["detector"]["healthcheck"]["test"])
    assert services["dashboard"]["ports"][0]["target"] == 5000
    assert c["networks"]["default"]["name"] == "kafka-network"
    assert c["networks"]["default"]["external"] is True


def test_the_monitoring_profile_adds_prometheus_scraping_both_and_grafana_provisioned() -> None:
    import yaml

    c = config("docker-compose.yml", profile="monitoring")
    services = c["services"]
    assert {"prometheus", "grafana"} <= set(services)
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert targets == {
        f"detector:{services['detector']['environment']['METRICS_PORT']}",
        f"alerts:{services['alerts']['environment']['METRICS_PORT']}",
    }
    mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")
    assert mounts["/var/lib/grafana/dashboards"].endswith("deploy/grafana/dashboards")

"""A model trained on one world and run on another says so: in its log, in `status` and in
its Prometheus metrics."""

from __future__ import annotations

import math
import signal
from pathlib import Path

from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics
from fraudstream.stream.health import format_status, read_status
from tests.conftest import env_for, free_port, model_rules, scrape, spawn, sum_of, wait_for

DRIFT = "the model runs on another world than its training days"


def test_a_model_run_on_another_world_warns_and_status_shows_it(
    settings: Settings, tmp_path: Path
) -> None:
    # trained where 2% of payments are fraud, its drift test over windows of 1,000 decisions;
    # then fed a stream where 30% are
    rules = model_rules(
        tmp_path, count=30_000, seed=5, fraud_rate=0.02, gap_days=1, drift_window=1000
    )
    ensure_topics(settings)
    sent = generate(
        settings, rate=math.inf, count=4000, seed=6, profile="sim", fraud_rate=0.3, progress=None
    )
    assert sent.sent == 4000
    log = tmp_path / "detect.log"
    port = free_port()
    env = env_for(settings, RULES_FILE=str(rules), STATUS_INTERVAL_MS="200", METRICS_PORT=str(port))
    proc = spawn(["detect"], env, log)
    try:
        wait_for(lambda: DRIFT in log.read_text(), timeout=90, what="the drift warning")
        line = next(x for x in log.read_text().splitlines() if DRIFT in x)
        assert " WARNING " in line and "alert rate" in line and "fraudstream train" in line

        def status_says_it() -> bool:
            assert proc.poll() is None, log.read_text()
            return "MODEL DRIFT: alert rate" in format_status(read_status(settings))

        wait_for(status_says_it, timeout=30, what="`fraudstream status` to show the drift")

        def metrics() -> dict[str, float]:
            return scrape(f"http://127.0.0.1:{port}/metrics")

        wait_for(lambda: sum_of(metrics(), "fraudstream_records_total") == 4000, 60, "4000")
        m = metrics()
        drift = [v for k, v in m.items() if k.startswith("fraudstream_model_drift{")]
        assert drift == [1.0], m
        assert m['fraudstream_records_total{outcome="fraud"}'] > 0
        fired = {k: v for k, v in m.items() if k.startswith("fraudstream_rule_hits_total{")}
        assert fired and sum(fired.values()) > 0, m
        assert m["fraudstream_commit_seconds_count"] >= 1
        assert m["fraudstream_batch_seconds_count"] >= 1
        assert m["fraudstream_stalled"] == 0.0 and m["fraudstream_state_bytes"] > 0
        lags = {k: v for k, v in m.items() if k.startswith("fraudstream_consumer_lag{")}
        assert lags and all(v >= 0 for v in lags.values())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()

"""The Grafana dashboard shipped in deploy/ queries only metrics the code exposes."""

from __future__ import annotations

import json
import logging
import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.alerts.service import AlertService
from fraudstream.alerts.sinks import LogSink
from fraudstream.config import load_settings
from fraudstream.stream.collector import ProcessorStats
from fraudstream.stream.metrics import RuntimeMetrics
from tests.conftest import REPO


def _exposed() -> set[str]:
    detector = RuntimeMetrics()
    stats = ProcessorStats()  # labelled families show only their labels seen
    stats.dead_letters["schema"] = 1
    stats.rule_hits["burst_1h"] = 1
    detector.attach(lambda: stats)
    detector.health.buffered = {("by-target", 0): 3}
    detector.health.lag = {("tx", 0): 5}
    detector.health.dead_letters = {"not_json": 1}
    detector.health.skipped_offsets = {("tx", 0): 7}
    alerts = AlertService(load_settings(_env_file=None), [LogSink(logging.getLogger("t"))])
    names = set()
    for registry in (detector.registry, alerts.registry):
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            names |= {s.name for s in family.samples}
    return names


def test_every_metric_the_grafana_dashboard_queries_is_exposed() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/fraudstream.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"fraudstream_[a-z_]+", target["expr"])
    }
    exposed = _exposed()
    assert len(queried) >= 15
    assert queried <= exposed, sorted(queried - exposed)


def test_the_detectors_totals_are_its_committed_counts() -> None:
    stats = ProcessorStats(legit=7, fraud=2, dead_letter=3, commits=4, gap_numbers=6)
    stats.late_numbers = 1
    stats.dead_letters.update({"not_json": 2, "not_utf8": 1})
    stats.rule_hits.update({"burst_1h": 5})
    metrics = RuntimeMetrics()
    metrics.attach(lambda: stats)
    text = generate_latest(metrics.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fraudstream_records_total", (("outcome", "fraud"),))] == 2
    assert samples[("fraudstream_records_total", (("outcome", "dead_letter"),))] == 3
    assert samples[("fraudstream_dead_letters_total", (("error_class", "not_json"),))] == 2
    assert samples[("fraudstream_dead_letters_total", (("error_class", "not_utf8"),))] == 1
    assert samples[("fraudstream_commits_total", ())] == 4
    assert samples[("fraudstream_rule_hits_total", (("rule", "burst_1h"),))] == 5
    assert samples[("fraudstream_output_gap_numbers_total", ())] == 6
    assert samples[("fraudstream_output_late_numbers_total", ())] == 1

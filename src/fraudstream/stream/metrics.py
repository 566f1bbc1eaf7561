"""Prometheus metrics of a detector (`METRICS_PORT`), read when Prometheus scrapes.

Nothing is counted per record for them: the counters are the processor's own committed
totals, the gauges the health snapshot its loop takes once a second (tasks, lag, state size,
stall, drift), and two histograms are observed once per batch and once per commit.

    metrics = RuntimeMetrics()
    processor = Processor(settings, engine, metrics=metrics)
    serve(metrics.registry, settings)   # http://METRICS_HOST:METRICS_PORT/metrics
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fraudstream.config import Settings
from fraudstream.errors import ConfigError

__all__ = ["Health", "RuntimeMetrics", "serve"]

log = logging.getLogger(__name__)


@dataclass
class Health:
    """What the processor's health loop saw last (written by its thread, read by scrapes)."""

    buffered: dict[tuple[str, int], int] = field(default_factory=dict)  # (stage, partition)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition)
    state_bytes: int = 0
    last_commit_age_s: float = 0.0
    stalled: bool = False
    drift: str = ""
    dead_letters: dict[str, int] = field(default_factory=dict)  # label records skipped, by class


class RuntimeMetrics:
    """A registry of its own per processor: two histograms, plus the collector of the
    processor's totals once `attach` is called."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram(
            "fraudstream_batch_seconds",
            "Time to process one polled batch (decode, decide, forward), seconds",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "fraudstream_commit_seconds",
            "Time to commit one Kafka transaction (outputs, changelogs, offsets), seconds",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.health = Health()

    def attach(self, stats: Callable[[], Any]) -> None:
        """Expose the totals `stats()` returns (a `ProcessorStats`) and the health."""
        self.registry.register(_Totals(stats, lambda: self.health))


class _Totals(Collector):
    def __init__(self, stats: Callable[[], Any], health: Callable[[], Health]) -> None:
        self._stats = stats
        self._health = health

    def collect(self) -> Iterator[Metric]:
        s, h = self._stats(), self._health()
        records = CounterMetricFamily(
            "fraudstream_records", "Records decided and committed, by outcome", labels=["outcome"]
        )
        for outcome in ("legit", "fraud", "dead_letter"):
            records.add_metric([outcome], getattr(s, outcome))
        yield records
        dead = CounterMetricFamily(
            "fraudstream_dead_letters",
            "Input records dead-lettered and committed, by class",
            labels=["error_class"],
        )
        for kind, n in sorted(s.dead_letters.items()):
            dead.add_metric([kind], n)
        yield dead
        rules = CounterMetricFamily(
            "fraudstream_rule_hits",
            "Decided and committed records each rule fired on (also the skew and block notes)",
            labels=["rule"],
        )
        for rule, n in sorted(s.rule_hits.items()):
            rules.add_metric([rule], n)
        yield rules
        yield CounterMetricFamily("fraudstream_commits", "Transactions committed", value=s.commits)
        yield CounterMetricFamily(
            "fraudstream_aborts", "Transactions aborted and redone", value=s.aborts
        )
        yield CounterMetricFamily(
            "fraudstream_producers_renewed",
            "Producers replaced after a commit that kept timing out",
            value=s.renewed,
        )
        skipped = CounterMetricFamily(
            "fraudstream_labels_skipped",
            "Label records dead-lettered, by class",
            labels=["error_class"],
        )
        for kind, n in sorted(h.dead_letters.items()):
            skipped.add_metric([kind], n)
        yield skipped
        buffered = GaugeMetricFamily(
            "fraudstream_buffered_records",
            "Records a keyed stage holds until upstream marks let them out",
            labels=["stage", "partition"],
        )
        for (stage, p), n in sorted(h.buffered.items()):
            buffered.add_metric([stage, str(p)], n)
        yield buffered
        lag = GaugeMetricFamily(
            "fraudstream_consumer_lag",
            "Records not read yet, per topic partition this process reads (cached watermarks)",
            labels=["topic", "partition"],
        )
        for (topic, p), n in sorted(h.lag.items()):
            lag.add_metric([topic, str(p)], n)
        yield lag
        yield GaugeMetricFamily(
            "fraudstream_state_bytes", "Detection state held in memory", value=h.state_bytes
        )
        yield GaugeMetricFamily(
            "fraudstream_last_commit_age_seconds",
            "Seconds since the last commit",
            value=h.last_commit_age_s,
        )
        yield GaugeMetricFamily(
            "fraudstream_stalled",
            "1 when input is pending and nothing was committed for STALL_WARNING_MS",
            value=1.0 if h.stalled else 0.0,
        )
        drift = GaugeMetricFamily(
            "fraudstream_model_drift",
            "1 when the model's last window of decisions left its training days' range",
            labels=["reason"],
        )
        drift.add_metric([h.drift], 1.0 if h.drift else 0.0)
        yield drift


def serve(registry: CollectorRegistry, settings: Settings) -> None:
    """Serve `/metrics` on METRICS_HOST:METRICS_PORT in a daemon thread (no-op when unset)."""
    if settings.metrics_port is None:
        return
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT {settings.metrics_port} on {settings.metrics_host}: {exc.strerror} — "
            "stop what uses it or give another port"
        ) from None
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

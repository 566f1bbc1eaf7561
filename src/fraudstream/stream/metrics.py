"""Prometheus metrics of a detector (`METRICS_PORT`), read when Prometheus scrapes.

Nothing is counted per record for them: the counters are the processor's own committed
totals, the gauges the health snapshot its loop takes once a second (tasks, lag, state size,
stall, drift), and two histograms are observed once per batch and once per commit.

    metrics = RuntimeMetrics()
    processor = Processor(settings, engine, metrics=metrics)
    serve(metrics.registry, settings)   # http://METRICS_HOST:METRICS_PORT/metrics
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
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
    # (topic, partition): input offsets resumed past that its state never read (replaced,
    # not changed in place, by the processing thread: `Processor._skipped`)
    skipped_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # `/readyz`: partitions held and restored, nothing stalled; else why not
    ready: bool = False
    why: str = "starting"


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
        outcomes = {outcome: getattr(s, outcome) for outcome in ("legit", "fraud", "dead_letter")}
        yield labelled(
            CounterMetricFamily,
            "fraudstream_records",
            "Records decided and committed, by outcome",
            ["outcome"],
            outcomes,
            order=False,
        )
        yield labelled(
            CounterMetricFamily,
            "fraudstream_dead_letters",
            "Input records dead-lettered and committed, by class",
            ["error_class"],
            s.dead_letters,
        )
        yield labelled(
            CounterMetricFamily,
            "fraudstream_rule_hits",
            "Decided and committed records each rule fired on (also the skew and block notes)",
            ["rule"],
            s.rule_hits,
        )
        yield CounterMetricFamily("fraudstream_commits", "Transactions committed", value=s.commits)
        yield CounterMetricFamily(
            "fraudstream_aborts", "Transactions aborted and redone", value=s.aborts
        )
        yield CounterMetricFamily(
            "fraudstream_producers_renewed",
            "Producers replaced after a commit that kept timing out",
            value=s.renewed,
        )
        yield CounterMetricFamily(
            "fraudstream_output_gap_numbers",
            "Numbered records (a payment or a bundle of them) the output stage wrote on "
            "without after OUTPUT_GAP_TIMEOUT_MS, committed: records a broker lost after "
            "their commit (docs/delivery.md); any rise calls for a look",
            value=s.gap_numbers,
        )
        yield CounterMetricFamily(
            "fraudstream_output_late_numbers",
            "Of those, the ones that came after all and were written then, out of order",
            value=s.late_numbers,
        )
        yield labelled(
            CounterMetricFamily,
            "fraudstream_labels_skipped",
            "Label records dead-lettered, by class",
            ["error_class"],
            h.dead_letters,
        )
        yield labelled(
            CounterMetricFamily,
            "fraudstream_input_offsets_skipped",
            "Input offsets a partition resumed past that its state never read, found at its "
            "first records since this process started (the group's offsets moved forward, "
            "the topic's retention, or a commit the broker lost: docs/delivery.md)",
            ["topic", "partition"],
            h.skipped_offsets,
        )
        yield labelled(
            GaugeMetricFamily,
            "fraudstream_buffered_records",
            "Records a keyed stage holds until upstream marks let them out",
            ["stage", "partition"],
            h.buffered,
        )
        yield labelled(
            GaugeMetricFamily,
            "fraudstream_consumer_lag",
            "Records not read yet, per topic partition this process reads (cached watermarks)",
            ["topic", "partition"],
            h.lag,
        )
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


def labelled(
    family: Callable[..., Any],
    name: str,
    documentation: str,
    labels: list[str],
    values: Mapping[Any, float],
    *,
    order: bool = True,
) -> Any:
    """A metric family with one sample per key of `values` (a key: one label value, or a
    tuple of them), sorted by key unless `order` is False."""
    metric = family(name, documentation, labels=labels)
    for key, value in sorted(values.items()) if order else values.items():
        metric.add_metric([str(k) for k in (key if isinstance(key, tuple) else (key,))], value)
    return metric


class _Quiet(WSGIRequestHandler):
    """No line per request on stderr (a scrape every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(
    registry: CollectorRegistry,
    settings: Settings,
    ready: Callable[[], tuple[bool, str]] | None = None,
) -> None:
    """Serve `/metrics` on METRICS_HOST:METRICS_PORT in a daemon thread (no-op when unset),
    and, given `ready` (whether the process is ready, and why not), `/readyz`: 200 when it
    is, else 503, with `{"ready": …, "why": …}` either way (an orchestrator's readiness
    probe; the body says what it waits for)."""
    if settings.metrics_port is None:
        return
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if ready is None or environ.get("PATH_INFO") != "/readyz":
            return metrics_app(environ, start_response)
        ok, why = ready()
        body = json.dumps({"ready": ok, "why": why}).encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    class Server(ThreadingWSGIServer):
        pass

    try:
        host, port = settings.metrics_host, settings.metrics_port
        Server.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        httpd = make_server(host, port, app, Server, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT {settings.metrics_port} on {settings.metrics_host}: {exc.strerror} — "
            "stop what uses it or give another port"
        ) from None
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

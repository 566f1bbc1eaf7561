"""The dashboard under load: decisions written at a paced rate (default 50,000 a second) to
the legit and fraud topics while a headless Chromium shows the page.

Measured, per run: the rate the producer held; the dashboard process's CPU share; what one
page received (payloads a second, their size, rows); how far its counters trailed the
topics; and the browser's responsiveness: the longest gap of a 50 ms timer, the long tasks
(over 50 ms, PerformanceObserver) and how long a click on "pause" took to show.

    .venv/bin/python benchmarks/dashboard_load.py --rate 50000 --seconds 30

Needs `make setup-test` (Chromium). A broker of its own unless BENCH_KAFKA_BROKER_URL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
from benchkit import REPO, ProcessTree, env_for, kafka
from confluent_kafka import Producer
from playwright.sync_api import sync_playwright

from fraudstream.broker import free_port
from fraudstream.config import load_settings
from fraudstream.generator import Pacer
from fraudstream.stream import ensure_topics

PROBE = """() => {
  window.__probe = {maxGap: 0, longTasks: 0, longest: 0};
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    window.__probe.maxGap = Math.max(window.__probe.maxGap, now - last - 50);
    last = now;
  }, 50);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      window.__probe.longTasks++;
      window.__probe.longest = Math.max(window.__probe.longest, e.duration);
    }
  }).observe({entryTypes: ["longtask"]});
}"""

# from a task queued now to the frame that shows the click: how long a user waits
CLICK = """async () => {
  const button = document.getElementById("pause");
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 0));
  button.click();
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const took = performance.now() - t0;
  if (document.getElementById("status").textContent !== "paused") throw new Error("not paused");
  button.click();
  return took;
}"""


def produce(
    url: str, topics: tuple[str, str], rate: float, seconds: float, out: dict[str, Any]
) -> None:
    """Decided records at `rate` for `seconds` (1 in 250 fraud, as `make run` decides)."""
    producer = Producer({"bootstrap.servers": url, "linger.ms": 20, "enable.idempotence": True})
    legit, fraud = topics
    pacer = Pacer(rate=rate, start=time.monotonic())
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        due = min(pacer.due(time.monotonic()), total)
        while sent < due:
            is_fraud = sent % 250 == 0
            value = msgspec.json.encode(
                {
                    "id": f"load-{sent}",
                    "timestamp": int(time.time() * 1000),
                    "source": f"acct-{sent % 20_000}",
                    "target": f"shop-{sent % 400}",
                    "amount": 12.5,
                    "currency": "EUR",
                    "decision": {
                        "outcome": "fraud" if is_fraud else "legit",
                        "score": 0.95 if is_fraud else 0.01,
                        "reasons": [{"rule": "burst_1h", "reason": "7 payments in 1 h"}]
                        if is_fraud
                        else [],
                        "rules_version": "bench",
                    },
                }
            )
            try:
                producer.produce(fraud if is_fraud else legit, value)
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        if sent < total:
            time.sleep(max(0.0, min(0.005, pacer.time_of(sent + 1) - time.monotonic())))
    producer.flush(60)
    out["sent"] = sent
    out["elapsed"] = time.monotonic() - pacer.start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50_000, help="decisions a second")
    parser.add_argument("--seconds", type=float, default=30, help="how long to write them")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        print("needs Debian's chromium: make setup-test", file=sys.stderr)
        return 2
    with kafka() as url:
        run = uuid.uuid4().hex[:8]
        settings = load_settings(
            kafka_broker_url=url,
            legit_topic=f"load-{run}.legit",
            fraud_topic=f"load-{run}.fraud",
            labels_topic=f"load-{run}.labels",
            transactions_topic=f"load-{run}.in",
            dlq_topic=f"load-{run}.dlq",
            detector_group=f"load-{run}",
            topic_partitions=6,
        )
        ensure_topics(settings)
        port = free_port()
        log = Path(f"/tmp/dashboard-load-{run}.log")
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "fraudstream"), "dashboard"],
            env=env_for(settings, DASHBOARD_PORT=str(port)),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        tree = ProcessTree(proc.pid)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).json()["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"the dashboard did not start: {log}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        payloads: list[tuple[float, int, int]] = []  # (time, bytes, rows)
        stop = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", base + "/stream", timeout=None) as response:
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("data:"):
                        body = json.loads(line[5:])
                        payloads.append((time.monotonic(), len(line), len(body["items"])))

        threading.Thread(target=listen, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.evaluate(PROBE)
            t0 = time.monotonic()
            tree.sample()
            cpu0 = tree.cpu_s
            result: dict[str, Any] = {}
            writer = threading.Thread(
                target=produce,
                args=(
                    url,
                    (settings.legit_topic, settings.fraud_topic),
                    args.rate,
                    args.seconds,
                    result,
                ),
            )
            writer.start()
            clicks = []
            while writer.is_alive():
                time.sleep(2)
                tree.sample()
                clicks.append(page.evaluate(CLICK))
            writer.join()
            behind = 0.0
            end = time.monotonic()
            while httpx.get(base + "/healthz", timeout=5).json()["total"] < result["sent"]:
                time.sleep(0.1)
                behind = time.monotonic() - end
                if behind > 120:
                    break
            tree.sample()
            cpu = tree.cpu_s - cpu0
            wall = time.monotonic() - t0
            probe = page.evaluate("() => window.__probe")
            shown = page.locator("#decisions tr").count()
            browser.close()
        stop.set()
        tree.stop(proc)
        during = [p for p in payloads if t0 <= p[0] <= end]
        span = (during[-1][0] - during[0][0]) if len(during) > 1 else 1.0
        print(
            f"input: {result['sent']:,} decisions in {result['elapsed']:.1f} s "
            f"= {result['sent'] / result['elapsed']:,.0f}/s (target {args.rate:,.0f}/s)"
        )
        print(
            f"dashboard process: {cpu:.1f} CPU s in {wall:.1f} s"
            f" = {100 * cpu / wall:.0f}% of a core"
        )
        print(f"counters caught up {behind:.1f} s after the last write")
        print(
            f"one page's stream: {len(during) / span:.1f} payloads/s, "
            f"mean {sum(p[1] for p in during) / max(len(during), 1) / 1000:.1f} kB, "
            f"max {max((p[1] for p in during), default=0) / 1000:.1f} kB, "
            f"max {max((p[2] for p in during), default=0)} rows"
        )
        print(
            f"browser: longest 50 ms timer gap {probe['maxGap']:.0f} ms; "
            f"{probe['longTasks']} long tasks, longest {probe['longest']:.0f} ms; "
            f"a click on pause painted in {min(clicks):.0f}-{max(clicks):.0f} ms "
            f"({len(clicks)} clicks); {shown} rows on the page"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

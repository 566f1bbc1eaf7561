"""The dashboard's SSE stream, fed by one shared consumer, against the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec

from fraudstream.config import Settings
from tests.conftest import decided_records, produce_raw, run_detector, wait_for


def decided_batch(settings: Settings, prefix: str, n: int) -> list[str]:
    """Write `n` transactions, alternate legit and fraud, and run the detector over them."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    produce_raw(
        settings,
        [
            (
                b"k",
                msgspec.json.encode(
                    {
                        "id": tid,
                        "timestamp": 1_790_000_000_000,
                        "source": "a",
                        "target": "b",
                        "amount": 950 if i % 2 else 10,
                        "currency": "EUR",
                    }
                ),
            )
            for i, tid in enumerate(ids)
        ],
    )
    return ids


async def read_events(response: httpx.Response, want: set[str]) -> list[dict[str, Any]]:
    """Collect SSE `decisions` items until every id in `want` has arrived."""
    seen: list[dict[str, Any]] = []
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "decisions":
            payload = json.loads(line.split(":", 1)[1])
            seen.extend(payload["items"])
            if want <= {item["record"]["id"] for item in seen}:
                return seen
    raise AssertionError("stream ended early")


def test_sse_delivers_decisions_with_outcome_reasons_and_counters(
    settings: Settings, dashboard: str
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("GET", dashboard + "/stream") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            ids = decided_batch(settings, "sse", 10)
            run_detector(settings, 10)
            return await asyncio.wait_for(read_events(response, set(ids)), 60)

    items = asyncio.run(scenario())
    by_id = {i["record"]["id"]: i for i in items if i["record"]["id"].startswith("sse-")}
    assert len(by_id) == 10
    for n in range(10):
        item = by_id[f"sse-{n}"]
        assert item["outcome"] == ("fraud" if n % 2 else "legit")
        assert item["record"]["amount"] == (950 if n % 2 else 10)  # the record as written
        if n % 2:
            assert item["record"]["decision"]["reasons"][0]["rule"] == "amount_ge_900"
    health = httpx.get(dashboard + "/healthz").json()
    assert (health["legit"], health["fraud"], health["total"]) == (5, 5, 10)

    def input_lag() -> int | None:  # its group's health, as `fraudstream status` reads it
        detector = httpx.get(dashboard + "/healthz").json()["detector"]
        stages = {s["stage"]: s for s in detector.get("stages", [])}
        return stages["input"]["lag"] if "input" in stages else None

    # read every 5 s: first the 10 records waiting (maybe), then none once they are committed
    wait_for(lambda: input_lag() == 0, timeout=30, what="the dashboard to show no input lag")
    detector = httpx.get(dashboard + "/healthz").json()["detector"]
    assert detector["known"] and not detector["stalled"], detector


def test_page_is_served_with_a_content_security_policy(dashboard: str) -> None:
    page = httpx.get(dashboard + "/")
    assert page.status_code == 200
    assert "Fraud Detector" in page.text and 'id="decisions"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(dashboard + "/static/app.js").status_code == 200
    icon = httpx.get(dashboard + "/favicon.ico", follow_redirects=True)  # was a 404
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_two_hundred_concurrent_sse_clients_all_receive_new_decisions(
    settings: Settings, dashboard: str
) -> None:
    clients = 200

    async def one(client: httpx.AsyncClient, connected: asyncio.Queue[None], want: set[str]) -> int:
        async with client.stream("GET", dashboard + "/stream") as response:
            assert response.status_code == 200
            await connected.put(None)
            items = await read_events(response, want)
            return len(items)

    async def scenario() -> list[int]:
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(timeout=90, limits=limits) as client:
            connected: asyncio.Queue[None] = asyncio.Queue()
            want = {f"many-{i}" for i in range(20)}
            tasks = [asyncio.create_task(one(client, connected, want)) for _ in range(clients)]
            for _ in range(clients):
                await asyncio.wait_for(connected.get(), 60)
            assert httpx.get(dashboard + "/healthz").json()["clients"] == clients
            decided_batch(settings, "many", 20)
            await asyncio.to_thread(run_detector, settings, 20)
            return await asyncio.wait_for(asyncio.gather(*tasks), 90)

    counts = asyncio.run(scenario())
    assert len(counts) == clients and all(c >= 20 for c in counts)


def test_a_dashboard_token_is_required_when_set(settings: Settings, tmp_path: Path) -> None:
    from fraudstream.broker import free_port
    from tests.conftest import env_for, spawn, wait_for

    port = free_port()
    proc = spawn(
        ["dashboard"],
        env_for(settings, DASHBOARD_PORT=str(port), DASHBOARD_TOKEN="let me in"),
        tmp_path / "d.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what="the dashboard")
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/stream", timeout=5).status_code == 401
        assert httpx.get(url + "/?token=let%20me%20in").status_code == 200
        assert (
            httpx.get(url + "/", headers={"Authorization": "Bearer let me in"}).status_code == 200
        )
        assert "let me in" not in (tmp_path / "d.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_a_review_is_a_label_on_the_labels_topic_and_reaches_every_page(
    settings: Settings, dashboard: str
) -> None:
    """An analyst confirms a decision: the label (with the reviewer, known from the stream's
    present, never before the transaction) is on the labels topic, the detector reads it as a
    complete verdict, and the SSE stream tells every page who reviewed what."""
    from fraudstream.schema import decode_label
    from tests.conftest import read_all, read_to_end

    decided_batch(settings, "rv", 2)  # rv-1 is fraud (950 EUR)
    run_detector(settings, 2)
    body = {
        "id": "rv-1",
        "verdict": "fraud",
        "analyst": " Ana ",
        "timestamp": 1_790_000_000_000,
        "target": "b",
        "merchant": None,
    }
    answer = httpx.post(dashboard + "/review", json=body, timeout=20)
    assert answer.status_code == 200, answer.text
    [record] = read_all(settings, settings.labels_topic, expect=1)
    assert record.key() == b"rv-1"
    label = decode_label(record.value())
    assert (label.id, label.is_fraud, label.reviewer, label.target) == ("rv-1", True, "Ana", "b")
    assert label.known_ms is not None and label.known_ms > 1_790_000_000_000
    assert label.published_ms == label.known_ms

    async def reviews_seen() -> list[dict[str, Any]]:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", dashboard + "/stream") as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    payload = json.loads(line.split(":", 1)[1])
                    if payload["reviews"]:
                        return list(payload["reviews"])
        raise AssertionError("stream ended early")

    reviews = asyncio.run(asyncio.wait_for(reviews_seen(), 30))
    assert reviews == [
        {"id": "rv-1", "verdict": "fraud", "reviewer": "Ana", "known_ms": label.known_ms}
    ]
    # what is wrong is said, and nothing is written
    for bad, says in [
        ({"id": "rv-1", "verdict": "maybe", "analyst": "Ana"}, "verdict must be"),
        ({"id": "rv-1", "verdict": "legit", "analyst": ""}, "your name is required"),
        ({"verdict": "legit", "analyst": "Ana"}, "id:"),
        # accepted before: a label the detector dead-letters, a time past the year 2100, and
        # a time that was silently dropped
        ({"id": "rv-1", "verdict": "fraud", "analyst": "Ana"}, "a fraud verdict needs"),
        ({"id": "rv-1", "verdict": "legit", "analyst": "Ana", "timestamp": 10**20}, "<="),
        ({"id": "rv-1", "verdict": "legit", "analyst": "Ana", "timestamp": "abc"}, "RFC"),
    ]:
        refused = httpx.post(dashboard + "/review", json=bad, timeout=10)
        assert refused.status_code == 400 and says in refused.json()["error"], refused.text
    assert httpx.post(dashboard + "/review", content=b"nope", timeout=10).status_code == 400
    assert len(read_to_end(settings, settings.labels_topic)) == 1  # refused before writing


def test_counters_are_the_topics_totals_not_the_history_a_page_replays(
    settings: Settings, tmp_path: Path
) -> None:
    """Decisions written before the dashboard starts are all counted (they were counted
    from the replayed rows before: 30% "fraud" after a restart)."""
    from tests.conftest import running_dashboard

    fraud = decided_records(settings, 3_000, fraud_every=3, prefix="old")
    with running_dashboard(settings, tmp_path / "d.log", DASHBOARD_HISTORY="5") as url:

        def counted() -> bool:
            return bool(httpx.get(url + "/healthz").json()["caught_up"])

        wait_for(counted, timeout=60, what="the dashboard to count the topics")
        health = httpx.get(url + "/healthz").json()
        assert (health["fraud"], health["total"]) == (fraud, 3_000)

        async def first() -> dict[str, Any]:
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream("GET", url + "/stream") as response,
            ):
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        return dict(json.loads(line.split(":", 1)[1]))
            raise AssertionError("stream ended early")

        snapshot = asyncio.run(asyncio.wait_for(first(), 30))
        assert snapshot["stats"]["total"] == 3_000
        assert len(snapshot["items"]) == 5  # the page's history is bounded, the totals are not
        assert sum(n for _, _, n in snapshot["series"]) == fraud  # charted by decision second
        assert snapshot["top_rules"] == [["burst_1h", fraud]]
        assert snapshot["alerts"], "the fraud makes alerts"


def test_a_page_receives_only_the_rows_of_its_view(settings: Settings, dashboard: str) -> None:
    async def items_of(query: str, want: int) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", dashboard + "/stream" + query) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.extend(json.loads(line.split(":", 1)[1])["items"])
                    if len(seen) >= want:
                        return seen
        raise AssertionError("stream ended early")

    decided_records(settings, 90, fraud_every=3, prefix="view")  # 30 fraud, accounts acct-0..89

    def ids(query: str, want: int) -> set[str]:
        items = asyncio.run(asyncio.wait_for(items_of(query, want), 30))
        return {i["record"]["id"] for i in items}

    assert ids("?outcome=fraud", 30) == {f"view-{i}" for i in range(0, 90, 3)}
    assert ids("?outcome=legit&account=acct-4", 1) == {"view-4"}
    assert ids("?account=shop-1", 3) == {"view-1", "view-41", "view-81"}
    assert ids("?rule=burst_1h&account=acct-3", 1) == {"view-3"}
    refused = httpx.get(dashboard + "/stream?outcome=maybe", timeout=10)
    assert refused.status_code == 400 and "outcome must be" in refused.json()["error"]


def test_at_a_high_input_rate_a_page_receives_a_bounded_stream(
    settings: Settings, dashboard: str
) -> None:
    """Records arrive far above 50,000 a second: each page still gets one payload a tick,
    with at most ROWS_PER_TICK rows (fraud first), and the counters keep up."""
    import time

    from fraudstream.dashboard.board import ROWS_PER_TICK
    from fraudstream.dashboard.feed import TICK_S

    n = 200_000

    async def watch() -> tuple[list[dict[str, Any]], list[int], float]:
        payloads: list[dict[str, Any]] = []
        sizes: list[int] = []
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("GET", dashboard + "/stream") as response,
        ):
            producing = asyncio.create_task(
                asyncio.to_thread(decided_records, settings, n, fraud_every=50, prefix="hi")
            )
            started = time.monotonic()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    sizes.append(len(line))
                    payloads.append(json.loads(line.split(":", 1)[1]))
                    if payloads[-1]["stats"]["total"] >= n:
                        break
            elapsed = time.monotonic() - started
            await producing
        return payloads, sizes, elapsed

    payloads, sizes, elapsed = asyncio.run(asyncio.wait_for(watch(), 120))
    assert payloads[-1]["stats"]["total"] == n
    assert payloads[-1]["stats"]["fraud"] == n // 50
    live = payloads[1:]  # after the snapshot
    assert len(live) <= elapsed / TICK_S + 2, f"{len(live)} payloads in {elapsed:.1f}s"
    assert max(len(p["items"]) for p in live) <= ROWS_PER_TICK
    assert max(sizes) < 200_000, f"a payload of {max(sizes)} bytes"
    busy = [p for p in live if p["stats"]["decided"] > ROWS_PER_TICK]
    assert busy, "no tick had more decisions than it could show: the test did not load it"
    for p in busy:  # sampled, fraud first: every payload of a busy tick shows its fraud
        shown_fraud = sum(i["outcome"] == "fraud" for i in p["items"])
        assert shown_fraud == min(ROWS_PER_TICK, p["stats"]["decided_fraud"])

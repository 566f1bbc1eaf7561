"""Headless Chromium against the running dashboard: live rows, colours, and no XSS."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fraudstream.config import Settings
from tests.conftest import REPO, produce_raw, run_detector, running_dashboard

XSS = "<img src=x onerror=alert(1)>"
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by `make setup-test`"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.mark.browser
def test_page_shows_red_and_green_rows_live_and_fields_as_text(
    browser: Browser, settings: Settings, dashboard: str
) -> None:
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    failed: list[str] = []  # any request the page makes that fails (the favicon was a 404)
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(dashboard + "/")
    expect(page.locator("#status")).to_have_text("live")

    records = [
        {"id": "ok-1", "source": "alice", "target": "shop", "amount": 12.5},
        {"id": "bad-1", "source": XSS, "target": "mule", "amount": 950.0},
        {"id": "ok-2", "source": "bob", "target": "shop", "amount": 99.99},
    ]
    produce_raw(
        settings,
        [
            (b"k", msgspec.json.encode(r | {"currency": "EUR", "timestamp": 1_790_000_000_000}))
            for r in records
        ],
    )
    run_detector(settings, 3)

    rows = page.locator("#decisions tr")
    expect(rows).to_have_count(3, timeout=30_000)
    expect(page.locator("#decisions tr.fraud")).to_have_count(1)
    expect(page.locator("#decisions tr.legit")).to_have_count(2)
    fraud = page.locator("#decisions tr.fraud")
    expect(fraud.locator("td").nth(4)).to_have_text(XSS)  # the markup shows as text
    expect(fraud.locator("td.reasons")).to_contain_text("amount 950.0 >= 900")
    assert page.locator("#decisions img").count() == 0
    red = fraud.evaluate("el => getComputedStyle(el).color")
    green = page.locator("#decisions tr.legit").first.evaluate("el => getComputedStyle(el).color")
    assert red == "rgb(192, 24, 24)" and green == "rgb(10, 122, 47)"
    expect(page.locator("#count-fraud")).to_have_text("1")
    expect(page.locator("#count-total")).to_have_text("3")
    # newest first (within a topic partition, where Kafka orders records): ok-2 above ok-1
    expect(page.locator("#decisions tr.legit td.id")).to_have_text(["ok-2", "ok-1"])
    assert dialogs == []
    assert failed == []
    page.close()


@pytest.mark.browser
def test_an_analyst_confirms_a_fraud_from_the_page_and_every_page_shows_who(
    browser: Browser, settings: Settings, dashboard: str
) -> None:
    from tests.conftest import read_all

    produce_raw(
        settings,
        [
            (
                b"k",
                msgspec.json.encode(
                    {
                        "id": "rv-fraud",
                        "source": "carol",
                        "target": "mule",
                        "amount": 990.0,
                        "currency": "EUR",
                        "timestamp": 1_790_000_000_000,
                    }
                ),
            )
        ],
    )
    run_detector(settings, 1)
    page = browser.new_page()
    page.goto(dashboard + "/")
    fraud = page.locator("#decisions tr.fraud")
    expect(fraud).to_have_count(1, timeout=30_000)
    page.locator("#analyst").fill(XSS)  # a name is data too
    page.locator("#analyst").dispatch_event("change")
    fraud.locator("button.confirm").click()
    expect(fraud.locator("td.review")).to_have_text("confirmed by " + XSS, timeout=30_000)
    assert page.locator("img").count() == 0
    [record] = read_all(settings, settings.labels_topic, expect=1)
    label = msgspec.json.decode(record.value())
    assert (label["id"], label["is_fraud"], label["reviewer"]) == ("rv-fraud", True, XSS)
    # a detector with label features (the shipped rules) consumes the verdict
    from confluent_kafka import Consumer, TopicPartition

    from fraudstream.detection import Engine, load_ruleset
    from fraudstream.stream import consumer_config

    learner = settings.model_copy(update={"detector_group": settings.detector_group + "-f"})
    engine = Engine.from_ruleset(load_ruleset(REPO / "rules" / "default.yaml"), features=True)
    run_detector(learner, 1, engine=engine)
    reader = Consumer(consumer_config(learner, "test", group_id=learner.detector_group))
    try:
        [committed] = reader.committed(
            [TopicPartition(settings.labels_topic, record.partition())], 30
        )
    finally:
        reader.close()
    assert committed.offset > record.offset(), "the detector did not consume the verdict"
    other = browser.new_page()  # a page opened later is told too
    other.goto(dashboard + "/")
    expect(other.locator("#decisions tr.fraud td.review")).to_have_text(
        "confirmed by " + XSS, timeout=30_000
    )
    other.close()
    page.close()


SCREENSHOTS = os.environ.get("FRAUDSTREAM_SCREENSHOTS")  # `make screenshots`: docs/images


def coloured_pixels(page: Page, chart: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of a series' colour on a chart's canvas: the line is drawn, not just axes."""
    return int(
        page.locator(chart).evaluate(
            """(el, rgb) => {
              const c = el.querySelector("canvas");
              const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 100 && Math.abs(d[i] - rgb[0]) < 40 &&
                    Math.abs(d[i + 1] - rgb[1]) < 40 && Math.abs(d[i + 2] - rgb[2]) < 40) n++;
              }
              return n;
            }""",
            list(rgb),
        )
    )


@pytest.mark.browser
def test_a_simulated_run_shows_charts_rankings_alerts_and_the_detectors_health(
    browser: Browser, settings: Settings, tmp_path: Path
) -> None:
    """The simulator's transactions decided by the shipped rules: the page draws both charts,
    ranks rules and accounts, queues alerts newest first, and shows the detector's health.
    Its screenshot is the README's (`make screenshots`)."""
    import threading

    from fraudstream.detection import Engine, load_ruleset
    from fraudstream.generator import generate

    n = 8_000  # at 1,000 a second, decided as they come: eight seconds of the charts
    producer = threading.Thread(
        target=generate,
        args=(settings,),
        kwargs={
            "rate": 1_000,
            "count": n,
            "seed": 3,
            "profile": "sim",
            "fraud_rate": 0.03,
            "progress": None,
        },
    )
    producer.start()
    engine = Engine.from_ruleset(load_ruleset(REPO / "rules" / "default.yaml"))
    run_detector(settings, n, engine=engine)
    producer.join()
    with running_dashboard(settings, tmp_path / "d.log") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#count-total")).to_have_text(f"{n:,}", timeout=30_000)
        expect(page.locator("#counting")).to_have_text("")
        assert coloured_pixels(page, "#chart-throughput", (43, 108, 176)) > 20  # decisions/s
        assert coloured_pixels(page, "#chart-fraud-rate", (192, 24, 24)) > 20
        expect(page.locator("#top-rules li").first).not_to_have_text("none yet")
        expect(page.locator("#top-accounts li").first).not_to_have_text("none yet")
        alerts = page.locator("#alerts tr.alert")
        expect(alerts.first).to_be_visible()
        firsts = alerts.locator("td.time").all_inner_texts()
        assert firsts == sorted(firsts, reverse=True)  # newest first, with the date
        assert all(DATE_TIME.fullmatch(t) for t in firsts), firsts
        times = page.locator("#decisions td.time").all_inner_texts()
        assert times and all(DATE_TIME.fullmatch(t) for t in times), times[:3]
        expect(page.locator("#health")).to_contain_text("detector", timeout=30_000)
        expect(page.locator("#health-stages tr").first).to_contain_text("input")
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard.png"))
        page.locator("#decisions tr.fraud").first.click()
        expect(page.locator("#detail")).to_be_visible()
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "decision.png"))
        page.close()


@pytest.mark.browser
def test_filters_pause_and_a_click_that_shows_the_whole_decision(
    browser: Browser, settings: Settings, dashboard: str
) -> None:
    records = [
        {"id": "f-ok-1", "source": "alice", "target": "shop", "amount": 12.5},
        {"id": "f-bad-1", "source": XSS, "target": "mule", "amount": 950.0, "merchant": XSS},
        {"id": "f-ok-2", "source": "bob", "target": "mule", "amount": 99.99},
        {"id": "f-bad-2", "source": "bob", "target": "shop", "amount": 990.0},
    ]
    produce_raw(
        settings,
        [
            (b"k", msgspec.json.encode(r | {"currency": "EUR", "timestamp": 1_790_000_000_000}))
            for r in records
        ],
    )
    run_detector(settings, len(records))
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(dashboard + "/")
    rows = page.locator("#decisions tr")
    expect(rows).to_have_count(4, timeout=30_000)

    page.locator("#filter-outcome").select_option("fraud")
    expect(rows).to_have_count(2)
    expect(page.locator("#decisions tr.legit")).to_have_count(0)
    page.locator("#filter-outcome").select_option("")
    page.locator("#filter-account").fill("bob")
    page.locator("#filter-account").dispatch_event("change")
    ids = page.locator("#decisions td.id")
    # legit and fraud are two topics: the page orders rows as it reads them, newest first
    # within each topic's partition, so across them only the set is fixed
    expect(ids).to_have_count(2)
    assert sorted(ids.all_inner_texts()) == ["f-bad-2", "f-ok-2"]
    page.locator("#filter-account").fill("mule")  # payer or payee
    page.locator("#filter-account").dispatch_event("change")
    expect(ids).to_have_count(2)  # the table starts over with each view
    assert sorted(ids.all_inner_texts()) == ["f-bad-1", "f-ok-2"]
    page.locator("#filter-clear").click()
    page.locator("#filter-rule").select_option("amount_ge_900")
    expect(ids).to_have_text(["f-bad-2", "f-bad-1"])  # one topic partition: newest first
    page.locator("#filter-clear").click()
    expect(rows).to_have_count(4)

    # a click shows the whole decision: score, each rule's reason, every field, as text
    page.locator("#decisions tr", has_text="f-bad-1").click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("transaction f-bad-1")
    expect(detail.locator("table.kv tr", has_text="score")).to_contain_text("1")
    expect(detail.locator("table.reasons")).to_contain_text("amount_ge_900")
    expect(detail.locator("table.reasons")).to_contain_text("amount 950.0 >= 900")
    expect(detail.locator("table.fields tr", has_text="merchant").locator("td")).to_have_text(XSS)
    expect(detail.locator("table.fields tr", has_text="source").locator("td")).to_have_text(XSS)
    page.locator("#detail-close").click()
    expect(detail).to_be_hidden()
    # the alert queue and the rankings show the same text as text
    expect(page.locator("#alerts tr.alert", has_text=XSS)).to_have_count(1)
    expect(page.locator("#top-accounts li button", has_text=XSS)).to_have_count(1)

    # paused, new decisions wait; resumed, they show
    page.locator("#pause").click()
    expect(page.locator("#status")).to_have_text("paused")
    produce_raw(
        settings,
        [(b"k", msgspec.json.encode(records[0] | {"id": "f-late", "currency": "EUR"}))],
    )
    run_detector(settings, 1)
    expect(page.locator("#paused-note")).to_have_text("1 new while paused", timeout=30_000)
    expect(rows).to_have_count(4)
    page.locator("#pause").click()
    expect(rows).to_have_count(5)
    expect(page.locator("#decisions td.id").first).to_have_text("f-late")
    assert page.locator("img").count() == 0 and dialogs == []
    page.close()


@pytest.mark.browser
def test_an_alert_link_opens_that_alert(
    browser: Browser, settings: Settings, tmp_path: Path
) -> None:
    """Slack and email link to `/#alert/<alert_id>`: the page opens that alert."""
    produce_raw(
        settings,
        [
            (
                b"k",
                msgspec.json.encode(
                    {
                        "id": f"al-{i}",
                        "source": "dave",
                        "target": "mule",
                        "amount": 950.0 + i,
                        "currency": "EUR",
                        "timestamp": 1_790_000_000_000 + i,
                    }
                ),
            )
            for i in range(3)
        ],
    )
    run_detector(settings, 3)
    # a short window: the group closes within a second, as the alerts service closes it
    with running_dashboard(settings, tmp_path / "d.log", ALERT_GROUP_WINDOW="0.5") as url:
        page = browser.new_page()
        page.goto(url + "/")
        sent = page.locator("#alerts tr.alert:not(.open)")
        expect(sent).to_have_count(1, timeout=30_000)
        alert_id = sent.get_attribute("data-alert-id")
        assert alert_id and len(alert_id) == 24
        page.close()
        linked = browser.new_page()
        linked.goto(f"{url}/#alert/{alert_id}")
        expect(linked.locator("#detail-title")).to_have_text("alert on dave", timeout=30_000)
        expect(linked.locator("#detail")).to_contain_text(alert_id)
        expect(linked.locator("#detail table.alert-transactions tr")).to_have_count(3)
        linked.goto(f"{url}/#alert/{'0' * 24}")
        linked.reload()
        expect(linked.locator("#detail")).to_contain_text("not among the latest", timeout=30_000)
        linked.close()


@pytest.mark.browser
def test_a_full_table_lets_the_oldest_legit_rows_go_before_a_fraud_one(
    browser: Browser, settings: Settings, tmp_path: Path
) -> None:
    """The table keeps DASHBOARD_HISTORY rows: past that, the oldest legit rows go first and
    fraud rows stay, up to half of the table, as the server chooses rows (fraud first). Rows come in the order the
    topics are read, so while a page counts the history the small fraud topic is read long
    before the last legit rows, which pushed every fraud row out of the table."""
    with running_dashboard(settings, tmp_path / "d.log", DASHBOARD_HISTORY="5") as url:
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#status")).to_have_text("live")
        tx = {
            "source": "alice",
            "target": "shop",
            "currency": "EUR",
            "timestamp": 1_790_000_000_000,
        }

        def decide(prefix: str, amount: float, n: int) -> None:
            """n payments of `amount` decided; their last one is on the page."""
            records = [tx | {"id": f"{prefix}{i}", "amount": amount} for i in range(n)]
            produce_raw(settings, [(b"k", msgspec.json.encode(r)) for r in records])
            run_detector(settings, n)
            last = page.locator("#decisions td.id", has_text=f"{prefix}{n - 1}")
            expect(last).to_have_count(1, timeout=30_000)

        decide("big", 950.0, 1)
        expect(page.locator("#decisions tr.fraud")).to_have_count(1)
        decide("s", 12.5, 8)
        expect(page.locator("#decisions tr")).to_have_count(5)
        expect(page.locator("#decisions tr.fraud")).to_have_count(1)
        # fraud rows keep at most half of it: the newest legit rows still come
        decide("b", 990.0, 4)
        decide("t", 9.5, 8)
        expect(page.locator("#decisions tr.fraud")).to_have_count(3)
        expect(page.locator("#decisions tr.legit")).to_have_count(2)
        page.close()

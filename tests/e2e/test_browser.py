"""Headless Chromium against the running dashboard: live rows, colours, and no XSS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import msgspec
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from fraudstream.config import Settings
from tests.conftest import produce_raw, run_detector

XSS = "<img src=x onerror=alert(1)>"
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
    expect(fraud.locator("td").nth(3)).to_have_text(XSS)  # the markup shows as text
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
    other = browser.new_page()  # a page opened later is told too
    other.goto(dashboard + "/")
    expect(other.locator("#decisions tr.fraud td.review")).to_have_text(
        "confirmed by " + XSS, timeout=30_000
    )
    other.close()
    page.close()

"""DASHBOARD_TOKEN: "when set, `/` and `/stream` require it (`?token=` or `Authorization:
Bearer`)" (README). A wrong token is refused like none; the right one opens the live stream."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

import httpx

from fraudstream.config import Settings
from tests.conftest import running_dashboard

TOKEN = "t0k en+/=&x"  # a space and URL-special characters: the query must be decoded


def _first_event(client: httpx.Client, url: str, **kwargs: object) -> tuple[int, str, str]:
    """(status, content type, the first SSE event's name) of a GET on `url`."""
    with client.stream("GET", url, **kwargs) as response:  # type: ignore[arg-type]
        if response.status_code != 200:
            return response.status_code, response.headers.get("content-type", ""), ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                return 200, response.headers["content-type"], line.split(":", 1)[1].strip()
    raise AssertionError(f"{url}: the stream ended without an event")


def test_a_wrong_token_is_refused_and_the_right_one_opens_the_stream(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "dashboard.log"
    with running_dashboard(settings, log, DASHBOARD_TOKEN=TOKEN) as url:
        right = quote(TOKEN, safe="")
        wrong_queries = [
            "",
            "?token=",
            "?token=wrong",
            "?token=" + quote(TOKEN[:-1], safe=""),  # a prefix
            "?token=" + quote(TOKEN + "x", safe=""),  # one character more
            "?token=" + quote(TOKEN.upper(), safe=""),
            "?token=" + TOKEN,  # not URL-encoded: '+' is a space, '&x' another parameter
            "?tok=" + right,
        ]
        wrong_headers = [
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer " + TOKEN[:-1]},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic " + TOKEN},
            {"Authorization": TOKEN},
            {"X-Token": TOKEN},
        ]
        with httpx.Client(timeout=10) as client:
            for path in ("/", "/stream"):
                for query in wrong_queries:
                    got = client.get(url + path + query).status_code
                    assert got == 401, f"{path}{query}: {got}, not 401"
                for headers in wrong_headers:
                    got = client.get(url + path, headers=headers).status_code
                    assert got == 401, f"{path} with {headers}: {got}, not 401"
            # the right token, either way, opens the page and the stream
            assert client.get(f"{url}/?token={right}").status_code == 200
            for scheme in ("Bearer ", "bearer ", "BEARER "):  # (a scheme's case is free)
                got = client.get(url + "/", headers={"Authorization": scheme + TOKEN})
                assert got.status_code == 200, scheme
            for path, kwargs in (
                ("/stream?token=" + right, {}),
                ("/stream", {"headers": {"Authorization": "Bearer " + TOKEN}}),
            ):
                status, kind, event = _first_event(client, url + path, **kwargs)
                assert status == 200, f"{path} with the right token {kwargs}: {status}"
                assert kind.startswith("text/event-stream"), kind
                assert event == "decisions"
            # a review (it writes a label) needs it too; with it, it is checked as usual
            review = {"id": "x", "verdict": "fraud", "analyst": "Ana"}
            for query in wrong_queries:
                got = client.post(url + "/review" + query, json=review).status_code
                assert got == 401, f"/review{query}: {got}, not 401"
            for headers in wrong_headers:
                got = client.post(url + "/review", json=review, headers=headers).status_code
                assert got == 401, f"/review with {headers}: {got}, not 401"
            incomplete = client.post(f"{url}/review?token={right}", json={"id": "x"})
            assert incomplete.status_code == 400, incomplete.text
            # counters need no token (they say nothing about any transaction)
            assert client.get(url + "/healthz").status_code == 200
    text = log.read_text()
    assert TOKEN not in text and right not in text, "the token was logged"


def test_a_form_encoded_token_with_a_space_is_accepted(settings: Settings, tmp_path: Path) -> None:
    with running_dashboard(settings, tmp_path / "d.log", DASHBOARD_TOKEN="let me in") as url:
        query = urlencode({"token": "let me in"})  # token=let+me+in
        assert httpx.get(f"{url}/?{query}", timeout=10).status_code == 200


def test_a_token_with_a_plus_pasted_as_it_is_is_accepted(
    settings: Settings, tmp_path: Path
) -> None:
    """A token with '+' (base64's) pasted into the address unencoded: form decoding makes the
    '+' a space, and the page passes the token on re-encoded that way (`URLSearchParams`);
    both are taken as the token. A space where the token has none is still refused."""
    token = "ab+cd/ef=="
    with (
        running_dashboard(settings, tmp_path / "d.log", DASHBOARD_TOKEN=token) as url,
        httpx.Client(timeout=10) as client,
    ):
        for query in ("ab+cd/ef==", quote(token, safe=""), "ab+cd%2Fef%3D%3D"):
            got = client.get(f"{url}/?token={query}").status_code
            assert got == 200, f"?token={query}: {got}"
        status, _, event = _first_event(client, f"{url}/stream?token=ab+cd%2Fef%3D%3D")
        assert (status, event) == (200, "decisions")
        for query in ("ab%20cd/ef==", "ab+cd/ef=", "ab++cd/ef=="):
            got = client.get(f"{url}/?token={query}").status_code
            assert got == 401, f"?token={query}: {got}, not 401"

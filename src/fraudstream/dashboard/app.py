"""`fraudstream dashboard`: the live page (`/`), its Server-Sent Events stream (`/stream`, one
payload per tick: see `feed`), `/healthz` (the counters), `/review` (an analyst's verdict).

Starlette over asyncio: each browser is a coroutine waiting on its queue, not a thread, so
hundreds of open streams cost little; the Kafka consumer is one per process (see `feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
import uvicorn
from confluent_kafka import Producer
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudstream.config import Settings
from fraudstream.dashboard.board import View
from fraudstream.dashboard.feed import Feed
from fraudstream.errors import ConfigError, FraudstreamError, PortInUseError
from fraudstream.schema import EpochMs, event_time_ms
from fraudstream.stream.clients import producer_config

__all__ = ["create_app", "listen", "serve"]

_HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds a Content-Security-Policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequireToken:
    """When DASHBOARD_TOKEN is set, `/`, `/stream` and `/review` need `?token=…` or a Bearer
    header."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ("/", "/stream", "/review"):
            given = literal = b""
            for name, value in scope.get("headers", []):
                # (the scheme is case-insensitive, RFC 9110: "bearer" is "Bearer")
                if name == b"authorization" and value[:7].lower() == b"bearer ":
                    given = literal = value[7:].strip()
            for part in scope.get("query_string", b"").split(b"&"):
                if part.startswith(b"token="):
                    # a query string is form-encoded: '+' is a space there; but a token
                    # pasted into the address as it is (base64's '+') keeps its '+'
                    given = unquote_to_bytes(part[6:].replace(b"+", b" "))
                    literal = unquote_to_bytes(part[6:])
            if not (
                hmac.compare_digest(given, self.token) | hmac.compare_digest(literal, self.token)
            ):
                response = PlainTextResponse(
                    "a token is required: open the page as /?token=<DASHBOARD_TOKEN>", 401
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings, feed: Feed | None = None) -> Starlette:
    feed = feed or Feed(settings)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "index.html", {"history": settings.dashboard_history}
        )

    async def stream(request: Request) -> Response:
        """`?outcome=fraud|legit&rule=ID&account=ACCOUNT`: the rows of that view only."""
        try:
            view = View.parse(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        queue, first = feed.subscribe(view)

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"event": "decisions", "data": first}
                while True:
                    yield {"event": "decisions", "data": await queue.get()}
            finally:
                feed.unsubscribe(queue)

        return EventSourceResponse(events(), ping=10, send_timeout=30)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {"ready": feed.ready.is_set(), **feed.stats_dict(), "detector": feed.health()}
        )

    reviews = Reviews(settings)

    async def review(request: Request) -> Response:
        """An analyst confirms or clears a decision: a label on the labels topic."""
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        try:
            label = reviews.label(body, stream_ms=feed.stream_ms, now_ms=_now_ms())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        try:
            await run_in_threadpool(reviews.send, label)
        except FraudstreamError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        return JSONResponse({"label": label})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            feed.stop()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/stream", stream),
            Route("/healthz", health),
            Route("/review", review, methods=["POST"]),
            # browsers ask for /favicon.ico whatever the page links to
            Route("/favicon.ico", lambda r: RedirectResponse("/static/favicon.svg", 301)),
            Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)]
        + (
            [Middleware(RequireToken, token=settings.dashboard_token.get_secret_value())]
            if settings.dashboard_token is not None
            else []
        ),
        lifespan=lifespan,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tx_ms(ts: Any) -> int:
    """A review's transaction time as epoch ms (0: not given), from what a transaction's
    `timestamp` may be: epoch milliseconds or RFC 3339 text with a time zone."""
    if ts is None:
        return 0
    try:
        when = msgspec.convert(ts, EpochMs | datetime)
    except msgspec.ValidationError as exc:
        raise ValueError(
            f"timestamp: {exc} (the transaction's: epoch milliseconds or RFC 3339 text)"
        ) from None
    if isinstance(when, datetime) and when.tzinfo is None:
        raise ValueError("timestamp must carry a time zone, e.g. 2026-01-31T12:00:00Z")
    return event_time_ms(when)


class Reviews:
    """Analysts' verdicts as labels: checked, then written to the labels topic (keyed by the
    transaction id) by an idempotent producer, where the detector's label features and
    `evaluate` read them like any confirmed verdict."""

    MAX_NAME = 100

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def label(self, body: Any, *, stream_ms: int, now_ms: int) -> dict[str, Any]:
        """The label for a review `{"id", "verdict": "fraud"|"legit", "analyst", "timestamp",
        "target", "merchant"}`; ValueError saying what is wrong.

        It is known from the stream's present in event time: the latest decision's time the
        page has seen (the wall clock for a live stream, the simulated clock for the
        simulator), and never before the transaction itself."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        tx_id, verdict = body.get("id"), body.get("verdict")
        analyst = body.get("analyst")
        if not isinstance(tx_id, str) or not tx_id.strip():
            raise ValueError("id: the transaction's id is required")
        if verdict not in ("fraud", "legit"):
            raise ValueError("verdict must be 'fraud' (confirm) or 'legit' (clear)")
        if not isinstance(analyst, str) or not analyst.strip():
            raise ValueError("analyst: your name is required, so the page can say who reviewed")
        if len(analyst) > self.MAX_NAME:
            raise ValueError(f"analyst: at most {self.MAX_NAME} characters")
        for key in ("target", "merchant"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ValueError(f"{key} must be a string")
        if verdict == "fraud" and not body.get("target"):
            # (the detector's payee features need it: it would dead-letter the label)
            raise ValueError("target: a fraud verdict needs the payment's target (its payee)")
        tx_ms = _tx_ms(body.get("timestamp"))
        known = max(stream_ms or now_ms, tx_ms + 1)
        return {
            "id": tx_id,
            "is_fraud": verdict == "fraud",
            "known_ms": known,
            "published_ms": known,
            "target": body.get("target"),
            "merchant": body.get("merchant"),
            "reviewer": analyst.strip(),
            "tx_ms": tx_ms or None,
        }

    def send(self, label: dict[str, Any]) -> None:
        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    producer_config(self.settings, "fraudstream-dashboard-reviews")
                )
            self._producer.produce(
                self.settings.labels_topic, msgspec.json.encode(label), label["id"].encode()
            )
            if self._producer.flush(10) != 0:
                raise FraudstreamError(
                    "the verdict was not written: no Kafka broker accepted it within 10 s"
                )


def listen(settings: Settings) -> socket.socket:
    """The dashboard's socket, bound now (as uvicorn binds it), so that a port in use or a
    host that is not this machine's stops the command with what to do, before the URL is
    announced."""
    host, port = settings.dashboard_host, settings.dashboard_port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(port) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"port {port} needs privileges to listen on — pass --port N with N above 1023"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}) — pass --host with an "
            "address of this machine (DASHBOARD_HOST), e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    return sock


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    """Run the dashboard until Ctrl-C / SIGTERM, on `sock` (from `listen`) or a new one."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.dashboard_host,
        port=settings.dashboard_port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock if sock is not None else listen(settings)])
    if not server.started:
        raise FraudstreamError("the dashboard stopped before it could serve — see the log above")

"""`fraudstream dashboard`: the live page (`/`) and its Server-Sent Events stream (`/stream`).

Starlette over asyncio: each browser is a coroutine waiting on its queue, not a thread, so
hundreds of open streams cost little; the Kafka consumer is one per process (see `feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudstream.config import Settings
from fraudstream.dashboard.feed import Feed

__all__ = ["create_app", "serve"]

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


def create_app(settings: Settings, feed: Feed | None = None) -> Starlette:
    feed = feed or Feed(settings)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "index.html", {"history": settings.dashboard_history}
        )

    async def stream(request: Request) -> Response:
        queue = feed.subscribe()

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"event": "decisions", "data": feed.snapshot()}
                while True:
                    yield {"event": "decisions", "data": await queue.get()}
            finally:
                feed.unsubscribe(queue)

        return EventSourceResponse(events(), ping=10, send_timeout=30)

    async def health(request: Request) -> Response:
        return JSONResponse({"ready": feed.ready.is_set(), **feed.stats_dict()})

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
            Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)],
        lifespan=lifespan,
    )


def serve(settings: Settings) -> None:
    """Run the dashboard until Ctrl-C / SIGTERM."""
    uvicorn.run(
        create_app(settings),
        host=settings.dashboard_host,
        port=settings.dashboard_port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )

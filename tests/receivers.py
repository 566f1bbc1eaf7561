"""Real receivers for the alert sinks: an HTTP server recording what is POSTed (and failing
on demand) and an SMTP server (aiosmtpd) recording the mail it accepts."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    url: str
    posts: list[Posted] = field(default_factory=list)
    fail: bool = False  # answer 500 while set (the request is still counted)
    refused: int = 0

    def bodies(self) -> list[Any]:
        return [p.body for p in list(self.posts)]


@contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    lock = threading.Lock()
    receiver: HttpReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                if receiver.fail:
                    receiver.refused += 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.append(Posted(self.path, dict(self.headers), json.loads(raw)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = HttpReceiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    with socket.socket() as probe:  # a free port (the controller checks it by connecting)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = SmtpReceiver("127.0.0.1", port)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            receiver.messages.append(msg)  # type: ignore[arg-type]
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()

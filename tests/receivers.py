"""Real local receivers for the alert sinks, shared by the unit and the integration tests.

`http_receiver()` is an HTTP server on 127.0.0.1 recording every POST (path, headers, parsed
JSON body) and answering 500 on demand; `smtp_receiver()` is an aiosmtpd server recording the
mail it accepts, optionally behind AUTH. Both listen on a port the OS picks."""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

# --- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """One POST as received: `accepted` is False when it was answered 500."""

    path: str
    headers: dict[str, str]
    body: Any
    accepted: bool = True


@dataclass
class HttpReceiver:
    """What an `http_receiver()` got. Set `fail` to answer 500 while it is set, or
    `fail_first = n` to answer 500 to the first n requests; every other POST gets 200."""

    url: str  # http://127.0.0.1:<port>, no path: add one to see it in `Posted.path`
    requests: list[Posted] = field(default_factory=list)  # every POST, refused ones too
    fail: bool = False
    fail_first: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def posts(self) -> list[Posted]:
        """The POSTs answered 200, in arrival order."""
        with self._lock:
            return [p for p in self.requests if p.accepted]

    @property
    def refused(self) -> int:
        """How many POSTs were answered 500."""
        with self._lock:
            return sum(not p.accepted for p in self.requests)

    def bodies(self) -> list[Any]:
        """The JSON bodies of `posts`."""
        return [p.body for p in self.posts]

    def _receive(self, path: str, headers: dict[str, str], body: Any) -> bool:
        with self._lock:
            accepted = not self.fail and len(self.requests) >= self.fail_first
            self.requests.append(Posted(path, headers, body, accepted))
            return accepted


@contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    """An HTTP server on 127.0.0.1 for the duration of the block."""
    receiver: HttpReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            accepted = receiver._receive(self.path, dict(self.headers.items()), json.loads(raw))
            reply = b"ok" if accepted else b"boom"
            self.send_response(200 if accepted else 500)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = HttpReceiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- SMTP -------------------------------------------------------------------------------------


class AnyPortController(Controller):
    """aiosmtpd's Controller on port 0: learns the port the OS gave before its start-up
    probe connects (aiosmtpd 1.4 would connect to port 0 otherwise). No race for a port."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpReceiver:
    """What an `smtp_receiver()` got: each accepted mail parsed (email.policy.default), its
    envelope (MAIL FROM, RCPT TOs) and every AUTH attempt (user, password)."""

    host: str
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    logins_over_tls: list[bool] = field(default_factory=list)

    @property
    def url(self) -> str:
        """smtp://host:port, without credentials."""
        return f"smtp://{self.host}:{self.port}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@contextmanager
def smtp_receiver(
    user: str | None = None,
    password: str | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
) -> Iterator[SmtpReceiver]:
    """An SMTP server on 127.0.0.1 for the duration of the block. With a `password` it offers
    AUTH and accepts only that password, and that `user` when one is given. With `tls` (a
    server context, see `self_signed`): it offers STARTTLS and requires it before AUTH and
    mail, or, with `implicit_tls`, speaks TLS from the first byte (smtps)."""
    receiver = SmtpReceiver("127.0.0.1")
    kwargs: dict[str, Any] = {}
    if password is not None:

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            assert isinstance(data, LoginPassword)
            login, given = data.login.decode(), data.password.decode()
            receiver.logins.append((login, given))
            receiver.logins_over_tls.append(session.ssl is not None)
            ok = given == password and (user is None or login == user)
            return AuthResult(success=ok, handled=False)

        # aiosmtpd counts only STARTTLS as TLS for AUTH; over smtps every byte is TLS anyway
        kwargs = {
            "authenticator": authenticator,
            "auth_require_tls": tls is not None and not implicit_tls,
        }
    if tls is not None and implicit_tls:
        kwargs["ssl_context"] = tls
    elif tls is not None:
        kwargs |= {"tls_context": tls, "require_starttls": True}
    controller = AnyPortController(receiver, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    receiver.port = controller.port
    try:
        yield receiver
    finally:
        controller.stop()


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A certificate for 127.0.0.1 made with openssl: the server's context, and the file a
    client trusts it by (SSL_CERT_FILE)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert

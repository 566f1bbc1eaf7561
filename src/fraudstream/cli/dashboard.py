"""`fraudstream dashboard`: serve the live web page."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, load, settings_flags

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    dash = command(
        sub,
        "dashboard",
        help="serve the live web page",
        handler=run,
        parents=[settings_flags(("legit", "fraud"), partitions=False)],
        examples=[
            ("on http://127.0.0.1:5000/ until Ctrl-C", "fraudstream dashboard"),
            (
                "on every address of this machine, port 8080",
                "fraudstream dashboard --host 0.0.0.0 --port 8080",
            ),
        ],
    )
    dash.add_argument(
        "--host", dest="dashboard_host", help="address to listen on (DASHBOARD_HOST, 127.0.0.1)"
    )
    dash.add_argument(
        "--port", dest="dashboard_port", type=int, help="port (DASHBOARD_PORT, default 5000)"
    )


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    from fraudstream.dashboard import listen, serve
    from fraudstream.stream import check_connection

    sock = listen(settings)  # a port in use stops here, before the URL is announced
    check_connection(settings)  # and so does a broker that does not answer
    print(
        f"dashboard on http://{settings.dashboard_host}:{sock.getsockname()[1]}/",
        file=sys.stderr,
    )
    serve(settings, sock)
    return Exit.OK

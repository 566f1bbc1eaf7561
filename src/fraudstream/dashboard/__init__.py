"""The live web page: decisions streamed to browsers over Server-Sent Events."""

from fraudstream.dashboard.app import create_app, listen, serve
from fraudstream.dashboard.feed import Feed

__all__ = ["Feed", "create_app", "listen", "serve"]

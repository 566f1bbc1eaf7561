"""Dead-letter records: the input unchanged, plus headers that say what went wrong and where."""

from __future__ import annotations

from typing import Any

__all__ = ["dlq_headers"]


def dlq_headers(
    msg: Any, error_class: str, message: str, stage: str, *, original: bool = True
) -> list[tuple[str, bytes]]:
    """Original headers first (unless not `original`), then ours: error class and message,
    stage, source coordinates."""
    kept = (msg.headers() or []) if original else []
    return [
        *kept,
        ("error.class", error_class.encode()),
        ("error.message", message[:1000].encode("utf-8", "replace")),
        ("error.stage", stage.encode()),
        ("source.topic", msg.topic().encode()),
        ("source.partition", str(msg.partition()).encode()),
        ("source.offset", str(msg.offset()).encode()),
    ]

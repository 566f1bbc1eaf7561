"""Print docs/configuration.md, the configuration reference, from `Settings`.

    python scripts/config_reference.py > docs/configuration.md   # regenerate
    python scripts/config_reference.py --check                   # exit 1 if it is out of date

Each row comes from a field of `fraudstream.config.Settings`: its upper-case name, its default
and its description (the attribute docstring), with the bounds of its `Field` constraints.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraudstream.config import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "python scripts/config_reference.py > docs/configuration.md"

_INTRO = f"""\
# Configuration

<!-- Generated from `Settings` (src/fraudstream/config.py) by `{REGENERATE}`;
edit the field descriptions there, not this file. -->

Every setting is read from flags, then the environment, then a `.env` file in the working
directory: a flag wins over an environment variable, which wins over `.env`. A bad value stops
the program at start with the key's name.

Besides the variables below, `KAFKA_<NAME>` is any librdkafka setting, e.g.
`KAFKA_SECURITY_PROTOCOL=SASL_SSL` (never logged); a name librdkafka does not have, or a value
it refuses, stops the program at start, naming the variable (and the nearest setting for a typo
such as `KAFKA_BROKER_ULR`). A producer's batching settings are defaults such a variable
overrides (`KAFKA_LINGER_MS`, 5 ms), and so is the detector's compression of what it writes
(lz4: its internal topics carry each input record twice; `KAFKA_COMPRESSION_TYPE=none` turns it
off); its guarantees (`enable.idempotence`, `acks=all`) are not. The detector's transactions
time out after 20 s (`KAFKA_TRANSACTION_TIMEOUT_MS`; librdkafka's default is 60 s): a
transaction left open by a detector killed in the middle of it holds back every reader of the
partitions it wrote until the broker aborts it, and one open longer (a stall, a broker outage)
stops its detector, fenced. Its commit intervals must stay under half of it, and
`KAFKA_MESSAGE_TIMEOUT_MS` at or under it ([delivery.md](delivery.md)). Consumers send a
heartbeat every 500 ms (`KAFKA_HEARTBEAT_INTERVAL_MS`; librdkafka's own default is 3 s), so that
a rebalance (a detector joining or leaving) is noticed within half a second.
`KAFKA_GROUP_PROTOCOL=consumer` switches the groups to Kafka's new protocol (KIP-848, brokers
from 4.0) with the broker's `range` assignor (`KAFKA_GROUP_REMOTE_ASSIGNOR`), which spreads
every stage of the detector over its processes whenever the group changes
([scaling.md](scaling.md)); the broker then sets the session and heartbeat, and
`KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_HEARTBEAT_INTERVAL_MS` or
`KAFKA_PARTITION_ASSIGNMENT_STRATEGY` set beside it stop the start.

`FRAUDSTREAM_CACHE` (default `~/.cache/fraudstream`, `./.cache` under make) is where the Kafka
jars are kept; the local broker's tooling reads it, not `Settings`.
"""


def _is_topic(name: str) -> bool:
    return name.startswith(("kafka_", "topic_")) or name.endswith("_topic")


# Headings, in order, and which fields go under each; a field matching none is the detector's.
_GROUPS: list[tuple[str, Callable[[str], bool]]] = [
    ("Kafka and topics", _is_topic),
    ("Generator", lambda n: n == "transactions_per_second"),
    ("Fault injection (tests only)", lambda n: n.startswith("fault_")),
    ("State", lambda n: n in {"state_dir", "snapshot_interval_ms", "lock_dir"}),
    ("Model", lambda n: n.startswith("model_")),
    ("Dashboard", lambda n: n.startswith("dashboard_")),
    ("Metrics", lambda n: n.startswith("metrics_")),
    ("Alerts", lambda n: n.startswith("alert")),
]
_DEFAULT_GROUP = "Detector"
_ORDER = [
    "Kafka and topics",
    "Generator",
    "Detector",
    "State",
    "Model",
    "Dashboard",
    "Metrics",
    "Alerts",
    "Fault injection (tests only)",
]


def group_of(name: str) -> str:
    """The heading a field is listed under."""
    for heading, matches in _GROUPS:
        if matches(name):
            return heading
    return _DEFAULT_GROUP


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}"


def render_default(value: Any) -> str:
    """A default as an operator would type it: `unset` for None, no repr quotes."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def render_bounds(metadata: list[Any]) -> str:
    """The `Field` constraints as "(1 to 100,000)", "(at least 1)", ...; "" when none."""
    low = high = None
    low_open = high_open = False
    for item in metadata:
        if getattr(item, "ge", None) is not None:
            low = item.ge
        if getattr(item, "gt", None) is not None:
            low, low_open = item.gt, True
        if getattr(item, "le", None) is not None:
            high = item.le
        if getattr(item, "lt", None) is not None:
            high, high_open = item.lt, True
    if low is not None and high is not None and not low_open and not high_open:
        return f"({_number(low)} to {_number(high)})"
    parts = []
    if low is not None:
        parts.append(f"{'more than' if low_open else 'at least'} {_number(low)}")
    if high is not None:
        parts.append(f"{'less than' if high_open else 'at most'} {_number(high)}")
    return f"({', '.join(parts)})" if parts else ""


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def render() -> str:
    """The whole of docs/configuration.md."""
    rows: dict[str, list[str]] = {heading: [] for heading in _ORDER}
    for name, field in Settings.model_fields.items():
        meaning = _cell(field.description or "")
        bounds = render_bounds(field.metadata)
        if bounds:  # inside the sentence: "... (1 to 100,000)."
            stem = meaning.removesuffix(".")
            meaning = f"{stem} {bounds}{meaning[len(stem) :]}"
        default = render_default(field.get_default(call_default_factory=True))
        rows[group_of(name)].append(f"| `{name.upper()}` | {default} | {meaning} |")
    out = [_INTRO]
    for heading in _ORDER:
        if rows[heading]:
            out += [f"## {heading}\n", "| variable | default | meaning |", "|---|---|---|"]
            out += [*rows[heading], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {DOC.name} differs from the output"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else None
        if current != text:
            print(f"docs/configuration.md is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

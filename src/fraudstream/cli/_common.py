"""What the commands share: exit codes, help layout, Kafka flags, argument types, settings,
signals. Each command lives in its own module of `fraudstream.cli`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from fraudstream.config import Settings, load_settings
from fraudstream.errors import FraudstreamError

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Handler: TypeAlias = Callable[[argparse.Namespace], int]


class Exit(IntEnum):
    """Every exit code of `fraudstream`, in one place (the --help epilogs list them)."""

    OK = 0
    PROBLEM = 1  # a problem found or a refusal, said on the output: not an error of the command
    ERROR = 2  # argparse's usage errors, and every FraudstreamError (the message says what to do)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def call(args: argparse.Namespace) -> int:
    """Run the parsed command's handler; an error it raises on purpose (a `FraudstreamError`)
    is printed as one line that says what to do, and exits 2; Ctrl-C exits 130: neither with
    a traceback."""
    try:
        return int(args.handler(args))
    except FraudstreamError as exc:
        print(f"fraudstream: {exc}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:  # Ctrl-C where no clean stop is installed
        print("fraudstream: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `fraudstream status | head`: the reader had enough
        # (what is left unflushed goes nowhere, not into a second error at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except Exception as exc:
        # A Kafka request that no command turned into a message of its own (a broker that
        # stopped answering in the middle of a start, say): what Kafka said and what to do,
        # not a traceback (LOG_LEVEL=DEBUG logs it). Anything else is a bug: its traceback.
        kafka = sys.modules.get("confluent_kafka")  # (never raised unless imported)
        if kafka is None or not isinstance(exc, kafka.KafkaException):
            raise
        logging.getLogger("fraudstream").debug("Kafka request failed", exc_info=True)
        error: Any = exc.args[0] if exc.args else None
        said = f"{error.str()} ({error.name()})" if hasattr(error, "str") else str(exc)
        print(
            f"fraudstream: a Kafka request failed: {said} — check that the broker answers "
            "(`fraudstream broker status` for the local one) and try again",
            file=sys.stderr,
        )
        return Exit.ERROR


_MEANING = {
    Exit.OK: "done",
    Exit.ERROR: "refused or failed, saying why and what to do: a bad argument or setting, no "
    "Kafka broker answering, a file that cannot be read or written, ...",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}
_CLEAN_STOP = "interrupted: a second Ctrl-C (the first one stops it cleanly, with exit 0)"

TOP_LEVEL_PROBLEM = (
    "a problem found or a refusal, not a failure: `rules check` found problems, `status` "
    "says stalled, `broker status` finds no broker, `reset` not confirmed, ..."
)
TOP_LEVEL_INTERRUPTED = (
    "interrupted: Ctrl-C (a second one where the first stops a command cleanly, with exit 0: "
    "detect, generate, alerts, run)"
)


WIDTH = 79  # examples and exit codes are laid out for an 80-column terminal


def _wrapped(head: str, text: str, indent: str | None = None) -> list[str]:
    """`text` wrapped after `head`, its next lines after `indent` (default: as many spaces)."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=head,
        subsequent_indent=" " * len(head) if indent is None else indent,
        break_on_hyphens=False,
    )


def _command_lines(line: str) -> list[str]:
    """A shell command, broken with backslashes before a flag (kept with its value) where it
    would run past WIDTH: it can still be copied and run as printed."""
    units: list[str] = []
    for word in line.split(" "):
        if (
            units
            and not word.startswith("-")
            and units[-1].startswith("-")
            and " " not in units[-1]
        ):
            units[-1] += f" {word}"
        else:
            units.append(word)
    lines = [f"  {units[0]}"]
    for unit in units[1:]:
        if len(lines[-1]) + 1 + len(unit) + 2 > WIDTH and lines[-1].strip():
            lines[-1] += " \\"
            lines.append(f"      {unit}")
        else:
            lines[-1] += f" {unit}"
    return lines


def exit_codes(problem: str | None, interrupted: str | None = None) -> str:
    """The exit-code table of a command's --help; `problem`: what exit 1 means for it (None:
    it does not use 1); `interrupted`: when it exits 130, if not at the first Ctrl-C."""
    meanings = {Exit.OK: _MEANING[Exit.OK]}
    if problem is not None:
        meanings[Exit.PROBLEM] = problem
    meanings[Exit.ERROR] = _MEANING[Exit.ERROR]
    meanings[Exit.INTERRUPTED] = interrupted or _MEANING[Exit.INTERRUPTED]
    lines = ["exit codes:"]
    for code, text in meanings.items():
        lines += _wrapped(f"  {int(code):<5}", text)
    return "\n".join(lines)


def epilog(
    examples: Sequence[tuple[str, str]], problem: str | None, interrupted: str | None = None
) -> str:
    """`examples` as (what it does, the command line), then the exit codes."""
    lines = []
    if examples:
        lines.append("examples:")
        for what, line in examples:
            lines += _wrapped("  # ", what, "  # ") + _command_lines(line)
        lines.append("")
    return "\n".join([*lines, exit_codes(problem, interrupted)])


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A one-paragraph description wrapped to the terminal; an epilog (examples, exit codes:
    several lines) printed as written, so that examples can be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def add_argument(self, action: argparse.Action) -> None:
        # argparse leaves the deeper indent of subcommands out of the width of the name
        # column, so a long one (`dashboard`) pushed its help onto the next line
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):
                width = len(self._format_action_invocation(sub)) + self._current_indent
                self._action_max_length = max(self._action_max_length, width)


def command(
    sub: Subparsers,
    name: str,
    *,
    help: str,
    handler: Handler | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
    description: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
    problem: str | None = None,
    clean_stop: bool = False,
) -> argparse.ArgumentParser:
    """A (sub)command's parser: its help, description, examples and exit codes (`problem`:
    what exit 1 means for it; `clean_stop`: Ctrl-C stops it cleanly); `handler` runs it (set
    as the `handler` default of the parsed arguments)."""
    parser = sub.add_parser(
        name,
        help=help,
        parents=list(parents),
        description=description
        or f"{help[0].upper()}{help[1:]}{'' if help.endswith('.') else '.'}",
        epilog=epilog(examples, problem, _CLEAN_STOP if clean_stop else None),
        formatter_class=HelpFormatter,
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


_TOPIC_FLAGS = {
    "transactions": ("--transactions-topic", "input topic (TRANSACTIONS_TOPIC)"),
    "legit": ("--legit-topic", "decided-legit topic (LEGIT_TOPIC)"),
    "fraud": ("--fraud-topic", "decided-fraud topic (FRAUD_TOPIC)"),
    "dlq": ("--dlq-topic", "dead-letter topic (DLQ_TOPIC)"),
}
ALL_TOPICS = ("transactions", "legit", "fraud", "dlq")


def settings_flags(
    topics: Sequence[str] = ALL_TOPICS, *, partitions: bool = True
) -> argparse.ArgumentParser:
    """The Kafka flags a command uses: the broker, and only the topics it reads or writes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("Kafka (override the environment and .env)")
    g.add_argument(
        "--broker-url",
        dest="kafka_broker_url",
        metavar="HOST:PORT",
        help="bootstrap servers (KAFKA_BROKER_URL, default localhost:9092)",
    )
    for name in topics:
        flag, text = _TOPIC_FLAGS[name]
        g.add_argument(flag, metavar="TOPIC", help=text)
    if partitions:
        g.add_argument(
            "--partitions",
            dest="topic_partitions",
            type=int,
            metavar="N",
            help="partitions of topics created when missing (TOPIC_PARTITIONS, default 6)",
        )
    return p


def history_flags() -> argparse.ArgumentParser:
    """Where `backtest` and `train` read the labelled history."""
    history = argparse.ArgumentParser(add_help=False)
    history.add_argument(
        "--input",
        help="transactions: a .jsonl/.csv/.parquet file or a topic (default TRANSACTIONS_TOPIC)",
    )
    history.add_argument("--labels", help="labels: a file or a topic (default LABELS_TOPIC)")
    history.add_argument("--columns", help="CSV/Parquet renames, e.g. id=tx_id,source=from")
    history.add_argument("--json", action="store_true", help="print the report as JSON")
    return history


def load(args: argparse.Namespace) -> Settings:
    """`Settings` from the environment and .env, with the flags given overriding them."""
    names = set(Settings.model_fields)
    return load_settings(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def load_for_analysis(args: argparse.Namespace) -> Settings:
    """`load`, for `backtest`, `train` and `evaluate`: native thread pools capped too."""
    settings = load(args)
    from fraudstream.detection.model import limit_native_threads

    limit_native_threads(settings.model_threads)
    return settings


# Argument types: each refusal names the value and says what to give instead.


def rate(text: str) -> float:
    if text == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; give tx/s like 500, or 'max'"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0; give tx/s like 500, or 'max'")
    return value


def _whole(text: str, low: int, high: int | None, refusal: str) -> int:
    """`text` as a whole number from `low` to `high` (None: no limit), else `refusal`."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} {refusal}")
    return value


def count(text: str) -> int:
    return _whole(text, 1, None, "is not a count; give a whole number of transactions, like 1000")


TOP_K_HELP = "cards an investigation team checks a day: card precision@k per day (default 100)"


def top_k(text: str) -> int:
    return _whole(text, 1, None, "is not a number of cards; give a whole number, like 100")


def folds(text: str) -> int:
    return _whole(text, 1, 20, "is not a number of folds; give 1 to 20, like 3")


def processes(text: str) -> int:
    return _whole(
        text, 1, 64, "is not a number of processes; give 1 to 64, like the machine's cores"
    )


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give {what}")
    return value


def share_incl(text: str) -> float:
    value = _number(text, "a share from 0 to 1, like 0.01 for 1%")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share; give a number from 0 to 1, like 0.01 for 1%"
        )
    return value


def fraction(text: str) -> float:
    value = _number(text, "a number between 0 and 1, like 0.9")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not between 0 and 1 (both excluded); give e.g. 0.9 for 90%"
        )
    return value


def share_excl(text: str) -> float:
    value = _number(text, "a share between 0 and 1, like 0.3 for the last 30%")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share between 0 and 1 (both excluded: each side needs days); "
            "give e.g. 0.3 to test on the last 30% of the history"
        )
    return value


def days(text: str) -> float:
    value = _number(text, "days, like 7 (0 for no gap)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give days, like 7 (0 for no gap)")
    return value


# Processes and signals.

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_local(url: str) -> tuple[bool, int]:
    """Whether the first bootstrap server is this machine, and its port."""
    first = url.split(",")[0].strip()
    parts = urlsplit("//" + first.split("://")[-1])
    return (parts.hostname or "") in _LOCAL_HOSTS, parts.port or 9092


class StopOnSignal:
    """SIGINT/SIGTERM set an event so loops finish cleanly; a second signal exits at once.

    One stop is often delivered twice within moments: `timeout` signals its whole process
    group and `make` passes SIGTERM on to its recipe, a supervisor signals every process of
    a group. Signals within REPEAT_S of the first are taken as that one, so only a second
    request (a second Ctrl-C a moment later) cuts the clean stop short."""

    REPEAT_S = 1.0

    def __init__(self) -> None:
        self.event = threading.Event()
        self._first = 0.0

    def install(self) -> threading.Event:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self.event

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.event.is_set():
            if now - self._first >= self.REPEAT_S:
                raise SystemExit(Exit.INTERRUPTED)
            return  # the same stop, delivered twice
        self._first = now
        self.event.set()


_held: list[object] = []  # locks kept for the life of the process


def hold(lock: object) -> None:
    """Keep `lock` until the process ends."""
    _held.append(lock)

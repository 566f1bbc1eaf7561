"""The command line itself: each command's help shows examples that parse as written and the
exit codes, each parses to its handler, and `detect --workers N` gives its processes the
command line less --workers."""

from __future__ import annotations

import argparse
import io
import shlex
import sys
from pathlib import Path

import pytest

from fraudstream.cli import Exit, _parser
from fraudstream.cli._common import call
from fraudstream.cli.detect import without_option
from fraudstream.progress import progress_bars
from tests.conftest import wait_for


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser, by its words after `fraudstream`."""
    out = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= _leaves(sub, (*path, name))
    return out


PARSERS = _leaves(_parser())


def _examples(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The command lines under `examples:` in its epilog, continuation lines joined."""
    text = (parser.epilog or "").split("examples:\n", 1)
    if len(text) < 2:
        return []
    lines, current = [], ""
    for line in text[1].split("\n\n", 1)[0].splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        current += line.removesuffix("\\")
        if not line.endswith("\\"):
            lines.append(shlex.split(current))
            current = ""
    return lines


def test_the_commands_are_the_thirteen_of_the_readme() -> None:
    top = {path[0] for path in PARSERS if path}
    assert top == {
        "broker",
        "topics",
        "status",
        "reset",
        "generate",
        "detect",
        "rules",
        "backtest",
        "train",
        "evaluate",
        "dashboard",
        "alerts",
        "run",
    }


@pytest.mark.parametrize("path", list(PARSERS), ids=lambda p: " ".join(p) or "fraudstream")
def test_each_help_lists_the_exit_codes_and_examples_that_parse(path: tuple[str, ...]) -> None:
    parser = PARSERS[path]
    epilog = parser.epilog or ""
    assert "exit codes:" in epilog
    for code in (Exit.OK, Exit.ERROR, Exit.INTERRUPTED):
        assert f"\n  {int(code):<5}" in epilog, (path, code)
    examples = _examples(parser)
    assert 1 <= len(examples) <= 3, path
    for words in examples:
        while "=" in words[0]:  # VAR=value before the command
            words = words[1:]
        assert words[0] == "fraudstream", words
        args = _parser().parse_args([w for w in words[1:] if w != "--help"])
        assert callable(args.handler), words
        assert tuple(words[1 : 1 + len(path)]) == path or not path, (path, words)


def test_every_command_line_reaches_a_handler_without_a_dispatch_chain() -> None:
    handlers = {
        (path, PARSERS[path].get_default("handler"))
        for path in PARSERS
        if PARSERS[path].get_default("handler") is not None
    }
    leaves = {path for path, _ in handlers}
    groups = {p[:-1] for p in PARSERS if p}
    assert leaves == set(PARSERS) - groups  # every leaf has one, no group does
    assert len({h for _, h in handlers}) >= 13


def test_a_kafka_error_no_command_turned_into_a_message_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What Kafka said and what to do, exit 2; any other exception stays a bug's traceback."""
    from confluent_kafka import KafkaError, KafkaException

    def timed_out(args: argparse.Namespace) -> int:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed while waiting for response"))

    assert call(argparse.Namespace(handler=timed_out)) == Exit.ERROR
    err = capsys.readouterr().err
    assert err.startswith("fraudstream: a Kafka request failed: Failed while waiting for")
    assert "(_TIMED_OUT)" in err and "fraudstream broker status" in err
    assert "Traceback" not in err and err.count("\n") == 1

    def bug(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        call(argparse.Namespace(handler=bug))


def test_the_top_level_help_names_what_exit_1_means() -> None:
    epilog = _parser().epilog or ""
    assert "\n  1    " in epilog and "rules check" in epilog


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["detect", "--workers", "2"], ["detect"]),
        (["detect", "--workers=2"], ["detect"]),
        (
            ["detect", "--group", "g", "--workers", "4", "--batch-size", "10"],
            ["detect", "--group", "g", "--batch-size", "10"],
        ),
        (
            ["detect", "--workers=3", "--rules", "r.yaml", "--workers", "2"],
            ["detect", "--rules", "r.yaml"],
        ),
        (["detect", "--work", "2", "--instance", "a"], ["detect", "--instance", "a"]),
        # a value that looks like the flag, given with '=', stays
        (["detect", "--group=--workers", "--workers", "2"], ["detect", "--group=--workers"]),
    ],
)
def test_workers_get_the_command_line_less_workers(argv: list[str], expected: list[str]) -> None:
    assert _parser().parse_args(argv).workers >= 1  # argparse takes each of these
    assert without_option(argv, "--workers") == expected


def test_workers_come_from_the_parsed_arguments_not_sys_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.argv", ["fraudstream", "generate"])
    args = _parser().parse_args(["detect", "--workers", "3"])
    assert args.workers == 3


def test_progress_bars_only_on_a_terminal_and_never_on_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with progress_bars() as progress:  # pytest's stderr is no terminal: no bars
        assert progress is None

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bars() as progress:
        assert progress is not None
        progress("reading", 0, None)
        progress("deciding", 5_000, 10_000)
        progress("deciding", 10_000, 10_000)
    assert "deciding" in terminal.getvalue()
    assert capsys.readouterr().out == ""


def test_workers_started_together_wait_for_each_other_then_go_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`_join_together`: each worker of `--workers N` leaves its file and returns once all N
    are there; one whose siblings never come joins alone after JOIN_TOGETHER_S, saying so."""
    import threading
    import time

    from fraudstream.cli import detect

    returned: dict[str, float] = {}

    def worker(name: str) -> None:
        detect._join_together(f"3:{name[-1]}:{tmp_path}")
        returned[name] = time.monotonic()

    first = [threading.Thread(target=worker, args=(f"w-{i}",)) for i in range(2)]
    for t in first:
        t.start()
    # a sibling late to start: the two ready ones wait for it
    wait_for(lambda: len(list(tmp_path.iterdir())) == 2, 10, "the first two workers' files")
    assert returned == {} and sorted(p.name for p in tmp_path.iterdir()) == ["0", "1"]
    last = time.monotonic()
    worker("w-2")
    for t in first:
        t.join(5)
        assert not t.is_alive()
    assert set(returned) == {"w-0", "w-1", "w-2"} and min(returned.values()) >= last

    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.setattr(detect, "JOIN_TOGETHER_S", 0.3)
    with caplog.at_level("WARNING", logger="fraudstream"):
        detect._join_together(f"2:0:{alone}")
    assert "joining the group without the other workers: 1 of 2 ready" in caplog.text

    stopping = tmp_path / "stopping"
    stopping.mkdir()
    stop = threading.Event()
    stop.set()
    monkeypatch.setattr(detect, "JOIN_TOGETHER_S", 60.0)
    started = time.monotonic()
    detect._join_together(f"2:0:{stopping}", stop)  # a stop asked for ends the wait at once
    assert time.monotonic() - started < 10


class _Proc:
    """A component as `run` watches it: `poll()` is None while it runs."""

    def __init__(self, code: int | None = None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def test_run_waits_for_its_page_and_not_past_a_component_that_exited_or_ctrl_c() -> None:
    """`run` says it is running only once the dashboard's port answers; it gives up waiting
    (no such message) when a component exited or Ctrl-C came, and its loop then stops."""
    import socket
    import threading

    from fraudstream.cli.run import _page_answers

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = int(listening.getsockname()[1])
        running = [_Proc(), _Proc()]
        assert _page_answers("127.0.0.1", port, "url", running, threading.Event())
        exited = [_Proc(), _Proc(1)]
        assert not _page_answers("127.0.0.1", port, "url", exited, threading.Event())
        stopped = threading.Event()
        stopped.set()
        assert not _page_answers("127.0.0.1", port, "url", running, stopped)
    # nothing listens any more: it waits until a component exits (here, from another thread)
    dashboard = _Proc()
    threading.Timer(0.3, lambda: setattr(dashboard, "code", 1)).start()
    assert not _page_answers("127.0.0.1", port, "url", [dashboard], threading.Event())


def test_run_says_what_it_waits_for_while_its_page_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never silent: while the dashboard's port does not answer, `run` says every
    PAGE_WAIT_SAY_S what it waits for (and where the dashboard's own log is)."""
    import socket
    import threading

    from fraudstream.cli import run as run_cli

    monkeypatch.setattr(run_cli, "PAGE_WAIT_SAY_S", 0.2)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    dashboard = _Proc()
    threading.Timer(0.7, lambda: setattr(dashboard, "code", 1)).start()
    url = f"http://127.0.0.1:{port}/"
    assert not run_cli._page_answers("127.0.0.1", port, url, [dashboard], threading.Event())
    said = capsys.readouterr().err
    assert said.count(f"waiting for the dashboard to answer at {url}") >= 2, said
    assert "its log is above" in said

"""`fraudstream rules check FILE…`: "every problem, with the rule id" (README), exit 1 when
there is any, 0 when every file is valid. Run as a user runs it (the CLI, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

GOOD = """
version: "1"
rules:
  - {id: big, type: threshold, params: {field: amount, op: ">=", value: 900}}
"""

# One problem in each of several rules (the unit tests check the messages themselves).
ONE_EACH = """
version: "1"
rules:
  - {id: v1, type: velocity, params: {key: account, window: 1h, max_count: 3}}
  - {id: f1, type: fan_in, params: {window: 24h}}
  - {id: x1, type: magic}
  - {id: big, type: threshold, params: {field: amount, op: ">=", value: 900}}
"""

# Several problems in one rule, in each of its layers: the rule's own fields (weight out of
# range), its parameters' values (key, window) and names (an unknown one).
SEVERAL_IN_ONE = """
version: "1"
rules:
  - id: v1
    type: velocity
    weight: 20
    params: {key: account, window: soon, max_count: 3, colour: red}
  - id: f1
    type: fan_in
    params: {window: 24h, by: nobody}
  - {id: big, type: threshold, params: {field: amount, op: ">=", value: 900}}
"""

# Top-level errors and rule errors in one file.
TOP_AND_RULES = """
version: "1"
threshold: -1
owner: me
rules:
  - {id: v1, type: velocity, params: {key: account, window: 1h, max_count: 3}}
  - {id: x1, type: magic}
"""

# Problems that used to hide behind others, in several rules: a threshold rule's operator
# and field (the second was checked only once the first was right, and neither while a
# parameter was unknown), a velocity rule's missing limit next to a bad key and weight, its
# buckets (0 crashed the check), and the model's problems next to a top-level one.
HIDDEN = """
version: "1"
threshold: -1
model: {file: nowhere.model, weight: 2}
rules:
  - {id: t1, type: threshold, params: {field: colour, op: "=~", value: 1}}
  - {id: t2, type: threshold, params: {field: colour, op: "=~", value: 1, extra: 3}}
  - {id: v1, type: velocity, weight: 99, params: {key: sourc, window: 1h}}
  - {id: v2, type: velocity, params: {key: source, window: 1h, max_count: 3, buckets: 0}}
  - {id: v3, type: velocity, params: {key: source, window: 1h, max_count: 3, buckets: 7}}
  - {id: big, type: threshold, params: {field: amount, op: ">=", value: 900}}
"""


def rules_check(tmp_path: Path, **files: str) -> tuple[int, dict[str, list[tuple[str, str]]]]:
    """Run `fraudstream rules check` on the files; (exit code, each file's (id, message)
    lines, [] for a file said to be ok)."""
    paths = []
    for name, text in files.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    done = subprocess.run(
        [sys.executable, "-m", "fraudstream", "rules", "check", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in done.stdout.splitlines():
        if line.startswith("  "):
            rule_id, _, message = line.strip().partition(": ")
            current.append((rule_id, message))
        else:
            name = Path(line.split(": ", 1)[0]).stem
            current = out.setdefault(name, [])
    return done.returncode, out


def _has(problems: list[tuple[str, str]], rule_id: str, *words: str) -> bool:
    return any(rid == rule_id and all(w in msg for w in words) for rid, msg in problems)


def test_one_problem_in_each_of_several_rules_all_reported_with_exit_code_1(
    tmp_path: Path,
) -> None:
    code, out = rules_check(tmp_path, good=GOOD, bad=ONE_EACH)
    assert code == 1
    assert out["good"] == []
    ids = [rid for rid, _ in out["bad"]]
    assert sorted(ids) == ["f1", "v1", "x1"], out["bad"]
    code, out = rules_check(tmp_path, good=GOOD)
    assert (code, out) == (0, {"good": []})


def test_several_problems_in_one_rule_are_all_reported(tmp_path: Path) -> None:
    code, out = rules_check(tmp_path, several=SEVERAL_IN_ONE)
    problems = out["several"]
    assert code == 1
    missing = [
        what
        for what, found in {
            "v1 weight": _has(problems, "v1", "weight"),
            "v1 key": _has(problems, "v1", "key"),
            "v1 window": _has(problems, "v1", "soon"),
            "v1 unknown parameter": _has(problems, "v1", "colour"),
            "f1 by": _has(problems, "f1", "by"),
            "f1 min_distinct": _has(problems, "f1", "min_distinct"),
        }.items()
        if not found
    ]
    assert not missing, f"not reported: {missing}; reported: {problems}"


def test_top_level_errors_and_rule_errors_are_all_reported(tmp_path: Path) -> None:
    code, out = rules_check(tmp_path, mixed=TOP_AND_RULES)
    problems = out["mixed"]
    assert code == 1
    messages = " | ".join(f"{rid}: {msg}" for rid, msg in problems)
    missing = [
        what
        for what, found in {
            "threshold": "threshold" in messages,
            "unknown top-level key": "owner" in messages,
            "v1 key": _has(problems, "v1", "key"),
            "x1 type": _has(problems, "x1", "magic"),
        }.items()
        if not found
    ]
    assert not missing, f"not reported: {missing}; reported: {problems}"


def test_every_problem_of_every_rule_in_one_pass(tmp_path: Path) -> None:
    code, out = rules_check(tmp_path, good=GOOD, hidden=HIDDEN)
    problems = out["hidden"]
    assert code == 1
    assert out["good"] == []
    missing = [
        what
        for what, found in {
            "threshold": _has(problems, "file", "threshold"),
            "t1 operator": _has(problems, "t1", "unknown operator '=~'"),
            "t1 field": _has(problems, "t1", "no field 'colour'"),
            "t2 operator": _has(problems, "t2", "unknown operator '=~'"),
            "t2 field": _has(problems, "t2", "no field 'colour'"),
            "t2 unknown parameter": _has(problems, "t2", "extra"),
            "v1 weight": _has(problems, "v1", "weight"),
            "v1 key": _has(problems, "v1", "key", "sourc"),
            "v1 limit": _has(problems, "v1", "give max_count, max_sum or both"),
            "v2 buckets": _has(problems, "v2", "buckets: must be a whole number, 1 or more, got 0"),
            "v3 buckets": _has(problems, "v3", "window must split into 7 equal buckets"),
            "model file": _has(problems, "model", "nowhere.model does not exist"),
            "model weight": _has(problems, "model", "model.weight is no longer used"),
        }.items()
        if not found
    ]
    assert not missing, f"not reported: {missing}; reported: {problems}"
    assert not any(rid == "big" for rid, _ in problems)
    assert len(problems) == 13, problems  # each once

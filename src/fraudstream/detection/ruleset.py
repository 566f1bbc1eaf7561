"""Rule sets as data: load a YAML file, check it, build the rules.

    ruleset = load_ruleset(Path("rules/default.yaml"))     # raises RulesError, listing problems
    problems = check_rules_file(Path("candidate.yaml"))    # [] when valid

File shape (see docs/rules.md)::

    version: "2026.11-1"
    threshold: 0.6           # fraud at this score (with a model: the model file's threshold)
    lists: {blocked_accounts: [...], closed_merchants: [...]}
    lists_file: lists.yaml   # optional, merged into `lists`, relative to this file
    model: {file: ../models/default.model}   # optional: the score is its probability
    rules:
      - id: burst
        type: velocity
        description: more than 10 payments from one account in an hour
        weight: 0.6
        enabled: true
        params: {key: source, window: 1h, max_count: 10}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fraudstream.detection.rules import (
    UNCHECKED,
    DormantAccount,
    FanIn,
    ImpossibleTravel,
    ListMatch,
    Rule,
    SmallThenLarge,
    ThresholdRule,
    Velocity,
    threshold_problems,
    velocity_problems,
)
from fraudstream.errors import FraudstreamError, not_utf8

__all__ = [
    "ModelRef",
    "RuleSet",
    "RulesError",
    "check_rules_file",
    "load_ruleset",
    "parse_duration",
]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_KEYS = {"source", "target", "device", "merchant", "country", "channel"}


class RulesError(FraudstreamError):
    """A rules file is invalid; `problems` lists (rule id, what is wrong)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {rid}: {msg}" for rid, msg in problems)
        super().__init__(
            f"rules file {path} is invalid — fix these and check it with "
            f"`fraudstream rules check {path}`:\n{lines}"
        )


def parse_duration(text: str | int) -> int:
    """'90d', '24h', '10m', '30s', '500ms' (or milliseconds as a number) -> milliseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration like 10m, 1h, 24h, 90d")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


class _RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9_.-]+$")
    type: str
    description: str = ""
    weight: float = Field(default=1.0, ge=-10, le=10)
    enabled: bool = True
    params: dict[str, Any] = {}


class _ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    weight: Any = None  # no longer used: refused with what to do instead (see _parse)


class _FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0, le=1)  # scores are at most 1
    lists: dict[str, list[str]] = {}
    lists_file: str | None = None
    model: _ModelSpec | None = None
    rules: list[dict[str, Any]]  # each validated on its own, so every rule's problems show


@dataclass(frozen=True, slots=True)
class ModelRef:
    path: Path


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: str
    threshold: float
    rules: tuple[Rule, ...]
    descriptions: dict[str, str]
    model: ModelRef | None = None


def _when(value: Any) -> int:
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        dt = datetime.combine(value, time(), tzinfo=UTC)
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


_REQUIRED = object()


def _number(
    low: float = 0.0, *, above: bool = False, whole: bool = False, none: bool = False
) -> Any:
    """A parameter's converter: a number (a whole one if `whole`) of at least `low` (above
    it if `above`); None too if `none` (a limit not set). YAML's `true` is no number here,
    nor is text: either passed the check before and then failed in the detector."""
    kind = "a whole number" if whole else "a number"
    bound = f"above {low:g}" if above else f"{low:g} or more"

    def convert(value: Any) -> Any:
        if value is None and none:
            return None
        fine = not isinstance(value, bool) and isinstance(value, int if whole else (int, float))
        if fine and not (value > low if above else value >= low):  # (NaN fails both)
            fine = False
        if not fine:
            raise ValueError(f"must be {kind}, {bound}, got {value!r}")
        return int(value) if whole else float(value)

    return convert


def _span(value: Any) -> int:
    """A rule's window or time span: a duration (`parse_duration`) longer than zero."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration like 10m, 1h, 24h, 90d")
    ms = parse_duration(value)
    if ms <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return ms


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


class _Params:
    """A rule's parameters, taken one by one; every problem is noted, none stops the rest."""

    def __init__(self, spec_type: str, params: dict[str, Any]) -> None:
        self.type = spec_type
        self.left = dict(params)
        self.problems: list[str] = []

    def take(self, name: str, convert: Any = None, default: Any = _REQUIRED) -> Any:
        if name in self.left:
            value = self.left.pop(name)
        elif default is _REQUIRED:
            self.problems.append(f"missing parameter {name!r} for type {self.type}")
            return None
        else:
            value = default
        if convert is None:
            return value
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.problems.append(f"{name}: {exc}")
            return None

    def key(self, name: str = "key", default: str | None = None) -> str:
        def check(value: Any) -> str:
            if value not in _KEYS:
                raise ValueError(f"must be one of {sorted(_KEYS)}, got {value!r}")
            return str(value)

        value = self.take(name, check, default)
        if value is None and self.problems and self.problems[-1].startswith(f"{name}: "):
            self.problems[-1] = f"{name} " + self.problems[-1][len(name) + 2 :]
        return str(value)


class _RuleProblems(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _build(spec: _RuleSpec, lists: dict[str, list[str]]) -> Rule:
    """The rule; raises `_RuleProblems` with every problem of its parameters."""
    q = _Params(spec.type, spec.params)
    rid, w = spec.id, spec.weight
    make: Any
    if spec.type == "threshold":
        given = "value" in q.left
        args = (q.take("field"), q.take("op"), q.take("value"))
        # with the others, not after them
        q.problems += threshold_problems(*args[:2], args[2] if given else UNCHECKED)

        def make() -> Rule:
            return ThresholdRule(rid, *args, weight=w)
    elif spec.type == "velocity":
        noted = len(q.problems)
        v = (
            q.key(),
            q.take("window", _span),
            q.take("max_count", _number(whole=True, none=True), None),
            q.take("max_sum", _number(none=True), None),
            q.take("buckets", _number(1, whole=True), 6),
            q.take("min_amount", _number(), 0.0),
            q.take("max_amount", _number(above=True), math.inf),
        )
        # (a limit given but refused is said once: not as missing too)
        refused = any(p.startswith(("max_count:", "max_sum:")) for p in q.problems[noted:])
        limits = (0, None) if refused else (v[2], v[3])
        q.problems += velocity_problems(v[1], v[4], *limits)

        def make() -> Rule:
            return Velocity(
                rid,
                v[0],
                v[1],
                v[2],
                v[3],
                weight=w,
                buckets=v[4],
                min_amount=v[5],
                max_amount=v[6],
            )
    elif spec.type in ("fan_in", "fan_out"):
        key, by = ("target", "source") if spec.type == "fan_in" else ("source", "target")
        f = (
            q.key("key", key),
            q.key("by", by),
            q.take("window", _span),
            q.take("min_distinct", _number(1, whole=True)),
            q.take("same_amount", _flag, False),
            q.take("min_amount", _number(), 0.0),
        )

        def make() -> Rule:
            return FanIn(rid, *f, weight=w)
    elif spec.type == "dormant":
        d = (q.key(), q.take("idle", _span), q.take("min_amount", _number(), 0.0))

        def make() -> Rule:
            return DormantAccount(rid, *d, weight=w)
    elif spec.type == "small_then_large":
        t = (
            q.key(),
            q.take("small_max", _number(above=True)),
            q.take("large_min", _number(above=True)),
            q.take("within", _span),
        )

        def make() -> Rule:
            return SmallThenLarge(rid, *t, weight=w)
    elif spec.type == "impossible_travel":
        i = (
            q.key(),
            q.take("max_speed_kmh", _number(above=True)),
            q.take("min_distance_km", _number(), 100.0),
        )

        def make() -> Rule:
            return ImpossibleTravel(rid, *i, weight=w)
    elif spec.type == "list":

        def known(name: Any) -> Any:
            if name not in lists:
                raise ValueError(f"no list named {name!r}; lists are {sorted(lists)}")
            return name

        def field_of(name: Any) -> Any:
            if name not in _KEYS:
                raise ValueError(f"must be one of {sorted(_KEYS)}")
            return name

        def period(during: Any) -> tuple[int | None, int | None]:
            if during is None:
                return None, None
            return _when(during[0]), _when(during[1])

        name = q.take("list", known)
        field_name = q.take("field", field_of)
        start, end = q.take("during", period, None) or (None, None)

        def action_of(value: Any) -> str:
            if value not in ("flag", "allow", "block"):
                raise ValueError(
                    f"{value!r} is not flag (add the weight), allow (always legit) or "
                    "block (always fraud)"
                )
            return str(value)

        action = q.take("action", action_of, "flag")

        def make() -> Rule:
            return ListMatch(
                rid,
                field_name,
                frozenset(lists[name]),
                name,
                weight=w,
                allow=action == "allow",
                block=action == "block",
                from_ms=start,
                until_ms=end,
            )
    else:
        raise _RuleProblems(
            [
                f"unknown type {spec.type!r}; use threshold, velocity, fan_in, fan_out, "
                "dormant, small_then_large, impossible_travel or list"
            ]
        )
    if q.left:
        q.problems.append(f"unknown parameters for {spec.type}: {sorted(q.left)}")
    if q.problems:
        raise _RuleProblems(q.problems)
    try:
        return make()  # type: ignore[no-any-return]
    except (ValueError, TypeError, KeyError) as exc:
        raise _RuleProblems([str(exc)]) from None


def _parse(path: Path, require_model: bool = True) -> tuple[RuleSet | None, list[tuple[str, str]]]:
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return None, [("file", str(exc))]
    except UnicodeDecodeError as exc:
        return None, [("file", not_utf8(exc))]
    if raw is None:  # (pydantic's word for it: "Input should be a valid dictionary")
        return None, [("file", "the file is empty: give at least version and rules")]
    problems: list[tuple[str, str]] = []
    try:
        spec: _FileSpec | None = _FileSpec.model_validate(raw)
    except ValidationError as exc:
        spec = None
        problems += [
            ("file", f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}") for e in exc.errors()
        ]
    # the rules are checked whatever is wrong above them, so every problem shows at once
    top = raw if isinstance(raw, dict) else {}
    entries = spec.rules if spec is not None else top.get("rules")
    entries = entries if isinstance(entries, list) else []
    raw_lists = spec.lists if spec is not None else top.get("lists")
    lists = dict(raw_lists) if isinstance(raw_lists, dict) else {}
    lists_file = spec.lists_file if spec is not None else top.get("lists_file")
    specs: list[_RuleSpec] = []
    unchecked: list[_RuleSpec] = []  # invalid fields, but their parameters can be checked
    for i, entry in enumerate(entries):
        try:
            specs.append(_RuleSpec.model_validate(entry))
        except ValidationError as exc:
            rid = str(entry.get("id", f"rules[{i}]")) if isinstance(entry, dict) else f"rules[{i}]"
            problems += [
                (rid, f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}")
                for e in exc.errors()
            ]
            if isinstance(entry, dict) and isinstance(entry.get("params", {}), dict):
                unchecked.append(
                    _RuleSpec.model_construct(
                        id=rid, type=str(entry.get("type", "")), params=entry.get("params", {})
                    )
                )
    if isinstance(lists_file, str) and lists_file:
        try:
            extra = yaml.safe_load((path.parent / lists_file).read_text("utf-8")) or {}
            lists.update({k: [str(x) for x in v] for k, v in extra.items()})
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
            problems.append(("lists_file", f"cannot read {lists_file}: {exc}"))
        except UnicodeDecodeError as exc:
            problems.append(("lists_file", f"cannot read {lists_file}: {not_utf8(exc)}"))
    built: list[Rule] = []
    seen: set[str] = set()
    for rs in specs:
        if rs.id in seen:
            problems.append((rs.id, "duplicate rule id"))
        seen.add(rs.id)
        try:
            rule = _build(rs, lists)
        except _RuleProblems as exc:
            problems += [(rs.id, message) for message in exc.problems]
            continue
        if rs.enabled:
            built.append(rule)
    for rs in unchecked:
        if rs.type:
            try:
                _build(rs, lists)
            except _RuleProblems as exc:
                problems += [(rs.id, message) for message in exc.problems]
    # each rule's problems together, in the file's order (file-level ones first)
    order = {
        str(e.get("id")): i for i, e in reversed(list(enumerate(entries))) if isinstance(e, dict)
    }
    problems.sort(key=lambda item: order.get(item[0], -1))
    # the model's problems too, when other top-level fields are wrong (if `model` itself is,
    # the file-level problems above say so)
    model_spec = spec.model if spec is not None else _model_spec(top.get("model"))
    model = None
    if model_spec is not None:
        model_path = (path.parent / model_spec.file).resolve()
        if require_model and not model_path.exists():
            problems.append(
                (
                    "model",
                    f"model file {model_path} does not exist; train one with `fraudstream train`",
                )
            )
        if model_spec.weight is not None:
            problems.append(
                (
                    "model",
                    "model.weight is no longer used: the score is the model's probability, "
                    "with the rules among its inputs, and its fraud threshold is chosen when "
                    "training (fraudstream train --target-precision or --alert-rate); remove "
                    "`weight`",
                )
            )
        model = ModelRef(model_path)
    if spec is None or problems:
        return None, problems
    return RuleSet(
        spec.version, spec.threshold, tuple(built), {r.id: r.description for r in specs}, model
    ), []


def _model_spec(raw: Any) -> _ModelSpec | None:
    """The `model` entry of a file whose other fields may be invalid; None if it is not valid
    itself (or missing)."""
    try:
        return _ModelSpec.model_validate(raw) if raw is not None else None
    except ValidationError:
        return None


def check_rules_file(path: Path) -> list[tuple[str, str]]:
    """Every problem in the file as (rule id, what is wrong); empty when valid. A model file
    is loaded too, so that one the detector could not read fails here, not at its start."""
    ruleset, problems = _parse(path)
    if ruleset is not None and ruleset.model is not None:
        from fraudstream.detection.model import FraudModel, ModelError

        try:
            FraudModel.load(ruleset.model.path)
        except ModelError as exc:
            problems.append(("model", str(exc)))
    return problems


def load_ruleset(path: Path, *, require_model: bool = True) -> RuleSet:
    """The rule set in `path`; raises `RulesError` listing every problem."""
    if not path.exists():  # not "invalid": the path is wrong
        raise FraudstreamError(
            f"rules file {path} does not exist — pass --rules FILE (RULES_FILE), e.g. "
            "rules/default.yaml from fraudstream's directory"
        )
    ruleset, problems = _parse(path, require_model)
    if ruleset is None:
        raise RulesError(path, problems)
    return ruleset

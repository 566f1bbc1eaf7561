"""Rule sets as data: load a YAML file, check it, build the rules.

    ruleset = load_ruleset(Path("rules/default.yaml"))     # raises RulesError, listing problems
    problems = check_rules_file(Path("candidate.yaml"))    # [] when valid

File shape (see docs/rules.md)::

    version: "2026.11-1"
    threshold: 0.6           # score at which a transaction is fraud
    lists: {blocked_accounts: [...], closed_merchants: [...]}
    lists_file: lists.yaml   # optional, merged into `lists`, relative to this file
    model: {file: ../models/default.model, weight: 1.0}   # optional
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
    DormantAccount,
    FanIn,
    ImpossibleTravel,
    ListMatch,
    Rule,
    SmallThenLarge,
    ThresholdRule,
    Velocity,
)
from fraudstream.errors import FraudstreamError

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
    weight: float = Field(default=1.0, ge=0, le=10)


class _FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0)
    lists: dict[str, list[str]] = {}
    lists_file: str | None = None
    model: _ModelSpec | None = None
    rules: list[dict[str, Any]]  # each validated on its own, so every rule's problems show


@dataclass(frozen=True, slots=True)
class ModelRef:
    path: Path
    weight: float


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


def _key(params: dict[str, Any], name: str = "key", default: str | None = None) -> str:
    key = params.pop(name, default)
    if key not in _KEYS:
        raise ValueError(f"{name} must be one of {sorted(_KEYS)}, got {key!r}")
    return str(key)


def _build(spec: _RuleSpec, lists: dict[str, list[str]]) -> Rule:
    p = dict(spec.params)
    rid, w = spec.id, spec.weight
    rule: Rule
    if spec.type == "threshold":
        rule = ThresholdRule(rid, p.pop("field"), p.pop("op"), p.pop("value"), weight=w)
    elif spec.type == "velocity":
        rule = Velocity(
            rid,
            _key(p),
            parse_duration(p.pop("window")),
            p.pop("max_count", None),
            p.pop("max_sum", None),
            weight=w,
            buckets=int(p.pop("buckets", 6)),
            min_amount=float(p.pop("min_amount", 0.0)),
            max_amount=float(p.pop("max_amount", math.inf)),
        )
    elif spec.type in ("fan_in", "fan_out"):
        key, by = ("target", "source") if spec.type == "fan_in" else ("source", "target")
        rule = FanIn(
            rid,
            _key(p, "key", key),
            _key(p, "by", by),
            parse_duration(p.pop("window")),
            int(p.pop("min_distinct")),
            bool(p.pop("same_amount", False)),
            float(p.pop("min_amount", 0.0)),
            weight=w,
        )
    elif spec.type == "dormant":
        rule = DormantAccount(
            rid,
            _key(p, "key", "source"),
            parse_duration(p.pop("idle")),
            float(p.pop("min_amount", 0.0)),
            weight=w,
        )
    elif spec.type == "small_then_large":
        rule = SmallThenLarge(
            rid,
            _key(p, "key", "source"),
            float(p.pop("small_max")),
            float(p.pop("large_min")),
            parse_duration(p.pop("within")),
            weight=w,
        )
    elif spec.type == "impossible_travel":
        rule = ImpossibleTravel(
            rid,
            _key(p, "key", "source"),
            float(p.pop("max_speed_kmh")),
            float(p.pop("min_distance_km", 100.0)),
            weight=w,
        )
    elif spec.type == "list":
        name = p.pop("list")
        if name not in lists:
            raise ValueError(f"no list named {name!r}; lists are {sorted(lists)}")
        field_name = p.pop("field")
        if field_name not in _KEYS:
            raise ValueError(f"field must be one of {sorted(_KEYS)}")
        during = p.pop("during", None)
        start = end = None
        if during is not None:
            start, end = _when(during[0]), _when(during[1])
        rule = ListMatch(
            rid,
            field_name,
            frozenset(lists[name]),
            name,
            weight=w,
            allow=p.pop("action", "flag") == "allow",
            from_ms=start,
            until_ms=end,
        )
    else:
        raise ValueError(
            f"unknown type {spec.type!r}; use threshold, velocity, fan_in, fan_out, dormant, "
            "small_then_large, impossible_travel or list"
        )
    if p:
        raise ValueError(f"unknown parameters for {spec.type}: {sorted(p)}")
    return rule


def _parse(path: Path, require_model: bool = True) -> tuple[RuleSet | None, list[tuple[str, str]]]:
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return None, [("file", str(exc))]
    try:
        spec = _FileSpec.model_validate(raw)
    except ValidationError as exc:
        return None, [
            ("file", f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}") for e in exc.errors()
        ]
    lists = dict(spec.lists)
    problems: list[tuple[str, str]] = []
    specs: list[_RuleSpec] = []
    for i, entry in enumerate(spec.rules):
        try:
            specs.append(_RuleSpec.model_validate(entry))
        except ValidationError as exc:
            rid = str(entry.get("id", f"rules[{i}]")) if isinstance(entry, dict) else f"rules[{i}]"
            problems += [
                (rid, f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}")
                for e in exc.errors()
            ]
    if spec.lists_file:
        try:
            extra = yaml.safe_load((path.parent / spec.lists_file).read_text("utf-8")) or {}
            lists.update({k: [str(x) for x in v] for k, v in extra.items()})
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
            problems.append(("lists_file", f"cannot read {spec.lists_file}: {exc}"))
    built: list[Rule] = []
    seen: set[str] = set()
    for rs in specs:
        if rs.id in seen:
            problems.append((rs.id, "duplicate rule id"))
        seen.add(rs.id)
        try:
            rule = _build(rs, lists)
        except KeyError as exc:
            problems.append((rs.id, f"missing parameter {exc.args[0]!r} for type {rs.type}"))
            continue
        except (ValueError, TypeError) as exc:
            problems.append((rs.id, str(exc)))
            continue
        if rs.enabled:
            built.append(rule)
    model = None
    if spec.model is not None:
        model_path = (path.parent / spec.model.file).resolve()
        if require_model and not model_path.exists():
            problems.append(
                (
                    "model",
                    f"model file {model_path} does not exist; train one with `fraudstream train`",
                )
            )
        model = ModelRef(model_path, spec.model.weight)
    if problems:
        return None, problems
    return RuleSet(
        spec.version, spec.threshold, tuple(built), {r.id: r.description for r in specs}, model
    ), []


def check_rules_file(path: Path) -> list[tuple[str, str]]:
    """Every problem in the file as (rule id, what is wrong); empty when valid."""
    return _parse(path)[1]


def load_ruleset(path: Path, *, require_model: bool = True) -> RuleSet:
    """The rule set in `path`; raises `RulesError` listing every problem."""
    ruleset, problems = _parse(path, require_model)
    if ruleset is None:
        raise RulesError(path, problems)
    return ruleset

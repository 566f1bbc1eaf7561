"""The pure detection core: a batch of transactions in, a decision for each out.

No Kafka and no wall clock: time is each transaction's event time, so the same input gives
the same decisions live, in tests, in backtests and in training.

    engine = Engine.from_ruleset(load_ruleset(Path("rules/default.yaml")))
    decisions = engine.decide([tx1, tx2])
    engine.observe_labels([Label(...)])   # confirmed verdicts, used from their own time on
"""

from __future__ import annotations

import copy
import itertools
import pickle
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from fraudstream.detection import keyhash
from fraudstream.detection.drift import DriftMonitor
from fraudstream.detection.features import (
    FEATURE_NAMES,
    FeatureState,
    Label,
    Parts,
    caught_code,
)
from fraudstream.detection.model import FraudModel
from fraudstream.detection.rules import (
    DormantAccount,
    FanIn,
    Hit,
    ImpossibleTravel,
    Rule,
    Segment,
    Sparse,
    Velocity,
    describe_state,
    state_id,
)
from fraudstream.detection.ruleset import RuleSet
from fraudstream.detection.state import DAY, Tables
from fraudstream.schema import Decision, Reason, Transaction

__all__ = ["Engine", "HitTuple", "Packed", "Scored", "rule_key"]

_json = msgspec.json.Encoder().encode
# changelog keys: b"<kind>\x00<name>\x00<key>"; kinds t (a table's row), L (a table's
# layout), f (a fan-in/out group), s (when a fan-in/out rule last swept its groups), l
# (labels), e (when the next daily eviction falls)
EVICTION_KEY = b"e\x00\x00"
# Calls with fewer transactions than this are scored one at a time (`score_each`, the same
# results: the property tests hold the two paths equal): measured per call, with every
# stage's rules and features, the two cross between 4 and 8 transactions (at 1: about 40
# to 70 µs one at a time against 70 to 165 µs as a batch)
EACH_BELOW = 4

Scored = tuple[list[float], list[Hit]]
Packed = tuple[bytes, list[Hit]]  # a feature row as the bytes of its float64 values
# a hit as it travels between stages: rule, weight, reason, allow, block
HitTuple = tuple[str, float, str, bool, bool]


def _pack(row: list[float]) -> bytes:
    return np.asarray(row, dtype=np.float64).tobytes() if row else b""


def _ignores_below(rule: Rule) -> float:
    """The amount under which `rule` neither reads nor changes its state nor fires (its
    `apply` returns at once, its batch path never picks the payment); 0: none."""
    if isinstance(rule, (FanIn, Velocity)):
        return float(rule.min_amount)
    return 0.0


def rule_key(rule: Rule) -> str:
    """The field a rule keeps its state by ("source" for stateless rules)."""
    key = getattr(rule, "key", "source")
    return key if isinstance(key, str) else "source"


class Engine:
    """Scores each transaction: the weights of the rules that fire, capped at 1, fraud at or
    above `threshold`; with a model, the model's probability (the rules are among its
    inputs), fraud at or above the threshold chosen when it was trained. A block-list hit
    makes it fraud, an allow-list hit legit (see `combine`)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        threshold: float = 0.5,
        version: str,
        model: FraudModel | None = None,
        features: bool | None = None,
        part: str | None = None,
        compiled: bool = True,
        each_below: int = EACH_BELOW,
    ) -> None:
        self.all_rules = tuple(rules)
        self.compiled = compiled  # False: every rule one transaction at a time (reference)
        # fewer transactions than this in a call take the reference path: a batch has a
        # fixed cost (its columns, views and numpy passes) that one or two do not repay
        self.each_below = each_below
        self.part = part
        if part is not None:  # one stage of a key-partitioned pipeline: its key's rules only
            rules = [r for r in rules if rule_key(r) == part]
        self.rules = tuple(copy.deepcopy(list(rules)))  # each engine owns its rules' state
        self.threshold = threshold
        self.version = version
        self.model = model
        self.model_threshold = model.threshold if model is not None else threshold
        # a probability under this, no rule fired: legit, no reason to give (`combine`)
        self._quiet_below = min(0.05, self.model_threshold)
        # whether the model runs on the world it was trained on (the reference `train` kept)
        self.drift = (
            DriftMonitor(model.info["drift"])
            if model is not None and "drift" in model.info and part is None
            else None
        )
        self.tables = Tables()
        for rule in self.rules:
            rule.bind(self.tables)
        # The name each rule's own state is stored under (`state_id`: its id, and a digest of
        # the parameters the state's meaning depends on), and the columns it had before
        # names carried that digest (`<id>.<column>`): stored state under another name is
        # another rule's, or this one's under other parameters, and is not restored.
        self._state_ids = {r.id: state_id(r) for r in self.rules if state_id(r) != r.id}
        current = {name for t in self.tables.tables.values() for name in t.columns}
        self._undigested: dict[str, str] = {}
        for rule_id, name in self._state_ids.items():
            for column in current:
                if column.startswith(name + "."):
                    old = f"{rule_id}.{column[len(name) + 1 :]}"
                    if old not in current:
                        self._undigested[old] = rule_id
        # what a restore found of each rule's state: under its name, or under another
        self._found_own: set[str] = set()
        self._found_other: dict[str, str] = {}  # rule id -> "params" or "unrecorded"
        want_features = model is not None if features is None else features
        self.has_features = want_features
        parts = Parts() if part is None else Parts.only(part)
        self.features = (
            FeatureState(self.tables, parts)
            if want_features and (parts.source or parts.target or parts.merchant)
            else None
        )
        self.rule_ids = tuple(r.id for r in self.all_rules)
        # which rules' hits the payee's (0) and shop's (1) features know: those of their
        # stage and the stages before it (a stage is told the earlier ones' as `upstream`)
        stages = self.stage_keys()
        self._stage_index = {r.id: stages.index(rule_key(r)) for r in self.all_rules}
        self._rule_order = {rid: i for i, rid in enumerate(self.rule_ids)}
        self._caught_upto: dict[int, int] = {}
        if self.features is not None:
            held = self.features.parts
            for p, (key, on) in enumerate((("target", held.target), ("merchant", held.merchant))):
                if on:
                    self._caught_upto[p] = stages.index(key)
        if model is not None:
            self._model_rules = [
                self.rule_ids.index(r) if r in self.rule_ids else -1 for r in model.rule_ids
            ]
            if tuple(model.feature_names) != FEATURE_NAMES:
                raise ValueError("the model was trained on other features; retrain it")
        # rules the model cannot have learned: these decide by their weights, as without one
        self.unlearned = model.unlearned(self.rule_ids) if model is not None else frozenset()
        self._next_evict = 0  # the event time of the next daily eviction (`_segments`)
        self._evict_at_begin = 0
        # changelog keys of rows a restore found evicted since they were written: tombstones
        # for the next commit (an eviction knows rows by their keys' hashes, not the keys)
        self._expired: list[bytes] = []
        # tables whose layout is described in the changelog (committed; in the open transaction)
        self._described: set[str] = set()
        self._describing: set[str] = set()
        self.quiet = self.combine([], None)  # the decision when no rule fires (no model)
        self._fan_rules = [r for r in self.rules if isinstance(r, FanIn)]
        # Rules with a batch path run over the whole segment, one after the other: each
        # keeps state of its own, so the order between them changes nothing. Two dormant
        # (or two travel) rules on one key share their columns (last activity, last
        # place): those run one transaction at a time, interleaved as in `score_each`.
        shared: Counter[tuple[type, str]] = Counter(
            (type(r), r.key)
            for r in self.rules
            if isinstance(r, (DormantAccount, ImpossibleTravel))
        )
        self._batched: list[tuple[int, Any]] = []
        self._single: list[tuple[int, Rule]] = []
        for i, rule in enumerate(self.rules):
            if hasattr(rule, "apply_batch") and shared[(type(rule), getattr(rule, "key", ""))] < 2:
                self._batched.append((i, rule))
            else:
                self._single.append((i, rule))

    @classmethod
    def from_ruleset(
        cls,
        ruleset: RuleSet,
        *,
        features: bool | None = None,
        compiled: bool = True,
        each_below: int = EACH_BELOW,
    ) -> Engine:
        model = FraudModel.load(ruleset.model.path) if ruleset.model else None
        version = ruleset.version + (f"+{model.version}" if model else "")
        return cls(
            ruleset.rules,
            threshold=ruleset.threshold,
            version=version,
            model=model,
            features=features,
            compiled=compiled,
            each_below=each_below,
        )

    # --- a key-partitioned pipeline: one stage per key field -----------------------------

    def stage_keys(self) -> list[str]:
        """The key fields whose state this rule set needs, "source" (the input key) first.
        Each other key is a stage of its own, fed through a repartition topic."""
        keys = ["source"]
        for rule in self.all_rules:
            if rule_key(rule) not in keys:
                keys.append(rule_key(rule))
        if self.has_features:
            keys += [k for k in ("target", "merchant") if k not in keys]
        return keys

    def for_stage(self, key: str) -> Engine:
        """A fresh engine holding only `key`'s rules and features (no model)."""
        return Engine(
            self.all_rules,
            threshold=self.threshold,
            version=self.version,
            features=self.has_features,
            part=key,
            compiled=self.compiled,
            each_below=self.each_below,
        )

    def floor(self) -> float:
        """The amount under which a payment changes nothing in this engine and fires none of
        its rules: each rule ignores smaller payments, state and all (fan-in/out and
        velocity rules with a `min_amount`), and no model feature is kept here. 0: every
        payment counts. A stage's engine (`for_stage`) skips such payments: they cross the
        stage without their transaction (stream/tasks.py)."""
        if self.features is not None or not self.rules:
            return 0.0
        return min(_ignores_below(r) for r in self.rules)

    def finish(
        self, parts: Sequence[dict[str, bytes]], hits: Sequence[list[Hit]]
    ) -> list[Decision]:
        """Decisions from what the stages found: each transaction's feature parts by stage key
        (`score_packed`'s bytes) and its hits from every stage (summed in rule order, as one
        engine would)."""
        order = self._rule_order
        ordered = [h if len(h) < 2 else sorted(h, key=lambda hit: order[hit.rule]) for h in hits]
        if self.model is None:
            quiet = self.quiet  # one shared decision for every record nothing fired on
            return [self.combine(h, None) if h else quiet for h in ordered]
        rows = [  # the parts in FEATURE_NAMES order (`assemble_row`'s)
            p.get("source", b"") + p.get("target", b"") + p.get("merchant", b"") for p in parts
        ]
        probs = self.model.score(self.model_rows(list(zip(rows, ordered, strict=True))))
        decisions = [self.combine(h, float(pr)) for h, pr in zip(ordered, probs, strict=True)]
        if self.drift is not None:  # counted when the runtime commits (drift.commit)
            self.drift.observe(probs, [d.outcome == "fraud" for d in decisions])
        return decisions

    # --- transactions and the changelog: state changes commit or abort with the outputs -----

    def begin(self) -> None:
        """Start journaling state changes (the stream runtime's transaction began)."""
        self._evict_at_begin = self._next_evict
        for t in self.tables.tables.values():
            t.begin()
        for r in self._fan_rules:
            r.begin()
        if self.features is not None:
            self.features.begin()

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """Changelog records (key, value) for all state touched since `begin`."""
        out: list[tuple[bytes, bytes | None]] = [(k, None) for k in self._expired]
        for name, t in self.tables.tables.items():
            prefix = b"t\x00" + name.encode() + b"\x00"
            keys = t.touched()
            if keys and name not in self._described | self._describing:  # before its rows
                described = b"L\x00" + name.encode() + b"\x00%08x" % t.layout_id
                out.append((described, t.describe()))
                self._describing.add(name)
            out += [(prefix + k.encode(), v) for k, v in zip(keys, t.dump_rows(keys), strict=True)]
        for r in self._fan_rules:
            prefix = b"f\x00" + self._state_ids[r.id].encode() + b"\x00"
            out += [(prefix + g.encode(), None if m is None else _json(m)) for g, m in r.changes()]
            swept = r.swept()
            if swept is not None:  # (the sweep's schedule is state too: `FanIn.swept`)
                out.append((b"s\x00" + prefix[2:], b"%d" % swept))
        if self.features is not None:
            out += [(b"l\x00\x00" + k, v) for k, v in self.features.changes()]
        if self._next_evict != self._evict_at_begin:  # evicted: when the next one falls
            out.append((EVICTION_KEY, b"%d" % self._next_evict))
        return out

    def rollback(self) -> None:
        """Undo every state change since `begin` (the transaction was aborted)."""
        self._describing.clear()  # its layout records are gone with it
        self._next_evict = self._evict_at_begin  # a redo evicts where the first try did
        for t in self.tables.tables.values():
            t.rollback()
        for r in self._fan_rules:
            r.rollback()
        if self.features is not None:
            self.features.rollback()

    def commit(self) -> None:
        self._described |= self._describing
        self._describing.clear()
        self._expired = []
        for t in self.tables.tables.values():
            t.commit()
        for r in self._fan_rules:
            r.commit()
        if self.features is not None:
            self.features.commit()

    def restore(self, records: Iterable[tuple[bytes, bytes | None]], *, chunk: int = 4096) -> int:
        """Load changelog records (oldest first); returns how many keys were loaded. A rule's
        state stored under another name than its `state_id` (its parameters changed since)
        is left out: that rule starts empty (`restarted` says which). The table rows' keys
        are hashed `chunk` records at a time, in one compiled pass.

        The daily eviction goes on where the run that wrote them left it: rows it evicted
        after their last record was written are dropped again, and (`records` given as a
        sequence) their keys are written as tombstones at the next commit, so the changelog
        forgets them too."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        fans = {self._state_ids[r.id]: r for r in self._fan_rules}
        labels: dict[bytes, bytes | None] = {}
        sets: set[bytes] = set()  # the fan-in/out state names met
        n = 0
        it = iter(records)
        while part := list(itertools.islice(it, chunk)):
            n += self._restore_part(part, fans, labels, sets)
        if labels and self.features is not None:
            self.features.load(labels)
        if self._next_evict:
            self._evict_restored(records if isinstance(records, Sequence) else None, chunk)
        return n

    def _evict_restored(
        self, records: Sequence[tuple[bytes, bytes | None]] | None, chunk: int
    ) -> None:
        """Evict as the last daily eviction before the restore did (`restore`); the keys of
        the rows it drops, found again in `records` (`chunk` at a time), become tombstones."""
        last = self._next_evict - DAY
        stale: dict[bytes, np.ndarray[Any, Any]] = {}
        for table_name, t in self.tables.tables.items():
            hashes = t.stale_hashes(last)
            if hashes.size:
                stale[table_name.encode()] = hashes
        self.tables.evict(last)
        if not stale or records is None:
            return
        expired: dict[bytes, None] = {}
        it = (key for key, _ in records if key[:2] == b"t\x00")
        while part := list(itertools.islice(it, chunk)):
            names = [key[2 : key.index(b"\x00", 2)] for key in part]
            for name, hashes in stale.items():
                keys = [key for key, n in zip(part, names, strict=True) if n == name]
                if not keys:
                    continue
                cut = len(name) + 3  # b"t\x00" + name + b"\x00"
                found = keyhash.key_hashes([k[cut:].decode() for k in keys])
                gone = np.isin(found, hashes).tolist()
                expired.update(dict.fromkeys(k for k, g in zip(keys, gone, strict=True) if g))
        self._expired += expired

    def _restore_part(
        self,
        part: list[tuple[bytes, bytes | None]],
        fans: dict[str, FanIn],
        labels: dict[bytes, bytes | None],
        sets: set[bytes],
    ) -> int:
        # the rows' keys and their hashes first (no list of every split key: that many small
        # lists at once wake the garbage collector)
        keys = [key.split(b"\x00", 2)[2].decode() for key, _ in part if key[:2] == b"t\x00"]
        hashes: list[int] = keyhash.key_hashes(keys).tolist() if keys else []
        j = 0
        for key, value in part:
            kind, name, k = key.split(b"\x00", 2)
            if kind == b"L":  # the columns of a layout, before the rows written in it
                self.tables[name.decode()].learn_layout(value or b"[]")
                for column, _ in msgspec.json.decode(value or b"[]"):
                    self._note_stored(column, column=True)
            elif kind == b"t":
                table = self.tables[name.decode()]
                if value is None:
                    table.reset_row(keys[j], hashes[j])
                else:
                    table.load_row(keys[j], value, hashes[j])
                j += 1
            elif kind == b"f" or kind == b"s":
                if name not in sets:
                    sets.add(name)
                    self._note_stored(name.decode(), column=False)
                fan = fans.get(name.decode())
                if fan is not None and kind == b"s":
                    fan.load_sweep(int(value or b"0"))
                elif fan is not None:
                    members = None if value is None else msgspec.json.decode(value)
                    fan.load_group(k.decode(), members)
            elif kind == b"l":
                labels[k] = value
            elif kind == b"e":  # when the next daily eviction falls (`changes`)
                self._next_evict = int(value or b"0")
        return len(part)

    def _note_stored(self, name: str, *, column: bool) -> None:
        """Whose state a stored column (`<state id>.<column>`) or fan-in/out set name holds."""
        at = name.find("@")
        if at > 0:
            rule_id = name[:at]
            stored = name[: at + 9] if column else name  # the id and its 8-digit digest
            if rule_id in self._state_ids:
                if stored == self._state_ids[rule_id]:
                    self._found_own.add(rule_id)
                else:
                    self._found_other.setdefault(rule_id, "params")
            return
        rule_id = self._undigested.get(name, "") if column else name
        if rule_id in self._state_ids:  # written before state names carried parameters
            self._found_other.setdefault(rule_id, "unrecorded")

    @property
    def restarted(self) -> dict[str, str]:
        """Rule id -> why its state starts empty, for the rules whose state a restore found
        only under other parameters than theirs (or stored by a version that did not record
        them): it was not read, as it would have been misread."""
        out = {}
        for rule in self.rules:
            why = self._found_other.get(rule.id)
            if why is None or rule.id in self._found_own:
                continue
            now = describe_state(rule)
            out[rule.id] = (
                "its state starts empty: the stored one was written with other values of the "
                f"parameters its meaning depends on (now {now})"
                if why == "params"
                else "its state starts empty: the stored one was written by an earlier version "
                f"of fraudstream, which did not record the parameters it depends on ({now})"
            ) + "; it sees only the transactions from now on"
        return out

    # --- a local snapshot of the whole state (restart without re-reading the changelog) -----

    def layout(self) -> str:
        """What a snapshot of this engine must match: rules, tables and their columns, and
        the key hashing (the key indexes hold `keyhash.key_hash`es)."""
        tables = {n: t.layout() for n, t in sorted(self.tables.tables.items())}
        rules = [state_id(r) for r in self.rules]
        return repr((self.version, self.part, rules, tables, keyhash.fingerprint()))

    def snapshot(self) -> bytes:
        """Every piece of state, as it is now (call between transactions)."""
        state = {
            "layout": self.layout(),
            "tables": {n: t.dump() for n, t in self.tables.tables.items()},
            "fans": {r.id: (r._seen, r._last_sweep) for r in self._fan_rules},
            "labels": None
            if self.features is None
            else (self.features._pending, self.features._seq),
            "next_evict": self._next_evict,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def load_snapshot(self, blob: bytes) -> bool:
        """Load a `snapshot` (of an engine built the same way, in a process hashing strings
        the same way); False, and nothing changed, when it does not match."""
        state = pickle.loads(blob)  # our own file, written by `snapshot` (see stream/snapshot.py)
        if not isinstance(state, dict) or state.get("layout") != self.layout():
            return False
        for name, dumped in state["tables"].items():
            self.tables[name].load(dumped)
        fans = {r.id: r for r in self._fan_rules}
        for rule_id, (seen, last_sweep) in state["fans"].items():
            fans[rule_id]._seen, fans[rule_id]._last_sweep = seen, last_sweep
        if self.features is not None and state["labels"] is not None:
            self.features._pending, self.features._seq = state["labels"]
        self._next_evict = state["next_evict"]
        return True

    def state_bytes(self) -> int:
        """Bytes of detection state held in memory: every table, fan-in/out sets, labels."""
        total = sum(t.allocated() for t in self.tables.tables.values())
        total += sum(r.allocated() for r in self.rules if isinstance(r, FanIn))
        if self.features is not None:
            total += self.features.pending_bytes()
        return total

    def observe_labels(self, labels: Iterable[Label]) -> None:
        if self.features is not None:
            for label in labels:
                self.features.label(label)

    def score(
        self, batch: Sequence[Transaction], upstream: Sequence[Sequence[HitTuple]] | None = None
    ) -> list[Scored]:
        """Feature rows and rule hits for each transaction, in order, updating the state.
        `upstream`: in a stage of the pipeline, each transaction's hits from the stages before
        (`(rule, weight, reason, allow, block)`), which the payee's and shop's features take
        into account (whether the rules caught it: `FeatureState`).

        Each rule with a batch path (`apply_batch`: the stateful ones as compiled kernels)
        runs over the whole batch, one rule after the other, the rest (two dormant or travel
        rules sharing columns) one transaction at a time; every rule keeps state of its own,
        so running one rule over the batch before the next changes nothing (`score_each`,
        the plain statement, is the reference a property test holds this to). The features
        run as kernels over the batch too (`FeatureState.compute_batch`). The batch is cut
        where the daily eviction falls, as in the reference."""
        if not self._batch_path or len(batch) < self.each_below:
            return self.score_each(batch, upstream)
        out: list[Scored] = []
        for rows, hits in self._segments(batch, upstream):
            out += zip(rows.tolist(), hits, strict=True)
        return out

    def score_packed(
        self, batch: Sequence[Transaction], upstream: Sequence[Sequence[HitTuple]] | None = None
    ) -> list[Packed]:
        """`score`, each feature row as the bytes of its float64 values (b"": no features):
        what a stage sends on, and what `model_rows` reads without a Python float each."""
        if not self._batch_path or len(batch) < self.each_below:
            return [(_pack(row), hits) for row, hits in self.score_each(batch, upstream)]
        out: list[Packed] = []
        for rows, hits in self._segments(batch, upstream):
            width = rows.shape[1] * 8
            if width:
                blob = rows.tobytes()
                packed = [blob[k * width : (k + 1) * width] for k in range(len(hits))]
            else:  # no features in this engine
                packed = [b""] * len(hits)
            out += zip(packed, hits, strict=True)
        return out

    @property
    def _batch_path(self) -> bool:
        return self.compiled and bool(self._batched or self.features is not None)

    def _segments(
        self, batch: Sequence[Transaction], upstream: Sequence[Sequence[HitTuple]] | None
    ) -> Iterator[tuple[np.ndarray[Any, Any], list[list[Hit]]]]:
        """The batch cut where the daily eviction falls, each cut scored (evicting first)."""
        ts = [tx.ts_ms for tx in batch]
        start, n = 0, len(batch)
        while start < n:
            if ts[start] >= self._next_evict:
                self.tables.evict(ts[start])
                self._next_evict = ts[start] + DAY
            end, horizon = start + 1, self._next_evict
            while end < n and ts[end] < horizon:
                end += 1
            up = upstream[start:end] if upstream is not None else None
            yield self._score_segment(batch[start:end], ts[start:end], up)
            start = end

    def _score_segment(
        self,
        batch: Sequence[Transaction],
        ts: list[int],
        upstream: Sequence[Sequence[HitTuple]] | None,
    ) -> tuple[np.ndarray[Any, Any], list[list[Hit]]]:
        # The rules first: the features of a payee or shop remember the payments they caught
        # (rules and features keep state of their own; `score_each` does the same per payment).
        seg = Segment(batch, ts)
        features = self.features
        fired: list[Sparse] = [[] for _ in self.rules]
        for i, rule in self._batched:
            fired[i] = rule.apply_batch(seg)
        if self._single:  # the others one transaction at a time, in rule order
            single = self._single
            for k, tx in enumerate(batch):
                t = ts[k]
                for i, rule in single:
                    hit = rule.apply(tx, t)
                    if hit is not None:
                        fired[i].append((k, hit))
        hits: list[list[Hit]] = [[] for _ in batch]
        for sparse in fired:  # in rule order, as `score_each` lists them
            for k, hit in sparse:
                hits[k].append(hit)
        if features is None:
            rows = np.zeros((len(batch), 0))
        else:
            caught = None
            if self._caught_upto and (upstream is not None or any(fired)):
                n = len(batch)
                caught = (np.zeros(n, np.uint32), np.zeros(n, np.uint32))
                for k in range(n):
                    up = upstream[k] if upstream is not None else ()
                    if hits[k] or up:
                        caught[0][k], caught[1][k] = self._caught_codes(batch[k], hits[k], up)
            rows = features.compute_batch(seg, part=self.part is not None, caught=caught)
        return rows, hits

    def _caught_codes(
        self, tx: Transaction, hits: Sequence[Hit], upstream: Sequence[HitTuple]
    ) -> tuple[int, int]:
        """Whether the rules caught `tx` on their own (`combine` without a model: a block
        hit, or no allow hit and weights reaching the threshold), as the payee's and the
        shop's parts know them (the hits of their stage and the stages before, with
        `upstream` from those), each as `caught_code`'s code."""
        codes = [0, 0]
        order = self._rule_order
        for p, upto in self._caught_upto.items():
            # summed in rule order, as `combine` sums them: one engine and the stages (which
            # hear the earlier stages' hits first) add the same floats in the same order
            known = sorted(
                [(order[r], w, a, b) for r, w, _, a, b in upstream]
                + [
                    (order[h.rule], h.weight, h.allow, h.block)
                    for h in hits
                    if self._stage_index[h.rule] <= upto
                ]
            )
            weight, allow, block = 0.0, False, False
            for _, w, a, b in known:
                weight, allow, block = weight + w, allow or a, block or b
            fraud = block or (not allow and min(max(weight, 0.0), 1.0) >= self.threshold)
            codes[p] = caught_code(tx, fraud)
        return codes[0], codes[1]

    def score_each(
        self, batch: Sequence[Transaction], upstream: Sequence[Sequence[HitTuple]] | None = None
    ) -> list[Scored]:
        """`score`, stated plainly: one transaction at a time, each rule in turn, then the
        features (which remember whether the rules caught it)."""
        out: list[Scored] = []
        rules, features, part = self.rules, self.features, self.part
        for k, tx in enumerate(batch):
            ts = tx.ts_ms
            if ts >= self._next_evict:
                self.tables.evict(ts)
                self._next_evict = ts + DAY
            hits = []
            for rule in rules:
                hit = rule.apply(tx, ts)
                if hit is not None:
                    hits.append(hit)
            row: list[float] = []
            if features is not None:
                up = upstream[k] if upstream is not None else ()
                caught = self._caught_codes(tx, hits, up) if self._caught_upto else (0, 0)
                compute = features.compute if part is None else features.compute_part
                row = compute(tx, ts, caught)
            out.append((row, hits))
        return out

    def model_rows(
        self, scored: Sequence[tuple[list[float] | bytes, list[Hit]]]
    ) -> np.ndarray[Any, Any]:
        """Model input, a row per transaction: its features (a list, or `score_packed`'s
        bytes) then one 0/1 flag per rule the model was trained with."""
        index = self._model_rules if self.model is not None else list(range(len(self.rule_ids)))
        column = {self.rule_ids[i]: j for j, i in enumerate(index) if i >= 0}
        n = len(scored)
        if not n:
            return np.zeros((0, 0))
        if isinstance(scored[0][0], bytes):
            blob = b"".join(row for row, _ in scored)  # type: ignore[misc]
            features = np.frombuffer(blob, dtype=np.float64).reshape(n, -1)
        else:
            features = np.asarray([row for row, _ in scored], dtype=np.float64).reshape(n, -1)
        flags = np.zeros((n, len(index)))
        for k, (_, hits) in enumerate(scored):
            for h in hits:
                j = column.get(h.rule)
                if j is not None:
                    flags[k, j] = 1.0
        return np.hstack([features, flags])

    def decide(self, batch: Sequence[Transaction]) -> list[Decision]:
        scored = self.score(batch)
        if self.model is not None and scored:
            probs = self.model.score(self.model_rows(scored))
            decisions = [
                self.combine(hits, float(p)) for (_, hits), p in zip(scored, probs, strict=True)
            ]
            if self.drift is not None:
                self.drift.observe(probs, [d.outcome == "fraud" for d in decisions])
                self.drift.commit()
            return decisions
        return [self.combine(hits, None) for _, hits in scored]

    def combine(self, hits: Sequence[Hit], probability: float | None) -> Decision:
        """One decision from the rules that fired and, with a model, its probability.

        Without a model the score is the weights of the rules that fired, capped to [0, 1],
        fraud from the rule set's `threshold`. With one it is the model's probability, as it
        is (the rules are among the model's inputs: adding their weights on top, capping and
        rounding would throw its ranking away), fraud from the threshold chosen in training,
        or when the rules the model has not learned (`unlearned`: too few hits on its training
        days, or added since) reach the rule set's `threshold` by their weights, as they would
        without a model. A block-list hit makes the outcome fraud, an allow-list hit legit,
        whatever the score.
        """
        if not hits and probability is not None and probability < self._quiet_below:
            return Decision("legit", probability, [], self.version)  # as below, said shortly
        reasons = [Reason(h.rule, h.reason) for h in hits]
        if probability is None:
            capped = min(max(sum(h.weight for h in hits), 0.0), 1.0)
            fraud = capped >= self.threshold  # before rounding, as always
            score = round(capped, 4)
        else:
            score = probability
            fraud = score >= self.model_threshold
            if fraud or probability >= 0.05:
                reasons.append(
                    Reason(
                        "model",
                        f"model probability {probability:.3f} (fraud from "
                        f"{self.model_threshold:.3f})",
                    )
                )
            untaught = [h for h in hits if h.rule in self.unlearned] if self.unlearned else []
            weight = sum(h.weight for h in untaught)
            if untaught and not fraud and weight >= self.threshold:
                fraud = True
                names = ", ".join(h.rule for h in untaught)
                reasons.append(
                    Reason(
                        "rules",
                        f"{names}: weight {weight:.2f} reaches the rules' threshold "
                        f"{self.threshold:.2f} (the model has not learned "
                        f"{'these rules' if len(untaught) > 1 else 'this rule'}: retrain it)",
                    )
                )
        if hits:
            if any(h.block for h in hits):
                fraud = True
            elif any(h.allow for h in hits):
                fraud = False
        outcome: Literal["legit", "fraud"] = "fraud" if fraud else "legit"
        return Decision(outcome, score, reasons, self.version)

"""Tasks: one assigned partition of one stage, with its state and bookkeeping.

A task class per stage role (`topology.py`), each with the same hooks the processor calls:

- `read(msgs)`: a run of consumed records of its partition, in offset order;
- `release()`: after every task has read, let out what the upstream marks allow (tasks that
  buffer: the keyed and output stages);
- `bound()`: its mark, the promise sent downstream that nothing at or below it will follow;
- `changes(resume)` / `commit()` / `rollback()`: its part of the transaction;
- `commit_offset(position)`: the input offset its commit may record.

    InputTask   decode, validate, dead-letter; the account rules; decide (one stage) or forward
    LabelTask   verdicts, forwarded in event time to the first keyed stage
    KeyedTask   buffer until the marks allow, then the rules of its key; forward
    OutputTask  buffer until the records before have gone out (input order: `Chain`), then
                decide and write legit / fraud

Tasks write only through the `RecordCollector`; they never see the producer or the consumer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from fraudstream.config import Settings
from fraudstream.detection import Engine, Hit
from fraudstream.schema import (
    Decision,
    Decoded,
    InvalidTransaction,
    Reason,
    Transaction,
    appendable,
    complete_label,
    decode_label,
    decode_transactions,
    encode_decided,
)
from fraudstream.stream.collector import RecordCollector
from fraudstream.stream.ordering import (
    DATA,
    INF,
    LABEL,
    Chain,
    Envelope,
    HopTx,
    Key,
    Lean,
    Meta,
    Orderer,
    decode_block,
    decode_meta,
    encode_meta,
    extra_bytes,
    payments,
)
from fraudstream.stream.topology import INPUT, KEYED, LABELS, OUTPUT, Stage, Topology

__all__ = [
    "META_KEY",
    "InputTask",
    "KeyedTask",
    "LabelTask",
    "OutputTask",
    "Task",
    "TaskContext",
    "new_task",
]

log = logging.getLogger(__name__)

META_KEY = b"m"  # a task's bookkeeping (Meta) in its changelog, beside the state's keys
# A bundle (`Envelope.more`) takes at most this many payments, and no more once their input
# records (values, keys, headers) reach BUNDLE_BYTES: one stays far under a block
# (BLOCK_BYTES) whatever the records
BUNDLE = 128
BUNDLE_BYTES = 64 * 1024
# Records far ahead of their partition's time are held until this many show that its clock
# moved, or one far behind them that they run on another (`run_ahead`), or it goes idle
RUN = 16


@dataclass
class TaskContext:
    """What the tasks of one processor share."""

    settings: Settings
    topology: Topology
    engine: Engine  # the whole rule set: decisions are made with it
    collector: RecordCollector
    wall_ms: Callable[[], int]  # only to refuse event times from the future
    skipped_labels: Counter[str] = field(default_factory=Counter)  # dead-lettered, by class
    # the input and labels topics' ids: a task's `Meta.source`, so that its `last_offset`
    # is not taken for an offset of a topic deleted and created again under the same name
    input_ids: dict[str, str] = field(default_factory=dict)
    # per stage index: the amount under which a payment skips that stage and goes straight
    # to the output, without its decoded transaction (`lean`); only the last keyed stage
    # (the output needs the input's bytes, not the transaction)
    lean_below: dict[int, float] = field(init=False)

    def __post_init__(self) -> None:
        stages = self.topology.stages
        last = stages[-2] if self.topology.staged else None
        self.lean_below = {}
        if last is not None and last.role == KEYED:
            floor = self.engine.for_stage(last.key).floor()
            if floor > 0:
                self.lean_below[last.index] = floor


def lean(tx: Transaction, value: bytes, floor: float) -> bool:
    """Whether a payment may skip a stage, straight to the output without its decoded
    transaction: it is under the stage's floor (`Engine.floor`: nothing there reads or
    changes state for it, no rule fires) and the output can be its input bytes with members
    appended (`appendable`)."""
    return tx.amount < floor and appendable(value, tx)


def run_ahead(
    every: list[Decoded | InvalidTransaction],
    start: int,
    base: int,
    latest: int,
    skew: int,
    final: bool,
) -> tuple[str, int, int]:
    """`every[start]` is valid and more than `skew` ahead of its partition's stream time
    `base` (or the partition's first record: `base` 0). Its partition's clock moved, or it
    runs on another clock (the README's kcat example, on the wall clock, in a replay of older
    history): the records after it tell. From it, valid records within `skew` of each other
    form a run, which ends
    - at a record more than `skew` behind its earliest: the run was on another clock, and is
      decided and ordered at the stream time (`base`), or for a partition's first records at
      that record's time. Else the partition's stream time would jump ahead, and every later
      record of it wait in the stages for the other partitions to get there;
    - at a record more than `skew` ahead of it, after RUN records, or (`final`) with the
      partition idle: the partition's clock moved (a quiet hour), and the run is decided at
      its own time.
    Returns ("other", end, time), ("own", end, 0), or ("wait", start, 0) when the records so
    far do not tell (the caller holds them). Only the partition's records decide it, so a
    restart or another process decides the same (unless it went idle in a run)."""
    first = every[start]
    assert not isinstance(first, InvalidTransaction)
    lo = hi = first.tx.ts_ms
    n = len(every)
    for i in range(start + 1, n):
        if i - start >= RUN:
            return "own", i, 0
        decoded = every[i]
        if isinstance(decoded, InvalidTransaction):
            continue  # dead-lettered in its place
        ts = decoded.tx.ts_ms
        if ts > latest:
            continue  # as much
        if ts < lo - skew:
            return "other", i, base or ts
        if ts > hi + skew:
            return "own", i, 0
        lo, hi = min(lo, ts), max(hi, ts)
    return ("own", n, 0) if final else ("wait", start, 0)


def place_in_time(
    every: list[Decoded | InvalidTransaction],
    stream_time: int,
    latest: int,
    skew: int,
    staged: bool,
    final: bool,
) -> tuple[int, int, list[tuple[int, Decoded, int]], dict[int, str], list[int]]:
    """Where in time a partition's records (`every`, decoded in offset order, read after
    its stream time `stream_time`) go. Returns `(stop, stream_time, placed, notes,
    refused)`: the records from `stop` on are held (`run_ahead` cannot tell yet), the
    partition's stream time after those before it, and for those:
    - `placed`: the valid ones, as (index, decoded at the time it is decided at, the
      partition's stream time once it is read: its order time);
    - `notes`: index -> why one was decided at another time than its own (event_time_skew);
    - `refused`: the invalid ones and those from beyond `latest` (the wall clock and the
      skew), for the dead-letter topic.
    Unstaged (one stage orders nothing across partitions) every record goes at its own time.
    Only the records decide it, so where the reads are cut changes nothing (`final`: the
    partition went idle, the end of its records for now)."""
    placed: list[tuple[int, Decoded, int]] = []
    notes: dict[int, str] = {}
    refused: list[int] = []
    judged = other = base = 0  # before `judged`: a run, decided at `other` or its own time
    for i, decoded in enumerate(every):
        if isinstance(decoded, InvalidTransaction):
            refused.append(i)
            continue
        ts = decoded.tx.ts_ms
        if ts > latest:
            refused.append(i)
            continue
        if (ts > stream_time + skew or not stream_time) and staged and i >= judged:
            verdict, judged, other = run_ahead(every, i, stream_time, latest, skew, final)
            if verdict == "wait":
                return i, stream_time, placed, notes, refused
            base = stream_time
        if other and i < judged:  # on another clock than the records after it
            notes[i] = (
                f"event time {_iso(ts)} is {_span(ts - base)} ahead of its partition's "
                f"stream time {_iso(base)}, and the records after it are back there; "
                f"decided at {_iso(other)}"
                if base
                else f"event time {_iso(ts)} is {_span(ts - other)} ahead of the records "
                f"after it, one of its partition's first; decided at {_iso(other)}"
            )
            decoded = Decoded(msgspec.structs.replace(decoded.tx, timestamp=other), decoded.added)
            ts = other
        if ts > stream_time:
            stream_time = ts
        placed.append((i, decoded, stream_time))
    return len(every), stream_time, placed, notes, refused


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(ms: int) -> str:
    s = ms / 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def _flag(decision: Decision, note: str) -> Decision:
    """The decision of a record decided at its partition's stream time, saying so."""
    return msgspec.structs.replace(
        decision, reasons=[*decision.reasons, Reason("event_time_skew", note)]
    )


class Task:
    """The bookkeeping every task has: its state engine (None when stateless), its `Meta`
    as committed and as it runs, and whether it read anything since the last commit."""

    role = ""
    buffers = False  # whether it holds what it reads until the marks let it out (release)

    def __init__(
        self,
        ctx: TaskContext,
        stage: Stage,
        partition: int,
        engine: Engine | None,
        meta: Meta,
    ) -> None:
        self.ctx = ctx
        self.stage = stage
        self.partition = partition
        self.origin = ctx.topology.origin(stage, partition)  # its id downstream
        self.engine = engine
        self.meta = meta
        # input and labels tasks: the id of the topic they read (`Meta.source`); a place
        # kept for a topic of that name deleted since means nothing here
        self.source = ctx.input_ids.get(stage.topic, "")
        if self.source and meta.source and meta.source != self.source:
            meta.last_offset, meta.source = -1, ""
        # whether its first records read show where its input resumed (`InputCheck.resumed`)
        self.check_resume = self.resume_offset() is not None
        # input and labels tasks: whether the group's committed offset is still to be checked
        # for the topic it was committed in (`InputCheck.resumed`)
        self.check_source = bool(self.source)
        # a one-stage topology sends no marks, but its input's place (`last_offset`) is kept:
        # a group whose committed offsets the broker forgot resumes there
        self.keep_meta = ctx.topology.staged or stage.role == INPUT
        self._saved = encode_meta(meta)  # the Meta as last committed
        self._committing = self._saved
        # whether a committed transaction wrote on its changelog (since it was made), and
        # whether the open one does: a handover waits for those to be readable (`hand_over`)
        self.wrote = False
        self._writes = False
        self.dirty = False  # read something since the last commit
        # the offset after the last record it read (-1: none since it was made or rolled
        # back): what a commit may cover while records are delivered but not read yet
        self.read_to = -1
        self.at_end: float | None = None  # input tasks: when the partition was read to its end
        self.end_high = -1  # and its high watermark as the fetches saw it then (-1: not known)
        self.idle = False
        self.sends_marks = ctx.topology.staged and stage.role != OUTPUT
        # whether its last mark sent asked to hold back (HOLD); None: not known (resend)
        self.held: bool | None = False
        # where forward() sends: the next stage's repartition topic
        self.to_topic = ctx.topology.next(stage).topic if self.sends_marks else ""

    def take(self, run: list[Any]) -> None:
        """Read a run of its partition's records (in order), with the bookkeeping the commit
        needs: it has read something, up to where, and its input is not idle."""
        self.dirty = True
        self.at_end = None
        self.idle = False
        self.read(run)
        self.read_to = int(run[-1].offset()) + 1

    def resume_offset(self) -> int | None:
        """Input and labels tasks: where its input resumes by its committed `Meta`, the
        offset after the last one it decided (in the same transaction as its committed offset);
        None when that is not known (nothing decided yet, or in a topic deleted since)."""
        m = self.meta
        # (a Meta written before it kept the topic's id, "", is taken as this topic's:
        # `InputCheck.resumed` checks it against the partition's end)
        if m.last_offset < 0 or not self.source or m.source not in ("", self.source):
            return None
        return m.last_offset + 1

    # --- hooks -----------------------------------------------------------------------------

    def read(self, msgs: list[Any]) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Tasks that buffer: let out what the marks allow (others have nothing to do)."""

    def settle(self) -> None:
        """Gone idle (inputs): let out what it held until more came (others hold nothing)."""

    def bound(self) -> Key | None:
        """This task's mark: nothing it sends later is at or below it."""
        m = self.meta
        return (INF if self.idle else m.stream_time, self.origin, m.last_offset)

    def commit_offset(self, position: int) -> int | None:
        """The input offset to commit: the reading position (`position` < 0: nothing read
        yet), if anything was read."""
        if not self.dirty:
            return None
        return position if position >= 0 else None

    def committed_meta(self, resume: int | None) -> Meta:
        return self.meta

    # --- the transaction -------------------------------------------------------------------

    def begin(self) -> None:
        if self.engine is not None:
            self.engine.begin()

    def changes(self, resume: int | None) -> list[tuple[bytes, bytes | None]]:
        """Changelog records of this transaction; `resume`: the input offset it commits."""
        out = self.engine.changes() if self.engine is not None else []
        if self.keep_meta:
            blob = encode_meta(self.committed_meta(resume))
            if blob != self._saved:
                out.append((META_KEY, blob))
            self._committing = blob
        if out:
            self._writes = True
        return out

    def commit(self) -> None:
        if self.engine is not None:
            self.engine.commit()
        if self.keep_meta:
            self._saved = self._committing
        self.dirty = False
        if self._writes:
            self.wrote, self._writes = True, False

    def rollback(self) -> None:
        if self.engine is not None:
            self.engine.rollback()
        self.meta = decode_meta(self._saved)
        self.dirty = False
        self._writes = False
        self.read_to = -1
        self.at_end = None
        self.held = None

    @property
    def saved_meta(self) -> bytes:
        """The Meta as last committed (what a snapshot stores with the state)."""
        return self._saved

    # --- shared by the roles ---------------------------------------------------------------

    def forward(self, partition: int, env: Envelope) -> None:
        """`env` to `partition` of the next stage, numbered in this task's sequence there."""
        self.forward_all([partition], [env])

    def forward_all(self, partitions: list[int], envs: list[Envelope]) -> None:
        """Each envelope to its partition of the next stage, in order, numbered in this
        task's sequence per partition."""
        groups: dict[int, list[Envelope]] = {}
        for partition, env in zip(partitions, envs, strict=True):
            group = groups.get(partition)
            if group is None:
                groups[partition] = [env]
            else:
                group.append(env)
        seq, origin, collector, topic = (
            self.meta.seq,
            self.origin,
            self.ctx.collector,
            self.to_topic,
        )
        for partition, group in groups.items():
            n = seq.get(partition, 0)
            for env in group:
                n += 1
                env.u = origin
                env.s = n
            seq[partition] = n
            collector.forward((topic, partition), group)


class _Unbuffered(Task):
    """Input and label tasks: they read their partition in order and buffer nothing; an
    input that went idle (read to its end for PARTITION_IDLE_MS) marks INF."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = self._was_idle()

    def _was_idle(self) -> bool:
        """An input whose last committed mark said idle (it stays so until a record comes)."""
        sent = self.meta.sent
        return sent is not None and sent[0] == INF

    def rollback(self) -> None:
        super().rollback()
        self.idle = self._was_idle()


class InputTask(_Unbuffered):
    role = INPUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Records from one far ahead of the partition's time on (or its first), while it is
        # not known whether its clock moved or they run on another (`run_ahead`): read again
        # with what comes next; its committed offset stays at the first of them.
        self.held_run: list[Any] = []

    def read(self, msgs: list[Any]) -> None:
        self._read(msgs, final=False)

    def settle(self) -> None:
        """Gone idle: the records it holds are decided at their own time (nothing came after
        them to say otherwise). What it lets out is decided in the open transaction, so
        that transaction commits the input past it (`dirty`), or a restart decides it again."""
        if self.held_run:
            self._read([], final=True)
            self.dirty = True

    def commit_offset(self, position: int) -> int | None:
        if self.held_run and self.dirty:
            return int(self.held_run[0].offset())  # read again after a restart
        return super().commit_offset(position)

    def rollback(self) -> None:
        super().rollback()
        self.held_run = []

    def _read(self, msgs: list[Any], final: bool) -> None:
        if self.held_run:
            msgs, self.held_run = self.held_run + msgs, []
        ctx = self.ctx
        collector = ctx.collector
        meta = self.meta
        skew = ctx.settings.max_event_time_skew_ms
        latest = ctx.wall_ms() + skew  # no event time beyond this is believed
        first = msgs[0]
        every = decode_transactions(
            [msg.value() for msg in msgs],
            topic=first.topic(),
            partition=first.partition(),
            offsets=[msg.offset() for msg in msgs],
            record_ts_ms=[msg.timestamp()[1] for msg in msgs],
        )
        stop, stream_time, placed, notes, refused = place_in_time(
            every, meta.stream_time, latest, skew, self.sends_marks, final
        )
        for i in refused:
            msg, decoded = msgs[i], every[i]
            if isinstance(decoded, InvalidTransaction):
                collector.dead_letter(msg, decoded.kind, str(decoded), "decode")
            else:
                ts = decoded.tx.ts_ms
                collector.dead_letter(
                    msg,
                    "event_time_skew",
                    f"event time {_iso(ts)} is {_span(ts - latest + skew)} ahead of the wall "
                    f"clock, more than MAX_EVENT_TIME_SKEW_MS ({_span(skew)}); fix the "
                    "producer's clock or the record's timestamp",
                    "decode",
                )
        self.held_run = msgs[stop:]
        if not stop:
            return
        meta.stream_time = stream_time
        meta.last_offset = msgs[stop - 1].offset()
        meta.source = self.source
        if not placed:
            return
        assert self.engine is not None
        scored = self.engine.score_packed([d.tx for _, d, _ in placed])
        topology = ctx.topology
        if not topology.staged:  # one stage: decide here
            combine, quiet = ctx.engine.combine, ctx.engine.quiet
            for (i, decoded, _), (_, hits) in zip(placed, scored, strict=True):
                msg = msgs[i]
                decision = combine(hits, None) if hits else quiet
                if notes and i in notes:  # decided at its partition's stream time
                    decision = _flag(decision, notes[i])
                if decision.reasons:
                    collector.count_reasons(decision.reasons)
                value = encode_decided(msg.value(), decoded.added, decision, decoded.tx)
                collector.output(msg.key(), value, msg.headers(), decision.outcome)
            return
        to = topology.next(self.stage)
        q = self.partition
        key = to.key
        route = topology.route
        # under the floor of the next stage, when it is the last keyed one, nothing in the
        # keyed stages concerns a payment: it goes straight to the output (in bundles)
        floor = ctx.lean_below.get(to.index, 0.0)
        chain = meta.chain  # the number of the last record sent toward the output
        parts: list[int] = []
        envs: list[Envelope] = []
        direct: list[Envelope] = []
        head: Envelope | None = None  # the open bundle (`Envelope.more`)
        room = room_bytes = 0  # payments it may still take, and their bytes
        for (i, decoded, order_time), (row, hits) in zip(placed, scored, strict=True):
            msg = msgs[i]
            tx = decoded.tx
            value = msg.value()
            offset = msg.offset()
            hit = [(h.rule, h.weight, h.reason, h.allow, h.block) for h in hits] if hits else []
            skips = floor and lean(tx, value, floor)  # crosses without its transaction
            mkey, headers = msg.key(), msg.headers()
            if skips:  # its size in a bundle: key and headers count too
                size = (len(value) + len(mkey)) if mkey else len(value)
                if headers:
                    size += extra_bytes(None, headers)
            # (in the open bundle; a payment of a bundle's bytes or more opens its own, so a
            # bundle stays well under the record limit)
            if skips and head is not None and room and room_bytes > 0 and size < BUNDLE_BYTES:
                assert not row  # (a stage with a floor keeps no model features)
                note = notes.get(i, "") if notes else ""
                head.more.append(Lean(value, decoded.added, mkey, headers, hit, note))
                room -= 1
                room_bytes -= size
                continue
            env = Envelope(
                DATA,
                order_time,
                q,
                offset,
                q,
                0,
                None if skips else HopTx.of(tx),
                value,
                decoded.added,
                mkey,
                headers,
                {"source": row} if row else {},  # feature rows (with a model)
                hit,
            )
            chain += 1
            env.c = chain
            if notes and i in notes:
                env.note = notes[i]
            if skips:  # it opens a bundle, straight to the output
                head = env
                room, room_bytes = BUNDLE - 1, BUNDLE_BYTES - size
                env.u = self.origin
                direct.append(env)
            else:  # a payment the stage reads: the next one under the floor opens a bundle
                head = None
                parts.append(route(to, getattr(tx, key), q))
                envs.append(env)
        meta.chain = chain
        if envs:
            self.forward_all(parts, envs)
        if direct:  # unnumbered: the output orders and skips them by `c`
            collector.forward((topology.output.topic, q), direct)


class LabelTask(_Unbuffered):
    role = LABELS

    def read(self, msgs: list[Any]) -> None:
        ctx = self.ctx
        topology = ctx.topology
        meta = self.meta
        to = topology.next(self.stage)
        q = self.origin
        meta.source = self.source
        for msg in msgs:
            meta.last_offset = msg.offset()
            try:
                label = decode_label(msg.value())
            except InvalidTransaction as exc:
                self._skip(msg, exc.kind, str(exc))
                continue
            if label.is_fraud and label.target is None:
                self._skip(
                    msg,
                    "label_incomplete",
                    f"fraud label {label.id} names no target: the payee-risk features need "
                    "the labelled payment's target (and its merchant, when it had one)",
                )
                continue
            # a verdict takes its place in time when it was published, and is known from
            # then on unless it says when (known_ms)
            published = label.published_ms
            if published is None:
                published = msg.timestamp()[1]
            meta.stream_time = max(meta.stream_time, published)
            if not label.is_fraud:
                # a legit verdict changes no feature (`FeatureState.label`): its time moves
                # the mark on, but it does not travel (nor split the stages' runs)
                continue
            label = complete_label(label, published_ms=published)
            env = Envelope(LABEL, meta.stream_time, q, msg.offset(), q, 0, label=label)
            self.forward(topology.route(to, getattr(label, to.key, None), q), env)

    def _skip(self, msg: Any, error_class: str, message: str) -> None:
        self.ctx.collector.dead_letter(msg, error_class, message, "label")
        self.ctx.skipped_labels[error_class] += 1


class KeyedTask(Task):
    """A stage keyed by another field than the input's: what it reads from every upstream
    task waits in an `Orderer` until the marks let it out in order-key order."""

    role = KEYED
    buffers = True
    buffer: type[Orderer] = Orderer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.orderer = self.buffer(self.stage.upstream, self.meta)

    def read(self, msgs: list[Any]) -> None:
        orderer = self.orderer
        collector = self.ctx.collector
        envelopes = 0
        # Its committed offset stays at the oldest block it buffers, so a restart reads again
        # what came after: blocks are known again by their numbers, a bad record by its offset
        # (its dead letter was committed with this `last_offset`).
        read_before = self.meta.last_offset
        for msg in msgs:
            value = msg.value()
            try:
                block = decode_block(value)
            except Exception as exc:  # not written by a detector: keep it, never stop
                if msg.offset() > read_before:
                    collector.dead_letter(msg, type(exc).__name__, str(exc), "repartition")
                continue
            if not block:
                continue
            # a block shares its record's offset: committed as one
            held = payments(block)
            orderer.offer_block(block, msg.offset(), len(value) // held)
            envelopes += held
        self.meta.last_offset = max(read_before, msgs[-1].offset())
        collector.count_blocks(envelopes, len(msgs))

    def release(self) -> None:
        released = self.orderer.release()
        if not released:
            return
        engine = self.engine
        assert engine is not None
        to = self.ctx.topology.next(self.stage)
        last = self.ctx.topology.is_output(to)
        run: list[Envelope] = []  # the payments scored together
        out: list[Envelope] = []  # what goes on, in order: those payments, the verdicts among them
        latest = -1  # the latest event time of the run's payments
        for env in released:
            if env.kind == DATA:
                run.append(env)
                out.append(env)
                if env.tx is not None:
                    latest = max(latest, env.tx.ts_ms)
                continue
            label = env.label
            assert label is not None and label.known_ms is not None
            # A verdict counts for the payments at or after its `known_ms` only (queued until
            # then: `FeatureState.label`). When every payment of the run so far is earlier,
            # queueing it before they are scored changes nothing for them, and the run goes
            # on as one batch; else they are scored first. (Verdicts cut the keyed stages'
            # runs into a few dozen payments each, and each batch has a fixed cost.)
            if run and label.known_ms <= latest:
                self._score_run(engine, run)
                self._forward_run(to, out)
                run, out, latest = [], [], -1
            engine.observe_labels([label])
            if not last:  # the next keyed stage wants the verdict too
                out.append(env)
        self._score_run(engine, run)
        self._forward_run(to, out)

    def _score_run(self, engine: Engine, run: list[Envelope]) -> None:
        """Score a run of payments (those that came without their transaction crossed
        under this stage's floor: nothing here concerns them), adding each one's feature
        row and hits to its envelope."""
        full = [e for e in run if e.tx is not None]
        if not full:
            return
        key = self.stage.key
        scored = engine.score_packed([e.tx for e in full], [e.hits for e in full])  # type: ignore[misc]
        for env, (row, hits) in zip(full, scored, strict=True):
            if row:
                env.parts[key] = row
            if hits:
                env.hits += [(h.rule, h.weight, h.reason, h.allow, h.block) for h in hits]

    def _forward_run(self, to: Stage, out: list[Envelope]) -> None:
        """Forward scored payments and the verdicts among them, in order, to the next stage."""
        if not out:
            return
        route = self.ctx.topology.route
        if self.ctx.topology.is_output(to):  # partitioned like the input: by env.q
            for env in out:
                if env.tx is not None and appendable(env.value, env.tx):
                    env.tx = None  # the output stage needs the bytes, not tx
            self.forward_all([env.q for env in out], out)
            return
        floor = self.ctx.lean_below.get(to.index, 0.0)
        parts: list[int] = []
        on: list[Envelope] = []
        direct: dict[int, list[Envelope]] = {}  # by output partition
        for env in out:
            if env.kind != DATA:  # a verdict, routed by its own key
                assert env.label is not None
                parts.append(route(to, getattr(env.label, to.key, None), env.q))
                on.append(env)
                continue
            tx = env.tx
            assert tx is not None  # (before the last keyed stage, every payment has it)
            if floor and lean(tx, env.value, floor):  # the next stage, the last keyed,
                env.tx = None  # has nothing for it: straight to the output (`Chain`)
                env.u = self.origin
                direct.setdefault(env.q, []).append(env)
                continue
            parts.append(route(to, getattr(tx, to.key), env.q))
            on.append(env)
        if on:
            self.forward_all(parts, on)
        if direct:
            output, collector = self.ctx.topology.output.topic, self.ctx.collector
            for q, envs in direct.items():
                collector.forward((output, q), envs)

    def bound(self) -> Key | None:
        # After a restart the marks read past the resume offset are read again; the mark
        # sent before stays true meanwhile (the upstream promises hold), so never resend
        # a lower one.
        bound, sent = self.orderer.bound(), self.meta.sent
        if bound is None or (sent is not None and sent > bound):
            return sent
        return bound

    def commit_offset(self, position: int) -> int | None:
        """The oldest record still buffered, else the reading position."""
        buffered = self.orderer.oldest()
        if buffered is not None:
            return buffered
        return position if position >= 0 else None

    def committed_meta(self, resume: int | None) -> Meta:
        if resume is None:
            return self.meta
        return self.orderer.committed_meta(resume)

    def rollback(self) -> None:
        super().rollback()
        self.orderer.reset(self.meta)


class OutputTask(KeyedTask):
    """The last stage: input order back (it is partitioned like the input: `Chain`), the
    decisions."""

    role = OUTPUT
    buffer = Chain

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (since when, the number) it holds records but not the one numbered next
        self.gap_since: tuple[float, int] | None = None

    def gap_due(self, now: float, timeout_s: float) -> bool:
        """Whether to write on without the record it waits for (`Chain.skip_gap`): it has
        waited `timeout_s` for it, holding later ones, and every stage before is idle, so
        nothing is on its way."""
        chain = self.orderer
        assert isinstance(chain, Chain)
        if not chain.gap():
            self.gap_since = None
            return False
        waits = chain.next_number()
        if self.gap_since is None or self.gap_since[1] != waits:
            self.gap_since = (now, waits)
        return now - self.gap_since[0] >= timeout_s and chain.idle_upstream()

    def skip_gap(self) -> None:
        """Write on without the records it waited for (see `gap_due`), and without any
        other number missing among those it holds (the same loss), loudly."""
        chain = self.orderer
        assert isinstance(chain, Chain)
        skipped = []
        numbers = 0
        while (gap := chain.skip_gap()) is not None:
            skipped.append(f"{gap[0]} to {gap[1]}" if gap[1] > gap[0] else str(gap[0]))
            numbers += gap[1] - gap[0] + 1
            self.release()
        if not skipped:
            return
        self.ctx.collector.pending.gap_numbers += numbers
        log.warning(
            "%s[%d]: records numbered %s from input partition %d never arrived; the stage "
            "before is idle and the records after them waited %.0fs, so they are written "
            "without them. Their transaction's records were lost after it committed (a broker "
            "that dropped a commit's markers: docs/delivery.md); should they come after all, "
            "they are written then, out of order",
            self.stage.topic,
            self.partition,
            ", ".join(skipped),
            self.partition,
            self.ctx.settings.output_gap_timeout_ms / 1000,
        )
        self.gap_since = None
        self.dirty = True

    def rollback(self) -> None:
        super().rollback()
        self.gap_since = None

    def release(self) -> None:
        chain = self.orderer
        assert isinstance(chain, Chain)
        late = chain.late() if chain.meta.lost else []
        if late:
            self.ctx.collector.pending.late_numbers += len(late)
            log.warning(
                "%s[%d]: records numbered %s from input partition %d came after all, after "
                "the ones the output wrote without them: written now, out of order",
                self.stage.topic,
                self.partition,
                ", ".join(map(str, late)),
                self.partition,
            )
        released = chain.release()
        if not released:
            return
        ctx = self.ctx
        data: list[Envelope | Lean] = []
        for e in released:
            if e.kind == DATA:
                data.append(e)
                if e.more:  # a bundle: the payments right after it in its partition
                    data += e.more
        decisions = ctx.engine.finish(
            [e.parts for e in data], [[Hit(*h) for h in e.hits] if e.hits else [] for e in data]
        )
        out = []
        collector = ctx.collector
        for env, decision in zip(data, decisions, strict=True):
            if env.note:
                decision = _flag(decision, env.note)
            if decision.reasons:
                collector.count_reasons(decision.reasons)
            value = encode_decided(env.value, env.added, decision, env.tx)
            out.append((env.key, value, env.headers, decision.outcome))
        ctx.collector.outputs(out)


_ROLES: dict[str, type[Task]] = {
    INPUT: InputTask,
    LABELS: LabelTask,
    KEYED: KeyedTask,
    OUTPUT: OutputTask,
}


def new_task(
    ctx: TaskContext, stage: Stage, partition: int, engine: Engine | None, meta: Meta
) -> Task:
    """The task of `stage`'s role for `partition`."""
    return _ROLES[stage.role](ctx, stage, partition, engine, meta)

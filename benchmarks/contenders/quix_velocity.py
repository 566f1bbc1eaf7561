"""The account velocity rules of rules/default.yaml as a Quix Streams application, for
`benchmarks/bench.py` (runs in .venv-bench: quixstreams).

- burst_1h: more than 5 payments from one account in an hour (weight 0.6);
- spend_24h: more than 5,000 EUR from one account in 24 hours (weight 0.3);

fraud when the weights of the rules that fire reach the threshold, 0.6. Each window is kept
as fraudstream keeps it (`Velocity` in src/fraudstream/detection/rules.py): a ring of six
event-time buckets per account, the transaction's own bucket included, so both decide alike.
The state is Quix's (RocksDB per partition, a changelog topic), keyed by the message key (the
paying account); `processing_guarantee="exactly-once"` writes outputs, state changes and input
offsets in one Kafka transaction, committed as often as fraudstream commits (every 100 ms or
20,000 records). Output: the transaction plus a `decision`, to LEGIT_TOPIC or FRAUD_TOPIC.

Environment: KAFKA_BROKER_URL, TRANSACTIONS_TOPIC, LEGIT_TOPIC, FRAUD_TOPIC, BENCH_GROUP,
BENCH_STATE_DIR.
"""

import os

from quixstreams import Application
from quixstreams.state import State

BUCKETS = 6
THRESHOLD = 0.6
# rule id, weight, bucket width in ms, limit (a count, or a sum in cents), what it adds up
RULES = (
    ("burst_1h", 0.6, 3_600_000 // BUCKETS, 5, "count"),
    ("spend_24h", 0.3, 86_400_000 // BUCKETS, 500_000, "cents"),
)


def window_total(ring: list[int], bucket: int, add: int) -> int:
    """Add `add` to `bucket` of `ring` ([newest bucket id, slot 0, …, slot 5]), emptying the
    slots the window moves past; return the total over the window ending at the newest."""
    head = ring[0]
    if bucket > head:
        for b in range(max(head + 1, bucket - BUCKETS + 1), bucket + 1):
            ring[1 + b % BUCKETS] = 0
        ring[0] = head = bucket
    if bucket > head - BUCKETS:  # else older than the whole window: it counts nowhere
        ring[1 + bucket % BUCKETS] += add
    low, high = max(bucket, head) - BUCKETS + 1, min(bucket, head)
    return sum(ring[1 + b % BUCKETS] for b in range(low, high + 1) if b > head - BUCKETS)


def decide(tx: dict, state: State) -> dict:
    rings = state.get("rings") or [[-1] + [0] * BUCKETS for _ in RULES]
    ts, cents = tx["timestamp"], round(tx["amount"] * 100)
    score, reasons = 0.0, []
    for ring, (rule, weight, width, limit, what) in zip(rings, RULES, strict=True):
        total = window_total(ring, ts // width, 1 if what == "count" else cents)
        if total > limit:
            score += weight
            reasons.append({"rule": rule, "reason": f"{total} > {limit} ({what})"})
    state.set("rings", rings)
    score = min(score, 1.0)
    outcome = "fraud" if score >= THRESHOLD else "legit"
    tx["decision"] = {"outcome": outcome, "score": score, "reasons": reasons}
    return tx


def is_fraud(tx: dict) -> bool:
    return tx["decision"]["outcome"] == "fraud"


def main() -> None:
    app = Application(
        broker_address=os.environ["KAFKA_BROKER_URL"],
        consumer_group=os.environ["BENCH_GROUP"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=0.1,
        commit_every=20_000,
        state_dir=os.environ["BENCH_STATE_DIR"],
        loglevel="WARNING",
    )
    transactions = app.topic(os.environ["TRANSACTIONS_TOPIC"], value_deserializer="json")
    legit = app.topic(os.environ["LEGIT_TOPIC"], value_serializer="json")
    fraud = app.topic(os.environ["FRAUD_TOPIC"], value_serializer="json")

    sdf = app.dataframe(transactions)
    sdf = sdf.apply(decide, stateful=True)
    sdf.to_topic(lambda tx, _key, _ts, _headers: fraud if is_fraud(tx) else legit)
    app.run()


if __name__ == "__main__":
    main()

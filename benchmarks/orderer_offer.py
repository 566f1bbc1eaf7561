"""The keyed stages' buffer alone (no Kafka): a repartition block offered at once
(`Orderer.offer_block`, the runtime's path) against one envelope at a time (`offer`).

    python benchmarks/orderer_offer.py [--blocks 40] [--block-size 500] [--runs 15]

Blocks of simulated envelopes (the `sim` profile) from six upstream tasks, encoded and decoded
as on a repartition topic, offered to a fresh buffer by each path in turn, the two paths
interleaved; prints the best time per envelope of each and the ratio. Not a test: a property
test holds the two paths equal (tests/unit/test_ordering.py).
"""

from __future__ import annotations

import argparse
import time

from fraudstream.generator.app import records
from fraudstream.schema import decode_transaction
from fraudstream.stream.ordering import (
    DATA,
    Envelope,
    HopTx,
    Meta,
    Orderer,
    decode_block,
    encode_block,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    source = records("sim", 1, lambda: 1_790_000_000_000)
    blocks, n = [], 0
    for b in range(args.blocks):
        envs = []
        for _ in range(args.block_size):
            _, value, _ = next(source)
            d = decode_transaction(value)
            n += 1
            u = b % 6
            tx = HopTx.of(d.tx)
            envs.append(Envelope(DATA, d.tx.ts_ms, u, n, u, n, tx, value, d.added, b"k"))
        blocks.append(decode_block(encode_block(envs)))

    def run(at_once: bool) -> float:
        orderer = Orderer(6, Meta())
        start = time.perf_counter()
        for offset, block in enumerate(blocks):
            if at_once:
                orderer.offer_block(block, offset, 370)
            else:
                for env in block:
                    orderer.offer(env, offset, 370)
        return time.perf_counter() - start

    best = {False: float("inf"), True: float("inf")}
    for _ in range(args.runs):
        for at_once in (False, True):
            best[at_once] = min(best[at_once], run(at_once))
    each, block = (best[k] / n * 1e9 for k in (False, True))
    print(f"offer, one envelope at a time: {each:.0f} ns per envelope")
    print(f"offer_block:                   {block:.0f} ns per envelope ({block / each:.2f}x)")


if __name__ == "__main__":
    main()

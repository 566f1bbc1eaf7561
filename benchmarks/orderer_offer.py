"""The keyed stages' buffer alone (no Kafka): a repartition block offered at once
(`Orderer.offer_block`, the runtime's path) against one envelope at a time (`offer`); and
releasing it with the bookkeeping per upstream (`Orderer.release`, the runtime's path)
against one record at a time (`release_each`).

    python benchmarks/orderer_offer.py [--blocks 40] [--block-size 500] [--runs 15]

Blocks of simulated envelopes (the `sim` profile) from six upstream tasks, encoded and decoded
as on a repartition topic, offered to a fresh buffer by each path in turn, the two paths
interleaved; then the whole buffer released in steps of one block per upstream, by each path
in turn. Prints the best time per envelope of each and the ratios. Not a test: property tests
hold the paths equal (tests/unit/test_ordering.py).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from fraudstream.generator.app import records
from fraudstream.schema import decode_transaction
from fraudstream.stream.ordering import (
    DATA,
    MARK,
    Envelope,
    HopTx,
    Meta,
    Orderer,
    decode_block,
    encode_block,
)


def _best(runs: int, timed: Callable[[bool], float], order: tuple[bool, ...]) -> dict[bool, float]:
    """The best of `runs` times of `timed(path)` for each path, the paths interleaved."""
    best = dict.fromkeys(order, float("inf"))
    for _ in range(runs):
        for path in order:
            best[path] = min(best[path], timed(path))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    source = records("sim", 1, lambda: 1_790_000_000_000)
    blocks, n = [], 0
    sent = [0] * 6  # each upstream numbers what it sends this partition 1, 2, 3 …
    for b in range(args.blocks):
        envs = []
        u = b % 6
        for _ in range(args.block_size):
            _, value, _ = next(source)
            d = decode_transaction(value)
            n += 1
            sent[u] += 1
            tx = HopTx.of(d.tx)
            envs.append(Envelope(DATA, d.tx.ts_ms, u, n, u, sent[u], tx, value, d.added, b"k"))
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

    best = _best(args.runs, run, (False, True))
    each, block = (best[k] / n * 1e9 for k in (False, True))
    print(f"offer, one envelope at a time: {each:.0f} ns per envelope")
    print(f"offer_block:                   {block:.0f} ns per envelope ({block / each:.2f}x)")

    # releasing: the marks of the six upstreams move on one block at a time
    steps = [blocks[i : i + 6] for i in range(0, len(blocks), 6)]

    def release(plain: bool) -> float:
        orderer = Orderer(6, Meta())
        for offset, block in enumerate(blocks):
            orderer.offer_block(block, offset, 370)
        spent = 0.0
        for k, step in enumerate(steps):
            for u, block in enumerate(step):
                last = block[-1]
                orderer.offer(Envelope(MARK, last.t, last.q, last.o, u, k + 1), 0)
            start = time.perf_counter()
            orderer.release_each() if plain else orderer.release()
            spent += time.perf_counter() - start
        return spent

    best = _best(args.runs, release, (True, False))
    each, fast = (best[k] / n * 1e9 for k in (True, False))
    print(f"release_each, one at a time:   {each:.0f} ns per envelope")
    print(f"release:                       {fast:.0f} ns per envelope ({fast / each:.2f}x)")


if __name__ == "__main__":
    main()

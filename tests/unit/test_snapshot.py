"""A local snapshot of an engine's state decides on exactly as the engine it was taken from."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.detection import Engine, load_ruleset
from fraudstream.generator.sim import Simulator
from fraudstream.schema import Transaction, decode_transaction
from fraudstream.stream.snapshot import Snapshot, SnapshotStore

REPO = Path(__file__).resolve().parents[2]
RULES = load_ruleset(REPO / "rules" / "default.yaml")
STREAM: list[Transaction] = [
    decode_transaction(msgspec.json.encode(tx)).tx
    for tx, _ in Simulator(seed=9, fraud_rate=0.05).take(3_000)
]


@settings(max_examples=15, deadline=None)
@given(cut=st.integers(0, len(STREAM)), stage=st.sampled_from([None, "source", "target"]))
def test_a_snapshot_decides_on_like_its_engine(cut: int, stage: str | None) -> None:
    def make() -> Engine:
        engine = Engine.from_ruleset(RULES)
        return engine if stage is None else engine.for_stage(stage)

    original = make()
    before = original.score(STREAM[:cut]) if cut else []
    assert len(before) == cut
    copy = make()
    assert copy.load_snapshot(original.snapshot())
    assert copy.score(STREAM[cut:]) == original.score(STREAM[cut:])


def test_a_snapshot_of_other_rules_is_refused() -> None:
    engine = Engine.from_ruleset(RULES).for_stage("source")
    other = Engine.from_ruleset(load_ruleset(REPO / "rules" / "tutorial.yaml"))
    assert not other.load_snapshot(engine.snapshot())


def test_torn_files_are_never_trusted(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "g")
    store.write(Snapshot("g.changelog", 2, "id-1", 40, b"m", b"state"))
    assert store.flush()
    assert store.read("g.changelog", 2) == Snapshot("g.changelog", 2, "id-1", 40, b"m", b"state")
    path = store.path("g.changelog", 2)
    blob = path.read_bytes()
    for cut in (0, 5, len(blob) // 2, len(blob) - 1):
        path.write_bytes(blob[:cut])
        assert store.read("g.changelog", 2) is None
    assert store.read("g.changelog", 3) is None
    with pytest.raises(FileNotFoundError):
        store.path("g.changelog", 3).read_bytes()

"""The state keys' hash: SipHash-1-3 over UTF-32 code units, the same in every process given
the same seed, the same through the batch and the one-key paths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.detection import keyhash
from tests.conftest import REPO

# Strings that CPython keeps as UTF-32 (a code point above U+FFFF): with PYTHONHASHSEED=0
# (a zero key), its `hash` of them is SipHash-1-3 of exactly the bytes `keyhash` hashes.
WIDE = ["\U0001f600", "a\U0001f600", "xyz\U0001f600abc", "\U0001f600" * 9, "ü€\U00010348" * 40]


def _hashes_in_a_process(code: str, seed: str | None = None) -> list[int]:
    env = {"PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "0"}
    prefix = f"from fraudstream.detection import keyhash; keyhash.use_seed({seed!r}); "
    out = subprocess.run(
        [sys.executable, "-c", prefix + code], env=env, capture_output=True, text=True, check=True
    )
    return [int(x) for x in out.stdout.split()]


def test_it_is_siphash13_as_cpython_computes_it() -> None:
    expected = _hashes_in_a_process(f"print(*(hash(s) for s in {WIDE!r}))")
    saved = keyhash._key
    try:
        keyhash._key = (np.uint64(0), np.uint64(0))
        assert keyhash.key_hashes(WIDE).tolist() == expected
        assert [keyhash.key_hash(s) for s in WIDE] == expected
    finally:
        keyhash._key = saved


def test_a_seed_hashes_alike_in_every_process_and_another_seed_does_not() -> None:
    keys = ["acct-1", "shop-\u00e9", "", "\U0001f600"]
    code = f"print(*keyhash.key_hashes({keys!r}).tolist(), keyhash.fingerprint())"
    one, again = _hashes_in_a_process(code, "1234"), _hashes_in_a_process(code, "1234")
    other = _hashes_in_a_process(code, "1235")
    assert one == again
    assert all(a != b for a, b in zip(one, other, strict=True))


@settings(deadline=None)  # the first example compiles the kernels (numba), when not cached
@given(st.lists(st.text(max_size=40), max_size=30))
def test_the_batch_and_one_key_paths_agree(keys: list[str]) -> None:
    batch = keyhash.key_hashes(keys).tolist()
    assert batch == [keyhash.key_hash(k) for k in keys]
    assert 0 not in batch  # 0 marks an empty slot in the key index
    ascii_only = [k.encode("ascii", "replace").decode() for k in keys]  # the one-byte path
    assert keyhash.key_hashes(ascii_only).tolist() == [keyhash.key_hash(k) for k in ascii_only]


def test_a_lone_surrogate_hashes_too() -> None:
    """JSON decoding refuses them, but a key from elsewhere never makes the hash raise."""
    keys = ["\ud800", "a\udc00b"]
    assert keyhash.key_hashes(keys).tolist() == [keyhash.key_hash(k) for k in keys]
    assert len(set(keyhash.key_hashes(keys).tolist())) == 2

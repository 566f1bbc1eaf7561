"""The 64-bit hash of a state key, keyed with a secret: the same in every process given the
same seed, unlike Python's `hash` (seeded at interpreter start by `PYTHONHASHSEED`).

A table's key index (`state.KeyIndex`) holds these hashes instead of the keys, and a local
snapshot holds the index as it is, so a restarted detector must hash as the one before it: it
calls `use_seed` with this installation's seed (`locks.hash_seed`, kept in
`STATE_DIR/hashseed`) before it builds its engines. Without a seed the key is random per
process, as Python's is. The secret keeps outsiders from crafting keys that collide (two keys
with one hash would share a row).

The function is SipHash-1-3 (the one CPython uses for `str`) over the key's UTF-32-LE code
units, compiled with numba; `key_hashes` hashes a whole batch in one call (the keys joined
into one buffer, one byte per code unit when all are ASCII). 0 marks an empty slot in the
index, so a hash of 0 reads 1.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

__all__ = ["fingerprint", "key_hash", "key_hashes", "use_seed"]

_key: tuple[np.uint64, np.uint64] = (np.uint64(0), np.uint64(0))


def use_seed(seed: str | None) -> None:
    """Hash keys with the secret derived from `seed` from now on (None: a random one)."""
    if seed:
        raw = hashlib.blake2b(seed.encode(), digest_size=16, person=b"fraudstream-keys").digest()
    else:
        raw = secrets.token_bytes(16)
    global _key
    k0, k1 = np.frombuffer(raw, "<u8").tolist()
    _key = (np.uint64(k0), np.uint64(k1))


use_seed(None)


def key_hashes(keys: Sequence[str]) -> np.ndarray[Any, Any]:
    """Each key's hash (int64), in one compiled pass."""
    joined = "".join(keys)
    if joined.isascii():
        units = np.frombuffer(joined.encode("ascii"), np.uint8)
    else:
        units = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
    lengths = np.fromiter(map(len, keys), np.int64, len(keys))
    out = np.empty(len(keys), np.int64)
    _hash_all(units, lengths, *_key, out)
    return out


def key_hash(key: str) -> int:
    """One key's hash (as `key_hashes` gives it)."""
    return int(_hash_one(np.frombuffer(key.encode("utf-32-le", "surrogatepass"), np.uint32), *_key))


def fingerprint() -> int:
    """A value that differs, but by chance, between processes that hash differently."""
    return key_hash("fraudstream-key-hash")


# --- SipHash-1-3 (Aumasson and Bernstein), 32-bit code units two to a 64-bit word ------------


@numba.njit(inline="always")
def _rotl(x: Any, b: int) -> Any:  # pragma: no cover
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


@numba.njit(inline="always")
def _round(v0: Any, v1: Any, v2: Any, v3: Any) -> tuple[Any, Any, Any, Any]:  # pragma: no cover
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@numba.njit(inline="always")
def _sip(units: Any, start: int, n: int, k0: Any, k1: Any) -> Any:  # pragma: no cover
    v0 = k0 ^ np.uint64(0x736F6D6570736575)
    v1 = k1 ^ np.uint64(0x646F72616E646F6D)
    v2 = k0 ^ np.uint64(0x6C7967656E657261)
    v3 = k1 ^ np.uint64(0x7465646279746573)
    i = start
    end = start + n - (n & 1)
    while i < end:
        m = np.uint64(units[i]) | (np.uint64(units[i + 1]) << np.uint64(32))
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
        i += 2
    b = np.uint64((4 * n) & 0xFF) << np.uint64(56)  # the length in bytes, as SipHash has it
    if n & 1:
        b |= np.uint64(units[end])
    v3 ^= b
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= np.uint64(0xFF)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    h = np.int64(v0 ^ v1 ^ v2 ^ v3)
    return h if h != 0 else np.int64(1)


@numba.njit(cache=True, nogil=True)
def _hash_all(units: Any, lengths: Any, k0: Any, k1: Any, out: Any) -> None:  # pragma: no cover
    at = 0
    for j in range(lengths.shape[0]):
        n = lengths[j]
        out[j] = _sip(units, at, n, k0, k1)
        at += n


@numba.njit(cache=True, nogil=True)
def _hash_one(units: Any, k0: Any, k1: Any) -> Any:  # pragma: no cover
    return _sip(units, 0, units.shape[0], k0, k1)

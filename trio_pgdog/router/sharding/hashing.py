"""A sharding key's shard: the partition PostgreSQL's own hash partitioning would choose.

For a table `PARTITION BY HASH (key)` with `MODULUS n`, PostgreSQL hashes the key with its
type's extended hash function and seed HASH_PARTITION_SEED, folds the result into 0 with
hash_combine64, and takes the remainder of the unsigned 64-bit value by n. Using the same
rule, a sharded table can move into native partitions and back, and a plugin author can
compute the same shard. Integers (int2, int4, int8) hash alike (hashint8extended); text and
varchar hash their bytes in the database encoding, a uuid its 16 bytes
(hash_bytes_extended, Bob Jenkins' lookup3 as PostgreSQL implements it).

The C speedups (_hashing.c) compute it in well under a microsecond; these are their
pure-Python twins (the tests hold both to a real PostgreSQL's choice).
"""

from __future__ import annotations

import uuid

from ... import speedups

__all__ = ["SEED", "bytes_key_hash", "int_key_hash", "shard_of_int", "shard_of_text",
           "shard_of_uuid"]

SEED = 0x7A5B22367996DCFD  # HASH_PARTITION_SEED
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_COMBINE = 0x49A0F4DD15E5A8E3  # hash_combine64's constant
INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M32) ^ _rot(c, 4)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 6)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 8)
    b = (b + a) & _M32
    a = ((a - c) & _M32) ^ _rot(c, 16)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 19)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c = ((c ^ b) - _rot(b, 14)) & _M32
    a = ((a ^ c) - _rot(c, 11)) & _M32
    b = ((b ^ a) - _rot(a, 25)) & _M32
    c = ((c ^ b) - _rot(b, 16)) & _M32
    a = ((a ^ c) - _rot(c, 4)) & _M32
    b = ((b ^ a) - _rot(a, 14)) & _M32
    c = ((c ^ b) - _rot(b, 24)) & _M32
    return a, b, c


def _seeded(length: int, seed: int) -> tuple[int, int, int]:
    a = b = c = (0x9E3779B9 + length + 3923095) & _M32
    if seed:
        a = (a + (seed >> 32)) & _M32
        b = (b + seed) & _M32
        a, b, c = _mix(a, b, c)
    return a, b, c


def hash_bytes_extended(data: bytes, seed: int) -> int:
    a, b, c = _seeded(len(data), seed)
    pos, left = 0, len(data)
    while left >= 12:
        a = (a + int.from_bytes(data[pos : pos + 4], "little")) & _M32
        b = (b + int.from_bytes(data[pos + 4 : pos + 8], "little")) & _M32
        c = (c + int.from_bytes(data[pos + 8 : pos + 12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        pos += 12
        left -= 12
    tail = data[pos:]
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + (int.from_bytes(tail[8:11], "little") << 8)) & _M32  # c's low byte: the length's
    a, b, c = _final(a, b, c)
    return (b << 32) | c


def hash_uint32_extended(k: int, seed: int) -> int:
    a, b, c = _seeded(4, seed)
    a = (a + k) & _M32
    a, b, c = _final(a, b, c)
    return (b << 32) | c


def int_key_hash_py(value: int) -> int:
    """The row hash of an integer key (hashint8extended, then hash_combine64 into 0)."""
    if not INT8_MIN <= value <= INT8_MAX:
        raise ValueError("sharding key out of the bigint range")
    lo, hi = value & _M32, (value >> 32) & _M32
    lo ^= hi if value >= 0 else ~hi & _M32
    return (hash_uint32_extended(lo, SEED) + _COMBINE) & _M64


def bytes_key_hash_py(data: bytes) -> int:
    """The row hash of a text key's bytes or a uuid's 16 bytes."""
    return (hash_bytes_extended(data, SEED) + _COMBINE) & _M64


if speedups.c is not None:
    int_key_hash = speedups.c.partition_hash_int
    bytes_key_hash = speedups.c.partition_hash_bytes
else:
    int_key_hash, bytes_key_hash = int_key_hash_py, bytes_key_hash_py


def shard_of_int(value: int, shards: int) -> int:
    return int_key_hash(value) % shards


def shard_of_text(value: str, shards: int) -> int:
    """A text/varchar key (the database encoding is UTF8)."""
    return bytes_key_hash(value.encode()) % shards


def shard_of_uuid(value: uuid.UUID | str, shards: int) -> int:
    if isinstance(value, uuid.UUID):
        return bytes_key_hash(value.bytes) % shards
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        return bytes_key_hash(bytes.fromhex(value.replace("-", ""))) % shards
    return bytes_key_hash(uuid.UUID(value).bytes) % shards

"""A sharding key's shard is the partition a real PostgreSQL's hash partitioning chooses.

Checked with PostgreSQL itself, not with a copy of the formula: for each key type, keys made
by hypothesis (0, negatives, the int64 extremes, empty text, multibyte UTF-8, random uuids)
and moduli 1-8, `satisfies_hash_partition` must accept the remainder we compute; both the C
speedups and their pure-Python twins.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import APP_DB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_pgdog.router.sharding import hashing
from trio_pgdog.router.sharding.hashing import INT8_MAX, INT8_MIN

# Each key type's hash-partitioned parent table on the test cluster.
TYPES = {"int8": "bigint", "int4": "integer", "int2": "smallint", "text": "text",
         "varchar": "varchar", "uuid": "uuid"}
INT_RANGES = {"int8": (INT8_MIN, INT8_MAX), "int4": (-(1 << 31), (1 << 31) - 1),
              "int2": (-(1 << 15), (1 << 15) - 1)}
FUNCTIONS = {"c": (hashing.int_key_hash, hashing.bytes_key_hash),
             "python": (hashing.int_key_hash_py, hashing.bytes_key_hash_py)}


@pytest.fixture(scope="module")
def parents(pg):
    pg.sql("".join(f"CREATE TABLE IF NOT EXISTS hp_{name} (k {sql_type}) PARTITION BY HASH (k);"
                   for name, sql_type in TYPES.items()), dbname=APP_DB)
    return pg


def _literal(kind: str, key: object) -> str:
    text = str(key).replace("'", "''")
    return f"'{text}'::{TYPES[kind]}"


def _all_accepted(pg, kind: str, keys: list, shard) -> None:
    """PostgreSQL agrees with `shard(key, modulus)` for every key and modulus 1..8."""
    rows = [f"({m}, {shard(key, m)}, {_literal(kind, key)})" for key in keys for m in range(1, 9)]
    sql = (f"SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition('hp_{kind}'::regclass, "
           f"m, r, k)) FROM (VALUES {', '.join(rows)}) AS v(m, r, k)")
    assert pg.sql(sql, dbname=APP_DB) == "0", f"PostgreSQL disagrees for some of {keys!r}"


def _int_shard(hash_int):
    return lambda key, m: hash_int(key) % m


def _text_shard(hash_bytes):
    return lambda key, m: hash_bytes(key.encode()) % m


def _uuid_shard(hash_bytes):
    return lambda key, m: hash_bytes(key.bytes) % m


SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("impl", sorted(FUNCTIONS))
@pytest.mark.parametrize("kind", ["int8", "int4", "int2"])
@SETTINGS
@given(data=st.data())
def test_integer_keys(parents, impl, kind, data):
    low, high = INT_RANGES[kind]
    keys = data.draw(st.lists(st.integers(low, high), min_size=100, max_size=100))
    keys += [0, 1, -1, low, high]
    _all_accepted(parents, kind, keys, _int_shard(FUNCTIONS[impl][0]))


@pytest.mark.parametrize("impl", sorted(FUNCTIONS))
@pytest.mark.parametrize("kind", ["text", "varchar"])
@SETTINGS
@given(keys=st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\x00"), max_size=40),
                     min_size=100, max_size=100))
def test_text_keys(parents, impl, kind, keys):
    keys += ["", "a", "é", "日本語のキー", "x" * 11, "x" * 12, "x" * 13, "😀" * 7]
    _all_accepted(parents, kind, keys, _text_shard(FUNCTIONS[impl][1]))


@pytest.mark.parametrize("impl", sorted(FUNCTIONS))
@SETTINGS
@given(keys=st.lists(st.uuids(), min_size=100, max_size=100))
def test_uuid_keys(parents, impl, keys):
    keys += [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)]
    _all_accepted(parents, "uuid", keys, _uuid_shard(FUNCTIONS[impl][1]))


def test_shard_helpers_and_range_errors():
    assert hashing.shard_of_int(0, 1) == 0
    assert hashing.shard_of_uuid(str(uuid.UUID(int=5)), 4) == hashing.shard_of_uuid(uuid.UUID(int=5), 4)
    for hash_int in (hashing.int_key_hash, hashing.int_key_hash_py):
        with pytest.raises(ValueError, match="bigint range"):
            hash_int(INT8_MAX + 1)

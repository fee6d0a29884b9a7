"""Sharding: which shard a key belongs to, and where each statement must run. Kept apart
from the session, which only asks.

- hashing.py: a key's shard, PostgreSQL's hash partitioning;
- schema.py: the sharded tables of a database (from [[sharded_tables]]);
- values.py, literals.py: key values from Bind parameters and from SQL constants;
- routes.py: the per-statement formula of where rows are, evaluated per execution;
- hints.py: pgdog_shard / pgdog_sharding_key comments and SET pgdog.* statements;
- keys.py: analyze (once per SQL text), shards_for (per execution), insert_rows_by_shard;
- split.py: one INSERT per shard from a multi-row INSERT;
- merge_plan.py (with merge_sql.py): how a SELECT run on several shards is merged, once per
  text: what the shards run, the sort, limits, aggregates, or why it is refused;
- row_merge.py (with cell_codecs.py): the merge itself, per execution: sort keys for the
  k-way merge, aggregation, LIMIT/OFFSET, DISTINCT, cells decoded and encoded as PostgreSQL's.

Nothing is imported here, so that the configuration can use schema.py without pglast.
"""

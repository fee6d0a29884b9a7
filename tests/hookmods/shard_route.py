"""A Python hook that routes by words in the SQL: 'to_one' to shard 1, 'to_all' to every shard
(tests/test_sharding.py)."""

from trio_pgdog.hooks.api import ALL_SHARDS, Decision, QueryInfo


class Route:
    def pre_query(self, query: QueryInfo) -> Decision | None:
        if "to_one" in query.sql:
            return Decision.route(shard=1)
        if "to_all" in query.sql:
            return Decision.route(shard=ALL_SHARDS)
        return None

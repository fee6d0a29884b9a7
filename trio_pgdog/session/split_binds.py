"""A multi-row INSERT sent with the extended protocol whose rows belong to several shards:
each shard binds a statement of the proxy's own holding only its rows.

The simple protocol splits the text (router/sharding/split.py) and sends each shard its
piece. With Parse/Bind the rows are known only at the Bind, from its parameter values, so the
split happens there: each shard's Bind names a statement derived from the client's (the
piece of the text with that shard's rows, parameters renumbered) and carries that shard's
values. Each shard's Tracker prepares the derived statement where it is missing, as it does
for the client's own statements; the client sees its BindComplete, its rows (RETURNING) and
one CommandComplete with the total.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import ProxyError
from ..protocol import extended as ext
from ..protocol import results as r
from ..router.sharding.keys import ShardingError, insert_rows_by_shard
from ..router.sharding.split import split_insert

if TYPE_CHECKING:
    from .sharded import Execution, Message, ShardedRelay

_SPLIT = b"pgdog_rows_"  # prefix of the derived statements' client-side names


def split_binds(relay: ShardedRelay, unit: list[Message], executions: list[Execution]
                ) -> dict[int, dict[int, bytes]]:
    """{index of a Bind in `unit`: {shard: the Bind that shard gets}} for each INSERT whose
    rows go to several shards. ProxyError when a row cannot be placed."""
    out: dict[int, dict[int, bytes]] = {}
    for execution in executions:
        if execution.facts.insert_keys is None or len(execution.shards) < 2:
            continue
        out[execution.first] = _per_shard(relay, unit[execution.first], execution)
    return out


def _per_shard(relay: ShardedRelay, bind: Message, execution: Execution) -> dict[int, bytes]:
    portal, name, rest = ext.bind_statement(bind[1])
    params, formats = r.bind_parameters(rest)
    sql, types = relay.statements[name]
    try:
        rows = insert_rows_by_shard(execution.facts, relay.schema, params, formats,
                                    param_types=types)
    except ShardingError as exc:
        raise ProxyError(exc.sqlstate, exc.message) from None
    results = r.bind_result_formats(rest)
    binds = {}
    for shard, (piece, indexes) in split_insert(sql, execution.facts, rows).items():
        derived = relay.own_statement(_SPLIT + str(shard).encode() + b"_" + name, piece,
                                      [types[i] if i < len(types) else 0 for i in indexes])
        values = [params[i] for i in indexes]
        codes_ = formats if len(formats) < 2 else [formats[i] for i in indexes]
        binds[shard] = ext.build_bind(portal, derived, r.build_bind_rest(values, codes_, results))
    return binds

"""`python -m trio_pgdog check-plugin PATH [--config FILE]`: load a native plugin the way the
proxy would, show what it implements and how it answers a few sample statements and events.

PATH follows the rule of `[[plugins]] name`: a name with "/" or "." in it is a file
(`./libx.so`, `README.md`: "no such file" if it is not there), any other name is a library
found as lib<NAME>.so on the library path.

Exit status 0 when the plugin loads and every answer made sense, 1 otherwise (why it did
not load is printed; invalid answers are also the ERROR lines the proxy would log, on stderr).
"""

from __future__ import annotations

import sys
import timeit
from typing import TextIO

from ..config.models import Plugin
from ..router.classify import classify
from .api import ALL_SHARDS, Action, ConnectInfo, Decision, QueryDone, QueryInfo, ServerInfo
from .errors import HookLoadError
from .native import ABI_VERSION, NativeHook, load_plugin

__all__ = ["SAMPLES", "check_plugin", "describe", "route_cost_us"]

# (sql, parameters, extended, in_transaction)
SAMPLES: tuple[tuple[str, tuple[bytes | None, ...], bool, bool], ...] = (
    ("SELECT id, name FROM users WHERE id = 1", (), False, False),
    ("INSERT INTO users (id, name) VALUES (1, 'alice')", (), False, False),
    ("DROP TABLE users", (), False, False),
    ("/* shard: 1 */ SELECT * FROM users WHERE id = 1", (), False, False),
    ("SELECT * FROM users WHERE id = $1 AND name = $2", (b"1", None), True, False),
    ("UPDATE users SET name = 'bob' WHERE id = 1", (), False, True),
)

DATABASE, USER, CLIENT = "appdb", "app", "127.0.0.1:50000"


def describe(decision: Decision | None) -> str:
    """One line for a hook's answer."""
    if decision is None:
        return "no decision"
    action = decision.action
    if action == Action.ROUTE or action == Action.REWRITE:
        shard = {None: "any", ALL_SHARDS: "all"}.get(decision.shard, str(decision.shard))
        where = f"shard {shard}, role {decision.role or 'any'}"
        if action == Action.ROUTE:
            return f"route: {where}"
        return f"rewrite to {decision.sql!r} ({where})"
    if action == Action.BLOCK:
        return f"block: SQLSTATE {decision.sqlstate}: {decision.message}"
    if action == Action.INTERCEPT:
        names = ", ".join(f"{name} ({oid})" for name, oid in decision.columns)
        return f"intercept: columns [{names}], {len(decision.rows)} row(s): {list(decision.rows)[:3]}"
    return f"allow ({action!r})"


def _query(sql: str, params: tuple[bytes | None, ...], extended: bool, in_transaction: bool,
           shards: int) -> QueryInfo:
    return QueryInfo(sql=sql, facts=classify(sql), database=DATABASE, user=USER, client_addr=CLIENT,
                     parameters=params, parameter_formats=(0,) * len(params), extended=extended,
                     in_transaction=in_transaction, shards=shards, has_primary=True, has_replicas=True)


def _exercise(hook: NativeHook, shards: int, out: TextIO) -> int:
    """Call every event the plugin implements; the number of answers that went wrong."""
    failures = 0

    def call(label: str, fn, arg, show) -> None:
        nonlocal failures
        before = hook.invalid_answers
        try:
            result = fn(arg)
        except Exception as exc:
            failures += 1
            print(f"  {label}\n    -> FAILED: {type(exc).__name__}: {exc}", file=out)
            return
        bad = hook.invalid_answers > before
        failures += bad
        print(f"  {label}\n    -> {show(result)}{'   <- INVALID' if bad else ''}", file=out)

    if "pre_query" in hook.events:
        print("pre_query (pgdog_route_query), database with "
              f"{shards} shard(s), a primary and replicas:", file=out)
        for sql, params, extended, in_tx in SAMPLES:
            label = sql
            if params:
                label += f"   parameters {list(params)}"
            if in_tx:
                label += "   (in a transaction)"
            call(label, hook.pre_query, _query(sql, params, extended, in_tx, shards), describe)
    if "pre_connect" in hook.events:
        print("pre_connect (pgdog_pre_connect):", file=out)
        info = ConnectInfo(user=USER, database=DATABASE, application_name="psql", client_addr=CLIENT)
        call(f"user {USER!r}, database {DATABASE!r}, application_name 'psql', from {CLIENT}",
             hook.pre_connect, info,
             lambda d: "admit" if d is None else "refuse: " + describe(d))
    if "after_connect" in hook.events:
        print("after_connect (pgdog_after_connect):", file=out)
        info = ServerInfo(database=DATABASE, user=USER, host="127.0.0.1", port=5432, role="primary",
                          shard=0)
        call("primary 127.0.0.1:5432, shard 0", hook.after_connect, info,
             lambda sql: f"run {sql[0]!r}" if sql else "nothing to run")
    if "post_query" in hook.events:
        print("post_query (pgdog_post_query):", file=out)
        done = QueryDone(sql=SAMPLES[0][0], database=DATABASE, user=USER, client_addr=CLIENT,
                         duration_us=1234, rows=1, sqlstate="", host="127.0.0.1:5432", role="replica",
                         shard=0)
        call(f"{done.sql!r}: 1 row in 1234 us on a replica", hook.post_query, done,
             lambda _: "called")
    return failures


def route_cost_us(hook: NativeHook, query: QueryInfo, number: int = 20000, repeat: int = 7) -> float:
    """Microseconds per `hook.pre_query(query)` (the adapter and the plugin), best of `repeat`."""
    call = hook.pre_query
    return min(timeit.repeat(lambda: call(query), number=number, repeat=repeat)) / number * 1e6


def check_plugin(path: str, config: str | None = None, *, shards: int = 2, bench: bool = False,
                 out: TextIO | None = None) -> int:
    """Load the plugin at `path` (a [[plugins]] name: a path or a library name), exercise it,
    print what happened; the exit status. `bench`: also time pgdog_route_query on the
    samples (adapter plus plugin, CPU time per call)."""
    out = out if out is not None else sys.stdout
    try:
        hook = load_plugin(Plugin(name=path, config=config))
    except HookLoadError as exc:
        print(f"FAILED: {exc}", file=out)
        return 1
    try:
        print(f"plugin:      {hook.path}", file=out)
        print(f"ABI version: {hook.abi_version} (this proxy: {ABI_VERSION})", file=out)
        print(f"events:      {', '.join(hook.events)}", file=out)
        print(f"wants AST:   {'yes' if hook.wants_ast else 'no'}", file=out)
        failures = _exercise(hook, shards, out)
        if bench and "pre_query" in hook.events:
            print("cost per pre_query call (adapter + plugin, best of 7 x 20000):", file=out)
            for sql, params, extended, in_tx in SAMPLES:
                query = _query(sql, params, extended, in_tx, shards)
                print(f"  {route_cost_us(hook, query):6.2f} us  {sql}", file=out)
    finally:
        hook.close()
    if failures:
        print(f"FAILED: {failures} invalid answer(s)", file=out)
        return 1
    print("OK", file=out)
    return 0

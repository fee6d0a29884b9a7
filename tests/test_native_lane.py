"""The native lane (session/hooked.py with _speedups.native_lane): when every pre_query hook is
a native plugin, one C call reads a statement and asks the plugins. Each chunk here goes once
through the lane and once through the Python path; the plugins must see the same input and
the client the same outcome. No PostgreSQL needed (the proxy-level tests are in
test_native_proxy.py, where the lane is what runs)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from plugin_build import CC, TEST_PLUGINS, compile_plugin

from trio_pgdog import speedups
from trio_pgdog.config.models import Plugin
from trio_pgdog.hooks.native import NativeHook, load_plugin
from trio_pgdog.hooks.registry import Entry, HookSet
from trio_pgdog.protocol import ProtocolError
from trio_pgdog.router.cache import ParseCache
from trio_pgdog.session import hooked
from trio_pgdog.session.hooked import HookedStream

pytestmark = [pytest.mark.skipif(CC is None, reason="no C compiler"),
              pytest.mark.skipif(speedups.c is None, reason=f"trio_pgdog._speedups is {speedups.status()}")]


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lane-plugins")
    for name in ("answers", "noop", "by_param"):
        compile_plugin(TEST_PLUGINS / f"{name}.c", out / f"lib{name}.so")
    return out


@pytest.fixture
def load(libs):
    loaded: list[NativeHook] = []

    def _load(name: str) -> NativeHook:
        hook = load_plugin(Plugin(name=str(libs / f"lib{name}.so"), config="answers.conf"))
        assert hook is not None
        # answers.c asks for the AST, which the lane leaves to the Python path: here it
        # gets none (as if it did not export pgdog_wants_ast), on both paths alike.
        hook.wants_ast = False
        loaded.append(hook)
        return hook

    yield _load
    for hook in loaded:
        hook.close()


def hook_set(*hooks: NativeHook) -> HookSet:
    """The plugins' pre_query only: a post_query hook needs the Python path."""
    return HookSet([Entry(f"plugin {h.name}", h, frozenset(), ("pre_query",)) for h in hooks])


def stream(hooks: HookSet, *, lane: bool) -> HookedStream:
    s = HookedStream(hooks, ParseCache(), user="alice", database="shop", client_addr="127.0.0.1:1",
                     has_replicas=True)
    if not lane:
        s._lane = None
    return s


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\x00")


def execution(sql: str | None, values: list[bytes | None] = (), name: bytes = b"",
              formats: list[int] = ()) -> bytes:
    """[Parse] Bind Describe Execute Sync; no Parse when `sql` is None."""
    out = msg(b"P", name + b"\x00" + sql.encode() + b"\x00\x00\x00") if sql is not None else b""
    bind = struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    bind += struct.pack("!h", len(values))
    for v in values:
        bind += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    out += msg(b"B", b"\x00" + name + b"\x00" + bind + b"\x00\x00")
    return out + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S", b"")


def outcome(s: HookedStream, data: bytes) -> tuple[bytes, bytes, int, str | None]:
    o = s.from_client(data)
    return o.to_server, o.to_client, o.syncs, o.role


# What the client sends, in order, on one connection: a statement is prepared (unnamed and
# named), then executed again without its Parse; echo answers describe the plugin's input.
CONVERSATION = [
    query("select 1"),
    query("echo"),
    query("/* echo */ select 'héllo'"),
    execution("select $1, $2", [b"42", None], formats=[1]),
    execution("select $1, $2", [b"7", b"x"]),          # the same text again: the lane
    execution(None, [b"8", b"y"]),                      # a Bind of the unnamed statement
    execution("select 2", name=b"s1"),
    execution("select 2", name=b"s1"),
    execution(None, name=b"s1"),
    execution("forward 0 1"),
    execution("forward 0 1"),
    query("forward 0 2"),
    query("block 42501 no"),
    query("decision 77"),                               # nonsense: 58000
    execution("/* echo */ select $1, $2", [b"1", None], formats=[0, 1]),
    execution("/* echo */ select $1, $2", [b"2", b"z"]),
    execution("rewrite SELECT 3"),
    query("echo"),
]
# Whether the lane takes each chunk: not a statement's first Parse (the Python path records
# it), and no execution once the proxy has answered one itself (the echo intercepts).
TAKEN = [True, True, True, False, True, True, False, True, True, False, True, True, True, True,
         False, False, False, True]


def test_the_lane_is_taken_only_for_native_plugins_called_from_c(load):
    answers = load("answers")
    assert hook_set(answers).native_lane is not None
    assert hook_set(load("noop"), load("by_param")).native_lane is not None
    assert HookSet([Entry("plugin answers", answers, frozenset(), answers.events)]).native_lane \
        is None   # post_query too
    answers.wants_ast = True
    assert hook_set(answers).native_lane is None

    class PyHook:
        def pre_query(self, query):
            return None

    mixed = HookSet([Entry("plugin noop", load("noop"), frozenset(), ("pre_query",)),
                     Entry("python", PyHook(), frozenset(), ("pre_query",))])
    assert mixed.native_lane is None


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """Per call of the lane: whether it took the chunk (False: left to the Python path)."""
    seen: list[bool] = []
    real = hooked._native_lane

    def counting(*args):
        answer = real(*args)
        seen.append(answer is not False)
        return answer

    monkeypatch.setattr(hooked, "_native_lane", counting)
    return seen


@pytest.mark.parametrize("in_transaction", [False, True])
def test_lane_and_python_path_agree(load, in_transaction, taken):
    hooks = hook_set(load("answers"))
    lane, python = stream(hooks, lane=True), stream(hooks, lane=False)
    for data in CONVERSATION:
        for s in (lane, python):
            s.status = b"T" if in_transaction else b"I"
        assert outcome(lane, data) == outcome(python, data), data
        lane.lean_ready = python.lean_ready = 0
        lane.queue.clear()
        python.queue.clear()
    # Every Query and every execution of a statement already prepared went through the lane.
    assert taken == TAKEN


def test_lane_answers_match_the_python_path(load):
    """by_param.c decides by the first parameter (and exports no AST wish): forward, rewrite,
    intercept, block, each through the lane and through Python."""
    hooks = hook_set(load("noop"), load("by_param"))   # the second plugin decides
    assert hooks.native_lane is not None
    sql = "SELECT 'original', $1::text"
    for values in ([b"plain"], [b"rewrite"], [b"intercept"], [b"block"], [b"plain"], [None], []):
        lane, python = stream(hooks, lane=True), stream(hooks, lane=False)
        for data in (execution(sql, values), execution(sql, values), execution(None, values)):
            got = outcome(lane, data)
            assert got == outcome(python, data), (values, data)
            lane.queue.clear()
            python.queue.clear()


def test_lane_counts_calls_and_decisions_as_the_python_path(load, taken):
    """SHOW HOOKS and /metrics figures: each plugin the lane asked counts one call and its
    answer, as on the Python path; the time is the plugin's own only when it is alone."""
    noop, by_param = load("noop"), load("by_param")
    lane_hooks, python_hooks = hook_set(noop, by_param), hook_set(noop, by_param)
    lane, python = stream(lane_hooks, lane=True), stream(python_hooks, lane=False)
    sql = "SELECT 'original', $1::text"
    for values in ([b"plain"], [b"rewrite"], [b"intercept"], [b"block"]):
        for data in (execution(sql, values), execution(None, values)):
            for s in (lane, python):
                s.from_client(data)
                s.queue.clear()
    assert any(taken)   # (the lane stream's calls: the Python one never asks it)
    for lane_entry, python_entry in zip(lane_hooks.entries, python_hooks.entries, strict=True):
        assert lane_entry.stats.calls == python_entry.stats.calls > 0
        assert lane_entry.stats.decisions == python_entry.stats.decisions
    assert python_hooks.entries[1].stats.timed == python_hooks.entries[1].stats.calls
    assert sum(python_hooks.entries[1].stats.decisions[1:]) > 0   # by_param decided some
    alone = hook_set(by_param)
    s = stream(alone, lane=True)
    s.from_client(execution(sql, [b"plain"]))
    s.from_client(execution(sql, [b"plain"]))   # the second goes through the lane
    assert alone.entries[0].stats.timed == alone.entries[0].stats.calls == 2


def test_a_closed_plugin_is_skipped(load):
    first, second = load("by_param"), load("noop")
    hooks = hook_set(first, second)
    s = stream(hooks, lane=True)
    data = execution("SELECT $1::text", [b"intercept"])
    s.from_client(data)
    assert s.from_client(data).to_client   # answered by by_param
    s.queue.clear()
    first.close()
    assert s.from_client(data).to_client == b""   # no decision: sent as it came
    assert s.from_client(data).to_server == data


def test_executions_are_left_to_python_once_the_proxy_stands_in(load, taken):
    """Once the proxy has answered for a statement or portal itself, each message's names
    must be checked (the server may not hold what the client thinks): the lane leaves
    executions to the Python path then, but still takes Query messages."""
    s = stream(hook_set(load("noop")), lane=True)
    data = execution("select $1", [b"1"])
    s.from_client(data)
    s.from_client(data)
    s.stand_ins = True
    assert s.from_client(data).to_server == data
    s.from_client(query("select 1"))
    assert taken == [False, True, False, True]


def _bind(values: bytes, results: bytes = b"\x00\x00") -> bytes:
    """A Bind of the unnamed statement: no format codes, then `values` (count included)."""
    return msg(b"B", b"\x00\x00" + b"\x00\x00" + values + results)


_PARSE = msg(b"P", b"\x00select $1\x00\x00\x00")
_ONE_VALUE = b"\x00\x01" + struct.pack("!i", 1) + b"1"
_DESCRIBE, _EXECUTE, _SYNC = msg(b"D", b"P\x00"), msg(b"E", b"\x00\x00\x00\x00\x00"), msg(b"S", b"")
# Chunks the lane would take if they were well-formed (the statement is known by then), and
# what is wrong with each.
MALFORMED = {
    "Query message: query string is not NUL-terminated": msg(b"Q", b"select 1"),
    "Query message: 2 unexpected bytes after the query string's NUL": msg(b"Q", b"select 1\x00x\x00"),
    "Describe message: target type 'X' (expected 'S' or 'P')":
        _PARSE + _bind(_ONE_VALUE) + msg(b"D", b"X\x00") + _EXECUTE + _SYNC,
    "Execute message: 1 bytes after the portal name (expected a 4-byte row limit)":
        _PARSE + _bind(_ONE_VALUE) + _DESCRIBE + msg(b"E", b"\x00\x00") + _SYNC,
    "Bind message: parameter length -2":
        _PARSE + _bind(b"\x00\x01" + struct.pack("!i", -2)) + _DESCRIBE + _EXECUTE + _SYNC,
    "Bind message: 0 result format codes declared but 1 bytes of them sent":
        _PARSE + _bind(_ONE_VALUE, b"\x00\x00\x00") + _DESCRIBE + _EXECUTE + _SYNC,
    "Parse message: 0 parameter types declared but 1 bytes of them sent":
        msg(b"P", b"\x00select $1\x00\x00\x00\x00") + _bind(_ONE_VALUE) + _DESCRIBE + _EXECUTE + _SYNC,
}


@pytest.mark.parametrize("problem", MALFORMED)
def test_malformed_chunks_are_refused_alike(load, taken, problem):
    """The lane leaves a malformed chunk to the Python path, which refuses it (the session
    answers FATAL 08P01 with the message), whether the lane runs or not."""
    hooks = hook_set(load("noop"))
    good = _PARSE + _bind(_ONE_VALUE) + _DESCRIBE + _EXECUTE + _SYNC
    for lane in (True, False):
        s = stream(hooks, lane=lane)
        s.from_client(good)
        s.queue.clear()
        s.lean_ready = 0
        with pytest.raises(ProtocolError) as refused:
            s.from_client(MALFORMED[problem])
        assert str(refused.value) == problem
    assert taken == [False, False]   # the first Parse of the statement, then the bad chunk

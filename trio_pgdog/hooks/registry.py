"""The hook registry: hooks in configured order, dispatched per logical database.

Built from the configuration at start-up and rebuilt on reload. A session asks once for the
`HookSet` of its database; a `HookSet` with no hooks for an event costs nothing on the data
path (the session checks the tuple is empty). A hook that cannot be loaded stops the proxy
from starting (HookLoadError); every call into a loaded hook is guarded: a hook that raises
is logged and counts as "no decision".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from .. import speedups
from ..config.models import Config, Plugin
from .api import ALL_SHARDS, EVENTS, Action, ConnectInfo, Decision, QueryDone, QueryInfo, ServerInfo
from .errors import HookLoadError
from .stats import HookStats, clock_ns

log = logging.getLogger(__name__)

# One log line per failing hook and event at most this often (seconds): a hook failing on
# every statement must not flood the log.
_LOG_EVERY = 10.0


@attrs.define
class Entry:
    """One loaded hook and where it applies."""

    label: str                     # "hooks.table_access", "plugin my_plugin", ...
    hook: Any
    databases: frozenset[str]      # empty: every database
    events: tuple[str, ...]
    key: object = None             # what it was built from; equal keys survive a reload
    stats: HookStats = attrs.field(factory=HookStats, eq=False)  # SHOW HOOKS, /metrics
    _last_error: dict[str, float] = attrs.field(factory=dict)

    def applies_to(self, database: str) -> bool:
        return not self.databases or database in self.databases

    def failed(self, event: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error.get(event, -_LOG_EVERY) >= _LOG_EVERY:
            self._last_error[event] = now
            log.error("%s: %s raised %r; treated as no decision", self.label, event, exc)


def hook_events(hook: Any) -> tuple[str, ...]:
    """The events `hook` implements: its `events` attribute, or the methods it has."""
    declared = getattr(hook, "events", None)
    if declared is not None:
        return tuple(e for e in EVENTS if e in declared)
    return tuple(e for e in EVENTS if callable(getattr(hook, e, None)))


class HookSet:
    """The hooks of one logical database, per event, in configured order."""

    def __init__(self, entries: Sequence[Entry]):
        self.entries = tuple(entries)
        pick = self._calls
        self.pre_connect = pick("pre_connect")
        self.after_connect = pick("after_connect")
        self.pre_query = pick("pre_query")
        self.post_query = pick("post_query")
        # The session takes the slower, statement-aware path only when this is true.
        self.per_statement = bool(self.pre_query or self.post_query)
        self.native_lane = self._native_lane()

    def _native_lane(self) -> tuple[list[int | None], ...] | None:
        """[route, free] addresses of every pre_query hook, in order, when they are all native
        plugins the C speedups can call and nothing watches post_query: then a session asks
        them about a statement in one C call (_speedups.native_lane). None otherwise."""
        if not self.pre_query or self.post_query or speedups.c is None:
            return None
        from .native import NativeHook  # here: native.py loads ctypes, which most setups skip

        entries = []
        for _entry, call in self.pre_query:
            hook = getattr(call, "__self__", None)
            if not isinstance(hook, NativeHook) or hook._direct is None or hook.wants_ast:
                return None
            entries.append(hook.lane_entry)
        return tuple(entries)

    def _calls(self, event: str) -> tuple[tuple[Entry, Callable[..., Any]], ...]:
        return tuple((e, getattr(e.hook, event)) for e in self.entries if event in e.events)

    @staticmethod
    def _answers(calls: tuple[tuple[Entry, Callable[..., Any]], ...], event: str,
                 arg: object) -> Iterator[tuple[Entry, Any]]:
        """Each hook's answer to `arg`, in order; a hook that raises is logged and skipped."""
        for entry, call in calls:
            started = clock_ns()
            try:
                answer = call(arg)
            except Exception as exc:
                entry.stats.failed(started)
                entry.failed(event, exc)
                continue
            action = getattr(answer, "action", None)
            entry.stats.called(started, action if isinstance(action, int) else 0)
            yield entry, answer

    def decide(self, query: QueryInfo) -> tuple[Decision, str] | None:
        """The first decisive pre_query answer and the hook that gave it."""
        # Once per statement: the loop of _answers, written out (a generator costs more).
        for entry, call in self.pre_query:
            started = clock_ns()
            try:
                decision = call(query)
            except Exception as exc:
                entry.stats.failed(started)
                entry.failed("pre_query", exc)
                continue
            if decision is not None and decision.action != Action.ALLOW:
                entry.stats.called(started, decision.action)
                return decision, entry.label
            entry.stats.called(started)
        return None

    def refuse(self, info: ConnectInfo) -> tuple[Decision, str] | None:
        """The first pre_connect hook that blocks this client, if any."""
        for entry, decision in self._answers(self.pre_connect, "pre_connect", info):
            if decision is not None and decision.action == Action.BLOCK:
                return decision, entry.label
        return None

    def statements_for(self, info: ServerInfo) -> list[tuple[str, str]]:
        """(hook label, SQL) to run on a new server connection, in hook order."""
        return [(entry.label, sql)
                for entry, statements in self._answers(self.after_connect, "after_connect", info)
                for sql in statements or () if sql]

    def done(self, info: QueryDone) -> None:
        for _entry, _nothing in self._answers(self.post_query, "post_query", info):
            pass  # post_query answers nothing: running the hooks is all


EMPTY = HookSet(())


class HookRegistry:
    """Every configured hook; `for_database` gives a session its `HookSet`."""

    def __init__(self, entries: Sequence[Entry] = ()):
        self.entries = tuple(entries)
        self._sets: dict[str, HookSet] = {}

    def for_database(self, database: str) -> HookSet:
        found = self._sets.get(database)
        if found is None:
            chosen = [e for e in self.entries if e.applies_to(database)]
            found = self._sets[database] = HookSet(chosen) if chosen else EMPTY
        return found

    def close(self, keep: Sequence[Entry] = ()) -> None:
        """Unload every hook not in `keep` (a reload keeps unchanged native plugins)."""
        kept = {id(e.hook) for e in keep}
        for entry in self.entries:
            if id(entry.hook) in kept:
                continue
            close = getattr(entry.hook, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:
                log.error("%s: close() raised %r", entry.label, exc)


def build_registry(config: Config, previous: HookRegistry | None = None,
                   on_error: Callable[[HookLoadError], None] | None = None) -> HookRegistry:
    """Load the hooks `config` enables, in configured order. Native plugins whose entry did
    not change are taken over from `previous` instead of being loaded again.

    A hook that cannot be loaded raises HookLoadError (after the hooks loaded so far, except
    those taken over, are closed): a guard the configuration asks for is never silently
    off. With `on_error`, each failure is given to it instead and the hook left out
    (check-config reports every failure; a reload restoring the running hooks keeps what
    it can).
    """
    base_dir = os.path.dirname(os.path.abspath(config.pgdog_path)) if config.pgdog_path else None
    previous_entries = previous.entries if previous is not None else ()
    reuse = {e.key: e for e in previous_entries if e.key is not None}
    entries: list[Entry] = []

    def add(load: Callable[[], Entry]) -> None:
        try:
            entries.append(load())
        except HookLoadError as exc:
            if on_error is None:
                HookRegistry(entries).close(keep=previous_entries)
                raise
            on_error(exc)

    for name in _configured_order(config):
        if name == "plugins":
            for plugin in config.plugins:
                add(lambda p=plugin: reuse.get(p) or _load_plugin(p, base_dir))
        elif name == "hooks.python":
            for spec in config.hooks.python:
                if spec.enabled:
                    add(lambda s=spec: _load_python(s))
        else:
            section = getattr(config.hooks, name.removeprefix("hooks."), None)
            if section is not None and section.enabled:
                add(lambda n=name, s=section: _load_builtin(n, s, base_dir))
    return HookRegistry(entries)


def _configured_order(config: Config) -> list[str]:
    """hook_order from the file; sections set some other way (tests) go last."""
    order = list(config.hook_order)
    for name in ("hooks.table_access", "hooks.intercept", "hooks.query_logger",
                 "hooks.prewarmer", "hooks.python", "plugins"):
        if name not in order:
            order.append(name)
    return order


def _entry(label: str, hook: Any, databases: Sequence[str], key: object = None) -> Entry:
    events = hook_events(hook)
    log.info("hook %s loaded: %s%s", label, ", ".join(events) or "no events",
             f" (databases: {', '.join(databases)})" if databases else "")
    return Entry(label, hook, frozenset(databases), events, key)


def _load_builtin(name: str, section: Any, base_dir: str | None) -> Entry:
    from .builtin import BUILTINS

    try:
        hook = BUILTINS[name.removeprefix("hooks.")](section, base_dir)
    except Exception as exc:
        raise HookLoadError(f"[{name}] cannot be loaded: {exc}") from exc
    return _entry(name, hook, section.databases)


def _load_python(spec: Any) -> Entry:
    from .builtin.python_hook import load_python_hook

    hook = load_python_hook(spec)  # HookLoadError names the entry and says why
    return _entry(f"python hook {spec.object}", hook, spec.databases)


def _load_plugin(plugin: Plugin, base_dir: str | None) -> Entry:
    from .native import load_plugin

    hook = load_plugin(plugin, base_dir)
    return Entry(f"plugin {plugin.name}", hook, frozenset(plugin.databases), hook.events, plugin)


def nonsense(decision: Decision) -> str | None:
    """What is wrong with a pre_query answer, or None if it makes sense. Shards: only 0 until
    sharding exists; a route may come with a rewrite."""
    if decision.action in (Action.ROUTE, Action.REWRITE):
        if decision.role not in (None, "primary", "replica"):
            return f"an unknown role {decision.role!r}"
        if decision.shard not in (None, ALL_SHARDS, 0):
            return f"shard {decision.shard}, but there is only shard 0"
    elif decision.action == Action.BLOCK:
        code = decision.sqlstate
        if len(code) != 5 or not code.isalnum() or (not code.isupper() and not code.isdigit()) \
                or code.startswith(("00", "01", "02")):
            return f"an invalid SQLSTATE {code!r}"
    elif decision.action == Action.INTERCEPT:
        width = len(decision.columns)
        if any(len(row) != width for row in decision.rows):
            return f"rows that do not have {width} columns"
    if decision.action == Action.REWRITE and not decision.sql.strip():
        return "an empty rewrite"
    return None

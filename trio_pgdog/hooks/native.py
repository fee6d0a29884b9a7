"""Native plugins: shared libraries speaking the C ABI of hooks/include/pgdog_plugin.h,
adapted to the hook interface of `api.py` with ctypes.

    hook = load_plugin(plugin, base_dir)   # a NativeHook; HookLoadError says why not
    hook.events                            # e.g. ("pre_query", "post_query")
    hook.pre_query(info)                   # Decision | None
    hook.close()                           # pgdog_fini, once

Resolution of `[[plugins]] name`: a name containing "/" or "." is a path (relative to
`base_dir`, the directory of pgdog.toml, or to the working directory): `./libx.so`,
`libx.so`, `/opt/x.so`, and also `README.md`, which then is "no such file" rather than a
search for `libREADME.md.so`. Any other name (letters, digits, "_", "-") is a library name:
`lib<name>.so`, found like the dynamic loader finds libraries (LD_LIBRARY_PATH, the ld.so
cache, the system directories).

Loading: dlopen, check `pgdog_plugin_abi_version()`, check that at least one event
function is exported, `pgdog_init()`, `pgdog_configure(config)` (refused on non-zero, after
which `pgdog_fini()` runs), read `pgdog_wants_ast`. Each refusal raises HookLoadError whose
message is one line naming the plugin and the reason (the proxy then refuses to start, or a
reload keeps the running configuration); each plugin that loads is one INFO line on the
"trio_pgdog.hooks.native" logger.

Answers that make no sense (unknown decision, shard out of range, role out of range, NULL
where data is required, invalid SQLSTATE, empty rewrite, strings that are not UTF-8) become
`Decision.block("plugin <name>: <what was wrong>", sqlstate="58000")` and one ERROR line;
they never raise.

All calls must come from one thread (the proxy's event loop): a NativeHook reuses its
ctypes input structs between calls and is not reentrant.

pgdog_route_query, once per statement, is called through `_speedups.route_query` (C: the
PgdogInput built on the stack, the PgdogOutput returned as bytes only when there is a
decision) where that extension is built, and through ctypes otherwise. Cost of `pre_query`
(adapter and a no-op plugin; 2-core Xeon @ 2.50GHz, Python 3.11.7; timeit, best of 5 x
20,000 calls; `python -m trio_pgdog check-plugin PATH --bench` measures the same):
  - through _speedups: ~0.45 µs, with or without Bind parameters
  - through ctypes: ~1.65 µs; with one Bind parameter ~3.3 µs
  - a decision (FORWARD, BLOCK, ...) adds reading the PgdogOutput with ctypes: 1-5 µs
The AST (`pgdog_wants_ast`) costs one parse per distinct text (cached, 512 texts), about as
much as the router's own parse.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from .. import speedups
from ..config.models import Plugin
from . import native_abi as abi
from .api import (
    ALL_SHARDS,
    EVENTS,
    Action,
    ConnectInfo,
    Decision,
    QueryDone,
    QueryInfo,
    ServerInfo,
)
from .errors import HookLoadError

__all__ = ["ABI_VERSION", "NativeHook", "encode_text", "load_plugin"]

log = logging.getLogger("trio_pgdog.hooks.native")

ABI_VERSION = abi.ABI_VERSION
INVALID_ANSWER_SQLSTATE = "58000"  # system_error: the plugin, not the client, is at fault
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_MAX_LEN = 1 << 30           # a longer string from a plugin is garbage, not data
_MAX_COLUMNS = 1664          # PostgreSQL's limit for a result's columns
_ROLE_NAMES = {abi.ROLE_UNKNOWN: None, abi.ROLE_PRIMARY: "primary", abi.ROLE_REPLICA: "replica"}
_ROLE_INTS = {"primary": abi.ROLE_PRIMARY, "replica": abi.ROLE_REPLICA}
_EMPTY = abi.PgdogStrIn(None, 0)



def _direct_call() -> Callable[..., bytes | None] | None:
    """_speedups.route_query (pgdog_route_query without ctypes), where it is built for the
    same PgdogOutput layout."""
    c = speedups.c
    if c is None or ctypes.sizeof(abi.PgdogOutput) != c.OUTPUT_SIZE:
        return None
    return c.route_query


def _address(fn: Any) -> int | None:
    return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value

# --- the AST for plugins that want it: one parse per distinct text --------------------

_AST_CACHE: OrderedDict[str, bytes] = OrderedDict()
_AST_CACHE_SIZE = 512


def _ast_json(sql: str) -> bytes:
    cache = _AST_CACHE
    tree = cache.get(sql)
    if tree is not None:
        cache.move_to_end(sql)
        return tree
    if "\x00" in sql:   # the C parser would stop at the NUL and see less than the server does
        tree = b""
    else:
        try:
            tree = parse_sql_json(sql).encode()
        except ParseError:
            tree = b""
    cache[sql] = tree
    if len(cache) > _AST_CACHE_SIZE:
        cache.popitem(last=False)
    return tree


# --- answers that make no sense --------------------------------------------------------


class _Invalid(Exception):
    """A plugin's answer that cannot be used; the message says what is wrong with it."""


def _read(s: abi.PgdogStr, what: str) -> bytes:
    """Copy the bytes of a plugin's PgdogStr."""
    n = s.len
    if n == 0:
        return b""
    if not s.data:
        raise _Invalid(f"{what} is NULL with length {n}")
    if n > _MAX_LEN:
        raise _Invalid(f"{what} has an implausible length {n}")
    return ctypes.string_at(s.data, n)


def _text(s: abi.PgdogStr, what: str, *, nul_ok: bool = False) -> str:
    raw = _read(s, what)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise _Invalid(f"{what} is not UTF-8") from None
    if not nul_ok and "\x00" in text:
        raise _Invalid(f"{what} contains a NUL byte")
    return text


def _sqlstate(raw: bytes, default: str) -> str:
    # c_char * 6 reads up to the first NUL.
    if not raw:
        return default
    code = raw.decode("latin-1")
    if not _SQLSTATE.fullmatch(code):
        raise _Invalid(f"invalid SQLSTATE {code!r} (five characters of 0-9 and A-Z)")
    return code


def _role(role: int) -> str | None:
    try:
        return _ROLE_NAMES[role]
    except KeyError:
        raise _Invalid(f"role {role} is not one of 0 (unknown), 1 (primary), 2 (replica)") from None


def _shard(shard: int, shards: int) -> int | None:
    if shard == abi.SHARD_UNKNOWN:
        return None
    if shard == abi.SHARD_ALL:
        return ALL_SHARDS
    if 0 <= shard < shards:
        return shard
    raise _Invalid(f"shard {shard} out of range (-2 unknown, -1 all, 0..{shards - 1})")


def encode_text(text: str) -> bytes:
    """Text as plugins receive it (also in the native lane, session/hooked.py)."""
    return text.encode("utf-8", "surrogateescape")


# --- the hook ---------------------------------------------------------------------------


class NativeHook:
    """A loaded native plugin. Made by `load_plugin`; has a method for each event in `events`
    (and only for those), plus `close()`."""

    name: str                   # the [[plugins]] name
    path: str                   # the file that was loaded
    events: tuple[str, ...]     # the api.EVENTS it implements, in that order
    abi_version: int
    wants_ast: bool
    invalid_answers: int        # how many answers made no sense so far

    def __init__(self, name: str, path: str, lib: ctypes.CDLL, functions: dict[str, Any],
                 abi_version: int) -> None:
        self.name = name
        self.path = path
        self.abi_version = abi_version
        self.events = tuple(e for e in EVENTS if abi.EVENT_SYMBOLS[e] in functions)
        self.wants_ast = False
        self.invalid_answers = 0
        self._lib = lib                           # keeps the library's handle referenced
        self._fn = functions
        self._route = functions.get("pgdog_route_query")
        self._free = functions.get("pgdog_output_free")
        self._closed = False
        self._input = abi.PgdogInputIn()          # reused by every pre_query
        self._input_owner: tuple[str | None, str | None] = (None, None)
        self._owner_bytes = (b"", b"")
        # pgdog_route_query without ctypes, where the C speedups are built.
        self._direct = _direct_call() if self._route is not None else None
        # [pgdog_route_query, pgdog_output_free] addresses for the direct call and the native
        # lane (session/hooked.py); close() zeroes the first, so that the lane skips a closed
        # plugin.
        self.lane_entry: list[int | None] = [_address(self._route) or 0, _address(self._free)]
        self._routes: dict[tuple[int, int], Decision] = {}
        self._block_prefix = f"plugin {name}: "

    def __repr__(self) -> str:
        return f"<NativeHook {self.name!r} {self.path} events={','.join(self.events)}>"

    # -- lifecycle --

    def close(self) -> None:
        """Call the plugin's pgdog_fini (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self.lane_entry[0] = 0
        fini = self._fn.get("pgdog_fini")
        if fini is not None:
            fini()

    # -- shared helpers --

    def _invalid(self, function: str, what: str) -> Decision:
        self.invalid_answers += 1
        log.error("plugin %r (%s): invalid answer from %s: %s; the client gets SQLSTATE %s",
                  self.name, self.path, function, what, INVALID_ANSWER_SQLSTATE)
        return Decision.block(self._block_prefix + what, sqlstate=INVALID_ANSWER_SQLSTATE)

    def _freeing(self, out: abi.PgdogOutput) -> None:
        if self._free is not None:
            self._free(ctypes.byref(out))

    def _route_decision(self, shard: int, role: int, shards: int) -> Decision:
        key = (shard, role)
        decision = self._routes.get(key)
        if decision is None:
            decision = Decision.route(shard=_shard(shard, shards), role=_role(role))
            if len(self._routes) < 256:
                self._routes[key] = decision
        return decision

    def _decide(self, out: abi.PgdogOutput, shards: int) -> Decision | None:
        """The Decision for a (non-zero) PgdogOutput of pgdog_route_query; raises _Invalid."""
        action = out.decision
        if action == abi.FORWARD:
            shard = out.shard
            if not abi.SHARD_UNKNOWN <= shard < shards:   # -2 unknown, -1 all, 0..shards-1
                _shard(shard, shards)   # raises _Invalid
            return self._route_decision(shard, out.role, shards)
        if action == abi.BLOCK:
            return self._block(out, "42501")
        if action == abi.INTERCEPT:
            return self._intercept(out.intercept)
        if action == abi.REWRITE:
            shard = _shard(out.shard, shards)
            role = _role(out.role)
            sql = _text(out.rewrite, "rewrite")
            if not sql.strip():
                raise _Invalid("REWRITE with an empty SQL text")
            return Decision(Action.REWRITE, sql=sql, shard=shard, role=role)
        raise _Invalid(f"unknown decision {action}")

    def _block(self, out: abi.PgdogOutput, default_sqlstate: str) -> Decision:
        error = out.error
        sqlstate = _sqlstate(error.sqlstate, default_sqlstate)
        message = _read(error.message, "error.message").decode("utf-8", "replace")
        if "\x00" in message:
            raise _Invalid("error.message contains a NUL byte")
        if not message:
            message = f"blocked by plugin {self.name}"
        return Decision.block(message, sqlstate=sqlstate)

    def _intercept(self, ic: abi.PgdogIntercept) -> Decision:
        ncols, nrows = ic.num_columns, ic.num_rows
        if ncols > _MAX_COLUMNS:
            raise _Invalid(f"INTERCEPT with {ncols} columns (at most {_MAX_COLUMNS})")
        if ncols and not ic.columns:
            raise _Invalid(f"INTERCEPT with num_columns {ncols} and columns NULL")
        ncells = ncols * nrows
        if ncells and not ic.cells:
            raise _Invalid(f"INTERCEPT with {nrows} rows of {ncols} columns and cells NULL")
        columns = []
        if ncols:
            array = (abi.PgdogColumn * ncols).from_address(ic.columns)
            for i, col in enumerate(array):
                name = _text(col.name, f"intercept column {i}'s name")
                columns.append((name, col.type_oid or 25))
        rows = []
        if ncells:
            cells = (abi.PgdogStr * ncells).from_address(ic.cells)
            for r in range(nrows):
                row = []
                for c in range(r * ncols, (r + 1) * ncols):
                    cell = cells[c]
                    row.append(None if not cell.data else
                               _text(cell, f"intercept cell (row {r}, column {c - r * ncols})",
                                     nul_ok=True))
                rows.append(tuple(row))
        else:
            rows = [()] * nrows
        return Decision(Action.INTERCEPT, columns=tuple(columns), rows=tuple(rows))


# --- the events, one mix-in each: a NativeHook has only the methods its plugin implements --


class _PreQuery:
    def pre_query(self: Any, query: QueryInfo) -> Decision | None:
        """pgdog_route_query: the plugin's decision on one statement."""
        if self._closed:
            return None
        owner = (query.database, query.user)
        if owner != self._input_owner:
            self._owner_changed(owner)
        ast = None
        if self.wants_ast:
            ast = (_ast_json(query.sql) if query.facts.parse_ok else b"") or None
        if self._direct is not None:
            out = self._call_direct(query, ast)
        else:
            out = self._call_ctypes(query, ast)
        if out is None:
            return None
        return self._decision_of(out, query.shards)

    def lane_decision(self: Any, raw: bytes) -> Decision:
        """The Decision in a PgdogOutput the native lane got (as bytes, not yet freed)."""
        return self._decision_of(abi.PgdogOutput.from_buffer_copy(raw), 1)

    def _decision_of(self: Any, out: abi.PgdogOutput, shards: int) -> Decision:
        try:
            decision = self._decide(out, shards)
        except _Invalid as exc:
            decision = self._invalid("pgdog_route_query", str(exc))
        self._freeing(out)
        return decision

    def _owner_changed(self: Any, owner: tuple[str, str]) -> None:
        self._input_owner = owner
        db, user = encode_text(owner[0]), encode_text(owner[1])
        self._owner_bytes = (db, user)
        inp = self._input
        inp.database_data, inp.database_len = db, len(db)
        inp.user_data, inp.user_len = user, len(user)

    def _call_direct(self: Any, query: QueryInfo, ast: bytes | None) -> abi.PgdogOutput | None:
        """The call through _speedups.route_query: None for no decision (already freed)."""
        db, user = self._owner_bytes
        flags = query.has_primary | query.has_replicas << 1 | query.in_transaction << 2
        # query.sql is text the session decoded with replacement: always valid UTF-8.
        route, free = self.lane_entry
        raw = self._direct(route, free, query.sql, query.parameters, query.parameter_formats,
                           db, user, query.shards, flags, ast)
        return None if raw is None else abi.PgdogOutput.from_buffer_copy(raw)

    def _call_ctypes(self: Any, query: QueryInfo, ast: bytes | None) -> abi.PgdogOutput | None:
        """The same call through ctypes, where the C speedups are not built."""
        inp = self._input
        sql = encode_text(query.sql)
        inp.query_data = sql
        inp.query_len = len(sql)
        params = query.parameters
        if params:
            n = len(params)
            formats = query.parameter_formats
            if len(formats) != n:   # Bind's shorthand: none means all text, one applies to all
                formats = (formats[0] if formats else 0,) * n
            array = (abi.PgdogParameterIn * n)()
            for i, value in enumerate(params):
                p = array[i]
                if value is None:
                    p.len = -1
                else:
                    p.data = value
                    p.len = len(value)
                p.format = formats[i]
            inp.num_parameters = n
            inp.parameters = array
        elif inp.num_parameters:
            inp.num_parameters = 0
            inp.parameters = None
        inp.shards = query.shards
        inp.has_primary = query.has_primary
        inp.has_replicas = query.has_replicas
        inp.in_transaction = query.in_transaction
        if self.wants_ast:
            inp.ast_json_data = ast
            inp.ast_json_len = len(ast) if ast else 0
        out = self._route(inp)
        if params:
            inp.parameters = None   # drop the references to this call's values
        if out.decision == abi.NO_DECISION:
            self._freeing(out)
            return None
        return out


class _PreConnect:
    def pre_connect(self: Any, info: ConnectInfo) -> Decision | None:
        """pgdog_pre_connect: a BLOCK refuses the client (default SQLSTATE 28000)."""
        if self._closed:
            return None
        fields = [encode_text(v) for v in (info.user, info.database, info.application_name,
                                       info.client_addr)]
        c = abi.PgdogConnectIn(*(abi.PgdogStrIn(b, len(b)) for b in fields))
        out = self._fn["pgdog_pre_connect"](c)
        try:
            action = out.decision
            if action == abi.BLOCK:
                decision = self._block(out, "28000")
            elif action in (abi.NO_DECISION, abi.FORWARD, abi.INTERCEPT, abi.REWRITE):
                decision = None
            else:
                raise _Invalid(f"unknown decision {action}")
        except _Invalid as exc:
            decision = self._invalid("pgdog_pre_connect", str(exc))
        self._freeing(out)
        return decision


class _AfterConnect:
    def after_connect(self: Any, info: ServerInfo) -> list[str]:
        """pgdog_after_connect: the SQL to run on a new server connection ([] for none)."""
        if self._closed:
            return []
        db, host = encode_text(info.database), encode_text(info.host)
        s = abi.PgdogServerIn(abi.PgdogStrIn(db, len(db)), abi.PgdogStrIn(host, len(host)),
                              info.port, _ROLE_INTS.get(info.role, abi.ROLE_UNKNOWN), info.shard)
        out = self._fn["pgdog_after_connect"](s)
        try:
            sql = _text(out, "the SQL returned by pgdog_after_connect")
        except _Invalid as exc:
            self.invalid_answers += 1
            log.error("plugin %r (%s): invalid answer from pgdog_after_connect: %s; no SQL is run",
                      self.name, self.path, exc)
            return []
        return [sql] if sql.strip() else []


class _PostQuery:
    def post_query(self: Any, done: QueryDone) -> None:
        """pgdog_post_query: tell the plugin a statement finished."""
        if self._closed:
            return
        q, db, user = encode_text(done.sql), encode_text(done.database), encode_text(done.user)
        d = abi.PgdogQueryDoneIn(
            abi.PgdogStrIn(q, len(q)), abi.PgdogStrIn(db, len(db)), abi.PgdogStrIn(user, len(user)),
            max(done.duration_us, 0), max(done.rows, 0), done.sqlstate.encode("ascii", "replace")[:5],
            done.shard, _ROLE_INTS.get(done.role, abi.ROLE_UNKNOWN))
        self._fn["pgdog_post_query"](d)


_MIXINS = {"pre_connect": _PreConnect, "after_connect": _AfterConnect,
           "pre_query": _PreQuery, "post_query": _PostQuery}
_CLASSES: dict[tuple[str, ...], type[NativeHook]] = {}


def _hook_class(events: tuple[str, ...]) -> type[NativeHook]:
    cls = _CLASSES.get(events)
    if cls is None:
        bases = tuple(_MIXINS[e] for e in events)
        cls = _CLASSES[events] = type("NativeHook", (NativeHook, *bases), {"__module__": __name__})
    return cls


# --- loading ----------------------------------------------------------------------------


def is_path(name: str) -> bool:
    """Whether a [[plugins]] name is a file path rather than a library name (see the top)."""
    return "/" in name or "." in name


def _resolve(name: str, base_dir: str | None) -> tuple[str, bool]:
    """(what to dlopen, is it a path)."""
    if is_path(name):
        path = os.path.expanduser(name)
        if not os.path.isabs(path):
            path = os.path.join(base_dir if base_dir is not None else os.getcwd(), path)
        return os.path.normpath(path), True
    return f"lib{name}.so", False


def _loaded_from(fn: Any, fallback: str) -> str:
    """The file a function of a loaded library comes from (dladdr), for the log."""
    try:
        libc = ctypes.CDLL(None)
        dladdr = libc.dladdr
    except (OSError, AttributeError):
        return fallback

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    info = DlInfo()
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    dladdr.restype = ctypes.c_int
    if dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
        return os.fsdecode(info.dli_fname)
    return fallback


def load_plugin(plugin: Plugin, base_dir: str | None = None) -> NativeHook:
    """Load the native plugin of one [[plugins]] entry, run its pgdog_init and pgdog_configure.

    `base_dir` is the directory relative paths are taken from (that of pgdog.toml); None is
    the working directory. Raises HookLoadError ("plugin 'name' refused: why") when the
    plugin cannot be used.
    """
    name = plugin.name

    def refused(reason: str) -> HookLoadError:
        return HookLoadError(f"plugin {name!r} refused: {reason}")

    target, as_path = _resolve(name, base_dir)
    if as_path and not os.path.isfile(target):
        shown = name if os.path.normpath(name) == target else f"{name} ({target})"
        raise refused(f"no such file: {shown}")
    try:
        lib = ctypes.CDLL(target)
    except OSError as exc:
        detail = str(exc)
        if not as_path and "No such file" in detail:
            raise refused(f"{target} not found in LD_LIBRARY_PATH or the system library "
                          "directories (a path to the file works too)") from None
        raise refused(f"{target}: not a loadable shared library ({detail})") from None
    functions = abi.bind_functions(lib)
    version_fn = functions.get("pgdog_plugin_abi_version")
    if version_fn is None:
        raise refused(f"{target}: no pgdog_plugin_abi_version function (not a trio_pgdog plugin; "
                      "plugins define it with PGDOG_PLUGIN_DECLARE())")
    path = _loaded_from(version_fn, target)
    version = version_fn()
    if version != ABI_VERSION:
        raise refused(f"{path}: built for plugin ABI version {version}, this proxy speaks version "
                      f"{ABI_VERSION} (rebuild it against this proxy's hooks/include/pgdog_plugin.h)")
    events = tuple(e for e in EVENTS if abi.EVENT_SYMBOLS[e] in functions)
    if not events:
        raise refused(f"{path}: exports no event function (pgdog_route_query, pgdog_pre_connect, "
                      "pgdog_after_connect or pgdog_post_query)")
    hook = _hook_class(events)(name, path, lib, functions, version)
    init = functions.get("pgdog_init")
    if init is not None:
        init()
    configure = functions.get("pgdog_configure")
    if configure is not None:
        config = encode_text(plugin.config) if plugin.config is not None else None
        rc = configure(abi.PgdogStrIn(config, len(config)) if config is not None else _EMPTY)
        if rc != 0:
            hook.close()
            raise refused(f"{path}: pgdog_configure({plugin.config!r}) returned {rc}")
    try:
        hook.wants_ast = bool(ctypes.c_int.in_dll(lib, "pgdog_wants_ast").value)
    except ValueError:
        hook.wants_ast = False
    log.info("plugin %r loaded from %s (ABI version %d): events %s%s", name, path, version,
             ", ".join(events), "; wants the AST" if hook.wants_ast else "")
    return hook

"""The configuration as frozen attrs classes.

Names and defaults follow pgDog; every duration is an integer number of
milliseconds. Value checks live here as attrs validators so that a model can
never hold a nonsensical value, whether it came from TOML or from a test.
Checks that need more than one entry (duplicates, unknown databases) live in
``checks.py`` because they need the whole configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .errors import InvalidValue

if TYPE_CHECKING:
    from ..router.sharding.schema import ShardingSchema

POOLER_MODES = ("transaction", "session")
ROLES = ("primary", "replica")
AUTH_TYPES = ("scram", "md5", "trust")
LOAD_BALANCING_STRATEGIES = ("round_robin", "random", "least_active_connections")
LOG_FORMATS = ("text", "json")
TLS_VERIFY_MODES = ("disabled", "prefer", "verify_ca", "verify_full")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


# --- validators -------------------------------------------------------------


def _choices(options: tuple[str, ...]) -> str:
    quoted = [repr(o) for o in options]
    return " or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def one_of(options: tuple[str, ...]) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in options:
            raise InvalidValue(attribute.name, f"must be {_choices(options)}, got {value!r}")

    return check


def at_least(minimum: int) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value < minimum:
            raise InvalidValue(attribute.name, f"must be at least {minimum}, got {value}")

    return check


def between(low: int, high: int) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not low <= value <= high:
            raise InvalidValue(attribute.name, f"must be from {low} to {high}, got {value}")

    return check


def port_number(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= 65535:
        raise InvalidValue(attribute.name, f"must be a port number from 1 to 65535, got {value}")


def non_empty(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise InvalidValue(attribute.name, "must not be empty")


def _min_pool_size(inst: General, attribute: attrs.Attribute[Any], value: int) -> None:
    # attrs runs validators after every attribute is set, so the sibling is there.
    at_least(0)(inst, attribute, value)
    if value > inst.default_pool_size:
        raise InvalidValue(
            attribute.name,
            f"must not exceed default_pool_size ({inst.default_pool_size}), got {value}",
        )


def _node_id(inst: General, attribute: attrs.Attribute[Any], value: int) -> None:
    # Each worker process is a node of its own: node_id .. node_id + workers - 1.
    between(0, 1023)(inst, attribute, value)
    if value + inst.workers - 1 > 1023:
        raise InvalidValue(attribute.name, f"with workers = {inst.workers} the workers use node ids "
                           f"{value} to {value + inst.workers - 1}: at most 1023, got {value}")


# --- pgdog.toml -------------------------------------------------------------


@attrs.frozen
class General:
    """``[general]``: the listener and the defaults every pool inherits."""

    host: str = "0.0.0.0"
    port: int = attrs.field(default=6432, validator=port_number)
    # Processes serving the port (SO_REUSEPORT), each with its share of every pool.
    workers: int = attrs.field(default=1, validator=between(1, 64))
    pooler_mode: str = attrs.field(default="transaction", validator=one_of(POOLER_MODES))
    default_pool_size: int = attrs.field(default=10, validator=at_least(1))
    min_pool_size: int = attrs.field(default=0, validator=_min_pool_size)
    connect_timeout: int = attrs.field(default=5_000, validator=at_least(0))
    checkout_timeout: int = attrs.field(default=5_000, validator=at_least(0))
    idle_timeout: int = attrs.field(default=60_000, validator=at_least(0))
    server_lifetime: int = attrs.field(default=86_400_000, validator=at_least(0))
    shutdown_timeout: int = attrs.field(default=60_000, validator=at_least(0))
    client_login_timeout: int = attrs.field(default=60_000, validator=at_least(0))
    # How the proxy authenticates its clients (not how it logs in to servers).
    auth_type: str = attrs.field(default="scram", validator=one_of(AUTH_TYPES))
    prepared_statements_limit: int = attrs.field(default=500, validator=at_least(1))
    # Replicas: how reads are spread, and how long a failed host gets no traffic.
    load_balancing_strategy: str = attrs.field(default="round_robin",
                                               validator=one_of(LOAD_BALANCING_STRATEGIES))
    read_write_split: bool = True
    # A client's reads after its own write go to the primary until the replicas have it.
    read_your_writes: bool = True
    # Sharding: refuse statements that would run on several shards (each must name one).
    cross_shard_disabled: bool = False
    # Sharding: a transaction that wrote on several shards commits with two-phase commit; the
    # decisions still to carry out are kept in files under the journal directory.
    two_phase_commit: bool = False
    two_phase_journal_dir: str = attrs.field(default=".trio_pgdog/two_phase", validator=non_empty)
    # This proxy among those sharing the shards: part of pgdog.unique_id() and of the names of
    # its prepared transactions, so each proxy process needs its own.
    node_id: int = attrs.field(default=0, validator=_node_id)
    # Bytes a replica may be behind the primary before it gets no reads; 0: no limit.
    replica_lag_limit: int = attrs.field(default=0, validator=at_least(0))
    # How often the primary's WAL position and the replicas' replay positions are sampled.
    lag_poll_interval: int = attrs.field(default=200, validator=at_least(10))
    ban_timeout: int = attrs.field(default=300_000, validator=at_least(0))
    healthcheck_interval: int = attrs.field(default=30_000, validator=at_least(0))
    healthcheck_timeout: int = attrs.field(default=5_000, validator=at_least(0))
    # The proxy's own log lines on standard error: "text", or "json" (one object per line).
    log_format: str = attrs.field(default="text", validator=one_of(LOG_FORMATS))
    # TLS towards clients (tls.py): the proxy's certificate and key (PEM files, relative to
    # pgdog.toml), whether plain clients are refused, and a CA that client certificates
    # must chain to (mTLS).
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    tls_client_required: bool = False
    tls_client_ca_certificate: str | None = None
    # TLS towards PostgreSQL: disabled, prefer (TLS where offered), verify_ca, verify_full.
    tls_verify: str = attrs.field(default="prefer", validator=one_of(TLS_VERIFY_MODES))
    tls_server_ca_certificate: str | None = None
    # OpenMetrics (Prometheus) endpoint: GET /metrics on this port; None: not served.
    openmetrics_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        port_number))
    openmetrics_host: str = attrs.field(default="0.0.0.0", validator=non_empty)
    # The period of SHOW STATS' avg_* columns (the admin console).
    stats_period: int = attrs.field(default=15_000, validator=at_least(1000))


def _same_as_name(db: Database) -> str:
    return db.name


@attrs.frozen
class Database:
    """One ``[[databases]]`` (or ``[[servers]]``) entry: one PostgreSQL server.

    Entries sharing a ``name`` form one logical database: its shards and replicas.
    """

    name: str = attrs.field(validator=non_empty)
    host: str = attrs.field(validator=non_empty)
    port: int = attrs.field(default=5432, validator=port_number)
    # The database to open on the server; defaults to the logical name.
    database_name: str = attrs.field(
        default=attrs.Factory(_same_as_name, takes_self=True), validator=non_empty
    )
    role: str = attrs.field(default="primary", validator=one_of(ROLES))
    shard: int = attrs.field(default=0, validator=at_least(0))


# Key types of [[sharded_tables]] (router/sharding/schema.py's DATA_TYPES, kept here so that
# loading a configuration does not import the router).
SHARDING_DATA_TYPES = ("bigint", "varchar", "uuid")


def _identifier(max_parts: int) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is None:
            return
        from ..router.sharding.schema import identifier_parts

        try:
            parts = identifier_parts(value)
        except ValueError as exc:
            raise InvalidValue(attribute.name, str(exc)) from None
        if len(parts) > max_parts:
            shape = "a column name" if max_parts == 1 else "'table' or 'schema.table'"
            raise InvalidValue(attribute.name, f"must be {shape}, got {value!r}")

    return check


@attrs.frozen
class ShardedTable:
    """One ``[[sharded_tables]]`` entry: the column a table of a sharded database is split on.

    Without ``name`` the entry applies to every table that has ``column``. Tables no entry
    applies to are omnisharded: every shard holds all their rows.
    """

    database: str = attrs.field(validator=non_empty)
    column: str = attrs.field(validator=_identifier(1))
    name: str | None = attrs.field(default=None, validator=_identifier(2))
    data_type: str = attrs.field(default="bigint", validator=one_of(SHARDING_DATA_TYPES))


# --- pgdog.toml: hooks and plugins -------------------------------------------


def _pairs(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, ...], ...]) -> None:
    for i, pair in enumerate(value):
        if len(pair) != 2 or not all(pair):
            raise InvalidValue(attribute.name, f"entry {i + 1} must be [name, type], got {list(pair)}")


@attrs.frozen
class InterceptQuery:
    """One ``[[hooks.intercept.queries]]`` entry: a statement answered by the proxy."""

    query: str = attrs.field(validator=non_empty)
    # [name, PostgreSQL type name] per column.
    columns: tuple[tuple[str, ...], ...] = attrs.field(default=(), validator=_pairs)
    # Text cells, one per column in every row.
    rows: tuple[tuple[str, ...], ...] = attrs.field(default=())

    # The checks the intercept hook would make when built, made at load time instead so that a
    # bad entry is a configuration error. Imported here: only configurations with intercepted
    # queries need pglast at load time.
    @query.validator
    def _one_statement(self, attribute: attrs.Attribute[Any], value: str) -> None:
        from ..router.fingerprint import statement_fingerprint

        try:
            statement_fingerprint(value)
        except ValueError as exc:
            raise InvalidValue(attribute.name, str(exc)) from None

    @columns.validator
    def _known_types(self, attribute: attrs.Attribute[Any], value: tuple[tuple[str, ...], ...]) -> None:
        from ..protocol.types import require_type_oid

        for i, (_name, type_name) in enumerate(value):
            try:
                require_type_oid(type_name)
            except ValueError as exc:
                raise InvalidValue(attribute.name, f"entry {i + 1}: {exc}") from None

    @rows.validator
    def _row_widths(self, attribute: attrs.Attribute[Any], value: tuple[tuple[str, ...], ...]) -> None:
        for i, row in enumerate(value):
            if len(row) != len(self.columns):
                raise InvalidValue(
                    attribute.name,
                    f"row {i + 1} has {len(row)} cells but there are {len(self.columns)} columns, "
                    f"got {list(row)}",
                )


@attrs.frozen
class TableAccessHook:
    """``[hooks.table_access]``: statements touching these tables are refused."""

    enabled: bool = False
    databases: tuple[str, ...] = ()  # empty: every logical database
    tables: tuple[str, ...] = ()


@attrs.frozen
class InterceptHook:
    """``[hooks.intercept]``: statements answered without a server."""

    enabled: bool = False
    databases: tuple[str, ...] = ()
    queries: tuple[InterceptQuery, ...] = ()


@attrs.frozen
class QueryLoggerHook:
    """``[hooks.query_logger]``: one log line per statement."""

    enabled: bool = False
    databases: tuple[str, ...] = ()
    format: str = attrs.field(default="text", validator=one_of(LOG_FORMATS))
    path: str | None = None  # None: standard error
    parameters: bool = False


@attrs.frozen
class PrewarmerHook:
    """``[hooks.prewarmer]``: statements run on every new server connection."""

    enabled: bool = False
    databases: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()


@attrs.frozen
class PythonHook:
    """One ``[[hooks.python]]`` entry: a user's hook class, ``"package.module:Class"``."""

    object: str = attrs.field(validator=non_empty)
    enabled: bool = True
    databases: tuple[str, ...] = ()
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Hooks:
    """``[hooks]``: the built-in hooks and the user's Python hooks."""

    table_access: TableAccessHook = attrs.field(factory=TableAccessHook)
    intercept: InterceptHook = attrs.field(factory=InterceptHook)
    query_logger: QueryLoggerHook = attrs.field(factory=QueryLoggerHook)
    prewarmer: PrewarmerHook = attrs.field(factory=PrewarmerHook)
    python: tuple[PythonHook, ...] = ()


@attrs.frozen
class Plugin:
    """One ``[[plugins]]`` entry: a native hook library (lib<name>.so or a path)."""

    name: str = attrs.field(validator=non_empty)
    config: str | None = None  # passed to the plugin's pgdog_configure
    databases: tuple[str, ...] = ()


ADMIN_PASSWORD_ENV = "PGDOG_ADMIN_PASSWORD"


@attrs.frozen
class Admin:
    """``[admin]``: the admin console, a database the proxy answers itself. Off until a
    password is set (here or in the environment variable PGDOG_ADMIN_PASSWORD)."""

    name: str = attrs.field(default="admin", validator=non_empty)  # the database to connect to
    user: str = attrs.field(default="admin", validator=non_empty)
    password: str | None = None

    def effective_password(self) -> str | None:
        """The password, from the file or else the environment; None: the console is off."""
        if self.password:
            return self.password
        return os.environ.get(ADMIN_PASSWORD_ENV) or None


# --- users.toml -------------------------------------------------------------


@attrs.frozen
class User:
    """One ``[[users]]`` entry: who may connect to which logical database."""

    name: str = attrs.field(validator=non_empty)
    database: str = attrs.field(validator=non_empty)
    password: str
    pool_size: int | None = attrs.field(default=None, validator=at_least(1))
    pooler_mode: str | None = attrs.field(default=None, validator=one_of(POOLER_MODES))
    # Credentials for the server side, when they differ from the client's.
    server_user: str | None = None
    server_password: str | None = None
    read_your_writes: bool | None = None  # None: as in [general]
    cross_shard_disabled: bool | None = None  # None: as in [general]

    def effective_pool_size(self, general: General) -> int:
        return self.pool_size if self.pool_size is not None else general.default_pool_size

    def effective_pooler_mode(self, general: General) -> str:
        return self.pooler_mode if self.pooler_mode is not None else general.pooler_mode

    def effective_cross_shard_disabled(self, general: General) -> bool:
        if self.cross_shard_disabled is not None:
            return self.cross_shard_disabled
        return general.cross_shard_disabled

    def effective_read_your_writes(self, general: General) -> bool:
        return self.read_your_writes if self.read_your_writes is not None else general.read_your_writes


# --- the whole configuration ------------------------------------------------

SECTION = "trio_pgdog.config.section"


@attrs.frozen
class Section:
    """Field metadata: this ``Config`` field is a top-level TOML section.

    The loader discovers sections from these markers, so adding a section is
    one attrs class plus one ``Config`` field. A ``tuple[X, ...]`` field is an
    array of tables (``[[name]]``); anything else is a table (``[name]``).
    """

    file: Literal["pgdog", "users"]
    # Other spellings accepted for the same array of tables; entries are appended.
    aliases: tuple[str, ...] = ()


def section(file: Literal["pgdog", "users"], *aliases: str) -> dict[str, Section]:
    return {SECTION: Section(file, aliases)}


@attrs.frozen
class Config:
    """Everything loaded from pgdog.toml and users.toml; replaced whole on reload."""

    general: General = attrs.field(factory=General, metadata=section("pgdog"))
    databases: tuple[Database, ...] = attrs.field(default=(), metadata=section("pgdog", "servers"))
    hooks: Hooks = attrs.field(factory=Hooks, metadata=section("pgdog"))
    admin: Admin = attrs.field(factory=Admin, metadata=section("pgdog"))
    plugins: tuple[Plugin, ...] = attrs.field(default=(), metadata=section("pgdog"))
    sharded_tables: tuple[ShardedTable, ...] = attrs.field(default=(), metadata=section("pgdog"))
    users: tuple[User, ...] = attrs.field(default=(), metadata=section("users"))
    # The order of the [hooks.*] sections and [[plugins]] in pgdog.toml ("hooks.intercept",
    # "plugins", ...): hooks run in the order they are configured.
    hook_order: tuple[str, ...] = ()
    # Where the files came from (None when loaded from text), so a reload can reread them.
    pgdog_path: str | None = None
    users_path: str | None = None
    # Login looks users up by (name, database); index once instead of scanning.
    _user_index: dict[tuple[str, str], User] = attrs.field(
        init=False, repr=False, eq=False, hash=False
    )

    # Sharding schemas built so far, per logical database (see sharding_schema).
    _schemas: dict[str, Any] = attrs.field(init=False, repr=False, eq=False, hash=False,
                                           factory=dict)
    # A login for a database the user has no entry for checks the password of its first entry.
    _first_by_name: dict[str, User] = attrs.field(init=False, repr=False, eq=False, hash=False)

    @_user_index.default
    def _index_users(self) -> dict[tuple[str, str], User]:
        return {(u.name, u.database): u for u in self.users}

    def shards(self, name: str) -> int:
        """How many shards logical database `name` has (0 if there is no such database)."""
        return max((db.shard for db in self.databases if db.name == name), default=-1) + 1

    def sharding_schema(self, name: str) -> ShardingSchema | None:
        """The shards and sharded tables of logical database `name`; None if it is not sharded
        (one shard and no [[sharded_tables]] entry) or does not exist."""
        if name in self._schemas:
            return self._schemas[name]
        from ..router.sharding.schema import ShardedColumn, ShardingSchema

        shards = self.shards(name)
        tables = tuple(ShardedColumn(t.name, t.column, t.data_type)
                       for t in self.sharded_tables if t.database == name)
        schema = ShardingSchema(shards, tables) if shards > 1 or (shards and tables) else None
        self._schemas[name] = schema
        return schema

    @_first_by_name.default
    def _index_names(self) -> dict[str, User]:
        first: dict[str, User] = {}
        for user in self.users:
            first.setdefault(user.name, user)
        return first

    def databases_named(self, name: str) -> tuple[Database, ...]:
        """Every server of one logical database (all shards and roles), in file order."""
        return tuple(db for db in self.databases if db.name == name)

    def find_user(self, name: str, database: str) -> User | None:
        return self._user_index.get((name, database))

    def first_user_named(self, name: str) -> User | None:
        """The first ``[[users]]`` entry called `name`, for any database."""
        return self._first_by_name.get(name)

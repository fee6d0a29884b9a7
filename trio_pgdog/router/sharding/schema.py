"""Which tables of a logical database are sharded, on which column, with which key type.

Built once per configuration from ``[[sharded_tables]]`` (``Config.sharding_schema``). Names
follow PostgreSQL's identifier rules, so that they compare with what the parser reports:
``Orders`` and ``orders`` are the same table, ``"Orders"`` (quoted) is another one, and
``public.orders`` is schema ``public``, table ``orders``. An entry naming a table without a
schema matches that table in any schema; an entry without a table applies to every table
that has the column. Tables no entry applies to are *omnisharded*: every shard holds all
their rows.
"""

from __future__ import annotations

import attrs

__all__ = ["DATA_TYPES", "ShardedColumn", "ShardingSchema", "identifier_parts"]

# Key types and the PostgreSQL column types each covers.
DATA_TYPES = ("bigint", "varchar", "uuid")

_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def identifier_parts(name: str) -> tuple[str, ...]:
    """``Sales."Big Orders"`` -> ``("sales", "Big Orders")``: dotted parts, folded to lower
    case (ASCII letters, as PostgreSQL does) unless double-quoted.

    Raises ValueError for an empty part or an unterminated quote.
    """
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        while i < n and name[i].isspace():
            i += 1
        if i < n and name[i] == '"':
            out = []
            i += 1
            while True:
                end = name.find('"', i)
                if end < 0:
                    raise ValueError(f"unterminated quoted identifier in {name!r}")
                out.append(name[i:end])
                if name.startswith('"', end + 1):  # "" is a quote inside the name
                    out.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            part = "".join(out)
        else:
            start = i
            while i < n and name[i] != "." and not name[i].isspace() and name[i] != '"':
                i += 1
            part = name[start:i].translate(_UPPER)
        while i < n and name[i].isspace():
            i += 1
        if not part:
            raise ValueError(f"empty name in {name!r}")
        parts.append(part)
        if i == n:
            return tuple(parts)
        if name[i] != ".":
            raise ValueError(f"unexpected {name[i]!r} in {name!r}")
        i += 1


@attrs.frozen
class ShardedColumn:
    """One ``[[sharded_tables]]`` entry, as written in the file.

    ``table`` is None for an entry that shards every table having ``column``.
    """

    table: str | None
    column: str
    data_type: str = "bigint"


@attrs.frozen
class _Entry:
    schema: str | None  # None: any schema
    table: str
    column: str  # folded like an identifier
    sharded: ShardedColumn
    key: tuple[str, str, bool]  # what key_of answers for it


def _entry(column: ShardedColumn) -> _Entry | None:
    parts = identifier_parts(column.column)
    if len(parts) != 1:
        raise ValueError(f"column {column.column!r} must be a plain column name")
    if column.data_type not in DATA_TYPES:
        raise ValueError(f"data_type must be one of {', '.join(DATA_TYPES)}, got {column.data_type!r}")
    if column.table is None:
        return None
    table = identifier_parts(column.table)
    if len(table) > 2:
        raise ValueError(f"table {column.table!r} must be 'table' or 'schema.table'")
    return _Entry(table[0] if len(table) == 2 else None, table[-1], parts[0], column,
                  (parts[0], column.data_type, True))


@attrs.frozen
class ShardingSchema:
    """A sharded logical database: its number of shards and its sharded tables."""

    shards: int
    tables: tuple[ShardedColumn, ...] = ()
    _by_table: dict[str, tuple[_Entry, ...]] = attrs.field(init=False, repr=False, eq=False,
                                                          hash=False)
    # The entry without a table (at most one is used: the first) and its key_of answer.
    _anywhere: tuple[ShardedColumn, ...] = attrs.field(init=False, repr=False, eq=False,
                                                       hash=False)
    _anywhere_key: tuple[str, str, bool] | None = attrs.field(init=False, repr=False, eq=False,
                                                               hash=False)
    # frozenset({n}) for each shard, built once: routing returns these.
    single: tuple[frozenset[int], ...] = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"a sharded database needs at least one shard, got {self.shards}")
        by_table: dict[str, list[_Entry]] = {}
        anywhere: list[ShardedColumn] = []
        for column in self.tables:
            entry = _entry(column)
            if entry is None:
                anywhere.append(column)
            else:
                by_table.setdefault(entry.table, []).append(entry)
        object.__setattr__(self, "_by_table", {k: tuple(v) for k, v in by_table.items()})
        object.__setattr__(self, "_anywhere", tuple(anywhere[:1]))
        object.__setattr__(self, "_anywhere_key", (identifier_parts(anywhere[0].column)[0],
                                                   anywhere[0].data_type, False) if anywhere else None)
        object.__setattr__(self, "single", tuple(frozenset((i,)) for i in range(self.shards)))

    @property
    def column_anywhere(self) -> ShardedColumn | None:
        """The entry without a table name, if there is one."""
        return self._anywhere[0] if self._anywhere else None

    def named_column(self, table: str, schema: str | None = None) -> ShardedColumn | None:
        """The entry naming this table (names as the parser reports them: folded unless quoted).

        An entry for ``schema.table`` wins over one for ``table``; an unqualified table matches an
        entry in schema ``public`` first, then one without a schema, then any other.
        """
        entry = self._entry(table, schema)
        return entry.sharded if entry is not None else None

    def _entry(self, table: str, schema: str | None) -> _Entry | None:
        entries = self._by_table.get(table)
        if not entries:
            return None
        wanted = schema if schema is not None else "public"
        for entry in entries:
            if entry.schema == wanted:
                return entry
        for entry in entries:
            if entry.schema is None:
                return entry
        return entries[0] if schema is None else None

    def sharded_column(self, table: str, schema: str | None = None) -> ShardedColumn | None:
        """The column a table is sharded on: its own entry, else the table-less entry (which
        applies only if the table has that column: the caller knows, this does not)."""
        named = self.named_column(table, schema)
        if named is not None:
            return named
        return self.column_anywhere

    def key_of(self, table: str, schema: str | None = None) -> tuple[str, str, bool] | None:
        """(key column folded like an identifier, data_type, named) for a table: named is True
        for the table's own entry, False for the table-less entry (which shards the table only
        if it has that column); None for a table no entry can apply to (omnisharded)."""
        entry = self._entry(table, schema)
        if entry is not None:
            return entry.key
        return self._anywhere_key

    @property
    def anywhere_column(self) -> str | None:
        """The table-less entry's column, folded like an identifier."""
        return self._anywhere_key[0] if self._anywhere_key else None

    @property
    def data_types(self) -> frozenset[str]:
        return frozenset(column.data_type for column in self.tables)

"""Checks that look at more than one entry, run once the models are built."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from .models import Config


@attrs.frozen
class Issue:
    """A problem with entry ``index`` of the ``Config`` field ``field``, at ``key``
    (``index`` None: the field is one table, e.g. ``[general]``)."""

    field: str
    index: int | None
    key: str
    message: str


# Names an entry the way the file does ("[[servers]] #2"), for cross-references.
Labeller = Callable[[str, int], str]


def check_config(config: Config, label: Labeller, pgdog_file: str) -> Iterator[Issue]:
    yield from _one_primary_per_shard(config, label)
    yield from _shards(config)
    yield from _sharded_tables(config, label)
    yield from _users(config, label, pgdog_file)
    yield from _tls(config)
    yield from _admin(config)


def _tls(config: Config) -> Iterator[Issue]:
    """TLS keys that need each other, and certificate files that can be used."""
    from .. import tls

    g = config.general
    needs = [("tls_private_key", "tls_certificate"), ("tls_certificate", "tls_private_key"),
             ("tls_client_required", "tls_certificate"),
             ("tls_client_ca_certificate", "tls_certificate")]
    missing = [(key, other) for key, other in needs if getattr(g, key) and not getattr(g, other)]
    for key, other in missing:
        yield Issue("general", None, key, f"needs {other} too (TLS towards clients)")
    try:
        if not missing:
            tls.client_context(config)
        tls.check_server_ca(config)
    except tls.TlsFileError as exc:
        yield Issue("general", None, exc.key, exc.message)


def _admin(config: Config) -> Iterator[Issue]:
    """The admin console's database name belongs to the console: no server may have it
    (only checked when the console is on: a database may be called "admin" otherwise)."""
    if config.admin.effective_password() is None:
        return
    for i, db in enumerate(config.databases):
        if db.name == config.admin.name:
            yield Issue("databases", i, "name",
                        f"{db.name!r} is the admin console's database ([admin] name); rename "
                        "this database or set another [admin] name")
            return


def _shards(config: Config) -> Iterator[Issue]:
    """A sharded database numbers its shards 0 to N-1, and each shard has a primary."""
    entries: dict[str, list[int]] = {}
    for i, db in enumerate(config.databases):
        entries.setdefault(db.name, []).append(i)
    sharded = {t.database for t in config.sharded_tables}
    for name, indexes in entries.items():
        numbers = {config.databases[i].shard for i in indexes}
        missing = sorted(set(range(max(numbers) + 1)) - numbers)
        if missing:
            # Reported at the first entry whose number skips over the hole.
            first = next(i for i in indexes if config.databases[i].shard > missing[0])
            yield Issue(
                "databases",
                first,
                "shard",
                f"database {name!r} has no shard {missing[0]}: number the shards of a database "
                f"0, 1, 2, ... without gaps (it has {_listed(sorted(numbers))})",
            )
            continue
        if len(numbers) < 2 and name not in sharded:
            continue  # an unsharded database may be replicas only
        for shard in sorted(numbers):
            on_shard = [i for i in indexes if config.databases[i].shard == shard]
            if all(config.databases[i].role != "primary" for i in on_shard):
                yield Issue(
                    "databases",
                    on_shard[0],
                    "role",
                    f"shard {shard} of database {name!r} has no primary: one of its entries "
                    'must have role = "primary"',
                )


def _listed(numbers: list[int]) -> str:
    return "shard " + ", ".join(map(str, numbers)) if len(numbers) == 1 else \
        "shards " + ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def _sharded_tables(config: Config, label: Labeller) -> Iterator[Issue]:
    known = {db.name for db in config.databases}
    seen: dict[tuple[str, str | None], int] = {}
    for i, table in enumerate(config.sharded_tables):
        if table.database not in known:
            yield Issue(
                "sharded_tables",
                i,
                "database",
                f"no [[databases]] entry named {table.database!r}",
            )
        first = seen.setdefault((table.database, _folded(table.name)), i)
        if first != i:
            what = f"table {table.name!r}" if table.name is not None else "every table (no name)"
            yield Issue(
                "sharded_tables",
                i,
                "name" if table.name is not None else "column",
                f"{what} of database {table.database!r} already has a sharding column "
                f"({label('sharded_tables', first)}); a table is sharded on one column",
            )


def _folded(name: str | None) -> str | None:
    if name is None:
        return None
    from ..router.sharding.schema import identifier_parts

    return ".".join(identifier_parts(name))


def _one_primary_per_shard(config: Config, label: Labeller) -> Iterator[Issue]:
    primaries: dict[tuple[str, int], int] = {}
    for i, db in enumerate(config.databases):
        if db.role != "primary":
            continue
        first = primaries.setdefault((db.name, db.shard), i)
        if first != i:
            yield Issue(
                "databases",
                i,
                "role",
                f"database {db.name!r} already has a primary for shard {db.shard} "
                f'({label("databases", first)}); set role = "replica" or another shard',
            )


def _users(config: Config, label: Labeller, pgdog_file: str) -> Iterator[Issue]:
    known = {db.name for db in config.databases}
    seen: dict[tuple[str, str], int] = {}
    for i, user in enumerate(config.users):
        if user.database not in known:
            yield Issue(
                "users",
                i,
                "database",
                f"no [[databases]] entry named {user.database!r} in {pgdog_file}",
            )
        first = seen.setdefault((user.name, user.database), i)
        if first != i:
            yield Issue(
                "users",
                i,
                "name",
                f"duplicate user {user.name!r} for database {user.database!r} "
                f"(first defined in {label('users', first)})",
            )

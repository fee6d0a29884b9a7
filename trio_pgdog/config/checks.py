"""Checks that look at more than one entry, run once the models are built."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from .models import Config


@attrs.frozen
class Issue:
    """A problem with entry ``index`` of the ``Config`` field ``field``, at ``key``."""

    field: str
    index: int
    key: str
    message: str


# Names an entry the way the file does ("[[servers]] #2"), for cross-references.
Labeller = Callable[[str, int], str]


def check_config(config: Config, label: Labeller, pgdog_file: str) -> Iterator[Issue]:
    yield from _one_primary_per_shard(config, label)
    yield from _users(config, label, pgdog_file)


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

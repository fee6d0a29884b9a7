"""The configuration loader: defaults, full files, and the one-line errors an operator sees."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import attrs
import pytest

from trio_pgdog.config import (
    Config,
    ConfigError,
    Database,
    General,
    User,
    load_config,
    load_config_text,
)
from trio_pgdog.router.sharding.schema import ShardedColumn, ShardingSchema

# The quickstart from pgDog's README, byte for byte.
README_PGDOG = (
    '[general]\nhost = "0.0.0.0"\nport = 6432\n\n[[servers]]\nname = "pgdog"\nhost = "127.0.0.1"\n'
)
README_USERS = '[[users]]\ndatabase = "pgdog"\nname = "pgdog"\npassword = "pgdog"\n'

ONE_DB = '[[databases]]\nname = "pgdog"\nhost = "127.0.0.1"\n'

FULL_PGDOG = """\
# Every key, none left at its default.
[general]
host = "127.0.0.1"   # listen on loopback only
port = 7432
pooler_mode = "session"
default_pool_size = 20
min_pool_size = 2
connect_timeout = 1_000
checkout_timeout = 2000
idle_timeout = 30000
server_lifetime = 3600000
shutdown_timeout = 10000
client_login_timeout = 15000
auth_type = "md5"

[[databases]]
name = "shop"
host = "10.0.0.1"
port = 5433
database_name = "shop_production"
role = "primary"
shard = 0

[[databases]]
name = "shop"
host = "10.0.0.2"
role = "replica"

[[databases]]
name = "shop"
host = "10.0.1.1"
shard = 1
"""

FULL_USERS = """\
[[users]]
name = "alice"
database = "shop"
password = "secret"
pool_size = 5
pooler_mode = "transaction"
server_user = "shop_app"
server_password = "server-secret"

[[users]]
name = "bob"
database = "shop"
password = "hunter2"
"""


def error_of(pgdog: str, users: str | None = None) -> str:
    """The message of the ConfigError that loading these texts raises; always one line."""
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(pgdog), None if users is None else textwrap.dedent(users))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- successful loads -------------------------------------------------------


def test_defaults_follow_pgdog() -> None:
    config = load_config_text("", None)
    assert isinstance(config, Config)
    assert config.general == General()
    g = config.general
    assert (g.host, g.port, g.pooler_mode, g.auth_type) == ("0.0.0.0", 6432, "transaction", "scram")
    assert (g.default_pool_size, g.min_pool_size) == (10, 0)
    assert (g.connect_timeout, g.checkout_timeout) == (5000, 5000)
    assert (g.idle_timeout, g.server_lifetime) == (60_000, 86_400_000)
    assert (g.shutdown_timeout, g.client_login_timeout) == (60_000, 60_000)
    assert g.log_format == "text"
    assert load_config_text('[general]\nlog_format = "json"\n', None).general.log_format == "json"
    assert config.databases == ()
    assert config.users == ()
    assert config.pgdog_path is None and config.users_path is None


def test_readme_quickstart_with_servers_spelling() -> None:
    config = load_config_text(README_PGDOG, README_USERS)
    assert config.general.host == "0.0.0.0"
    assert config.general.port == 6432
    assert config.databases == (Database(name="pgdog", host="127.0.0.1"),)
    db = config.databases[0]
    assert (db.port, db.database_name, db.role, db.shard) == (5432, "pgdog", "primary", 0)
    user = config.find_user("pgdog", "pgdog")
    assert user == User(name="pgdog", database="pgdog", password="pgdog")


def test_full_files() -> None:
    config = load_config_text(FULL_PGDOG, FULL_USERS)
    assert config.general == General(
        host="127.0.0.1",
        port=7432,
        pooler_mode="session",
        default_pool_size=20,
        min_pool_size=2,
        connect_timeout=1000,
        checkout_timeout=2000,
        idle_timeout=30000,
        server_lifetime=3_600_000,
        shutdown_timeout=10000,
        client_login_timeout=15000,
        auth_type="md5",
    )
    primary, replica, shard1 = config.databases
    assert primary == Database("shop", "10.0.0.1", 5433, "shop_production", "primary", 0)
    assert replica == Database("shop", "10.0.0.2", 5432, "shop", "replica", 0)
    assert (shard1.shard, shard1.role) == (1, "primary")
    assert config.databases_named("shop") == config.databases
    assert config.databases_named("nope") == ()

    alice = config.find_user("alice", "shop")
    bob = config.find_user("bob", "shop")
    assert alice is not None and bob is not None
    assert (alice.server_user, alice.server_password) == ("shop_app", "server-secret")
    assert alice.effective_pool_size(config.general) == 5
    assert bob.effective_pool_size(config.general) == 20
    assert alice.effective_pooler_mode(config.general) == "transaction"
    assert bob.effective_pooler_mode(config.general) == "session"
    assert config.find_user("alice", "other") is None
    assert config.find_user("carol", "shop") is None


def test_databases_and_servers_are_concatenated() -> None:
    config = load_config_text(
        """\
        [[servers]]
        name = "b"
        host = "h2"

        [[databases]]
        name = "a"
        host = "h1"
        """.replace("        ", ""),
        None,
    )
    # [[databases]] entries come first, then [[servers]].
    assert [db.name for db in config.databases] == ["a", "b"]


def test_models_are_frozen_and_comparable() -> None:
    config = load_config_text(README_PGDOG, README_USERS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.general.port = 1  # type: ignore[misc]
    assert config == load_config_text(README_PGDOG, README_USERS)
    assert hash(config) == hash(load_config_text(README_PGDOG, README_USERS))
    # A config built by hand (no files) can still look users up.
    renamed = attrs.evolve(config, users=(User("x", "pgdog", "pw"),))
    assert renamed.find_user("x", "pgdog") is not None
    assert renamed.find_user("pgdog", "pgdog") is None


def test_users_text_none_means_no_users() -> None:
    assert load_config_text(ONE_DB, None).users == ()


def test_error_keeps_its_parts() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("[general]\nprot = 1\n", None)
    assert (info.value.file, info.value.line) == ("pgdog.toml", 2)
    assert info.value.message == "[general] unknown key 'prot'"


# --- files on disk ----------------------------------------------------------


def test_load_config_from_files(tmp_path: Path) -> None:
    pgdog, users = tmp_path / "pgdog.toml", tmp_path / "users.toml"
    pgdog.write_text(README_PGDOG)
    users.write_text(README_USERS)
    config = load_config(pgdog, users)
    assert config.pgdog_path == str(pgdog)
    assert config.users_path == str(users)
    assert config.find_user("pgdog", "pgdog") is not None
    # A reload rereads the same paths.
    assert load_config(config.pgdog_path, config.users_path) == config


def test_missing_users_file_is_an_error(tmp_path: Path) -> None:
    """Without users.toml nobody could log in: a mistake (a wrong --users, a file not
    deployed), not a configuration; the error says what the file is for."""
    pgdog = tmp_path / "pgdog.toml"
    pgdog.write_text(README_PGDOG)
    users = tmp_path / "users.toml"
    with pytest.raises(ConfigError) as info:
        load_config(pgdog, users)
    assert str(info.value).startswith(f"{users}: cannot read: No such file or directory; ")
    assert "--users" in str(info.value)


def test_empty_users_file_gives_no_users(tmp_path: Path) -> None:
    pgdog, users = tmp_path / "pgdog.toml", tmp_path / "users.toml"
    pgdog.write_text(README_PGDOG)
    users.write_text("# nobody yet\n")
    config = load_config(pgdog, users)
    assert config.users == ()
    assert config.users_path == str(users)


def test_missing_pgdog_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pgdog.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, tmp_path / "users.toml")
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_unreadable_users_file_is_an_error(tmp_path: Path) -> None:
    pgdog = tmp_path / "pgdog.toml"
    pgdog.write_text(README_PGDOG)
    users = tmp_path / "users.toml"
    users.mkdir()  # exists, but cannot be read as a file
    with pytest.raises(ConfigError) as info:
        load_config(pgdog, users)
    assert str(info.value).startswith(f"{users}: cannot read: ")


def test_error_in_file_names_its_path(tmp_path: Path) -> None:
    pgdog, users = tmp_path / "pgdog.toml", tmp_path / "users.toml"
    pgdog.write_text(README_PGDOG)
    users.write_text('[[users]]\nname = "pgdog"\ndatabase = "pgdog"\n')
    with pytest.raises(ConfigError) as info:
        load_config(pgdog, users)
    assert str(info.value) == f"{users}: line 1: [[users]] #1: missing required key 'password'"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    pgdog = tmp_path / "pgdog.toml"
    pgdog.write_bytes(b"[general]\nhost = '\xff'\n")
    with pytest.raises(ConfigError, match="cannot read: not UTF-8"):
        load_config(pgdog, tmp_path / "users.toml")


# --- errors: exact messages -------------------------------------------------


def test_unknown_key() -> None:
    message = error_of('[general]\nhost = "0.0.0.0"\nprot = 6432\n')
    assert message == "pgdog.toml: line 3: [general] unknown key 'prot'"


def test_wrong_type_in_array_entry() -> None:
    message = error_of('[general]\n\n[[databases]]\nname = "a"\nport = "5432x"\nhost = "h"\n')
    assert message == (
        "pgdog.toml: line 5: [[databases]] #1 'port': expected an integer, got string '5432x'"
    )


def test_missing_required_key_names_the_entry() -> None:
    message = error_of(
        ONE_DB,
        """\
        [[users]]
        name = "a"
        database = "pgdog"
        password = "x"

        [[users]]
        name = "b"
        database = "pgdog"
        """,
    )
    assert message == "users.toml: line 6: [[users]] #2: missing required key 'password'"


def test_invalid_toml_reports_tomlkits_line() -> None:
    message = error_of('[general]\nhost = "x"\n\n\n\n\nport = = 1\n')
    assert message.startswith("pgdog.toml: line 7: invalid TOML: ")
    assert "at line" not in message  # the position is not repeated


def test_duplicate_key_is_invalid_toml() -> None:
    message = error_of("[general]\nport = 1\nport = 2\n")
    assert message.startswith("pgdog.toml: line 3: invalid TOML: ")
    assert "port" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[general]\nport = true\n",
            "line 2: [general] 'port': expected an integer, got boolean true",
        ),
        ("[general]\nport = 1.5\n", "line 2: [general] 'port': expected an integer, got float 1.5"),
        ("[general]\nhost = 5\n", "line 2: [general] 'host': expected a string, got integer 5"),
        (
            '[[databases]]\nname = "a"\nhost = "h"\nshard = false\n',
            "line 4: [[databases]] #1 'shard': expected an integer, got boolean false",
        ),
        ("general = 5\n", "line 1: 'general': expected a table, got integer 5"),
        ("databases = [1]\n", "line 1: 'databases' item #1: expected a table, got integer 1"),
        (
            'databases = [{ name = "a", host = 1 }]\n',
            "line 1: [[databases]] #1 'host': expected a string, got integer 1",
        ),
        (
            '[[servers]]\nname = "a"\nhost = "h"\n\n[[servers]]\nname = 7\nhost = "h"\n',
            "line 6: [[servers]] #2 'name': expected a string, got integer 7",
        ),
    ],
)
def test_wrong_types(text: str, expected: str) -> None:
    assert error_of(text) == f"pgdog.toml: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[general]\npooler_mode = "statement"\n',
            "line 2: [general] 'pooler_mode': must be 'transaction' or 'session', got 'statement'",
        ),
        (
            '[general]\nauth_type = "plain"\n',
            "line 2: [general] 'auth_type': must be 'scram', 'md5' or 'trust', got 'plain'",
        ),
        (
            '[[databases]]\nname = "a"\nhost = "h"\nrole = "standby"\n',
            "line 4: [[databases]] #1 'role': must be 'primary' or 'replica', got 'standby'",
        ),
        (
            "[general]\nport = 0\n",
            "line 2: [general] 'port': must be a port number from 1 to 65535, got 0",
        ),
        (
            '[[databases]]\nname = "a"\nhost = "h"\nport = 65536\n',
            "line 4: [[databases]] #1 'port': must be a port number from 1 to 65535, got 65536",
        ),
        (
            "[general]\ndefault_pool_size = 0\n",
            "line 2: [general] 'default_pool_size': must be at least 1, got 0",
        ),
        (
            "[general]\nmin_pool_size = -1\n",
            "line 2: [general] 'min_pool_size': must be at least 0, got -1",
        ),
        (
            "[general]\ndefault_pool_size = 5\nmin_pool_size = 6\n",
            "line 3: [general] 'min_pool_size': must not exceed default_pool_size (5), got 6",
        ),
        (
            "[general]\ncheckout_timeout = -1\n",
            "line 2: [general] 'checkout_timeout': must be at least 0, got -1",
        ),
        (
            '[[databases]]\nname = ""\nhost = "h"\n',
            "line 2: [[databases]] #1 'name': must not be empty",
        ),
        (
            '[[databases]]\nname = "a"\nhost = "h"\nshard = -1\n',
            "line 4: [[databases]] #1 'shard': must be at least 0, got -1",
        ),
        (
            '[general]\nlog_format = "xml"\n',
            "line 2: [general] 'log_format': must be 'text' or 'json', got 'xml'",
        ),
    ],
)
def test_invalid_values(text: str, expected: str) -> None:
    assert error_of(text) == f"pgdog.toml: {expected}"


@pytest.mark.parametrize(
    "timeout",
    [
        "connect_timeout",
        "checkout_timeout",
        "idle_timeout",
        "server_lifetime",
        "shutdown_timeout",
        "client_login_timeout",
    ],
)
def test_every_timeout_rejects_negatives(timeout: str) -> None:
    message = error_of(f"[general]\n{timeout} = -5\n")
    assert message == f"pgdog.toml: line 2: [general] {timeout!r}: must be at least 0, got -5"


def test_zero_timeouts_are_allowed() -> None:
    assert load_config_text("[general]\nidle_timeout = 0\n", None).general.idle_timeout == 0


def test_user_pool_size_and_mode_are_checked() -> None:
    base = '[[users]]\nname = "a"\ndatabase = "pgdog"\npassword = "x"\n'
    assert error_of(ONE_DB, base + "pool_size = 0\n") == (
        "users.toml: line 5: [[users]] #1 'pool_size': must be at least 1, got 0"
    )
    assert error_of(ONE_DB, base + 'pooler_mode = "statement"\n').startswith(
        "users.toml: line 5: [[users]] #1 'pooler_mode': must be 'transaction' or 'session'"
    )
    assert error_of(ONE_DB, base + "server_user = 1\n") == (
        "users.toml: line 5: [[users]] #1 'server_user': expected a string, got integer 1"
    )
    assert error_of(ONE_DB, base + "extra = 1\n") == (
        "users.toml: line 5: [[users]] #1 unknown key 'extra'"
    )


def test_user_for_unknown_database() -> None:
    message = error_of(
        ONE_DB,
        '[[users]]\nname = "a"\ndatabase = "pgdgo"\npassword = "x"\n',
    )
    assert message == (
        "users.toml: line 3: [[users]] #1 'database': no [[databases]] entry named 'pgdgo' "
        "in pgdog.toml"
    )


def test_duplicate_user() -> None:
    user = '[[users]]\nname = "a"\ndatabase = "pgdog"\npassword = "x"\n\n'
    message = error_of(ONE_DB, user + user)
    assert message == (
        "users.toml: line 7: [[users]] #2 'name': duplicate user 'a' for database 'pgdog' "
        "(first defined in [[users]] #1)"
    )
    # The same name for another database is fine.
    other = user.replace("pgdog", "other")
    config = load_config_text(ONE_DB + '[[databases]]\nname = "other"\nhost = "h"\n', user + other)
    assert len(config.users) == 2


def test_two_primaries_for_one_shard() -> None:
    message = error_of(
        """\
        [[databases]]
        name = "shop"
        host = "h1"

        [[servers]]
        name = "shop"
        host = "h2"
        """
    )
    # role is not written, so the line is the entry's header.
    assert message == (
        "pgdog.toml: line 5: [[servers]] #1 'role': database 'shop' already has a primary for "
        'shard 0 ([[databases]] #1); set role = "replica" or another shard'
    )
    # Different shards, or a replica, are fine.
    ok = "[[databases]]\nname = 'shop'\nhost = 'h1'\n\n[[databases]]\nname = 'shop'\nhost = 'h2'\n"
    assert len(load_config_text(ok + "shard = 1\n", None).databases) == 2
    assert len(load_config_text(ok + "role = 'replica'\n", None).databases) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[omnisharded_tables]]\nname = 'x'\n", "line 1: unknown table [[omnisharded_tables]]"),
        ("[[mirroring]]\nsource_db = 'x'\n", "line 1: unknown table [[mirroring]]"),
        ("port = 6432\n", "line 1: unknown key 'port'"),
    ],
)
def test_unknown_top_level_sections(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(f"pgdog.toml: {expected} (expected [general], [[databases]]")


# --- [admin] and the metrics keys ---------------------------------------------------


def test_admin_section_and_metrics_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDOG_ADMIN_PASSWORD", raising=False)
    config = load_config_text("[general]\nopenmetrics_port = 9930\n\n[admin]\nname = 'pgdog'\n"
                              "user = 'ops'\npassword = 's3cret'\n", None)
    assert (config.admin.name, config.admin.user) == ("pgdog", "ops")
    assert config.admin.effective_password() == "s3cret"
    assert (config.general.openmetrics_port, config.general.openmetrics_host) == (9930, "0.0.0.0")
    off = load_config_text("[[databases]]\nname = 'admin'\nhost = 'h'\n", None)
    assert off.admin.effective_password() is None  # off: "admin" is an ordinary name
    monkeypatch.setenv("PGDOG_ADMIN_PASSWORD", "from-env")
    assert load_config_text("", None).admin.effective_password() == "from-env"
    # On: the console's name belongs to it.
    assert error_of("[[databases]]\nname = 'admin'\nhost = 'h'\n") == (
        "pgdog.toml: line 2: [[databases]] #1 'name': 'admin' is the admin console's database "
        "([admin] name); rename this database or set another [admin] name")
    assert "openmetrics_port" in error_of("[general]\nopenmetrics_port = 70000\n")
    assert "unknown key 'pasword'" in error_of("[admin]\npasword = 'x'\n")


# --- sharding: [[sharded_tables]] and shard numbering --------------------------------

SHARDED = """\
[[databases]]
name = "app"
host = "10.0.0.1"
shard = 0

[[databases]]
name = "app"
host = "10.0.0.2"
shard = 1

[[databases]]
name = "app"
host = "10.0.0.3"
shard = 1
role = "replica"

[[databases]]
name = "plain"
host = "10.0.1.1"

[[sharded_tables]]
database = "app"
name = "orders"
column = "customer_id"

[[sharded_tables]]
database = "app"
column = "tenant_id"
data_type = "varchar"
"""


def test_sharded_tables():
    config = load_config_text(SHARDED, None)
    assert (config.shards("app"), config.shards("plain"), config.shards("nope")) == (2, 1, 0)
    schema = config.sharding_schema("app")
    assert schema == ShardingSchema(2, (ShardedColumn("orders", "customer_id", "bigint"),
                                        ShardedColumn(None, "tenant_id", "varchar")))
    assert config.sharding_schema("app") is schema
    assert config.sharding_schema("plain") is None and config.sharding_schema("nope") is None
    # A replica-only unsharded database stays allowed, as before.
    load_config_text('[[databases]]\nname = "r"\nhost = "h"\nrole = "replica"\n', None)


@pytest.mark.parametrize(("change", "expected"), [
    (("shard = 1\n\n[[databases]]\nname = \"app\"\nhost = \"10.0.0.3\"\nshard = 1",
      "shard = 2\n\n[[databases]]\nname = \"app\"\nhost = \"10.0.0.3\"\nshard = 2"),
     "pgdog.toml: line 9: [[databases]] #2 'shard': database 'app' has no shard 1: number the "
     "shards of a database 0, 1, 2, ... without gaps (it has shards 0 and 2)"),
    (('host = "10.0.0.2"\nshard = 1\n', 'host = "10.0.0.2"\nshard = 1\nrole = "replica"\n'),
     "pgdog.toml: line 10: [[databases]] #2 'role': shard 1 of database 'app' has no primary: "
     'one of its entries must have role = "primary"'),
    (('database = "app"\nname = "orders"', 'database = "ap"\nname = "orders"'),
     "pgdog.toml: line 22: [[sharded_tables]] #1 'database': no [[databases]] entry named 'ap'"),
    (('data_type = "varchar"', 'data_type = "text"'),
     "pgdog.toml: line 29: [[sharded_tables]] #2 'data_type': must be 'bigint', 'varchar' or "
     "'uuid', got 'text'"),
    (('name = "orders"', 'name = "a.b.c"'),
     "pgdog.toml: line 23: [[sharded_tables]] #1 'name': must be 'table' or 'schema.table', "
     "got 'a.b.c'"),
    (('column = "tenant_id"', 'column = "customer_id"\nname = "ORDERS"'),
     "pgdog.toml: line 29: [[sharded_tables]] #2 'name': table 'ORDERS' of database 'app' already "
     "has a sharding column ([[sharded_tables]] #1); a table is sharded on one column"),
    (('column = "customer_id"', 'column = ""'),
     "pgdog.toml: line 24: [[sharded_tables]] #1 'column': empty name in ''"),
    (('column = "tenant_id"', "colum = 'tenant_id'"),
     "pgdog.toml: line 26: [[sharded_tables]] #2: missing required key 'column'"),
])
def test_sharding_errors(change, expected):
    old, new = change
    assert old in SHARDED
    assert error_of(SHARDED.replace(old, new, 1)) == expected


def test_unknown_hook_section() -> None:
    text = "[general]\n\n[hooks.query_logger]\nenabled = true\n\n[hooks.bogus]\nenabled = true\n"
    assert error_of(text).startswith("pgdog.toml: line 6: [hooks] unknown key 'bogus'")


def test_unknown_table_in_users_file() -> None:
    assert error_of(ONE_DB, "[[user]]\nname = 'a'\n") == (
        "users.toml: line 1: unknown table [[user]] (expected [[users]])"
    )


def test_first_problem_in_the_file_is_reported() -> None:
    message = error_of('[general]\nhost = 1\nprot = 2\n\n[[databases]]\nname = "a"\n')
    assert message == "pgdog.toml: line 2: [general] 'host': expected a string, got integer 1"


def test_pgdog_errors_come_before_users_errors() -> None:
    pgdog = "[[databases]]\nname = 'a'\nhost = 'h'\n[[databases]]\nname = 'a'\nhost = 'h'\n"
    users = "[[users]]\nname = 'u'\ndatabase = 'missing'\npassword = 'x'\n"
    assert error_of(pgdog, users).startswith("pgdog.toml: line 4: [[databases]] #2 'role'")


def test_line_numbers_survive_comments_and_multiline_values() -> None:
    text = '''\
    # A comment mentioning [general] and port = 1.
    [general]   # the listener
    host = """
    [general]
    port = 1
    """
    connect_timeout = [
      1,
      [2],
    ]
    "port" = "6432"
    '''
    assert error_of(text) == (
        "pgdog.toml: line 7: [general] 'connect_timeout': expected an integer, got an array"
    )
    text = text.replace("connect_timeout = [\n      1,\n      [2],\n    ]\n", "")
    assert error_of(text) == (
        "pgdog.toml: line 7: [general] 'port': expected an integer, got string '6432'"
    )


def test_table_after_its_subtable_is_not_a_redefinition() -> None:
    # [a.b] before [a] is valid TOML; only a real repeat is reported with a line.
    message = error_of("[general.x]\n[general]\nport = 1\nhost = 'a'\nhost = 'b'\n")
    assert message.startswith("pgdog.toml: line 5: invalid TOML: ")


def test_examples_in_the_docs_load() -> None:
    docs = Path(__file__).parent.parent / "docs" / "configuration.md"
    admin, pgdog, quickstart, users = re.findall(r"```toml\n(.*?)```", docs.read_text(), re.S)
    assert load_config_text(admin, None).admin.effective_password() == "change-me"
    config = load_config_text(pgdog, users)
    assert len(config.databases_named("shop")) == 3
    assert config.sharding_schema("shop") == ShardingSchema(2, (ShardedColumn("orders", "customer_id"),))
    assert config.find_user("reports", "analytics") is not None
    assert load_config_text(quickstart, None).databases[0].name == "pgdog"


def test_sharded_example_loads() -> None:
    """examples/sharded: three shards, a replica of shard 1, four sharded tables."""
    examples = Path(__file__).parent.parent / "examples" / "sharded"
    config = load_config(str(examples / "pgdog.toml"), str(examples / "users.toml"))
    assert config.shards("shop") == 3
    assert [(db.shard, db.role) for db in config.databases_named("shop")] == [
        (0, "primary"), (1, "primary"), (1, "replica"), (2, "primary")]
    assert config.sharding_schema("shop") == ShardingSchema(3, (
        ShardedColumn("customers", "id"), ShardedColumn("orders", "customer_id"),
        ShardedColumn("carts", "session_token", "varchar"),
        ShardedColumn("audit.events", "device_id", "uuid")))
    assert config.find_user("shop_reports", "shop") is not None

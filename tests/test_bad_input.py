"""Bad input: the proxy answers it with a clear error, never a crash, a hang or a traceback.

Each case checks what the misbehaving client receives (a FATAL ErrorResponse with the right
SQLSTATE where the protocol allows one, or a closed connection), that the proxy logged one
line about it and no traceback, and that a well-behaved psycopg client on the same proxy
still works afterwards. Raw protocol goes through tests/pgwire.py; every read is bounded.
"""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import threading
import time

import pgwire
import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, pgdog_toml, start_proxy, users_toml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pgwire import Wire

APP_PASSWORD = PG_USERS["app"][0]
# A short login timeout keeps the "client never finishes its login" cases quick.
LOGIN_TIMEOUT_MS = 500
SCRAM = {"client_login_timeout": LOGIN_TIMEOUT_MS}
TRUST = {"auth_type": "trust", "client_login_timeout": LOGIN_TIMEOUT_MS}


# --- helpers ------------------------------------------------------------------------------


def lines_about(proxy, port: int) -> list[str]:
    """Log lines about the client whose local port was `port`."""
    pattern = re.compile(rf"client 127\.0\.0\.1:{port}\b")
    return [line for line in proxy.log.splitlines() if pattern.search(line)]


async def logged_once(proxy, port: int, *, containing: str = "", timeout: float = 3) -> str:
    """Wait for the proxy's line about that client; there must be exactly one."""
    with trio.move_on_after(timeout):
        while not lines_about(proxy, port):
            await trio.sleep(0.02)
    await trio.sleep(0.05)  # a second line would be a bug: give it a moment to show up
    lines = lines_about(proxy, port)
    assert len(lines) == 1, f"expected one log line about client port {port}, got {lines}"
    assert containing in lines[0], lines[0]
    return lines[0]


def no_traceback(proxy) -> None:
    log = proxy.log
    assert "Traceback" not in log, log
    assert proxy.proc.poll() is None, f"proxy exited with {proxy.proc.returncode}:\n{log}"


def good_query(proxy) -> None:
    """A well-behaved client: connect, query, disconnect."""
    with proxy.connect() as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)


async def assert_healthy(proxy) -> None:
    await trio.to_thread.run_sync(good_query, proxy)
    no_traceback(proxy)


async def refused(proxy, data: bytes, sqlstate: str, *, timeout: float = pgwire.TIMEOUT) -> str:
    """Send `data` raw; expect one FATAL `sqlstate`, a close, one log line; return the message."""
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(data)
        error = await wire.expect_fatal(sqlstate, timeout)
        port = wire.local_port
    text = error.fields["M"]
    await logged_once(proxy, port, containing=text)
    await assert_healthy(proxy)
    return text


def backends(pg) -> dict[int, str]:
    """Server connections of any trio_pgdog proxy on the test cluster: pid -> state."""
    out = pg.sql("select pid, state from pg_stat_activity where application_name = 'trio_pgdog'")
    return {int(pid): state for pid, state in (line.split("|") for line in out.splitlines())}


async def wait_backends(pg, ok, *, ignore: dict[int, str] | None = None,
                        timeout: float = 5) -> dict[int, str]:
    """Poll pg_stat_activity until `ok(backends)` holds; backends in `ignore` (those of
    other proxies, taken before the test began) are left out."""
    deadline = trio.current_time() + timeout
    while True:
        found = await trio.to_thread.run_sync(backends, pg)
        found = {pid: state for pid, state in found.items() if pid not in (ignore or {})}
        if ok(found) or trio.current_time() > deadline:
            return found
        await trio.sleep(0.05)


async def trust_login(proxy) -> tuple[Wire, pgwire.Login]:
    wire = await Wire.connect(proxy.port)
    return wire, await wire.login("app", APP_DB)


def startup(**params: str) -> bytes:
    return pgwire.startup_packet(params)


APP_STARTUP = startup(user="app", database=APP_DB)
TABLE_SQL = ("create table if not exists bad_input_t (n int); truncate bad_input_t; "
             "alter table bad_input_t owner to app")


# --- the startup packet -------------------------------------------------------------------


async def test_garbage_instead_of_a_startup_packet(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    text = await refused(proxy, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "08P01")
    assert "length of startup packet" in text


async def test_startup_packet_cut_short_then_closed(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(APP_STARTUP[: len(APP_STARTUP) // 2])
        port = wire.local_port
    await logged_once(proxy, port, containing="incomplete startup packet")
    await assert_healthy(proxy)


async def test_startup_packet_cut_short_then_silence_hits_the_login_timeout(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    start = trio.current_time()
    text = await refused(proxy, APP_STARTUP[: len(APP_STARTUP) // 2], "08P01", timeout=3)
    assert "client_login_timeout" in text
    assert trio.current_time() - start < 3


async def test_half_closed_client_with_partial_startup_is_told(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(APP_STARTUP[:3])
        await wire.shutdown_write()
        await wire.expect_fatal("08P01")
        port = wire.local_port
    await logged_once(proxy, port, containing="incomplete startup packet")
    await assert_healthy(proxy)


async def test_connect_and_close_without_a_word_is_not_an_error(proxy_factory):
    # Port probes and load-balancer health checks do this; nothing to report.
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        port = wire.local_port
    await trio.sleep(0.2)
    assert lines_about(proxy, port) == []
    await assert_healthy(proxy)


async def test_oversized_startup_packet(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    packet = struct.pack("!ii", 100_000, pgwire.PROTOCOL_3_0) + b"user\x00app\x00" * 100
    text = await refused(proxy, packet, "08P01")
    assert "100000" in text


@pytest.mark.parametrize("major, minor", [(2, 0), (1, 0), (4, 0), (1234, 5000)])
async def test_unsupported_protocol_version(proxy_factory, major, minor):
    proxy = proxy_factory(**SCRAM)
    packet = pgwire.startup_packet({"user": "app", "database": APP_DB},
                                   protocol=pgwire.version(major, minor))
    text = await refused(proxy, packet, "0A000")
    assert f"{major}.{minor}" in text


async def test_newer_minor_version_is_negotiated_down_and_login_proceeds(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        login = await wire.login("app", APP_DB, APP_PASSWORD, protocol=pgwire.version(3, 5),
                                 params={"_pq_.future_option": "on"})
        (negotiate,) = login.before
        assert negotiate.kind == b"v"
        minor, count = struct.unpack_from("!ii", negotiate.body)
        assert (minor, count) == (0, 1)
        assert negotiate.body[8:] == b"_pq_.future_option\x00"
        assert await wire.scalar("select current_user") == "app"
    await assert_healthy(proxy)


async def test_ssl_and_gssenc_requests_are_declined_then_login_works(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(pgwire.gssenc_request())
        assert await wire.read_bytes(1) == b"N"
        await wire.send(pgwire.ssl_request())
        assert await wire.read_bytes(1) == b"N"
        await wire.login("app", APP_DB, APP_PASSWORD)
        assert await wire.scalar("select 1") == "1"

    def libpq_prefers_tls() -> None:
        with proxy.connect(sslmode="prefer") as conn:
            assert not conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl"):
            proxy.connect(sslmode="require")

    await trio.to_thread.run_sync(libpq_prefers_tls)
    no_traceback(proxy)


async def test_bytes_sent_with_an_ssl_request_are_refused(proxy_factory):
    # Plaintext piggybacked on an SSLRequest could be injected by a man in the middle
    # (CVE-2021-23222); PostgreSQL refuses it, so does the proxy.
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(pgwire.ssl_request() + APP_STARTUP)
        # The refusal comes instead of the one-byte answer.
        error = await wire.expect_fatal("08P01")
        port = wire.local_port
    await logged_once(proxy, port, containing=error.fields["M"])
    await assert_healthy(proxy)


@pytest.mark.parametrize("params", [{"database": APP_DB}, {"user": "", "database": APP_DB}, {}],
                         ids=["no-user", "empty-user", "no-params"])
async def test_startup_packet_without_a_user(proxy_factory, params):
    proxy = proxy_factory(**SCRAM)
    text = await refused(proxy, pgwire.startup_packet(params), "28000")
    assert "user" in text


@pytest.mark.parametrize("body", [b"user\x00app\x00database\x00appdb",  # no terminator
                                  b"user\x00app\x00database\x00",        # a name without value
                                  b"user"],
                         ids=["unterminated", "dangling-name", "no-nul-at-all"])
async def test_malformed_startup_parameters(proxy_factory, body):
    proxy = proxy_factory(**SCRAM)
    text = await refused(proxy, pgwire.startup_packet(body=body), "08P01")
    assert "startup packet" in text


async def test_unexpected_message_instead_of_a_password(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    async with await Wire.connect(proxy.port) as wire:
        await wire.send(APP_STARTUP)
        request = await wire.read_message()
        assert request is not None and request.kind == b"R"
        await wire.send(pgwire.query("select 1"))
        error = await wire.expect_fatal("08P01")
        port = wire.local_port
    await logged_once(proxy, port, containing=error.fields["M"])
    await assert_healthy(proxy)


# --- refused logins cost no server connection ---------------------------------------------


@pytest.mark.parametrize("user, database, password, sqlstate", [
    ("app", "nosuchdb", APP_PASSWORD, "3D000"),
    ("nosuchuser", APP_DB, "whatever", "28P01"),
    ("app", APP_DB, "wrong-password", "28P01"),
], ids=["unknown-database", "unknown-user", "wrong-password"])
async def test_refused_login_opens_no_server_connection(proxy_factory, pg, user, database,
                                                        password, sqlstate):
    proxy = proxy_factory(**SCRAM)
    await trio.to_thread.run_sync(good_query, proxy)  # the pool exists and has a connection
    before = await trio.to_thread.run_sync(backends, pg)
    async with await Wire.connect(proxy.port) as wire:
        with pytest.raises(pgwire.ServerError) as refused_login:
            await wire.login(user, database, password)
        error = refused_login.value.message
        assert error.fields["S"] == "FATAL" and error.sqlstate == sqlstate, error
        assert await wire.read_until_close() == []
        port = wire.local_port
    await logged_once(proxy, port, containing=sqlstate)
    after = await trio.to_thread.run_sync(backends, pg)
    assert set(after) - set(before) == set()
    await assert_healthy(proxy)


# --- bad messages after login -------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 0, -1, 0x7FFFFFFF], ids=["3", "0", "negative", "2GiB"])
async def test_message_with_an_impossible_length(proxy_factory, pg, length):
    proxy = proxy_factory(**TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        assert await wire.scalar("select 1") == "1"  # a server connection was used
        await wire.send(pgwire.message(b"Q", b"select 1\x00", length=length))
        error = await wire.expect_fatal("08P01")
        port = wire.local_port
    assert str(length) in error.fields["M"]
    await logged_once(proxy, port, containing=str(length))
    await assert_healthy(proxy)
    found = await wait_backends(pg, lambda b: "active" not in b.values())
    assert "active" not in found.values()


async def test_impossible_length_inside_a_transaction_rolls_it_back(proxy_factory, pg):
    proxy = proxy_factory(default_pool_size=1, **TRUST)
    pg.sql(TABLE_SQL, dbname=APP_DB)
    wire, _ = await trust_login(proxy)
    async with wire:
        first_pid = await wire.scalar("begin; insert into bad_input_t values (1); "
                                      "select pg_backend_pid()")
        await wire.send(pgwire.message(b"Q", length=2))
        await wire.expect_fatal("08P01")
        port = wire.local_port
    await logged_once(proxy, port, containing="invalid message length 2")
    with proxy.connect() as conn:
        # The one server connection came back, without the half-done transaction.
        assert conn.execute("select pg_backend_pid()").fetchone() == (int(first_pid),)
        assert conn.execute("select count(*) from bad_input_t").fetchone() == (0,)
    no_traceback(proxy)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("data", [pgwire.message(b"y", b"what is this?") + pgwire.message(b"S"),
                                  b"y"], ids=["message", "type-byte-alone"])
async def test_unknown_message_type_is_refused_as_postgresql_would(proxy_factory, pg, mode, data):
    # PostgreSQL ends a connection that sends a message type it does not know with FATAL
    # 08P01 "invalid frontend message type" (as soon as it has read the type byte). The
    # proxy does the same itself instead of passing the bytes on: no server connection is
    # sacrificed for it (once: 08006 "server connection lost").
    proxy = proxy_factory(default_pool_size=1, pooler_mode=mode, **TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        first_pid = await wire.scalar("select pg_backend_pid()")
        await wire.send(data)
        error = await wire.expect_fatal("08P01")
        port = wire.local_port
    assert error.fields["M"] == "invalid frontend message type 121 ('y')"
    await logged_once(proxy, port, containing="invalid frontend message type 121")
    await assert_healthy(proxy)
    wire, _ = await trust_login(proxy)
    async with wire:  # the pool's one server connection was not lost
        assert await wire.scalar("select pg_backend_pid()") == first_pid


@pytest.mark.parametrize("kind", [b"S", b"D", b"C", b"E", b"H", b"c", b"f"])
async def test_oversized_small_message_is_refused(proxy_factory, kind):
    # PostgreSQL caps these types at 10000 bytes and drops a connection that sends more
    # without saying why; the proxy tells the client instead.
    proxy = proxy_factory(**TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.send(pgwire.message(kind, b"x" * 10000))
        error = await wire.expect_fatal("08P01")
        port = wire.local_port
    assert error.fields["M"] == f"invalid message length 10004 for message type {kind.decode()!r}"
    await logged_once(proxy, port, containing="invalid message length 10004")
    await assert_healthy(proxy)


# --- malformed names in extended-protocol messages ---------------------------------------

# (type, body, what the proxy says): each body lacks the NUL that ends a name.
UNTERMINATED_NAMES = {
    "parse": (b"P", b"s1", "Parse message: statement name is not NUL-terminated"),
    "bind-portal": (b"B", b"p1", "Bind message: portal name is not NUL-terminated"),
    "bind-statement": (b"B", b"\x00s1", "Bind message: statement name is not NUL-terminated"),
    "describe-statement": (b"D", b"Ss1", "Describe message: statement name is not NUL-terminated"),
    "describe-portal": (b"D", b"Pp1", "Describe message: portal name is not NUL-terminated"),
    "close-statement": (b"C", b"Ss1", "Close message: statement name is not NUL-terminated"),
    "close-portal": (b"C", b"Pp1", "Close message: portal name is not NUL-terminated"),
}
HOOK_TOML = '\n[hooks.table_access]\nenabled = true\ntables = ["secrets"]\n'
# Where the proxy reads these names: renaming prepared statements (transaction pooling)
# and the hook path (any pooling mode).
READING_CONFIGS = {
    "transaction": ("transaction", ""),
    "transaction-with-hook": ("transaction", HOOK_TOML),
    "session-with-hook": ("session", HOOK_TOML),
}
# A well-formed named Parse before the bad message, in the same chunk: the proxy has begun
# preparing it on the server when it finds the bad one.
GOOD_PARSE = pgwire.message(b"P", b"good\x00select 40 + 2\x00\x00\x00")


def prepared_query_works(proxy) -> None:
    """A client preparing the same statement as GOOD_PARSE, and nothing left of the bad ones'
    transactions."""
    with proxy.connect(prepare_threshold=0) as conn:
        for _ in range(2):
            assert conn.execute("select 40 + 2").fetchone() == (42,)
        assert conn.execute("select count(*) from bad_input_t").fetchone() == (0,)


@pytest.mark.parametrize("config", READING_CONFIGS)
async def test_unterminated_names_are_protocol_violations(pg, proxy_factory, config):
    # Once: FATAL XX000 "internal error: ValueError('subsection not found')" and an ERROR
    # line in the log.
    mode, hooks = READING_CONFIGS[config]
    proxy = proxy_factory(pgdog_text=lambda port: pgdog_toml(
        pg, port, pooler_mode=mode, default_pool_size=1, **TRUST) + hooks)
    pg.sql(TABLE_SQL, dbname=APP_DB)
    for kind, body, text in UNTERMINATED_NAMES.values():
        for in_transaction in (False, True):
            wire, _ = await trust_login(proxy)
            async with wire:
                if in_transaction:
                    result = await wire.query("begin; insert into bad_input_t values (1)")
                    assert result.error is None and result.status == b"T", result
                await wire.send(GOOD_PARSE + pgwire.message(kind, body) + pgwire.message(b"S"))
                error = await wire.expect_fatal("08P01")
                port = wire.local_port
            assert error.fields["M"] == text
            await logged_once(proxy, port, containing=text)
    # The pool's one server connection went back rolled back, or was replaced: a client
    # preparing the same statement finds neither a transaction nor a statement the proxy
    # wrongly believes prepared on it.
    await trio.to_thread.run_sync(prepared_query_works, proxy)
    await assert_healthy(proxy)
    assert "internal error" not in proxy.log


async def test_unterminated_names_in_session_pooling_without_hooks_are_postgresql_s(
        pg, proxy_factory):
    # Nothing reads these messages on the way: PostgreSQL refuses them (08P01, not fatal),
    # skips to Sync as after any error, and the session goes on.
    proxy = proxy_factory(pooler_mode="session", default_pool_size=1, **TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        for kind, body, _text in UNTERMINATED_NAMES.values():
            await wire.send(GOOD_PARSE + pgwire.message(kind, body) + pgwire.message(b"S"))
            assert (await wire.read_message()).kind == b"1"  # ParseComplete
            result = await wire.read_result()
            assert result.error is not None and result.error.sqlstate == "08P01", result
            assert result.error.fields["S"] == "ERROR" and result.status == b"I", result
            assert await wire.scalar("select 40 + 2") == "42"
            await wire.query("deallocate good")
    await assert_healthy(proxy)


async def test_half_a_message_then_close_leaks_no_server_connection(proxy_factory, pg):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=2000, **TRUST)
    others = await trio.to_thread.run_sync(backends, pg)
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.scalar("select 1")
        whole = pgwire.query("select 'this message never ends'")
        await wire.send(whole[:12])
        await trio.sleep(0.1)  # the proxy has forwarded those bytes to a server
        port = wire.local_port
    await logged_once(proxy, port, containing="gone in the middle of a query")
    # A server connection that saw half a message cannot be reused: it must be closed,
    # not left stuck, so the pool's single slot is free for the next client.
    found = await wait_backends(pg, lambda b: len(b) <= 1 and "active" not in b.values(),
                                ignore=others)
    assert len(found) <= 1 and "active" not in found.values(), found
    await assert_healthy(proxy)
    found = await wait_backends(pg, lambda b: list(b.values()) == ["idle"], ignore=others)
    assert list(found.values()) == ["idle"], found


async def test_client_leaving_in_the_middle_of_a_big_result(proxy_factory, pg):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=3000, **TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.send(pgwire.query("select repeat('x', 1000) from generate_series(1, 100000)"))
        first = await wire.read_message()
        assert first is not None and first.kind == b"T"
        row = await wire.read_message()
        assert row is not None and row.kind == b"D"
        port = wire.local_port
    # Seen by the relay (a send to the client fails) or by the departure watch (which
    # cancels the query), whichever comes first: one line either way.
    line = await logged_once(proxy, port, containing="gone ")
    assert "gone in the middle of a query" in line or "gone while its query runs" in line, line
    # The server that was sending the rest is dropped (or its query cancelled) and the slot freed.
    found = await wait_backends(pg, lambda b: "active" not in b.values())
    assert "active" not in found.values(), found
    await assert_healthy(proxy)


async def test_terminate_returns_the_server_connection(proxy_factory):
    proxy = proxy_factory(default_pool_size=1, **TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        pid = await wire.scalar("select pg_backend_pid()")
        await wire.send(pgwire.terminate())
        assert await wire.read_until_close() == []
        port = wire.local_port
    wire, _ = await trust_login(proxy)
    async with wire:
        assert await wire.scalar("select pg_backend_pid()") == pid
    assert lines_about(proxy, port) == []  # a normal goodbye is not worth a line
    no_traceback(proxy)


async def test_terminate_inside_a_transaction_rolls_back_and_returns_the_connection(
        proxy_factory, pg):
    proxy = proxy_factory(default_pool_size=1, **TRUST)
    pg.sql(TABLE_SQL, dbname=APP_DB)
    wire, _ = await trust_login(proxy)
    async with wire:
        result = await wire.query("begin; insert into bad_input_t values (1)")
        assert result.error is None and result.status == b"T"
        pid = await wire.scalar("select pg_backend_pid()")
        await wire.send(pgwire.terminate())
        assert await wire.read_until_close() == []
    wire, _ = await trust_login(proxy)
    async with wire:
        assert await wire.scalar("select pg_backend_pid()") == pid
        assert await wire.scalar("select count(*) from bad_input_t") == "0"
    no_traceback(proxy)


# --- cancel requests ----------------------------------------------------------------------


async def _wait_running(pg, sql_fragment: str) -> None:
    def running() -> bool:
        return pg.sql("select count(*) from pg_stat_activity where state = 'active' "
                      f"and query like '%{sql_fragment}%' and pid <> pg_backend_pid()") != "0"

    with trio.fail_after(5):
        while not await trio.to_thread.run_sync(running):
            await trio.sleep(0.05)


async def test_cancel_request_with_a_wrong_key_does_nothing(proxy_factory, pg):
    proxy = proxy_factory(**SCRAM)
    with proxy.connect() as conn:
        pid = conn.info.backend_pid  # the proxy's key, not the server's pid
        async with trio.open_nursery() as nursery:
            outcome = {}

            async def sleeper() -> None:
                outcome["row"] = await trio.to_thread.run_sync(
                    lambda: conn.execute("select 'slept' from pg_sleep(1)").fetchone())

            nursery.start_soon(sleeper)
            await _wait_running(pg, "pg_sleep(1)")
            await pgwire.cancel(proxy.port, pid ^ 0x5A5A, 1234)  # unknown client
            await pgwire.cancel(proxy.port, pid, 1234)           # right client, wrong secret
        assert outcome["row"] == ("slept",)
    log = proxy.log
    assert log.count(f"client key {pid ^ 0x5A5A} ignored") == 1, log
    assert log.count(f"client key {pid} ignored") == 1, log
    await assert_healthy(proxy)


async def test_cancel_request_with_the_right_key_cancels(proxy_factory, pg):
    proxy = proxy_factory(**SCRAM)
    with proxy.connect() as conn:
        async with trio.open_nursery() as nursery:
            outcome = {}

            def sleep_long() -> None:
                start = time.monotonic()
                try:
                    conn.execute("select pg_sleep(30)")
                except psycopg.Error as exc:
                    outcome["error"] = exc
                outcome["took"] = time.monotonic() - start

            nursery.start_soon(trio.to_thread.run_sync, sleep_long)
            await _wait_running(pg, "pg_sleep(30)")
            await trio.to_thread.run_sync(conn.cancel_safe)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), outcome
        assert outcome["error"].sqlstate == "57014"
        assert outcome["took"] < 3
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.log.count("cancel forwarded") == 1, proxy.log
    await assert_healthy(proxy)


async def test_raw_cancel_request_with_the_key_from_backend_key_data(proxy_factory, pg):
    proxy = proxy_factory(**TRUST)
    wire, login = await trust_login(proxy)
    async with wire:
        await wire.send(pgwire.query("select pg_sleep(30)"))
        await _wait_running(pg, "pg_sleep(30)")
        await pgwire.cancel(proxy.port, login.pid, login.secret)
        result = await wire.read_result(timeout=3)
        assert result.error is not None and result.error.sqlstate == "57014", result
        assert await wire.scalar("select 'still here'") == "still here"
    no_traceback(proxy)


async def test_malformed_cancel_request(proxy_factory):
    proxy = proxy_factory(**SCRAM)
    packet = struct.pack("!iiii", 20, pgwire.CANCEL_REQUEST_CODE, 1, 2) + b"\x00" * 4
    await refused(proxy, packet, "08P01")


# --- many bad clients at once -------------------------------------------------------------


async def _bad_client(port: int, kind: int) -> None:
    """One of several kinds of misbehaviour; each must end in an error or a close."""
    async with await Wire.connect(port) as wire:
        if kind == 0:
            await wire.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xaa" * 40)
            await wire.expect_fatal("08P01")
        elif kind == 1:
            await wire.send(APP_STARTUP[:9])  # then silence: the login timeout
            await wire.expect_fatal("08P01")
        elif kind == 2:  # an unknown database is reported after the password, as by PostgreSQL
            with pytest.raises(pgwire.ServerError) as refused:
                await wire.login("app", "nosuchdb", APP_PASSWORD)
            assert refused.value.message.sqlstate == "3D000"
        elif kind == 3:
            with pytest.raises(pgwire.ServerError):
                await wire.login("app", APP_DB, "wrong-password")
        elif kind == 4:
            await wire.login("app", APP_DB, APP_PASSWORD)
            await wire.send(pgwire.message(b"Q", length=1))
            await wire.expect_fatal("08P01")
        elif kind == 5:
            await wire.login("app", APP_DB, APP_PASSWORD)
            await wire.send(pgwire.query("select 1")[:7])  # half a message, then gone
        else:
            await wire.send(pgwire.startup_packet(body=b"user\x00app"))
            await wire.expect_fatal("08P01")


async def test_fifty_bad_clients_do_not_disturb_a_good_one(proxy_factory):
    # A roomier login timeout: fifty SCRAM logins at once on a busy two-core machine
    # can take longer than the 500 ms of the other tests.
    proxy = proxy_factory(client_login_timeout=2000)
    done = threading.Event()
    queries = []

    def good_client(conn: psycopg.Connection) -> None:
        while not done.is_set():
            with conn.transaction():
                n = len(queries)
                assert conn.execute("select %s::int", (n,)).fetchone() == (n,)
            queries.append(n)

    with proxy.connect() as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, good_client, conn)
            try:
                await _fifty_bad_clients(proxy.port)
            finally:  # a failing bad client must fail the test, not leave the thread looping
                done.set()
    assert len(queries) > 10
    await assert_healthy(proxy)


async def _fifty_bad_clients(port: int) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as bad:
            for i in range(50):
                bad.start_soon(_bad_client, port, i % 7)


# --- fuzzing the login phase --------------------------------------------------------------

FUZZ_LOGIN_TIMEOUT_MS = 300
_FUZZ_SQLSTATES = {"08P01", "0A000", "28000", "28P01", "3D000"}
_CANCEL_HEADER = struct.pack("!ii", 16, pgwire.CANCEL_REQUEST_CODE)


@pytest.fixture(scope="module")
def fuzz_proxy(pg, tmp_path_factory):
    """One proxy for every fuzz example (a fresh one per example would be far too slow)."""
    from trio_pgdog.embedded import free_port

    port = free_port()
    proxy = start_proxy(tmp_path_factory.mktemp("fuzz"),
                        pgdog_toml(pg, port, client_login_timeout=FUZZ_LOGIN_TIMEOUT_MS),
                        users_toml(), port)
    yield proxy
    proxy.stop(timeout=15)


_versions = st.one_of(st.sampled_from([pgwire.PROTOCOL_3_0, pgwire.version(3, 1),
                                       pgwire.version(2, 0), pgwire.CANCEL_REQUEST_CODE]),
                      st.integers(-(2**31), 2**31 - 1))
_short = st.binary(max_size=48)
_param = st.sampled_from(["user", "database", "options", "application_name", "_pq_.x", ""])
_params = st.dictionaries(_param, st.sampled_from(["app", APP_DB, "nosuch", "", "é"]), max_size=4)
_kinds = st.sampled_from([b"p", b"Q", b"X", b"S", b"\x00", b"y"])


@st.composite
def _typed_message(draw) -> bytes:
    body = draw(_short)
    length = draw(st.one_of(st.just(len(body) + 4), st.integers(-(2**31), 2**31 - 1)))
    return pgwire.message(draw(_kinds), body, length=length)


@st.composite
def _sasl_initial(draw) -> bytes:
    mechanism = draw(st.sampled_from([b"SCRAM-SHA-256", b"SCRAM-SHA-256-PLUS", b"", b"PLAIN"]))
    data = draw(st.one_of(_short, st.just(b"n,,n=app,r=abc"), st.just(b"y,,n=,r=")))
    length = draw(st.one_of(st.just(len(data)), st.integers(-2, 100)))
    return pgwire.password(mechanism + b"\x00" + struct.pack("!i", length) + data)


_login_input = st.one_of(
    _short,                                                        # anything at all
    st.builds(lambda v, body: pgwire.startup_packet(protocol=v, body=body), _versions, _short),
    st.builds(lambda p: pgwire.startup_packet(p), _params),        # odd parameter sets
    st.builds(lambda msgs: APP_STARTUP + b"".join(msgs), st.lists(_typed_message(), max_size=3)),
    st.builds(lambda m: APP_STARTUP + m, _sasl_initial()),
    st.builds(lambda data, cut: data[:cut], st.just(APP_STARTUP), st.integers(0, len(APP_STARTUP))),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_login_input, close_write=st.booleans())
async def test_fuzz_the_login_phase(fuzz_proxy, data, close_write):
    async with await Wire.connect(fuzz_proxy.port) as wire:
        await wire.send(data)
        if close_write:
            await wire.shutdown_write()
        messages = await wire.read_until_close(timeout=FUZZ_LOGIN_TIMEOUT_MS / 1000 + 3)
    kinds = [msg.kind for msg in messages]
    assert set(kinds) <= {b"R", b"E", b"v"}, messages
    errors = [msg for msg in messages if msg.kind == b"E"]
    if errors:
        assert len(errors) == 1 and messages[-1] is errors[0], messages
        assert errors[0].fields["S"] == "FATAL" and errors[0].sqlstate in _FUZZ_SQLSTATES, messages
    elif not close_write and not data.startswith(_CANCEL_HEADER):
        # (a CancelRequest gets no answer, by the protocol)
        raise AssertionError(f"silent close after {data!r}: {messages}")
    no_traceback(fuzz_proxy)


async def test_fuzzed_proxy_still_serves(fuzz_proxy):
    await assert_healthy(fuzz_proxy)


# --- fuzzing the messages after login ---------------------------------------------------------

# One proxy, four logical databases on the test cluster: the message paths of transaction
# pooling (statement renaming) and session pooling (bytes passed through), each without
# hooks and with a hook (the statement-aware path).
FRAME_DATABASES = {
    "fz_txn": ("transaction", False),
    "fz_txn_hooked": ("transaction", True),
    "fz_session": ("session", False),
    "fz_session_hooked": ("session", True),
}
FRAME_POOL_SIZE = 2


def _frame_fuzz_toml(pg, port: int) -> str:
    text = pgdog_toml(pg, port, auth_type="trust", default_pool_size=FRAME_POOL_SIZE,
                      checkout_timeout=3000, shutdown_timeout=2000)
    for name in FRAME_DATABASES:
        text += (f'\n[[databases]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {pg.port}\n'
                 f'database_name = "{APP_DB}"\n')
    hooked = ", ".join(f'"{name}"' for name, (_mode, hook) in FRAME_DATABASES.items() if hook)
    return text + f'\n[hooks.table_access]\nenabled = true\ndatabases = [{hooked}]\ntables = ["secrets"]\n'


class _Checker:
    """A well-behaved psycopg client running transactions on the transaction-pooled
    databases in a thread, for as long as the fuzzing goes on."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.done = threading.Event()
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conns = [self.proxy.connect(dbname=db) for db in ("fz_txn", "fz_txn_hooked")]
            try:
                while not self.done.is_set():
                    conn = conns[self.count % 2]
                    with conn.transaction():
                        assert conn.execute("select %s::int", (self.count,)).fetchone() == (self.count,)
                    self.count += 1
                    time.sleep(0.01)
            finally:
                for conn in conns:
                    conn.close()
        except BaseException as exc:  # reported by the test that stops it
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the well-behaved client is stuck"


@pytest.fixture(scope="module")
def frame_fuzz(pg, tmp_path_factory):
    """(proxy, checker) shared by every frame fuzz example and the test that follows them."""
    from trio_pgdog.embedded import free_port

    pg.sql(TABLE_SQL, dbname=APP_DB)  # (table_access needs no `secrets` table to refuse it)
    port = free_port()
    users = users_toml(*({"name": "app", "database": name, "password": APP_PASSWORD,
                          "pooler_mode": mode} for name, (mode, _hook) in FRAME_DATABASES.items()))
    proxy = start_proxy(tmp_path_factory.mktemp("frame-fuzz"), _frame_fuzz_toml(pg, port), users,
                        port)
    checker = _Checker(proxy)
    yield proxy, checker
    checker.done.set()
    try:
        proxy.stop(timeout=15)
    except subprocess.TimeoutExpired:
        proxy.stop(signal.SIGKILL)
        raise


def _i16(n: int) -> bytes:
    return struct.pack("!h", n)


# No capital F anywhere but in FunctionCall messages, whose function OIDs do not exist: bytes
# shifted by a lying length must not make up a call of some real server function.
_SQL = st.sampled_from([
    b"select 1", b"select $1::int", b"select $1::text, $2::int", b"begin", b"commit",
    b"rollback", b"select * from secrets", b"select n from bad_input_t",
    b"insert into bad_input_t values (1)", b"set application_name = 'fz'",
    b"set pgdog.role to 'primary'", b"prepare q as select 1", b"deallocate all", b"discard all",
    b"listen fz", b"select 1; select 2", b"not sql at all", b"copy (select 1) to stdout", b"",
])
_STATEMENTS = st.sampled_from([b"", b"s1", b"s2"])
_PORTALS = st.sampled_from([b"", b"p1"])
_KNOWN_TYPES = frozenset(b"QPBDECSHFdcfX")
_SMALL_TYPES = frozenset(b"CDEHSXcf")


@st.composite
def _parse_message(draw) -> bytes:
    types = draw(st.lists(st.sampled_from([0, 23, 25]), max_size=2))
    return pgwire.message(b"P", draw(_STATEMENTS) + b"\x00" + draw(_SQL) + b"\x00" + _i16(len(types))
                          + b"".join(struct.pack("!I", t) for t in types))


@st.composite
def _bind_message(draw) -> bytes:
    values = draw(st.lists(st.one_of(st.none(), st.sampled_from([b"1", b"x", b"42"])), max_size=2))
    formats = draw(st.sampled_from([[], [0], [1], [0] * len(values), [1, 0, 1]]))
    results = draw(st.sampled_from([[], [0], [1]]))
    body = draw(_PORTALS) + b"\x00" + draw(_STATEMENTS) + b"\x00"
    body += _i16(len(formats)) + b"".join(_i16(f) for f in formats) + _i16(len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return pgwire.message(b"B", body + _i16(len(results)) + b"".join(_i16(f) for f in results))


@st.composite
def _target_message(draw, kind: bytes) -> bytes:
    which = draw(st.sampled_from([b"S", b"P"]))
    return pgwire.message(kind, which + draw(_STATEMENTS if which == b"S" else _PORTALS) + b"\x00")


_MESSAGES = st.one_of(
    st.builds(lambda sql: pgwire.message(b"Q", sql + b"\x00"), _SQL),
    _parse_message(),
    _bind_message(),
    _target_message(b"D"),
    _target_message(b"C"),
    st.builds(lambda portal, rows: pgwire.message(b"E", portal + b"\x00" + struct.pack("!i", rows)),
              _PORTALS, st.sampled_from([0, 1])),
    st.just(pgwire.message(b"S")),
    st.just(pgwire.message(b"H")),
    st.builds(lambda data: pgwire.message(b"d", data), st.binary(max_size=8)),
    st.just(pgwire.message(b"c")),
    st.just(pgwire.message(b"f", b"fuzz\x00")),
    st.builds(lambda kind, body: pgwire.message(bytes([kind]), body),
              st.integers(0, 255).filter(lambda k: k not in _KNOWN_TYPES), st.binary(max_size=8)),
)
# FunctionCall of a function that does not exist, never mutated (see _SQL).
_FUNCTION_CALL = st.builds(
    lambda oid: pgwire.message(b"F", struct.pack("!I", oid) + _i16(0) + _i16(0) + _i16(0)),
    st.sampled_from([0, 1]))


@st.composite
def _damaged_message(draw) -> bytes:
    """A valid message whose body is damaged, its length field still right: cut short (a
    name or string left without its NUL), a NUL dropped, a byte or a 16-bit count
    overwritten, or junk added at the end."""
    message = draw(_MESSAGES)
    body = bytearray(message[5:])
    how = draw(st.sampled_from(["cut", "nul", "set", "i16", "junk"]))
    at = draw(st.integers(0, max(len(body) - 1, 0)))
    if how == "cut":
        del body[at:]
    elif how == "nul" and 0 in body:
        del body[draw(st.sampled_from([i for i, b in enumerate(body) if b == 0]))]
    elif how == "set" and body:
        body[at] = draw(st.integers(0, 255))
    elif how == "i16" and len(body) >= 2:
        at = min(at, len(body) - 2)
        body[at : at + 2] = _i16(draw(st.sampled_from([-2, -1, 0, 1, 2, 3, 0x7FFF, -0x8000])))
    else:
        body += draw(st.binary(min_size=1, max_size=4))
    return pgwire.message(message[:1], bytes(body))


@st.composite
def _mutated(draw) -> bytes:
    """Valid and damaged messages, then maybe damaged as a byte stream: bytes overwritten,
    cut or added across message boundaries, a length field that lies."""
    data = bytearray(b"".join(draw(st.lists(st.one_of(_MESSAGES, _damaged_message()),
                                            min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 2))):
        how = draw(st.sampled_from(["set", "cut", "add", "length"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 6))]
        elif how == "add":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif how == "length" and (starts := _message_starts(bytes(data))):
            start = draw(st.sampled_from(starts))
            length = struct.unpack_from("!i", data, start + 1)[0]
            new = draw(st.one_of(st.integers(-3, 3).map(lambda d, n=length: n + d),
                                 st.integers(-(2**31), 2**31 - 1)))
            data[start + 1 : start + 5] = struct.pack("!i", new)
    return bytes(data)


def _message_starts(data: bytes) -> list[int]:
    """Offsets of the message headers in `data`, as far as its lengths make sense."""
    starts, pos = [], 0
    while pos + 5 <= len(data):
        starts.append(pos)
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if length < 4:
            break
        pos += 1 + length
    return starts


_FRAMES = st.one_of(
    st.builds(lambda messages, sync: b"".join(messages) + (pgwire.message(b"S") if sync else b""),
              st.lists(st.one_of(_MESSAGES, _FUNCTION_CALL), min_size=1, max_size=6), st.booleans()),
    _damaged_message().map(lambda data: data + pgwire.message(b"S")),
    _mutated(),
    _mutated().map(lambda data: data + pgwire.message(b"S")),
    # (no F: random bytes must not call a real server function by its OID)
    st.binary(min_size=1, max_size=40).filter(lambda data: b"F" not in data),
)



def _framing(data: bytes) -> str:
    """What the proxy must do with `data` read as messages: "complete" (whole messages:
    answer them), "incomplete" (it waits for the rest of the last one), "terminate" (a
    Terminate: it closes), "refused" (a type or length PostgreSQL refuses: FATAL 08P01)."""
    pos = 0
    while pos < len(data):
        if pos + 5 > len(data):
            return "incomplete"
        kind = data[pos]
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if (kind not in _KNOWN_TYPES or length < 4 or length > 0x3FFFFFFF
                or (kind in _SMALL_TYPES and length > 10000)):
            return "refused"
        if pos + 1 + length > len(data):
            return "incomplete"
        if kind == ord("X"):
            return "terminate"
        pos += 1 + length
    return "complete"


# Sent after whole messages: ends any batch and transaction, then a row that says the
# proxy answered everything before it.
_END_MARKER = pgwire.message(b"S") + pgwire.query("rollback; select 'fuzz-end'")
# Errors the proxy writes itself (PostgreSQL's carry the source routine, field R) that a
# client may get here: malformed input, a hook's refusal, an invalid pgdog.role value.
_PROXY_SQLSTATES = {"08P01", "42501", "22023"}


def _acceptable(msg: pgwire.Message) -> bool:
    if msg.kind != b"E":
        return True
    fields = msg.fields
    if fields.get("S") == "FATAL":  # the client's fault, not a miscount of the server's answers
        text = fields.get("M", "")
        return fields.get("C") == "08P01" and "internal error" not in text and "server sent" not in text
    if "R" not in fields:
        return fields.get("C") in _PROXY_SQLSTATES
    return fields.get("C") != "08006"


async def _fuzz_one(port: int, database: str, data: bytes) -> None:
    framing = _framing(data)
    async with await Wire.connect(port) as wire:
        await wire.login("app", database)
        await wire.send(data + (_END_MARKER if framing == "complete" else b""))
        messages: list[pgwire.Message] = []
        closed = answered = False
        # Whole messages must all be answered (or refused) soon; a message cut short leaves
        # the proxy waiting for its rest, as PostgreSQL would: then the client gives up.
        patience = 0.3 if framing == "incomplete" else 10
        with trio.move_on_after(patience):
            while not answered:
                msg = await wire.read_message(timeout=patience + 1)
                if msg is None:
                    closed = True
                    break
                messages.append(msg)
                answered = msg.kind == b"Z" and any(
                    m.kind == b"D" and m.body.endswith(b"fuzz-end") for m in messages)
    assert all(_acceptable(msg) for msg in messages), messages
    fatal = bool(messages) and messages[-1].kind == b"E" and messages[-1].fields.get("S") == "FATAL"
    if closed:
        assert fatal or framing == "terminate", f"closed without a word: {messages}"
    elif not answered and framing != "incomplete":
        raise AssertionError(f"no answer ({framing}) within {patience} s: {messages}")
    if framing == "refused":
        assert closed and fatal, messages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_FRAMES, database=st.sampled_from(sorted(FRAME_DATABASES)))
# What the fuzzer found or must keep finding: names without their NUL (once XX000), a lone
# unknown type byte (once passed on: 08006).
@example(data=pgwire.message(b"P", b"s1") + pgwire.message(b"S"), database="fz_txn")
@example(data=pgwire.message(b"B", b"\x00s1") + pgwire.message(b"S"), database="fz_txn_hooked")
@example(data=pgwire.message(b"D", b"Ss1") + pgwire.message(b"S"), database="fz_session_hooked")
@example(data=pgwire.message(b"C", b"Ss1") + pgwire.message(b"S"), database="fz_txn")
@example(data=b"y", database="fz_session")
# A DISCARD ALL that failed once made the proxy forget the statements the server kept: the
# checker's next Parse there failed (42P05).
@example(data=pgwire.query("begin") + pgwire.query("discard all"), database="fz_txn")
async def test_fuzz_messages_after_login(frame_fuzz, data, database):
    """Random, damaged and well-formed message sequences after login: the client gets
    normal answers or FATAL 08P01, never an internal error, never silence; the proxy logs no
    traceback."""
    proxy, _checker = frame_fuzz
    await _fuzz_one(proxy.port, database, data)
    log = proxy.log
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


async def _hold_a_transaction(port: int, database: str, held: trio.Event, release: trio.Event) -> None:
    async with await Wire.connect(port) as wire:
        await wire.login("app", database)
        result = await wire.query("begin; select 1")
        assert result.error is None and result.status == b"T", result
        held.set()
        await release.wait()
        await wire.query("rollback")


async def test_fuzzed_pools_keep_every_slot(frame_fuzz):
    """After the fuzzing above, the well-behaved client never failed, and each pool still
    has all its server connections: as many clients as its size can each hold a transaction
    open at once."""
    proxy, checker = frame_fuzz
    checker.stop()
    assert checker.error is None, repr(checker.error)
    assert checker.count > 0
    for database in FRAME_DATABASES:
        release = trio.Event()
        with trio.fail_after(8):
            async with trio.open_nursery() as nursery:
                held = [trio.Event() for _ in range(FRAME_POOL_SIZE)]
                for event in held:
                    nursery.start_soon(_hold_a_transaction, proxy.port, database, event, release)
                for event in held:
                    await event.wait()
                release.set()
    no_traceback(proxy)


# --- known miscounted ReadyForQuery messages (the frame fuzzer steers around these) -------

_COUNTING_CONFIGS = {
    "transaction": ("transaction", ""),
    "transaction-with-hook": ("transaction", HOOK_TOML),
    "session": ("session", ""),
    "session-with-hook": ("session", HOOK_TOML),
}


def _counting_proxy(pg, proxy_factory, config: str):
    mode, hooks = _COUNTING_CONFIGS[config]
    return proxy_factory(pgdog_text=lambda port: pgdog_toml(
        pg, port, pooler_mode=mode, default_pool_size=1, checkout_timeout=2000,
        shutdown_timeout=2000, **TRUST) + hooks)


async def _next_client_runs(proxy) -> None:
    wire, _ = await trust_login(proxy)
    async with wire:
        assert await wire.scalar("select 'next client'") == "next client"


@pytest.mark.parametrize("config", _COUNTING_CONFIGS)
async def test_query_after_a_failed_extended_message_keeps_the_slot(pg, proxy_factory, config):
    proxy = _counting_proxy(pg, proxy_factory, config)
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.send(pgwire.message(b"D", b"Pp1\x00") + pgwire.query("select 1")
                        + pgwire.message(b"S"))
        # What PostgreSQL answers: the error, then one ReadyForQuery (for the Sync).
        result = await wire.read_result()
        assert result.error is not None and result.error.sqlstate == "34000", result
    await _next_client_runs(proxy)


async def test_function_call_answers_stay_with_their_client(pg, proxy_factory):
    # (The hook path counts a FunctionCall; session pooling keeps its server anyway.)
    proxy = _counting_proxy(pg, proxy_factory, "transaction")
    call = pgwire.message(b"F", struct.pack("!Ihhh", 1, 0, 0, 0))  # no function has OID 1
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.send(call + pgwire.message(b"S") + pgwire.query("select 'mine'"))
        result = await wire.read_result()
        assert result.error is not None and result.error.sqlstate == "42883", result
        assert (await wire.read_result()).status == b"I"          # the Sync's
        assert (await wire.read_result()).rows == [[b"mine"]]     # the Query's
        # Counted one short, the proxy either gave the server back before the Query's answer
        # (which the next client then reads) or, when the answers came in one piece, saw one
        # ReadyForQuery too many and ended this session (FATAL 08P01).
        assert await wire.scalar("select 'again'") == "again"
    await _next_client_runs(proxy)

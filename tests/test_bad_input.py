"""Bad input: the proxy answers it with a clear error, never a crash, a hang or a traceback.

Each case checks what the misbehaving client receives (a FATAL ErrorResponse with the right
SQLSTATE where the protocol allows one, or a closed connection), that the proxy logged one
line about it and no traceback, and that a well-behaved psycopg client on the same proxy
still works afterwards. Raw protocol goes through tests/pgwire.py; every read is bounded.
"""

from __future__ import annotations

import re
import struct
import threading
import time

import pgwire
import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, pgdog_toml, start_proxy, users_toml
from hypothesis import HealthCheck, given, settings
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


async def test_unknown_message_type_gets_postgresql_s_answer(proxy_factory, pg):
    # The proxy forwards messages it does not know; PostgreSQL ends the server connection
    # with FATAL 08P01 "invalid frontend message type". The proxy keeps the client (in
    # transaction mode its session lives on no particular server), reports the lost
    # server connection with PostgreSQL's reason (08006, not FATAL) and stays usable.
    proxy = proxy_factory(default_pool_size=1, **TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        first_pid = await wire.scalar("select pg_backend_pid()")
        await wire.send(pgwire.message(b"y", b"what is this?") + pgwire.message(b"S"))
        result = await wire.read_result()
        assert result.error is not None and result.error.sqlstate == "08006", result
        assert "invalid frontend message type 121" in result.error.fields["M"]  # PostgreSQL's words
        assert result.status == b"I"
        # Usable afterwards, on a new server connection.
        second_pid = await wire.scalar("select pg_backend_pid()")
        assert second_pid != first_pid
        port = wire.local_port
    await logged_once(proxy, port, containing="lost server connection")
    await assert_healthy(proxy)
    found = await wait_backends(pg, lambda b: int(first_pid) not in b)
    assert int(first_pid) not in found


async def test_unknown_message_type_then_a_query(proxy_factory):
    # Without a Sync: the client must still get exactly one answer per message it sends.
    proxy = proxy_factory(**TRUST)
    wire, _ = await trust_login(proxy)
    async with wire:
        await wire.send(pgwire.message(b"y", b"?"))
        error = await wire.read_message()
        assert error is not None and error.sqlstate == "08006", error
        await wire.send(pgwire.message(b"S"))
        assert (await wire.read_result()).status == b"I"
        assert await wire.scalar("select 7") == "7"
        port = wire.local_port
    await logged_once(proxy, port, containing="invalid frontend message type")
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
    await logged_once(proxy, port, containing="gone in the middle of a query")
    # The server that was sending the rest is dropped and the slot freed.
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

"""What PostgreSQL really answers, and clients that leave: no batch keeps a pool slot.

PostgreSQL answers fewer ReadyForQuery than a client sent Query/Sync messages when an
extended-protocol error makes it skip to the next Sync (a Query in the skipped part is never
run) or when a Sync arrives inside COPY FROM STDIN data (it is ignored). The proxy must count
what the server will really answer: each batch here is sent to PostgreSQL directly and
through the proxy, the answers must be the same, and the server connection must go back to
the pool afterwards. A client that leaves while its query runs gets the query cancelled and
its connection back in the pool at once; whatever a client sent, leaving frees its slot.
"""

from __future__ import annotations

import struct
import time

import pgwire
import pytest
import trio
from conftest import APP_DB, PG_USERS, proxy_backends, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pgwire import SYNC, Wire, bind, execute, message, parse

PASSWORD = PG_USERS["app"][0]
QUIET = 0.3  # seconds without a message: the peer has said all it will say for now


# --- frames -------------------------------------------------------------------------------


def describe_portal(portal: str = "") -> bytes:
    return message(b"D", b"P" + portal.encode() + b"\x00")


FLUSH = message(b"H")
COPY_DONE = message(b"c")


def copy_data(text: str) -> bytes:
    return message(b"d", text.encode())


def q(sql: str) -> bytes:
    return pgwire.query(sql)


# --- talking to a peer --------------------------------------------------------------------


async def quiet_read(wire: Wire, quiet: float = QUIET) -> list[pgwire.Message]:
    """Every message the peer sends until it has been silent for `quiet` seconds."""
    out = []
    while True:
        try:
            msg = await wire.read_message(timeout=quiet)
        except trio.TooSlowError:
            return out
        if msg is None:
            return out
        out.append(msg)


def shape(messages: list[pgwire.Message]) -> list[str]:
    """Message kinds, with the SQLSTATE of errors: what a client acts on."""
    return [f"E:{m.sqlstate}" if m.kind == b"E" else m.kind.decode() for m in messages]


async def conversation(port: int, steps: list[bytes], other_client: bool = False) -> list[list[str]]:
    """Log in, send each step and collect what comes back, then run a query on the same
    connection: its answer must come (the session is not stuck waiting). With
    `other_client`, another client holds a transaction in between while this one stays
    connected: the server connection went back to the pool after the batch."""
    async with await Wire.connect(port) as wire:
        await wire.login("app", APP_DB, PASSWORD)
        answers = []
        for step in steps:
            await wire.send(step)
            answers.append(shape(await quiet_read(wire)))
        if other_client:
            async with await Wire.connect(port) as other:
                await other.login("app", APP_DB, PASSWORD)
                assert (await other.query("begin")).error is None
                assert await other.scalar("select 'served'") == "served"
                assert (await other.query("commit")).status == b"I"
        assert await wire.scalar("select 'still here'") == "still here"
        return answers


BATCHES = {
    # (a) a Parse that fails, then a Query PostgreSQL skips, then Sync: one ReadyForQuery.
    "bad-parse-query-sync": [parse("selec nonsense") + q("select 1") + SYNC],
    # (b) a Bind with the wrong parameter count, then a Query, then Sync.
    "bad-bind-query-sync": [parse("select $1::int") + bind(params=(b"1", b"2")) + q("select 1") + SYNC],
    # an error at Execute skips a Query and a whole second execution up to the Sync.
    "bad-execute-skips": [parse("select 1/0") + bind() + execute() + q("select 1")
                          + parse("select 2") + bind() + execute() + SYNC],
    # (c) COPY FROM STDIN, a Sync inside the copy data (ignored), then CopyDone and Sync.
    "copy-sync-inside": [q("copy owed_t from stdin"), copy_data("1\n") + SYNC + copy_data("2\n")
                         + COPY_DONE + SYNC],
    # the same, sent in one go before the server said it is ready for the data.
    "copy-sync-inside-pipelined": [q("copy owed_t from stdin") + copy_data("1\n") + SYNC
                                   + copy_data("2\n") + COPY_DONE + SYNC],
    # a Flush and a Sync inside the data, and a Query after CopyDone.
    "copy-flush-sync-query": [q("copy owed_t from stdin"), copy_data("3\n") + FLUSH + SYNC + COPY_DONE
                              + q("select count(*) from owed_t")],
    # COPY through the extended protocol: its Sync is read inside the copy; drivers send another.
    "copy-extended": [parse("copy owed_t from stdin") + bind() + execute() + SYNC,
                      copy_data("4\n") + COPY_DONE + SYNC],
}


@pytest.fixture(scope="module")
def owed_table(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS owed_t (v int); GRANT ALL ON owed_t TO PUBLIC", dbname=APP_DB)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_answers_match_postgresql_and_the_server_goes_back(pg, proxy_factory, owed_table,
                                                           batch, mode):
    steps = BATCHES[batch]
    direct = trio.run(conversation, pg.port, steps)
    proxy = proxy_factory(default_pool_size=1, pooler_mode=mode, checkout_timeout=2000)
    assert trio.run(conversation, proxy.port, steps, mode == "transaction") == direct
    assert "Traceback" not in proxy.log and "internal error" not in proxy.log


def test_ten_bad_batches_do_not_empty_a_pool_of_two(pg, proxy_factory, owed_table):
    proxy = proxy_factory(default_pool_size=2, checkout_timeout=2000)

    async def main() -> None:
        for steps in list(BATCHES.values()) + list(BATCHES.values())[:3]:
            async with await Wire.connect(proxy.port) as wire:
                await wire.login("app", APP_DB, PASSWORD)
                for step in steps:
                    await wire.send(step)
                    await quiet_read(wire, 0.1)
            # left without waiting for anything more
        async with await Wire.connect(proxy.port) as a, await Wire.connect(proxy.port) as b:
            for wire in (a, b):
                await wire.login("app", APP_DB, PASSWORD)
                assert (await wire.query("begin")).status == b"T"
            assert await a.scalar("select 'a'") == "a"
            assert await b.scalar("select 'b'") == "b"

    trio.run(main)


# --- a client that leaves while its query runs --------------------------------------------


async def _leave_during(port: int, steps: bytes) -> None:
    async with await Wire.connect(port) as wire:
        await wire.login("app", APP_DB, PASSWORD)
        await wire.send(steps)
        await trio.sleep(0.3)  # the query is running now
    # closed without Terminate, its query still running


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("steps", [
    q("select pg_sleep(3)"),
    q("begin") + q("select pg_sleep(3)"),
    parse("select pg_sleep(3)") + bind() + execute() + SYNC,
], ids=["simple", "in-transaction", "extended"])
def test_client_leaving_mid_query_frees_its_server_at_once(pg, proxy_factory, mode, steps):
    proxy = proxy_factory(default_pool_size=1, pooler_mode=mode, checkout_timeout=5000)
    trio.run(_leave_during, proxy.port, steps)
    started = time.monotonic()
    with proxy.connect() as conn:
        assert conn.execute("select 'next', txid_current_if_assigned()").fetchone() == ("next", None)
    assert time.monotonic() - started < 1.0, "the departed client's query was not cancelled"
    # PostgreSQL cancelled it: no backend still sleeps for nobody.
    assert not any("pg_sleep" in row[1] and row[0] == "active"
                   for row in proxy_backends(pg, proxy, "state, query"))
    wait_for(lambda: "cancel" in proxy.log, what="the cancel in the log")
    assert "Traceback" not in proxy.log


# --- whatever a client sends, leaving frees its slot ---------------------------------------

VOCABULARY = [
    q("select 1"), q("begin"), q("commit"), q("selec nonsense"), q("select pg_sleep(0.2)"),
    q("copy owed_t from stdin"), q("copy owed_t to stdout"),
    parse("select 1"), parse("select $1::int", "s1"), parse("selec nonsense"),
    bind(), bind("s1", (b"7",)), bind("s1", (b"1", b"2")), bind("nope"),
    describe_portal(), execute(), message(b"C", b"Ss1\x00"), SYNC, FLUSH,
    copy_data("5\n"), copy_data("not a number\n"), COPY_DONE, message(b"f", b"stop\x00"),
    *(b"".join(steps) for steps in BATCHES.values()),
]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@example(sequence=BATCHES["bad-parse-query-sync"], cut=0, wait=True, terminate=False)
@example(sequence=[q("copy owed_t from stdin"), copy_data("6\n") + SYNC], cut=0, wait=True,
         terminate=True)
@example(sequence=[q("select pg_sleep(30)")], cut=0, wait=False, terminate=False)
@given(sequence=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=8),
       cut=st.integers(min_value=0, max_value=4), wait=st.booleans(), terminate=st.booleans())
def test_no_message_sequence_then_departure_keeps_a_slot(owed_pool, sequence, cut, wait, terminate):
    """Any messages, maybe a last one cut short, maybe waiting for answers, then leaving
    (with or without Terminate): the pool's only server connection serves the next client."""
    data = b"".join(sequence)
    data = data[: len(data) - cut] if cut < len(data) else data

    async def main() -> None:
        async with await Wire.connect(owed_pool.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            await wire.send(data)
            if wait:
                await quiet_read(wire, 0.1)
            if terminate and not cut:
                await wire.send(pgwire.terminate())
        started = time.monotonic()
        async with await Wire.connect(owed_pool.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            result = await wire.query("select 'next'", timeout=5)
            assert result.error is None and result.rows == [[b"next"]], result
            assert result.status == b"I"
        assert time.monotonic() - started < 3

    trio.run(main)


@pytest.fixture(scope="module")
def owed_pool(pg, owed_table, tmp_path_factory):
    from conftest import pgdog_toml, start_proxy, users_toml

    from trio_pgdog.embedded import free_port

    port = free_port()
    proxy = start_proxy(tmp_path_factory.mktemp("owed"),
                        pgdog_toml(pg, port, default_pool_size=1, checkout_timeout=4000),
                        users_toml(), port)
    yield proxy
    proxy.stop()
    assert "Traceback" not in proxy.log and "internal error" not in proxy.log, proxy.log


# --- a server that does not answer the cancel -----------------------------------------------


async def _silent_postgres(stream: trio.SocketStream, seen: list[str]) -> None:
    """A fake PostgreSQL that logs anyone in, then never answers; a CancelRequest changes
    nothing. (PostgreSQL itself cannot be made to ignore a cancel; this stands in for a
    backend stuck where cancels do not reach it.)"""
    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await stream.receive_some(n - len(data))
            if not chunk:
                raise trio.EndOfChannel
            data += chunk
        return data

    try:
        body = await exactly(struct.unpack("!i", await exactly(4))[0] - 4)
        if struct.unpack_from("!i", body)[0] == pgwire.SSL_REQUEST_CODE:
            await stream.send_all(b"N")  # no TLS here, as PostgreSQL with ssl = off
            body = await exactly(struct.unpack("!i", await exactly(4))[0] - 4)
        if struct.unpack_from("!i", body)[0] == pgwire.CANCEL_REQUEST_CODE:
            seen.append("cancel")
            return
        seen.append("login")
        await stream.send_all(message(b"R", struct.pack("!i", 0))
                              + message(b"S", b"server_version\x0015.0\x00")
                              + message(b"K", struct.pack("!ii", 4242, 99)) + message(b"Z", b"I"))
        while await stream.receive_some(65536):
            pass  # a query: no answer, ever
        seen.append("closed")
    except (trio.EndOfChannel, trio.BrokenResourceError):
        seen.append("closed")
    finally:
        await stream.aclose()


async def test_a_server_silent_after_the_cancel_is_closed_and_its_slot_freed(tmp_path):
    from conftest import start_proxy, users_toml

    from trio_pgdog.embedded import free_port

    seen: list[str] = []
    fake_port, port = free_port(), free_port()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(fake_port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, lambda s: _silent_postgres(s, seen), listeners)
        toml = (f'[general]\nhost = "127.0.0.1"\nport = {port}\ndefault_pool_size = 1\n'
                f'checkout_timeout = 5000\n\n[[databases]]\nname = "{APP_DB}"\n'
                f'host = "127.0.0.1"\nport = {fake_port}\n')
        proxy = await trio.to_thread.run_sync(start_proxy, tmp_path, toml, users_toml(), port)
        try:
            with trio.fail_after(5):  # the proxy's own start-up check of the server comes first
                while "start-up check" not in proxy.log or "closed" not in seen:
                    await trio.sleep(0.05)
            seen.clear()
            async with await Wire.connect(port) as wire:
                await wire.login("app", APP_DB, PASSWORD)
                await wire.send(q("select 'never answered'"))
                await trio.sleep(0.2)
            # The client left: a cancel, nothing from the server, so the connection is closed
            # after the grace period and the pool's only slot serves a new connection.
            with trio.fail_after(5):
                async with await Wire.connect(port) as wire:
                    await wire.login("app", APP_DB, PASSWORD)
                    await wire.send(q("select 'mine'"))
                    while seen.count("login") < 2:
                        await trio.sleep(0.05)
            assert seen[:4] == ["login", "cancel", "closed", "login"], seen
            assert "did not answer after the cancel" in proxy.log
            assert "Traceback" not in proxy.log
        finally:
            await trio.to_thread.run_sync(proxy.stop)
            nursery.cancel_scope.cancel()

"""`workers = N`: several processes serving one port (trio_pgdog/workers.py), as an operator
sees them: the pools split between them, cancel requests reaching the right worker, a worker
that dies restarted without hurting the others' clients, SIGHUP and SIGTERM reaching all,
and start-up failures reported once."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, pgdog_toml, server_ports, wait_for
from pgwire import Wire, cancel_request, query
from psycopg import errors

from trio_pgdog.config import ConfigError, load_config_text
from trio_pgdog.embedded import free_port
from trio_pgdog.workers import WorkerSlot


def _workers_listening(proxy, count: int = 2) -> None:
    wait_for(lambda: all(f"[worker {i}] trio_pgdog.app: listening" in proxy.log
                         for i in range(count)), what="every worker listening")


@pytest.fixture
def two_workers(proxy_factory):
    proxy = proxy_factory(workers=2, default_pool_size=4)
    _workers_listening(proxy)
    return proxy


def test_shares_add_up_and_keys_name_their_worker():
    for total in (1, 2, 3, 10, 11):
        for count in (1, 2, 3):
            parts = [WorkerSlot(i, count, "/x").share(total) for i in range(count)]
            assert all(part >= 1 for part in parts)
            if total >= count:
                assert sum(parts) == total
    slot = WorkerSlot(1, 3, "/x")
    assert all(slot.owns(slot.pid_for(n)) for n in range(1, 1000))
    assert not slot.owns(WorkerSlot(2, 3, "/x").pid_for(5))
    assert slot.pid_for(0x7FFFFFFF // 3 - 1) < 0x7FFFFFFF


def test_workers_must_be_a_small_positive_number():
    for bad in (0, 65):
        with pytest.raises(ConfigError, match="workers"):
            load_config_text(f"[general]\nworkers = {bad}\n\n[[databases]]\nname = \"a\"\n"
                             'host = "127.0.0.1"\n', "")


def test_both_workers_serve_within_one_pool_size(pg, two_workers):
    """16 clients busy at once: both workers have server connections, never more than the
    pool size (4) in total, and every client's work is done."""
    proxy = two_workers
    failures: list[BaseException] = []
    seen_per_worker: dict[int, int] = {}
    most = 0

    def client() -> None:
        try:
            with proxy.connect() as conn:
                for _ in range(5):
                    assert conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone() == (1,)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        total = 0
        for worker in proxy.worker_pids():
            ports = server_ports(worker, pg.port)
            seen_per_worker[worker] = max(seen_per_worker.get(worker, 0), len(ports))
            total += len(ports)
        most = max(most, total)
        time.sleep(0.02)
    assert not failures, failures
    assert most <= 4
    assert len(seen_per_worker) == 2 and all(seen_per_worker.values()), seen_per_worker
    assert "[worker 0]" in proxy.log and "[worker 1]" in proxy.log


def test_cancel_requests_reach_the_worker_of_their_client(proxy_factory):
    """A cancel lands on any worker; each of 4 sleeping clients is cancelled at once (each
    worker has a server for every client: a cancel for a client still waiting for one would
    find no statement to cancel)."""
    proxy = proxy_factory(workers=2, default_pool_size=8)
    _workers_listening(proxy)
    outcomes: list[object] = []

    def client() -> None:
        with proxy.connect() as conn:
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(20)")
                outcomes.append("not cancelled")
            except errors.QueryCanceled:
                outcomes.append(time.monotonic() - started)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 4
    assert all(isinstance(took, float) and took < 5 for took in outcomes), outcomes


async def test_a_cancel_sent_to_the_other_worker_is_passed_on(two_workers):
    """The same, made certain: a raw client learns its BackendKeyData, and its CancelRequest
    is sent on new connections until one has landed on the other worker (the log says it was
    passed on); the query is cancelled."""
    proxy = two_workers
    async with await Wire.connect(proxy.port) as wire:
        key = await wire.login("app", APP_DB, PG_USERS["app"][0])
        await wire.send(query("SELECT pg_sleep(20)"))
        await trio.sleep(0.3)
        with trio.fail_after(15):
            while "passed on to worker" not in proxy.log:
                async with await Wire.connect(proxy.port) as canceller:
                    await canceller.send(cancel_request(key.pid, key.secret))
                    await canceller.read_until_close()
                await trio.sleep(0.05)
        result = await wire.read_result(timeout=10)
    assert result.error is not None and result.error.sqlstate == "57014", result


def test_a_dead_worker_is_restarted_and_costs_only_its_clients(two_workers):
    proxy = two_workers
    conns = [proxy.connect() for _ in range(8)]
    victim = proxy.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "died (signal SIGKILL): restarting it" in proxy.log, what="the restart")
    wait_for(lambda: len(proxy.worker_pids()) == 2 and victim not in proxy.worker_pids(),
             what="a new worker")
    alive = 0
    for conn in conns:
        try:
            conn.execute("SELECT 1")
            alive += 1
        except psycopg.OperationalError:
            pass  # it was on the dead worker
        finally:
            conn.close()
    assert alive >= 1  # the other worker's clients go on
    for _ in range(8):  # and new clients are served by both
        with proxy.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proxy.proc.poll() is None


def test_sighup_reloads_every_worker(pg, two_workers):
    proxy = two_workers
    text = pgdog_toml(pg, proxy.port, workers=2, default_pool_size=4)
    text += f'\n[[databases]]\nname = "other"\nhost = "127.0.0.1"\nport = {pg.port}\n' \
            f'database_name = "{APP_DB}"\n'
    (proxy.workdir / "pgdog.toml").write_text(text)
    (proxy.workdir / "users.toml").write_text(
        f'[[users]]\nname = "app"\ndatabase = "{APP_DB}"\npassword = "{PG_USERS["app"][0]}"\n'
        f'[[users]]\nname = "app"\ndatabase = "other"\npassword = "{PG_USERS["app"][0]}"\n')
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: all(f"[worker {i}] trio_pgdog.app: configuration reloaded" in proxy.log
                         for i in (0, 1)), what="both workers reloaded")
    for _ in range(8):
        with proxy.connect(dbname="other") as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (APP_DB,)


def test_sigterm_lets_transactions_finish_then_stops_everything(two_workers):
    proxy = two_workers
    workers = proxy.worker_pids()
    with proxy.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert conn.execute("SELECT 2").fetchone() == (2,)  # its transaction goes on
        conn.execute("COMMIT")
    assert proxy.proc.wait(20) == 0
    assert "all workers stopped" in proxy.log
    for pid in workers:
        wait_for(lambda pid=pid: not _alive(pid), what=f"worker {pid} gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][:1] != "Z"
    except OSError:
        return False


def test_a_taken_port_is_reported_once_before_any_worker_starts(proxy_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = proxy_factory(wait=False, pgdog_text=lambda _port: _with_port(port))
        assert proxy.proc.wait(20) == 1
    assert f"127.0.0.1:{port}" in proxy.log
    assert "worker 0 started" not in proxy.log


def _with_port(port: int) -> str:
    return (f'[general]\nhost = "127.0.0.1"\nport = {port}\nworkers = 2\n\n'
            f'[[databases]]\nname = "{APP_DB}"\nhost = "127.0.0.1"\nport = {free_port()}\n')


def test_a_worker_that_cannot_start_stops_them_all(pg, proxy_factory):
    text = lambda port: pgdog_toml(pg, port, workers=2) + (  # noqa: E731
        '\n[[plugins]]\nname = "/nonexistent/libmissing.so"\n')
    proxy = proxy_factory(wait=False, pgdog_text=text)
    assert proxy.proc.wait(30) == 2
    assert "could not start" in proxy.log
    assert "libmissing" in proxy.log


def test_each_worker_is_a_node_of_its_own(proxy_factory):
    """pgdog.unique_id() (and two-phase commit's transaction names) carry the node: with two
    workers, node_id and node_id + 1, so ids made by both at once never collide."""
    proxy = proxy_factory(workers=2, node_id=5)
    _workers_listening(proxy)
    ids: list[int] = []

    def client() -> None:
        with proxy.connect(cursor_factory=psycopg.ClientCursor) as conn:
            for _ in range(200):
                ids.append(int(conn.execute("SELECT pgdog.unique_id()").fetchone()[0]))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(ids) == 1600 and len(set(ids)) == 1600
    assert {(i >> 12) & 0x3FF for i in ids} == {5, 6}
    with pytest.raises(ConfigError, match="node ids 1023 to 1024"):
        load_config_text('[general]\nworkers = 2\nnode_id = 1023\n\n[[databases]]\nname = "a"\n'
                         'host = "127.0.0.1"\n', "")

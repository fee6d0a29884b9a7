"""TLS towards clients and towards PostgreSQL, with certificates made by trustme.

A PostgreSQL cluster of its own runs with ssl = on (its certificate names 127.0.0.1 only,
so "localhost" is the wrong host name for verify_full); the session's `pg` cluster has
ssl off. Clients are psycopg (libpq), psql and raw sockets with Python's ssl module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import trustme
from conftest import (
    APP_DB,
    PG_USERS,
    PROTOCOLS,
    login_error,
    psql,
    users_toml,
    wait_for,
)
from shards import SHARDS, sharded_toml
from test_sharding import placed_right

from trio_pgdog.config import ConfigError, load_config
from trio_pgdog.embedded import Cluster
from trio_pgdog.router.sharding.hashing import shard_of_int

APP_PASSWORD = PG_USERS["app"][0]


class Certs:
    """The files: a CA for the proxy's certificate, one for PostgreSQL's, one for clients'."""

    def __init__(self, root: Path):
        self.root = root
        self.proxy_ca = trustme.CA()
        self.pg_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.write(self.proxy_ca.issue_cert("127.0.0.1", "localhost"), "proxy")
        self.write(self.pg_ca.issue_cert("127.0.0.1"), "pg")
        self.write(self.client_ca.issue_cert("app"), "client")
        for name, ca in (("proxy_ca", self.proxy_ca), ("pg_ca", self.pg_ca),
                         ("client_ca", self.client_ca)):
            ca.cert_pem.write_to_path(str(root / f"{name}.pem"))

    def write(self, cert: trustme.LeafCert, name: str) -> None:
        cert.cert_chain_pems[0].write_to_path(str(self.root / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(self.root / f"{name}.key"))
        os.chmod(self.root / f"{name}.key", 0o600)

    def path(self, name: str) -> str:
        return str(self.root / name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def pg_tls(certs: Certs) -> Iterator[Cluster]:
    """A cluster with ssl = on, its certificate (for 127.0.0.1) signed by certs.pg_ca."""
    with Cluster.create() as cluster:
        cluster.use_tls(certs.path("pg.crt"), certs.path("pg.key"))
        cluster.start()
        cluster.add_user("app", APP_PASSWORD, auth="scram-sha-256")
        cluster.add_database(APP_DB, owner="app")
        yield cluster


def tls_toml(port: int, server: Cluster, *, host: str = "127.0.0.1", extra: str = "",
             **general: object) -> str:
    lines = ["[general]", 'host = "127.0.0.1"', f"port = {port}"]
    lines += [f"{k} = {_toml(v)}" for k, v in general.items()]
    lines += [extra, "[[databases]]", f'name = "{APP_DB}"', f'host = "{host}"',
              f"port = {server.port}", ""]
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.fixture
def start(proxy_factory, certs: Certs, pg) -> Callable:
    """start(server=cluster, host=..., **general) -> a proxy with the proxy certificate."""

    def run(server: Cluster = pg, *, client_tls: bool = True, **general: object):
        if client_tls:
            general = {"tls_certificate": certs.path("proxy.crt"),
                       "tls_private_key": certs.path("proxy.key"), **general}
        host = general.pop("host", "127.0.0.1")
        return proxy_factory(pgdog_text=lambda port: tls_toml(port, server, host=host, **general),
                             users=users_toml())

    return run


def connect(proxy, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(), autocommit=True, **kwargs)  # type: ignore[arg-type]


def server_side_tls(conn: psycopg.Connection) -> bool:
    """Is the proxy's connection to PostgreSQL (the backend running this) encrypted?"""
    return conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def no_traceback(proxy) -> None:
    assert "Traceback" not in proxy.log and "internal error" not in proxy.log, proxy.log


def tls_socket(port: int, cafile: str | None, hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    """SSLRequest, then a TLS handshake with Python's ssl module (what libpq does)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(struct.pack("!ii", 8, 80877103))
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock, server_hostname=hostname)


def pem_der(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


# --- towards clients --------------------------------------------------------------------------


def test_libpq_connects_with_every_sslmode(start, certs, pg):
    proxy = start()
    expected = pg.sql("SELECT count(*), sum(length(md5(i::text))) FROM generate_series(1, 200000) i")
    for mode in ("require", "verify-ca", "verify-full"):
        with connect(proxy, sslmode=mode, sslrootcert=certs.path("proxy_ca.pem")) as conn:
            assert conn.pgconn.ssl_in_use
            # Answers of many TLS records (more than one receive), both protocols.
            rows = conn.execute("SELECT i, md5(i::text) FROM generate_series(1, 200000) i").fetchall()
            assert f"{len(rows)}|{sum(len(r[1]) for r in rows)}" == expected
            assert conn.execute("SELECT %s::int + 1", [41], prepare=True).fetchone() == (42,)
    with connect(proxy, sslmode="disable") as conn:  # not required: plain still works
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    no_traceback(proxy)
    assert "TLS towards clients: on (optional" in proxy.log


def test_asyncpg_verifies_the_proxy_and_runs_prepared_statements(start, certs):
    """asyncpg (its own protocol code, not libpq): TLS verified against the proxy's CA,
    prepared statements and a large answer over it."""
    import asyncio

    asyncpg = pytest.importorskip("asyncpg")
    proxy = start()

    async def talk() -> None:
        context = ssl.create_default_context(cafile=certs.path("proxy_ca.pem"))
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="app",
                                     password=APP_PASSWORD, database=APP_DB, ssl=context)
        try:
            assert conn.get_settings().server_version  # (logged in through TLS)
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            rows = await conn.fetch("SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
            assert len(rows) == 50000 and rows[-1][0] == 50000
        finally:
            await conn.close()

    asyncio.run(talk())
    no_traceback(proxy)


JDBC_JAR = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java


@pytest.mark.skipif(shutil.which("javac") is None or not os.path.exists(JDBC_JAR),
                    reason="no JDK or no PostgreSQL JDBC driver (libpostgresql-jdbc-java)")
def test_jdbc_verifies_the_proxy(start, certs):
    """pgJDBC (Java's own TLS): sslmode=verify-full against the proxy's CA, prepared
    statements over it; a CA that did not sign the proxy's certificate is refused."""
    proxy = start()
    source = str(Path(__file__).parent / "jdbc" / "TlsClient.java")

    def run(ca: str) -> subprocess.CompletedProcess:
        url = (f"jdbc:postgresql://127.0.0.1:{proxy.port}/{APP_DB}?sslmode=verify-full"
               f"&sslrootcert={certs.path(ca)}")
        return subprocess.run(["java", "-cp", JDBC_JAR, source, url, "app", APP_PASSWORD],
                              capture_output=True, text=True, timeout=120)

    done = run("proxy_ca.pem")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "43", "44", "45", "46"]
    refused = run("pg_ca.pem")
    assert refused.returncode != 0 and "SSL" in refused.stderr, refused.stderr
    no_traceback(proxy)


def test_copy_both_ways_over_tls(start, certs):
    proxy = start()
    payload = "".join(f"{i}\t{'x' * (i % 300)}\n" for i in range(20000))
    with connect(proxy, sslmode="require") as conn:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (i int, s text)")
            with cur.copy("COPY t FROM STDIN") as copy:
                copy.write(payload)
            out = bytearray()
            with cur.copy("COPY t TO STDOUT") as copy:
                for chunk in copy:
                    out += chunk
        assert out.decode() == payload


def test_psql_verify_full(start, certs):
    proxy = start()
    env = dict(os.environ, PGSSLMODE="verify-full", PGSSLROOTCERT=certs.path("proxy_ca.pem"))
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app",
         "-d", APP_DB, "-c", "SELECT 6 * 7", "-c", r"\conninfo"],
        env=dict(env, PGPASSWORD=APP_PASSWORD, PGCONNECT_TIMEOUT="10"),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "42"
    assert "SSL connection (protocol: TLSv1." in out.stdout


def test_wrong_ca_or_host_name_is_refused_by_the_client(start, certs):
    proxy = start()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(proxy, sslmode="verify-ca", sslrootcert=certs.path("pg_ca.pem"))
    # The proxy's certificate names 127.0.0.1 and localhost: a client asking for another
    # name is refused by libpq.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(f"host=db.example hostaddr=127.0.0.1 port={proxy.port} user=app "
                        f"dbname={APP_DB} password={APP_PASSWORD}", sslmode="verify-full",
                        sslrootcert=certs.path("proxy_ca.pem"))
    no_traceback(proxy)


def test_client_certificates_are_verified(start, certs):
    proxy = start(tls_client_ca_certificate=certs.path("client_ca.pem"))
    with connect(proxy, sslmode="verify-full", sslrootcert=certs.path("proxy_ca.pem"),
                 sslcert=certs.path("client.crt"), sslkey=certs.path("client.key")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):  # no certificate: the handshake fails
        connect(proxy, sslmode="require")
    with pytest.raises(psycopg.OperationalError):  # a certificate from another CA
        connect(proxy, sslmode="require", sslcert=certs.path("pg.crt"), sslkey=certs.path("pg.key"))
    wait_for(lambda: "TLS handshake failed" in proxy.log, what="the refusal logged")
    no_traceback(proxy)


def test_required_tls_refuses_a_plain_client_before_any_password(start, certs):
    proxy = start(tls_client_required=True)
    transcript: list = []
    error = login_error(proxy.port, "app", password=APP_PASSWORD, transcript=transcript)
    assert error is not None and error["C"] == "28000", error
    assert "TLS" in error["M"] and error["S"] == "FATAL"
    assert transcript == []  # no authentication request: no password was asked for
    with pytest.raises(psycopg.OperationalError, match="accepts only TLS"):
        connect(proxy, sslmode="disable")
    with connect(proxy, sslmode="prefer") as conn:  # libpq's default asks for TLS
        assert conn.pgconn.ssl_in_use
    assert "TLS towards clients: on (required" in proxy.log


def test_gssenc_is_declined_and_ssl_accepted(start, certs):
    proxy = start()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877104))
        assert sock.recv(1) == b"N"
    with connect(proxy, gssencmode="prefer", sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use


def test_bad_and_slow_handshakes_cost_only_their_client(start, certs):
    proxy = start(client_login_timeout=1000)
    with connect(proxy, sslmode="require") as good:
        # Plaintext where the handshake should be.
        garbage = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        garbage.sendall(struct.pack("!ii", 8, 80877103))
        assert garbage.recv(1) == b"S"
        garbage.sendall(b"\0\0\0\x08\0\3\0\0GET / HTTP/1.1\r\n\r\n" * 10)
        # A client that never starts its handshake.
        slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        slow.sendall(struct.pack("!ii", 8, 80877103))
        assert slow.recv(1) == b"S"
        started = time.monotonic()
        assert good.execute("SELECT 1").fetchone() == (1,)
        # The proxy closes both (the bad one at once, the slow one at the login timeout)
        # without a plaintext word inside what should be TLS.
        data = garbage.recv(100)
        assert data == b"" or data[:1] == b"\x15", data  # EOF or a TLS alert record
        assert slow.recv(100) == b""
        assert time.monotonic() - started < 5
        garbage.close()
        slow.close()
        assert good.execute("SELECT 2").fetchone() == (2,)
    wait_for(lambda: "TLS handshake failed" in proxy.log, what="the bad handshake logged")
    no_traceback(proxy)


def test_plaintext_sent_with_the_ssl_request_is_refused(start, certs):
    proxy = start()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103) + b"\0\0\0\x08\0\3\0\0")
        data = sock.recv(1000)
    assert data[:1] == b"E" and b"08P01" in data and b"unencrypted data" in data


def test_reload_picks_up_a_new_certificate(start, certs, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_text(Path(certs.path("proxy.crt")).read_text())
    key.write_text(Path(certs.path("proxy.key")).read_text())
    proxy = start(tls_certificate=str(cert), tls_private_key=str(key))
    with tls_socket(proxy.port, certs.path("proxy_ca.pem")) as s:
        assert s.getpeercert(binary_form=True) == pem_der(certs.path("proxy.crt"))
    before = connect(proxy, sslmode="verify-full", sslrootcert=certs.path("proxy_ca.pem"))
    new_ca = trustme.CA(organization_name="renewed")
    renewed = new_ca.issue_cert("127.0.0.1")
    renewed.cert_chain_pems[0].write_to_path(str(cert))
    renewed.private_key_pem.write_to_path(str(key))
    new_ca.cert_pem.write_to_path(str(tmp_path / "new_ca.pem"))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in proxy.log, what="the reload")
    with tls_socket(proxy.port, str(tmp_path / "new_ca.pem")) as s:
        peer = s.getpeercert()
        assert s.getpeercert(binary_form=True) == pem_der(str(cert))
        assert ("organizationName", "renewed") in [x for rdn in peer["issuer"] for x in rdn]
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(proxy, sslmode="verify-ca", sslrootcert=certs.path("proxy_ca.pem"))
    with before:  # a running connection keeps its session
        assert before.execute("SELECT 1").fetchone() == (1,)
    # A key file that no longer matches: the reload is refused, the running one kept.
    key.write_text(Path(certs.path("client.key")).read_text())
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "is not the private key of" in proxy.log, what="the refused reload")
    with connect(proxy, sslmode="verify-full", sslrootcert=str(tmp_path / "new_ca.pem")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    no_traceback(proxy)


# --- towards PostgreSQL ---------------------------------------------------------------------


def test_tls_verify_modes_towards_postgresql(start, certs, pg_tls):
    cases = [("disabled", {}, False), ("prefer", {}, True),
             ("verify_ca", {"tls_server_ca_certificate": certs.path("pg_ca.pem")}, True),
             ("verify_full", {"tls_server_ca_certificate": certs.path("pg_ca.pem")}, True)]
    for mode, extra, encrypted in cases:
        proxy = start(pg_tls, client_tls=False, tls_verify=mode, **extra)
        with connect(proxy) as conn:
            assert server_side_tls(conn) is encrypted, mode
            rows = conn.execute("SELECT md5(i::text) FROM generate_series(1, 50000) i").fetchall()
            assert len(rows) == 50000
        assert f"tls_verify = {mode}" in proxy.log
        no_traceback(proxy)


def test_verify_ca_with_the_wrong_ca_is_refused_naming_the_host(start, certs, pg_tls):
    proxy = start(pg_tls, client_tls=False, tls_verify="verify_ca",
                  tls_server_ca_certificate=certs.path("proxy_ca.pem"))
    with pytest.raises(psycopg.Error) as err, connect(proxy) as conn:
        conn.execute("SELECT 1")
    text = str(err.value)
    assert f"127.0.0.1:{pg_tls.port}" in text and "certificate verify failed" in text, text
    no_traceback(proxy)


def test_verify_full_with_the_wrong_host_name_is_refused(start, certs, pg_tls):
    common = {"client_tls": False, "host": "localhost",
              "tls_server_ca_certificate": certs.path("pg_ca.pem")}
    proxy = start(pg_tls, tls_verify="verify_full", **common)
    with pytest.raises(psycopg.Error) as err, connect(proxy) as conn:
        conn.execute("SELECT 1")
    text = str(err.value)
    assert f"localhost:{pg_tls.port}" in text and "not valid for 'localhost'" in text, text
    # verify_ca trusts the chain without the name.
    proxy = start(pg_tls, tls_verify="verify_ca", **common)
    with connect(proxy) as conn:
        assert server_side_tls(conn)


def test_verify_modes_refuse_a_server_without_tls(start, certs, pg):
    proxy = start(pg, client_tls=False, tls_verify="verify_full")
    with pytest.raises(psycopg.Error, match="does not accept TLS") as err, connect(proxy) as conn:
        conn.execute("SELECT 1")
    assert f"127.0.0.1:{pg.port}" in str(err.value)
    proxy = start(pg, client_tls=False)  # prefer: plain where TLS is not offered
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_replica_failing_verification_is_banned(start, certs, pg_tls):
    # The same server twice: as the primary by its address (the certificate's name), as a
    # replica by "localhost" (not in the certificate): verify_full refuses the replica only.
    replica = (f'[[databases]]\nname = "{APP_DB}"\nhost = "localhost"\nport = {pg_tls.port}\n'
               'role = "replica"\n')
    proxy = start(pg_tls, client_tls=False, tls_verify="verify_full", read_your_writes=False,
                  tls_server_ca_certificate=certs.path("pg_ca.pem"), extra=replica)
    with connect(proxy) as conn:
        for _ in range(4):  # reads: the replica fails, then is banned; the primary answers
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert f"banning localhost:{pg_tls.port}" in proxy.log
    assert "certificate verify failed" in proxy.log
    no_traceback(proxy)


def test_both_sides_over_tls(start, certs, pg_tls):
    from test_admin import ADMIN_TOML, show

    proxy = start(pg_tls, tls_verify="verify_full", tls_client_required=True,
                  tls_server_ca_certificate=certs.path("pg_ca.pem"), extra=ADMIN_TOML)
    with connect(proxy, sslmode="verify-full", sslrootcert=certs.path("proxy_ca.pem")) as conn:
        assert conn.pgconn.ssl_in_use and server_side_tls(conn)
        for prepare in (False, True):
            assert conn.execute("SELECT %s::text", ["x" * 100000], prepare=prepare
                                ).fetchone() == ("x" * 100000,)
        # The admin console says which connections use TLS, as PgBouncer's does.
        clients = [c for c in show(proxy, "CLIENTS") if c["user"] == "app"]
        assert clients and all(c["tls"].startswith("TLSv1") for c in clients), clients
        servers = show(proxy, "SERVERS")
        assert servers and all(s["tls"].startswith("TLSv1") for s in servers), servers
    out = psql(proxy.port, "SELECT 1")  # psql's default sslmode (prefer) takes TLS
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    no_traceback(proxy)


def test_cancel_pipeline_and_session_mode_over_tls_both_ways(start, certs, pg_tls):
    """The paths beside plain request/response: a cancel (libpq sends it over TLS too), a
    pipeline of extended-protocol batches, and session mode's idle server (a notification
    arrives while the client is quiet)."""
    common = {"tls_verify": "verify_full", "tls_server_ca_certificate": certs.path("pg_ca.pem")}
    for mode in ("transaction", "session"):
        proxy = start(pg_tls, pooler_mode=mode, **common)
        with connect(proxy, sslmode="require") as conn:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                threading.Timer(0.5, conn.cancel_safe).start()
                conn.execute("SELECT pg_sleep(20)")
            assert time.monotonic() - started < 10
            with conn.pipeline():
                curs = [conn.execute("SELECT %s::int * 2", [i]) for i in range(200)]
            assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(200)]
        if mode == "session":
            with connect(proxy, sslmode="require") as listener, \
                    connect(proxy, sslmode="require") as talker:
                listener.execute("LISTEN tls_chan")
                talker.execute("NOTIFY tls_chan, 'hello'")
                note = next(listener.notifies(timeout=10))
                assert note.payload == "hello"
        no_traceback(proxy)


def test_a_sharded_database_over_tls(certs, shard_clusters, proxy_factory):
    """Keyed writes and reads from a TLS client land on their shard, in each protocol."""
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    proxy = proxy_factory(users=users_toml(), pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, tls_certificate=certs.path("proxy.crt"),
        tls_private_key=certs.path("proxy.key"), tls_client_required=True))
    keys = range(40)
    for n, protocol in enumerate(PROTOCOLS):
        with connect(proxy, sslmode="require", **PROTOCOLS[protocol]) as conn:
            assert conn.pgconn.ssl_in_use
            for key in keys:
                conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s)",
                             (key, key * 10 + n))
            for key in keys:
                assert conn.execute("SELECT amount FROM orders WHERE customer_id = %s AND "
                                    "amount = %s", (key, key * 10 + n)).fetchall() == \
                    [(key * 10 + n,)], (protocol, key)
    counts = placed_right(shard_clusters)  # each row where PostgreSQL's hash puts its key
    assert counts == {s: len(PROTOCOLS) * sum(1 for k in keys if shard_of_int(k, SHARDS) == s)
                      for s in range(SHARDS)}
    assert all(counts.values())
    no_traceback(proxy)


# --- configuration --------------------------------------------------------------------------


def test_certificate_files_are_checked_with_file_key_and_line(tmp_path, certs):
    cfg = tmp_path / "pgdog.toml"

    def error(general: str) -> str:
        cfg.write_text(f"[general]\nport = 6432\n{general}\n[[databases]]\nname = \"a\"\n"
                       'host = "127.0.0.1"\n')
        with pytest.raises(ConfigError) as err:
            load_config(cfg, None)
        return str(err.value)

    crt, key = certs.path("proxy.crt"), certs.path("proxy.key")
    assert error(f'tls_certificate = "{crt}"\ntls_private_key = "missing.key"') == (
        f"{cfg}: line 4: [general] 'tls_private_key': cannot read {tmp_path}/missing.key: "
        "No such file or directory")
    assert error(f'tls_certificate = "{key}"\ntls_private_key = "{key}"') == (
        f"{cfg}: line 3: [general] 'tls_certificate': {key} holds no PEM certificate")
    assert "is not the private key of" in error(
        f'tls_certificate = "{crt}"\ntls_private_key = "{certs.path("client.key")}"')
    assert error(f'tls_certificate = "{crt}"') == (
        f"{cfg}: line 3: [general] 'tls_certificate': needs tls_private_key too (TLS towards "
        "clients)")
    assert "line 3: [general] 'tls_verify': must be 'disabled', 'prefer', 'verify_ca' or " \
        "'verify_full'" in error('tls_verify = "verify"')
    assert error('tls_server_ca_certificate = "nothere.pem"').startswith(
        f"{cfg}: line 3: [general] 'tls_server_ca_certificate': cannot read")
    # Relative paths start at pgdog.toml's directory.
    (tmp_path / "c.crt").write_text(Path(crt).read_text())
    (tmp_path / "c.key").write_text(Path(key).read_text())
    cfg.write_text('[general]\ntls_certificate = "c.crt"\ntls_private_key = "c.key"\n')
    assert load_config(cfg, None).general.tls_certificate == "c.crt"

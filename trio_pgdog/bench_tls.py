"""The TLS targets of `python -m trio_pgdog.bench`: PgBouncer and trio_pgdog with TLS on both sides.

A CA made with trustme signs two certificates for 127.0.0.1: one served by a second throw-away
PostgreSQL (ssl = on, loaded with the same `pgbench -i -s 1` data as the benchmark's own
cluster), one that both poolers show to pgbench. pgbench connects with sslmode=require (the
PGSSLMODE environment variable); each pooler checks PostgreSQL's certificate against the CA and
its host name:

- trio_pgdog: tls_certificate / tls_private_key with tls_client_required = true, and
  tls_verify = "verify_full" with tls_server_ca_certificate;
- PgBouncer: client_tls_sslmode = require with client_tls_cert_file / client_tls_key_file, and
  server_tls_sslmode = verify-full with server_tls_ca_file.

pgbench keeps its connections for the whole run, so the figures are TLS's cost per transaction
(encrypting and decrypting the records), not the handshakes'. The report sets each TLS target
against its plain target of the same run. See docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .bench import (
    PGBOUNCER,
    PGBOUNCER_TLS,
    RATIO_CLIENTS,
    TARGET_KEYS,
    TRIO_PGDOG,
    TRIO_PGDOG_TLS,
    USER,
    BenchError,
    RunResult,
    Target,
    find,
    make_workdir,
    progress,
    start_cluster,
    start_pgbouncer,
    start_trio_pgdog,
)
from .embedded import Cluster, EmbeddedError

# libpq's sslmode for pgbench: encrypted, the certificate not checked (as PgBouncer's
# client_tls_sslmode = require asks of its clients).
PGBENCH_SSLMODE = "require"
# Each TLS target beside the plain target it is compared with.
PLAIN_OF = {PGBOUNCER_TLS: PGBOUNCER, TRIO_PGDOG_TLS: TRIO_PGDOG}


@dataclass(frozen=True)
class TlsSetup:
    """The TLS targets' PostgreSQL and the files the poolers need (absolute paths)."""

    cluster: Cluster
    ca_file: str     # the CA that signed both certificates
    cert_file: str   # the poolers' certificate, for 127.0.0.1
    key_file: str


def write_certificates(workdir: str, cluster: Cluster) -> dict[str, str]:
    """ca.pem, and a certificate and key for 127.0.0.1 each for PostgreSQL and the poolers,
    written into `workdir` and owned by the cluster's OS user (PgBouncer runs as it)."""
    import trustme

    ca = trustme.CA()
    paths = {"ca": os.path.join(workdir, "ca.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    for name in ("postgres", "pooler"):
        leaf = ca.issue_cert("127.0.0.1")
        paths[f"{name}.crt"] = os.path.join(workdir, f"{name}.crt")
        paths[f"{name}.key"] = os.path.join(workdir, f"{name}.key")
        leaf.cert_chain_pems[0].write_to_path(paths[f"{name}.crt"])
        leaf.private_key_pem.write_to_path(paths[f"{name}.key"])
        os.chmod(paths[f"{name}.key"], 0o600)
    for path in paths.values():
        cluster.runner.chown(path)
    return paths


def start_tls_setup(stack: contextlib.ExitStack, problems: list[str]) -> TlsSetup | None:
    """A PostgreSQL with ssl = on and pgbench's data, and the certificates; None (with a line
    in `problems`) when it cannot be had."""
    try:
        import trustme  # noqa: F401
    except ImportError:
        problems.append("the TLS targets need trustme (pip install 'trio-pgdog[bench]'): their rows "
                        "are skipped.")
        return None
    progress("TLS: starting a throw-away PostgreSQL with ssl = on and loading pgbench -i -s 1 ...")
    try:
        cluster = start_cluster(stack)
        paths = write_certificates(make_workdir(stack, cluster, "trio_pgdog-bench-tls-"), cluster)
        cluster.use_tls(paths["postgres.crt"], paths["postgres.key"])
        cluster.reload()   # ssl is a reloadable setting
        if cluster.sql("SHOW ssl") != "on":
            raise BenchError(f"PostgreSQL did not turn ssl on:\n{cluster.log_tail()}")
    except (BenchError, EmbeddedError) as exc:
        problems.append(f"the TLS targets' PostgreSQL did not start: {exc}")
        return None
    return TlsSetup(cluster, paths["ca"], paths["pooler.crt"], paths["pooler.key"])


def pgbouncer_tls_settings(tls: TlsSetup) -> dict[str, str]:
    return {
        "client_tls_sslmode": "require",
        "client_tls_cert_file": tls.cert_file,
        "client_tls_key_file": tls.key_file,
        "server_tls_sslmode": "verify-full",
        "server_tls_ca_file": tls.ca_file,
    }


def trio_pgdog_tls_lines(tls: TlsSetup) -> str:
    return (f'tls_certificate = "{tls.cert_file}"\n'
            f'tls_private_key = "{tls.key_file}"\n'
            "tls_client_required = true\n"
            'tls_verify = "verify_full"\n'
            f'tls_server_ca_certificate = "{tls.ca_file}"\n')


def start_tls_target(key: str, stack: contextlib.ExitStack, tls: TlsSetup,
                     pgbouncer: str | None) -> Target:
    if key == "pgbouncer_tls":
        assert pgbouncer is not None
        target = start_pgbouncer(stack, tls.cluster, pgbouncer, extra=pgbouncer_tls_settings(tls))
    else:
        target = start_trio_pgdog(stack, tls.cluster, key, general=trio_pgdog_tls_lines(tls))
    return dataclasses.replace(target, name=TARGET_KEYS[key], sslmode=PGBENCH_SSLMODE)


def check_server_tls(tls: TlsSetup, target: Target) -> list[str]:
    """After a TLS target's runs, while it still holds its pool: do all its connections to
    PostgreSQL use TLS? (pgbench's sslmode=require already vouches for the client side.)"""
    counts = tls.cluster.sql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a "
        f"JOIN pg_stat_ssl s USING (pid) WHERE a.usename = '{USER}'")
    encrypted, total = map(int, counts.split("|"))
    progress(f"  {target.name}: {encrypted} of {total} server connections use TLS")
    if total and encrypted == total:
        return []
    return [f"{target.name}: {encrypted} of its {total} connections to PostgreSQL use TLS"]


# --- report ----------------------------------------------------------------------------------


def tls_cost_line(plain: RunResult, tls: RunResult) -> str:
    where = f"- {plain.target}, {plain.mode}, {plain.clients} clients"
    if plain.cpu_us_per_txn is None or tls.cpu_us_per_txn is None:
        cpu = "CPU/txn n/a"
    else:
        extra = tls.cpu_us_per_txn - plain.cpu_us_per_txn
        cpu = (f"{extra:+.1f} µs CPU/txn with TLS ({plain.cpu_us_per_txn:.1f} → "
               f"{tls.cpu_us_per_txn:.1f} µs)")
    tps = ""
    if plain.outcome.tps and tls.outcome.tps is not None:
        tps = (f"; TPS {plain.outcome.tps:,.0f} → {tls.outcome.tps:,.0f} "
               f"({tls.outcome.tps / plain.outcome.tps:.2f}x)")
    return f"{where}: {cpu}{tps}"


def tls_cost_lines(results: Sequence[RunResult]) -> list[str]:
    """What TLS adds to each pooler: every TLS run against the plain run of the same mode and
    client count."""
    lines = []
    for run in results:
        if run.target in PLAIN_OF and (plain := find(results, PLAIN_OF[run.target], run.mode,
                                                     run.clients)):
            lines.append(tls_cost_line(plain, run))
    return lines


def tls_ratio_lines(results: Sequence[RunResult]) -> list[str]:
    """trio_pgdog against PgBouncer, both with TLS, at RATIO_CLIENTS (no target set)."""
    lines = []
    for run in results:
        theirs = find(results, PGBOUNCER_TLS, run.mode, run.clients)
        if run.target != TRIO_PGDOG_TLS or run.clients != RATIO_CLIENTS or theirs is None:
            continue
        cpu = (f"{run.cpu_us_per_txn / theirs.cpu_us_per_txn:.2f}x"
               if run.cpu_us_per_txn and theirs.cpu_us_per_txn else "n/a")
        tps = (f"{run.outcome.tps / theirs.outcome.tps:.2f}x"
               if run.outcome.tps is not None and theirs.outcome.tps else "n/a")
        lines.append(f"- with TLS, {run.mode}, {RATIO_CLIENTS} clients, {TRIO_PGDOG_TLS} ÷ "
                     f"{PGBOUNCER_TLS}: CPU/txn {cpu}, TPS {tps}")
    return lines


def tls_section(results: Sequence[RunResult]) -> list[str]:
    lines = [*tls_cost_lines(results), *tls_ratio_lines(results)]
    if not lines:
        return []
    head = (f"What TLS costs: each pooler with TLS towards pgbench (sslmode={PGBENCH_SSLMODE}) and "
            "towards PostgreSQL (certificate and host name verified) against the same pooler "
            "without TLS in this run; proxy CPU per transaction, plain → TLS:")
    return ["", head, "", *lines]

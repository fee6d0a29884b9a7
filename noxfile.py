"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`."""

from __future__ import annotations

import os
import shutil

import nox
import nox.command

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("speedups", ["on", "off"])
def tests(session: nox.Session, speedups: str) -> None:
    """The whole test suite against real PostgreSQL clusters it starts itself, with the C
    speedups and again without them (TRIO_PGDOG_SPEEDUPS=0: the pure-Python twins that an
    install without a C compiler runs). `nox -s "tests(speedups='on')"` runs one of the two."""
    session.install("-e", ".[test]")
    env = {"TRIO_PGDOG_SPEEDUPS": "0"} if speedups == "off" else {}
    session.run("pytest", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests and this file."""
    session.install("ruff")
    session.run("ruff", "check", "trio_pgdog", "tests", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """pgbench -S through PostgreSQL, PgBouncer and trio_pgdog (docs/benchmarks.md).

    Options after `--` go to `python -m trio_pgdog.bench`, e.g. `nox -s bench -- --quick`.
    """
    session.install("-e", ".[bench]")  # trustme: the TLS targets' certificates
    if shutil.which("pgbouncer") is None:
        _install_pgbouncer(session)
    session.run("python", "-m", "trio_pgdog.bench", *session.posargs)


def _install_pgbouncer(session: nox.Session) -> None:
    # The comparison needs PgBouncer; without it the benchmark still runs the other targets.
    if os.geteuid() != 0:
        session.log("pgbouncer is not installed and we are not root: PgBouncer is skipped")
        return
    # A fresh machine may have no package lists yet: then update once and try again.
    if not _apt_get(session, "install", "-y", "pgbouncer"):
        _apt_get(session, "update", "-q")
        if not _apt_get(session, "install", "-y", "pgbouncer"):
            session.log("apt-get install -y pgbouncer failed: PgBouncer is skipped")


def _apt_get(session: nox.Session, *args: str) -> bool:
    try:
        session.run("apt-get", *args, external=True, env={"DEBIAN_FRONTEND": "noninteractive"})
    except nox.command.CommandFailed:
        return False
    return True

"""`python -m trio_pgdog check-config [--config FILE] [--users FILE]`: everything the proxy
would check at start-up, and a login to every server as every user, without serving.

One line per check on standard output, "OK   ..." or "FAIL ...", then a summary. Exit
status 0 when everything passed; 2 when the proxy would refuse to start (a file is invalid
or missing, a hook or plugin cannot load); 1 when it would start but a server login failed
or a database has no user.
"""

from __future__ import annotations

import sys
from typing import TextIO

import trio

from .config import Config, ConfigError, load_config
from .hooks.errors import HookLoadError
from .hooks.registry import build_registry
from .pool import probe

__all__ = ["check_config"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures = 0

    def ok(self, text: str) -> None:
        print(f"OK   {text}", file=self.out, flush=True)

    def fail(self, text: str) -> None:
        self.failures += 1
        print(f"FAIL {text}", file=self.out, flush=True)


def check_config(pgdog_path: str, users_path: str, out: TextIO | None = None) -> int:
    report = _Report(out if out is not None else sys.stdout)
    try:
        config = load_config(pgdog_path, users_path)
    except ConfigError as exc:
        report.fail(f"configuration: {exc}")
        return _summary(report, EXIT_CONFIG)
    report.ok(f"{pgdog_path}: {_count(len(config.databases), 'database entry', 'database entries')}, "
              f"{_count(len(config.plugins), 'plugin')}")
    if config.users:
        report.ok(f"{users_path}: {_count(len(config.users), 'user')}")
    else:
        report.fail(f"{users_path}: no [[users]] entries: every login would be refused")
    hooks_ok = _check_hooks(config, report)
    _check_servers(config, report)
    if not hooks_ok:
        return _summary(report, EXIT_CONFIG)
    return _summary(report, EXIT_FAILED if report.failures else EXIT_OK)


def _check_hooks(config: Config, report: _Report) -> bool:
    """Load every hook as the proxy would (then unload them); False if one cannot load."""
    failed: list[HookLoadError] = []
    registry = build_registry(config, on_error=failed.append)
    try:
        for entry in registry.entries:
            where = f" (databases: {', '.join(sorted(entry.databases))})" if entry.databases else ""
            name = entry.label if entry.label.startswith(("plugin ", "python hook ")) \
                else f"hook {entry.label}"
            report.ok(f"{name}: {', '.join(entry.events) or 'no events'}{where}")
    finally:
        registry.close()
    for exc in failed:
        report.fail(f"{exc} (the proxy would not start)")
    return not failed


def _check_servers(config: Config, report: _Report) -> None:
    for db in probe.unused_databases(config):
        report.fail(f"server {db.name} ({db.role}) {db.host}:{db.port}: no user in users.toml "
                    f"may connect to database {db.name!r}, so no client can use it")
    for outcome in trio.run(probe.probe_all, probe.targets(config, every_user=True)):
        where = f"server {outcome.target.describe()}"
        if outcome.error is None:
            version = f" (PostgreSQL {outcome.server_version})" if outcome.server_version else ""
            report.ok(f"{where}: logged in{version}")
        else:
            report.fail(f"{where}: {outcome.error}")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _summary(report: _Report, status: int) -> int:
    if report.failures:
        print(f"{report.failures} problem{'s' if report.failures != 1 else ''} found", file=report.out)
    else:
        print("configuration OK", file=report.out)
    return status
